"""What a round trip is told (settings) and what it returns: plain data, no I/O."""

from __future__ import annotations

from collections.abc import Iterator
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

# Default cap on the gap between looks, per protocol: an IMAP look is one NOOP (plus IDLE in the gap),
# a POP3 look is a whole session (connect, TLS, login, UIDL), so POP3 looks less often.
DEFAULT_POLL_MAX = {"imap": 0.25, "pop3": 1.0}
DEFAULT_POLL_FACTOR = {"imap": 1.25, "pop3": 2.0}


@dataclass(frozen=True)
class PollSchedule:
    """Gaps between looks: ``initial``, growing by ``factor``, capped at ``maximum`` (seconds)."""

    initial: float = 0.05
    factor: float = DEFAULT_POLL_FACTOR["imap"]
    maximum: float = DEFAULT_POLL_MAX["imap"]

    def gaps(self) -> Iterator[float]:
        gap = self.initial
        while True:
            yield gap
            gap = min(gap * self.factor, self.maximum)


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
