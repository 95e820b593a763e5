"""A small asyncio POP3 client (RFC 1939, 2449, 2595, 5034): none of our dependencies speaks POP3 async.

Layered as aiosmtplib is: :mod:`.parse` (the reply syntax, pure and fuzzed), :mod:`.connection` (TCP,
TLS/STLS, greeting, CAPA, one command's reply read through :mod:`probes.wire.framing`), :mod:`.auth`
(USER/PASS, AUTH PLAIN, OAuth, LOGIN-DELAY), :mod:`.commands` (STAT, UIDL, LIST, TOP, RETR, DELE, QUIT),
and :class:`POP3Client` (:mod:`.session`) composed of them. Whatever the server sends is hostile input:
every failure becomes a :class:`ProbeError` with a fixed reason.
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.clients.pop3.auth import LOGIN_GATE, LoginGate, login_key
    from probes.clients.pop3.commands import Refused
    from probes.clients.pop3.connection import MAX_COMMAND, MAX_LINE, MAX_RESPONSE
    from probes.clients.pop3.parse import (
        MAX_LOGIN_DELAY,
        Capabilities,
        login_refusal_reason,
        parse_capa,
        parse_list,
        parse_login_delay,
        parse_stat,
        parse_status,
        parse_uidl,
        response_code,
        sasl_plain,
        unstuff,
    )
    from probes.clients.pop3.session import POP3Client

__all__ = [
    "LOGIN_GATE",
    "MAX_COMMAND",
    "MAX_LINE",
    "MAX_LOGIN_DELAY",
    "MAX_RESPONSE",
    "Capabilities",
    "LoginGate",
    "POP3Client",
    "Refused",
    "login_key",
    "login_refusal_reason",
    "parse_capa",
    "parse_list",
    "parse_login_delay",
    "parse_stat",
    "parse_status",
    "parse_uidl",
    "response_code",
    "sasl_plain",
    "unstuff",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "auth": "LOGIN_GATE LoginGate login_key",
            "commands": "Refused",
            "connection": "MAX_COMMAND MAX_LINE MAX_RESPONSE",
            "parse": (
                "MAX_LOGIN_DELAY Capabilities login_refusal_reason parse_capa parse_list parse_login_delay"
                " parse_stat parse_status parse_uidl response_code sasl_plain unstuff"
            ),
            "session": "POP3Client",
        },
    )
