"""The round-trip probe: send a canary over SMTP, find it over IMAP or POP3, measure, clean up."""

from probes.roundtrip.probe import (
    DEFAULT_POLL_FACTOR,
    DEFAULT_POLL_MAX,
    SYNC_SKIP_REASONS,
    PollSchedule,
    POP3Settings,
    RoundTripResult,
    RoundTripSettings,
    SyncSettings,
    probe_roundtrip,
)

__all__ = [
    "DEFAULT_POLL_FACTOR",
    "DEFAULT_POLL_MAX",
    "SYNC_SKIP_REASONS",
    "POP3Settings",
    "PollSchedule",
    "RoundTripResult",
    "RoundTripSettings",
    "SyncSettings",
    "probe_roundtrip",
]
