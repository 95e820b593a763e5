"""The protocol clients a probe talks through: SMTP (submission), IMAP and POP3, each over
:mod:`probes.wire` and logging in with :mod:`probes.auth`.
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.clients.imap import IMAPSession, IMAPSettings, QuotaMalformed
    from probes.clients.pop3 import (
        LOGIN_GATE,
        MAX_LINE,
        MAX_LOGIN_DELAY,
        LoginGate,
        POP3Client,
        Refused,
        login_key,
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
    from probes.clients.smtp import SMTPSettings, open_session, send_message

__all__ = [
    "LOGIN_GATE",
    "MAX_LINE",
    "MAX_LOGIN_DELAY",
    "IMAPSession",
    "IMAPSettings",
    "LoginGate",
    "POP3Client",
    "QuotaMalformed",
    "Refused",
    "SMTPSettings",
    "login_key",
    "login_refusal_reason",
    "open_session",
    "parse_capa",
    "parse_list",
    "parse_login_delay",
    "parse_stat",
    "parse_status",
    "parse_uidl",
    "response_code",
    "sasl_plain",
    "send_message",
    "unstuff",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "imap": "IMAPSession IMAPSettings QuotaMalformed",
            "pop3": (
                "LOGIN_GATE MAX_LINE MAX_LOGIN_DELAY LoginGate POP3Client Refused login_key"
                " login_refusal_reason parse_capa parse_list parse_login_delay parse_stat parse_status"
                " parse_uidl response_code sasl_plain unstuff"
            ),
            "smtp": "SMTPSettings open_session send_message",
        },
    )
