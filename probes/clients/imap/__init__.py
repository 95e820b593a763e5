"""IMAP receiving side: a small client on a bounded framing layer (RFC 3501, IDLE, UIDPLUS, STARTTLS).

Why not aioimaplib (which this client used before): its protocol buffers whatever arrives with no limit
(a server announcing ``{999999999}`` grew the daemon by 200 MB), parses in callbacks whose errors surface
in tasks nobody awaits (a garbage greeting waited out the step timeout and logged a traceback), and its
response lists lose a literal when another session's ``* n FETCH (FLAGS …)`` lands beside it. Bounding
it from outside would mean re-framing every byte before it sees them, i.e. writing this parser anyway.

Layered as aiosmtplib is: :mod:`.connection` (connect, TLS/STARTTLS, greeting, CAPABILITY, the one reader
and the command lock, close/abort), :mod:`.auth` (LOGIN, AUTHENTICATE XOAUTH2/OAUTHBEARER with SASL-IR),
:mod:`.commands` (SELECT, NOOP, IDLE, UID SEARCH/FETCH/STORE/EXPUNGE, LIST, NAMESPACE, GETQUOTAROOT), and
:class:`IMAPSession` (:mod:`.session`) composed of them. Every response is read through
:mod:`probes.wire.framing` with hard limits and one deadline per command, and parsed on its own
(:mod:`probes.wire.imapwire`).
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.clients.imap.commands import FETCH_BATCH, Fetched, QuotaMalformed
    from probes.clients.imap.connection import IMAPSettings
    from probes.clients.imap.session import IMAPSession

__all__ = ["FETCH_BATCH", "Fetched", "IMAPSession", "IMAPSettings", "QuotaMalformed"]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "commands": "FETCH_BATCH Fetched QuotaMalformed",
            "connection": "IMAPSettings",
            "session": "IMAPSession",
        },
    )
