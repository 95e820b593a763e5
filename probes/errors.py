"""Probe errors: each carries one short, fixed ``reason`` that becomes a metric label value.

The set is closed on purpose: a label value that could be anything would be unbounded cardinality, so a
new failure mode gets a new constant here (and a line in docs/metrics.md), never free text.
"""

from __future__ import annotations

from typing import Final, Literal, TypeGuard, get_args

Reason = Literal[
    "smtp_connect",  # TCP connect, DNS, or connection closed before the banner
    "smtp_tls",  # handshake or certificate verification failed, or STARTTLS not offered
    "smtp_auth",  # credentials refused, or no usable AUTH mechanism
    "smtp_rejected",  # MAIL/RCPT/DATA or banner/EHLO answered with a non-success code
    "smtp_protocol",  # garbage or unexpected reply, connection lost mid-dialogue
    "receive_connect",
    "receive_tls",
    "receive_auth",  # credentials refused (-ERR with no response code, or [AUTH]), no usable mechanism
    "receive_login_delay",  # POP3: a login refused as too soon ([LOGIN-DELAY]), or none allowed in time
    "receive_protocol",  # IMAP/POP3 answered NO/BAD/-ERR where OK was needed, or garbage
    "canary_invalid",  # a message with our token header arrived but its HMAC or body did not verify
    "bounced",  # the receiving side returned the canary: a DSN or bounce with a permanent failure
    "cleanup",  # delete/expunge of our own canary failed
    "tls_connect",  # TLS check: TCP connect, DNS, or the dialogue before TLS failed
    "tls_handshake",  # TLS check: no TLS session at all (STARTTLS not offered, every handshake failed)
    "tls_params",  # TLS: a client with today's defaults is refused (DH key too small, RSA key exchange only)
    "tls_revoked",  # TLS: a certificate presented is revoked (OCSP responder, stapled OCSP or CRL)
    "dns_lookup",  # domain check: the MX (or implicit A/AAAA) of the domain could not be looked up
    "domain_findings",  # domain check: checked, with at least one finding (mailcanary_domain_* series)
    "queue_timeout",  # no session slot free on the server within queue_timeout (our own limit)
    "sync_timeout",  # sync check: the second IMAP session did not see the canary's flag in time
    "timeout",  # the canary did not arrive (or a phase stalled) within the probe's timeout
    "config",  # the probe's settings cannot work (e.g. AUTH over plaintext not allowed)
    "internal",  # a bug: anything unexpected, logged with its traceback
]
"""A failure reason: one label value of a closed set, so mypy rejects an unknown one where it is written."""

REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))  # the same list, for values seen at run time


def is_reason(value: str) -> TypeGuard[Reason]:
    """True if ``value`` is one of :data:`REASONS` (a reason computed at run time, e.g. from a table)."""
    return value in REASONS


class ProbeError(Exception):
    """Base of every failure a probe reports; ``reason`` is one of :data:`REASONS`."""

    reason: Reason = "internal"
    # The server never answered at all: connect refused or timed out, or no greeting (banner). A caller
    # that would open more sessions to the same address may skip them (a dead or hung address).
    no_answer: bool = False

    def __init__(self, message: str, *, reason: Reason | None = None, code: int | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if not is_reason(self.reason):  # pragma: no cover - a value mypy could not see (a programming error)
            raise ValueError(f"unknown probe failure reason {self.reason!r}")
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


def never_answered(exc: BaseException) -> bool:
    """True if ``exc``, or an error it was raised from, says the server never answered (``no_answer``)."""
    current: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; bounded all the same
        if current is None:
            return False
        if isinstance(current, ProbeError) and current.no_answer:
            return True
        current = current.__cause__
    return False


class ProbeTimeout(ProbeError, TimeoutError):
    """A stall: mixes in TimeoutError so callers may catch either (as aiosmtplib does)."""

    reason = "timeout"
