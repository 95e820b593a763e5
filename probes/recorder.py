"""The recorder a probe writes facts into as it goes, so that facts gathered before a failure survive it."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:  # only for annotations: these modules import the recorder
    from probes.canary import Token
    from probes.receipt.placement import Placement
    from probes.receipt.quota import Usage
    from probes.receipt.received import Path as ReceivedPath
    from probes.receipt.verdict import Verdict
    from probes.wire.certs import TLSFacts
    from probes.wire.dns import DNSSECStatus

from probes.errors import ProbeError

MASK = "********"
FEW_FORMS = 64  # up to this many secret forms, C-speed substring tests first rule most texts out


class Masker:
    """Replaces every known secret, in the encodings a mail dialogue may carry it, by ``MASK``.

    Masking is by value, not by command, so a secret that turns up somewhere unexpected (an error message,
    a server echoing it back) is hidden too.

    Linear in the text and cheap to build for thousands of secrets: every form is filed under its first
    ``k`` characters (``k`` = the shortest form's length), so one pass over the text looks up each
    position once and checks only the few forms that start there, longest first (a prefix never leaves
    a tail). One regex alternation of all forms was measured slower to build (compiling 5,000
    alternatives costs ~160 ms, more than the sort it replaced) for the same per-line cost.

    With a few forms (a handful of probes: every log field, transcript line and error message of every
    run passes here) one ``in`` test per form says first whether any is there at all, so a clean text
    costs no Python-level scan.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._fixed: set[str] = set()  # passwords and other secrets that stay
        self._rotating: dict[str, list[frozenset[str]]] = {}  # key -> last generations of a token's forms
        self._needles: set[str] = set()  # _fixed and every kept generation
        self._index: dict[str, tuple[str, ...]] | None = None
        self._few: tuple[str, ...] | None = None  # every form, when there are at most FEW_FORMS
        self._k = 0
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str, username: str | None = None) -> None:
        if not secret:
            return
        forms = {secret, base64.b64encode(secret.encode()).decode()}
        quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
        forms.add(quoted)
        if username is not None:
            # SASL PLAIN initial response: authzid NUL authcid NUL passwd, base64-encoded.
            for authz in ("", username):
                forms.add(base64.b64encode(f"{authz}\0{username}\0{secret}".encode()).decode())
        new = {form for form in forms if form} - self._fixed
        if new:
            self._fixed |= new
            self._needles |= new
            self._index = None  # rebuilt on next use: adding stays O(1)

    def rotate(self, key: str, forms: Iterable[str], keep: int = 2) -> None:
        """Mask ``forms`` of a secret that is replaced over time (an OAuth token): only the last ``keep``
        generations per ``key`` stay, so a daemon refreshing tokens for months stays bounded."""
        new = frozenset(f for f in forms if f)
        gens = self._rotating.setdefault(key, [])
        if gens and gens[-1] == new:
            return
        gens.append(new)
        dropped = gens[:-keep]
        del gens[:-keep]
        self._needles |= new
        gone = {f for g in dropped for f in g} - self._fixed
        for kept in (g for gs in self._rotating.values() for g in gs):
            if not gone:
                break
            gone -= kept  # a form still in a kept generation (of this or another key) stays
        self._needles -= gone
        self._index = None

    def _built(self) -> dict[str, tuple[str, ...]]:
        index = self._index
        if index is None:
            k = min((len(n) for n in self._needles), default=0)
            groups: dict[str, list[str]] = {}
            for needle in self._needles:
                groups.setdefault(needle[:k], []).append(needle)
            index = {p: tuple(sorted(ns, key=len, reverse=True)) for p, ns in groups.items()}
            self._few = tuple(self._needles) if len(self._needles) <= FEW_FORMS else None
            self._k, self._index = k, index
        return index

    def __call__(self, text: str) -> str:
        index = self._built()
        if not index or len(text) < self._k:
            return text
        few = self._few
        if few is not None:
            for needle in few:
                if needle in text:
                    break
            else:
                return text
        k, get = self._k, index.get
        out: list[str] = []
        i = last = 0
        end = len(text) - k
        while i <= end:
            candidates = get(text[i : i + k])
            if candidates is not None:
                for needle in candidates:
                    if text.startswith(needle, i):
                        out += (text[last:i], MASK)
                        i = last = i + len(needle)
                        break
                else:
                    i += 1
            else:
                i += 1
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)


