"""What a round trip is told (settings) and what it returns: plain data, no I/O."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from probes.auth.credentials import Credentials
from probes.canary import Token
from probes.clients.imap import IMAPSettings
from probes.clients.pop3 import LOGIN_GATE, LoginGate
from probes.clients.smtp import SMTPSettings
from probes.receipt.placement import (
    Placement,
)
from probes.receipt.received import Path as ReceivedPath
from probes.receipt.verdict import Preset
from probes.recorder import BounceEvent
from probes.wire.framing import ReadLimits
from probes.wire.net import Endpoint
from probes.wire.slots import ServerSlots

# The first look comes right after the server accepted DATA (local delivery often takes < 10 ms), then
# the gaps, per protocol: an IMAP look is one NOOP, so its first gaps are short; a POP3 look is a whole
# session (connect, TLS, login, UIDL), so POP3 looks less often.
DEFAULT_POLL_INITIAL = {"imap": 0.005, "pop3": 0.05}
DEFAULT_POLL_MAX = {"imap": 0.25, "pop3": 1.0}
# IMAP: looks at 0, 5, 15, 35, 75, 155, 315, 565, 815 ms...: ten in the first second (one NOOP each),
# within MAX_WAIT_RATE; the error is at most the time already waited, until the 250 ms cap.
DEFAULT_POLL_FACTOR = {"imap": 2.0, "pop3": 2.0}
# IMAP commands the receiving side sends while a canary is in flight (the inbox, junk and bounce
# sessions; the sync check's second session waits on a budget of its own): by t
# seconds after DATA was accepted, at most MAX_WAIT_RATE x max(t, 1 s) (a look that would exceed it
# waits): at most 10 commands in a wait shorter than a second, at most 10 per second averaged over any
# longer one. With the junk folder or a bounce mailbox watched, a look polls several sessions: its gaps
# are that many times longer, so the shipped schedule stays within the budget.
MAX_WAIT_RATE = 10.0
# IMAP servers that push (IDLE): the longest IDLE before a safety look (NOOP, then SEARCH), for servers
# that accept IDLE and never push (Cyrus without idled, Courier without FAM).
DEFAULT_IDLE_MAX = 5.0


@dataclass(frozen=True)
class PollSchedule:
    """Gaps between looks: ``initial``, growing by ``factor``, capped at ``maximum`` (seconds). The
    first look comes before the first gap, right after DATA was accepted."""

    initial: float = DEFAULT_POLL_INITIAL["imap"]
    factor: float = DEFAULT_POLL_FACTOR["imap"]
    maximum: float = DEFAULT_POLL_MAX["imap"]

    def gaps(self) -> Iterator[float]:
        gap = self.initial
        while True:
            yield gap
            gap = min(gap * self.factor, self.maximum)


class IdlePush:
    """What each IMAP server did with IDLE, remembered per process (bounded, forgotten after ``ttl``):
    a server seen to push mail during IDLE is waited on in IDLE without polling; one that let new mail
    wait for the NOOP after a whole IDLE (``idle_max``) is silent (Cyrus without idled, Courier without
    FAM): later runs poll it on the gap schedule instead, where IDLE would only add commands."""

    MAX_SERVERS = 1024
    TTL = 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._silent: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._pushes: OrderedDict[tuple[str, int], float] = OrderedDict()

    def _fresh(self, table: OrderedDict[tuple[str, int], float], key: tuple[str, int]) -> bool:
        at = table.get(key)
        if at is None:
            return False
        if self.clock() - at > self.TTL:
            del table[key]
            return False
        return True

    def silent(self, key: tuple[str, int]) -> bool:
        return self._fresh(self._silent, key) and not self._fresh(self._pushes, key)

    def pushes(self, key: tuple[str, int]) -> bool:
        return self._fresh(self._pushes, key)

    def note(self, key: tuple[str, int], *, pushed: bool) -> None:
        table = self._pushes if pushed else self._silent
        table[key] = self.clock()
        table.move_to_end(key)
        while len(table) > self.MAX_SERVERS:
            table.popitem(last=False)
        if pushed:  # a push settles it: a missed push was a race with the end of an IDLE
            self._silent.pop(key, None)


IDLE_PUSH = IdlePush()


@dataclass(frozen=True)
class POP3Settings:
    endpoint: Endpoint
    credentials: Credentials
    allow_plaintext_auth: bool = False
    timeout: float = 10.0  # per command
    limits: ReadLimits = field(default_factory=ReadLimits)
    # The whole run's time (the runner's deadline), so that a look the server's LOGIN-DELAY would put
    # past it is not attempted; None: unknown (looks then wait for the delay, the caller's deadline cuts).
    run_timeout: float | None = None
    gate: LoginGate = field(default=LOGIN_GATE, compare=False, repr=False)  # last logins, per process


@dataclass(frozen=True)
class SyncSettings:
    """The multi-device check (IMAP): a second session, the "other device", stays selected on the
    mailbox; once the first session has verified the canary it sets ``flag`` on it (ours only, never a
    user's message), and the second must see the flag within ``timeout`` seconds."""

    flag: str = "$MailcanarySynced"
    timeout: float = 30.0


# Why the sync check did not run on a delivered canary: where it was found instead of the inbox the second
# device watches (mailcanary_roundtrip_sync_skipped{reason}).
SYNC_SKIP_REASONS = ("junk", "other")


@dataclass(frozen=True)
class RoundTripSettings:
    name: str
    smtp: SMTPSettings
    receiver: IMAPSettings | POP3Settings
    sender: str
    recipient: str
    key: bytes = field(repr=False)
    poll: PollSchedule = PollSchedule()
    idle_min_gap: float = 0.2  # shorter gaps are slept, not IDLEd: IDLE + DONE costs more than it saves
    search_every: float = 5.0  # search even without an EXISTS this often (servers that announce nothing)
    # IMAP with IDLE: once the gaps reach idle_min_gap, one IDLE lasts up to this long (ended at once by
    # a push), then a NOOP (and SEARCH) looks: no polling in between on servers that push.
    idle_max: float = DEFAULT_IDLE_MAX
    max_rate: float = MAX_WAIT_RATE  # IMAP commands per second in flight, see MAX_WAIT_RATE (0: no limit)
    # Look right after DATA was accepted; False: only after the first gap (the schedule before issue 23,
    # kept for bench/detection.py's A/B comparison).
    first_look: bool = True
    idle_push: IdlePush = field(default=IDLE_PUSH, compare=False, repr=False)  # per process
    sweep_after: float = 3600.0  # our own canaries older than this are deleted when seen
    # IMAP only: also watch the junk folder (SPECIAL-USE \\Junk, else the first of these names that
    # exists); None: the inbox only.
    junk_folders: tuple[str, ...] | None = None
    # IMAP only: also look in up to this many other folders (0: none). Each look at them is one
    # SELECT + SEARCH per folder, done every search_every, in a session of its own.
    other_folders: int = 0
    # Bounces (IMAP): watch the receive session's mailbox (the sender's, when sender = recipient) or a
    # mailbox of its own (bounce_receiver) for DSNs and bounces about our canary.
    bounces_here: bool = False
    bounce_receiver: IMAPSettings | None = None
    # Verdict: Authentication-Results only from these authserv-ids (none: no verdict); spam scores
    # from the receiver's spam headers.
    trusted_authserv_ids: frozenset[str] = frozenset()
    # A provider that breaks RFC 8601 (probes.receipt.verdict.Preset), set only by the operator.
    verdict_preset: Preset = "none"
    spam_headers: bool = True
    slots: ServerSlots | None = field(default=None, compare=False, repr=False)  # per-server session limits
    sync: SyncSettings | None = None  # IMAP only: the second-device check


@dataclass
class RoundTripResult:
    token: Token
    delivery_seconds: float
    swept: list[Token] = field(default_factory=list)  # earlier canaries of this probe deleted this run
    placement: Placement = "inbox"  # where the receiver filed it (POP3 sees the inbox only)
    bounces: list[BounceEvent] = field(default_factory=list)  # delay notices etc. seen this run
    path: ReceivedPath | None = None  # from the canary's Received chain
