"""The recorder a probe writes facts into as it goes, so that facts gathered before a failure survive it."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Recorder:
    """Per-run facts: phase timings, protocol reply codes, TLS facts, and an optional debug transcript."""

    masker: Masker = field(default_factory=Masker)
    transcript: list[str] | None = None  # None: debug off, nothing is kept
    phases: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)  # endpoint "host:port" -> probes.tls.audit.TLSFacts
    commands: int = 0  # protocol commands issued on the receiving side (benchmarks read it)
    clock: Callable[[], float] = time.monotonic
    # Called with ("sending", token) just before the canary is sent and ("accepted", token) once the server
    # took it, and awaited: the daemon's write-ahead ledger records the canary before it can be lost.
    on_canary: Callable[[str, Any], Awaitable[None]] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; a phase that fails is still recorded up to the failure."""
        start = self.clock()
        self.facts["current_phase"] = name  # left in place if the phase fails: the failed phase
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + (self.clock() - start)
        self.facts.pop("current_phase", None)

    @contextmanager
    def masked_errors(self) -> Iterator[None]:
        """Probe errors leave with secrets masked, whatever server text they quote (a server may echo)."""
        try:
            yield
        except ProbeError as exc:
            exc.args = (self.masker(exc.message), *exc.args[1:])
            raise

    async def canary(self, state: str, token: Any) -> None:
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
