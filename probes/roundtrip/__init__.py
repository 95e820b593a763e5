"""The round-trip probe: send a canary over SMTP, find it over IMAP or POP3, measure, clean up.

``probe`` runs it; ``settings`` is what it is told and returns; ``receiver`` the receiving side's shape,
``imap`` and ``pop3`` its two kinds, ``bounces`` the DSN watch of the IMAP side."""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.roundtrip.probe import probe_roundtrip
    from probes.roundtrip.settings import (
        DEFAULT_IDLE_MAX,
        DEFAULT_POLL_FACTOR,
        DEFAULT_POLL_INITIAL,
        DEFAULT_POLL_MAX,
        IDLE_PUSH,
        MAX_WAIT_RATE,
        SYNC_SKIP_REASONS,
        IdlePush,
        PollSchedule,
        POP3Settings,
        RoundTripResult,
        RoundTripSettings,
        SyncSettings,
    )

__all__ = [
    "DEFAULT_IDLE_MAX",
    "DEFAULT_POLL_FACTOR",
    "DEFAULT_POLL_INITIAL",
    "DEFAULT_POLL_MAX",
    "IDLE_PUSH",
    "MAX_WAIT_RATE",
    "SYNC_SKIP_REASONS",
    "IdlePush",
    "POP3Settings",
    "PollSchedule",
    "RoundTripResult",
    "RoundTripSettings",
    "SyncSettings",
    "probe_roundtrip",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "probe": "probe_roundtrip",
            "settings": (
                "DEFAULT_IDLE_MAX DEFAULT_POLL_FACTOR DEFAULT_POLL_INITIAL DEFAULT_POLL_MAX IDLE_PUSH"
                " MAX_WAIT_RATE SYNC_SKIP_REASONS IdlePush PollSchedule POP3Settings RoundTripResult"
                " RoundTripSettings SyncSettings"
            ),
        },
    )