BounceEvent = TypedDict(
    "BounceEvent",
    {
        "action": str,  # the DSN's Action (probes.receipt.dsn.Action)
        "status": str | None,  # "5.1.1"; None if the bounce names none
        "class": str,  # bounded status class, "5.1.x" or "unknown" (a label value of the bounce counter)
        "kind": str,  # "dsn" or "plain"
        "this_run": bool,  # about this run's canary (else an earlier one's)
        "diagnostic": NotRequired[str],  # Diagnostic-Code, one bounded line, when the bounce gives one
    },
)
"""One verified bounce about our canary, as the log line and the status page show it."""


class ReceiverFacts(TypedDict, total=False):
    """What the receiver did, for the run's log line and the status page: the facts below that a run
    learnt (a key is absent when the run did not learn it). Small, bounded values, never labels."""

    junk_folder: str  # the junk folder found (placement on)
    junk_folder_found: bool  # placement on: the server has a junk folder
    sync_skipped: str  # sync check skipped: the canary was in "junk" or "other", not the inbox
    other_folders: int  # folders the all-folders walk looks in
    found_folder: str  # where the all-folders walk found the canary
    bounces: list[BounceEvent]  # verified bounces seen this run (at most 20)
    bounce_watch: str  # why bounces are not watched ("off: ...")
    sender_ip: str  # the sending IP the receiver saw (first Received hop), for a blocklist check
    sender_dnsbl: dict[str, str]  # zone -> status of that IP (receive.sender_dnsbl)
    clock_offset: float  # first Received stamp minus our send time (seconds)
    login_delay: int  # POP3: the LOGIN-DELAY the server announced (seconds; 0: none)


