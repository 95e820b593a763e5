"""Inbound mail heartbeats (a dead-man's switch for mail others send): matching rules (rules), the
window math of ``every``/``cron`` schedules with grace (window) and the shared IMAP scan of a mailbox
(mailbox). The daemon keeps the state between runs (``exporter.state``) and exports it."""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.heartbeats.mailbox import (
        MAX_MESSAGES,
        Commit,
        Cursor,
        Keeper,
        MailboxSettings,
        Match,
        ScanStats,
        Watched,
        parse_internaldate,
        scan_mailbox,
    )
    from probes.heartbeats.rules import (
        MailFacts,
        Outcome,
        Rule,
        Rules,
        TextPart,
        decode_body,
        parse_header,
        walk_structure,
    )
    from probes.heartbeats.window import MAX_STEPS, RESULTS, STATES, Heartbeat, Schedule, State, Window

__all__ = [
    "MAX_MESSAGES",
    "MAX_STEPS",
    "RESULTS",
    "STATES",
    "Commit",
    "Cursor",
    "Heartbeat",
    "Keeper",
    "MailFacts",
    "MailboxSettings",
    "Match",
    "Outcome",
    "Rule",
    "Rules",
    "ScanStats",
    "Schedule",
    "State",
    "TextPart",
    "Watched",
    "Window",
    "decode_body",
    "parse_header",
    "parse_internaldate",
    "scan_mailbox",
    "walk_structure",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "mailbox": (
                "MAX_MESSAGES Commit Cursor Keeper MailboxSettings Match ScanStats Watched"
                " parse_internaldate scan_mailbox"
            ),
            "rules": "MailFacts Outcome Rule Rules TextPart decode_body parse_header walk_structure",
            "window": "MAX_STEPS RESULTS STATES Heartbeat Schedule State Window",
        },
    )