@dataclass
class Facts:
    """What a run learnt besides its phase timings, one typed field per fact, so every read and write is
    checked. A field stays at its default (None, False, empty) until the run learns it."""

    # Every kind
    current_phase: str | None = None  # the phase under way; left in place if it fails: the failed phase
    # The round trip: the canary (its ledger reads these after a run, whatever the outcome)
    token: Token | None = None  # this run's canary, set before it is sent
    accepted: bool = False  # the SMTP server took the canary: from here on it may turn up late
    seen: bool = False  # the receiver found the canary
    bounced: bool = False  # a permanent bounce of this run's canary came back: it will never arrive
    swept: list[Token] = field(default_factory=list)  # earlier canaries of this probe deleted this run
    smtp_tls_version: str | None = None  # TLS version of the SMTP session
    accepted_at: float | None = None  # monotonic time the SMTP server took the canary
    seen_at: float | None = None  # monotonic time the receiver saw it
    wait_commands: int | None = None  # receiving-side commands spent waiting for it (benchmarks)
    # The round trip: where it landed and what it carried
    placement: Placement | None = None
    junk_folder: str | None = None  # placement on: the junk folder found, if any
    junk_folder_found: bool | None = None  # placement on: whether the server has a junk folder
    other_folders: int | None = None  # folders the all-folders walk looks in
    found_folder: str | None = None  # where the all-folders walk found the canary
    path: ReceivedPath | None = None  # the canary's Received chain
    sender_ip: str | None = None  # the sending IP the receiver saw
    sender_dnsbl: dict[str, str] | None = None  # zone -> status of sender_ip (set by the daemon)
    verdict: Verdict | None = None  # Authentication-Results and spam scores
    clock_offset: float | None = None  # first Received stamp minus our send time (seconds)
    # The round trip: bounces, foreign mail, quota, sync, POP3
    bounces: list[BounceEvent] | None = None  # verified bounces seen this run (at most 20)
    bounce_watch: str | None = None  # why bounces are not watched
    foreign_skipped: int = 0  # messages like our canary that did not verify (or could not be read)
    quota: dict[str, Usage] | None = None  # GETQUOTAROOT reading: resource -> usage
    quota_error: str | None = None  # why the quota could not be read (probes.receipt.quota.QUOTA_ERRORS)
    quota_message: str | None = None  # the server's words for it
    sync_seconds: float | None = None  # sync check: flag set by the first session until the second saw it
    sync_arrival_seconds: float | None = None  # sync check: delivery latency as the second session saw it
    sync_skipped: str | None = None  # sync check skipped: the canary was in "junk" or "other"
    login_delay: int | None = None  # POP3: the LOGIN-DELAY the server announced (seconds; 0: none)
    imap_expunge_skipped: bool = False  # the server could not expunge only our canary (no UIDPLUS)
    # The domain check
    domain_dnssec: DNSSECStatus | None = None  # weakest DNSSEC status of the MX answer and its hosts

    def receiver(self) -> ReceiverFacts:
        """The facts about what the receiver did that this run learnt (:class:`ReceiverFacts`)."""
        out: ReceiverFacts = {}
        if self.junk_folder is not None:
            out["junk_folder"] = self.junk_folder
        if self.junk_folder_found is not None:
            out["junk_folder_found"] = self.junk_folder_found
        if self.sync_skipped is not None:
            out["sync_skipped"] = self.sync_skipped
        if self.other_folders is not None:
            out["other_folders"] = self.other_folders
        if self.found_folder is not None:
            out["found_folder"] = self.found_folder
        if self.bounces is not None:
            out["bounces"] = self.bounces
        if self.bounce_watch is not None:
            out["bounce_watch"] = self.bounce_watch
        if self.sender_ip is not None:
            out["sender_ip"] = self.sender_ip
        if self.sender_dnsbl is not None:
            out["sender_dnsbl"] = self.sender_dnsbl
        if self.clock_offset is not None:
            out["clock_offset"] = self.clock_offset
        if self.login_delay is not None:
            out["login_delay"] = self.login_delay
        return out


@dataclass
class Recorder:
    """Per-run facts: phase timings, protocol reply codes, TLS facts, and an optional debug transcript."""

    masker: Masker = field(default_factory=Masker)
    transcript: list[str] | None = None  # None: debug off, nothing is kept
    phases: dict[str, float] = field(default_factory=dict)
    facts: Facts = field(default_factory=Facts)
    tls: dict[str, TLSFacts] = field(default_factory=dict)  # endpoint "host:port" -> its TLS facts
    commands: int = 0  # protocol commands issued on the receiving side (benchmarks read it)
    clock: Callable[[], float] = time.monotonic
    # Called with ("sending", token) just before the canary is sent and ("accepted", token) once the server
    # took it, and awaited: the daemon's write-ahead ledger records the canary before it can be lost.
    on_canary: Callable[[str, Token], Awaitable[None]] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; a phase that fails is still recorded up to the failure."""
        start = self.clock()
        self.facts.current_phase = name  # left in place if the phase fails: the failed phase
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + (self.clock() - start)
        self.facts.current_phase = None

    @contextmanager
    def masked_errors(self) -> Iterator[None]:
        """Probe errors leave with secrets masked, whatever server text they quote (a server may echo)."""
        try:
            yield
        except ProbeError as exc:
            exc.args = (self.masker(exc.message), *exc.args[1:])
            raise

    async def canary(self, state: str, token: Token) -> None:
        """Tell ``on_canary`` (if any) where the canary ``token`` stands: ``sending`` or ``accepted``."""
        if self.on_canary is not None:
            await self.on_canary(state, token)

    def set_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = seconds

    def debug(self, who: str, line: str) -> None:
        """Add one line of protocol dialogue (``who`` is e.g. ``C: smtp`` / ``S: imap``), secrets masked."""
        if self.transcript is not None:
            self.transcript.append(f"{who} {self.masker(line.rstrip())}")

    @property
    def debugging(self) -> bool:
        return self.transcript is not None
