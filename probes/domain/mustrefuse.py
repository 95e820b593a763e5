"""Must-refuse checks: things a well-run mail server refuses, asked continuously (kmille/smtp_exporter's
idea). A check succeeds when the server refuses with the expected class of code (5xx by default).

No check ever sends DATA: the dialogue stops at the answer that matters (RCPT, MAIL or AUTH), then RSET
and QUIT, so no message can ever be relayed, delivered or forged for real, whatever the server does.

- ``open_relay``: unauthenticated RCPT to a foreign domain (after STARTTLS when offered, as a spammer
  would do it) must be refused.
- ``auth_before_tls``: AUTH must not be offered or accepted on the plain session. "Accepted" is asked
  without any credential: ``AUTH LOGIN`` answered 334 means the server would take a password in clear;
  the exchange is cancelled with ``*`` (RFC 4954 §4).
- ``own_domain_sender``: on the MX, unauthenticated MAIL FROM in the domain itself (then RCPT to a local
  recipient) must be refused at MAIL or RCPT.
- ``forged_sender``: on submission, after AUTH, MAIL FROM another user's address must be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Final, Literal

import aiosmtplib

from probes.auth.credentials import Credentials
from probes.clients.smtp import SMTPSettings, open_session
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.wire.net import Endpoint, client_context

CHECKS: Final = ("open_relay", "auth_before_tls", "own_domain_sender", "forged_sender")
Check = Literal["open_relay", "auth_before_tls", "own_domain_sender", "forged_sender"]
_CLOSE_TIMEOUT: Final = 2.0


@dataclass(frozen=True)
class RefusalResult:
    check: str
    refused: bool  # the server refused as it must
    code: int | None  # the code that decided (None: nothing to answer, e.g. AUTH not offered at all)
    stage: str  # the command that decided: RCPT, MAIL, AUTH, EHLO
    success: bool  # refused with the expected class

    @staticmethod
    def of(check: str, stage: str, code: int | None, expected_class: int) -> RefusalResult:
        refused = code is None or code >= 400
        ok = code is None or code // 100 == expected_class
        return RefusalResult(check, refused, code, stage, refused and ok)


async def _command(smtp: aiosmtplib.SMTP, recorder: Recorder, line: str) -> int:
    recorder.debug("C: smtp", line)
    try:
        resp = await smtp.execute_command(line.encode())
    except aiosmtplib.SMTPResponseException as exc:
        recorder.debug("S: smtp", f"{exc.code} {exc.message}")
        return exc.code
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise ProbeError(f"SMTP {line.split()[0]}: {exc}", reason="smtp_protocol") from exc
    recorder.debug("S: smtp", f"{resp.code} {resp.message}")
    return resp.code


async def _session(
    endpoint: Endpoint, recorder: Recorder, timeout: float, helo: str | None, verify: bool
) -> aiosmtplib.SMTP:
    ctx = None
    if endpoint.tls_mode != "none" and not verify:
        ctx = client_context(dataclasses.replace(endpoint.tls, insecure_skip_verify=True))
    scratch = Recorder(masker=recorder.masker, transcript=recorder.transcript, clock=recorder.clock)
    return await open_session(
        SMTPSettings(endpoint=endpoint, helo_name=helo, timeout=timeout), scratch, "refuse", tls_context=ctx
    )


async def _close(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await asyncio.wait_for(smtp.rset(), timeout=_CLOSE_TIMEOUT)
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await asyncio.wait_for(smtp.quit(), timeout=_CLOSE_TIMEOUT)
    smtp.close()


async def _sender_then_rcpt(
    check: str,
    smtp: aiosmtplib.SMTP,
    recorder: Recorder,
    sender: str,
    recipient: str,
    expected_class: int,
) -> RefusalResult:
    code = await _command(smtp, recorder, f"MAIL FROM:<{sender}>")
    if code >= 400:
        return RefusalResult.of(check, "MAIL", code, expected_class)
    code = await _command(smtp, recorder, f"RCPT TO:<{recipient}>")
    return RefusalResult.of(check, "RCPT", code, expected_class)


async def open_relay(
    endpoint: Endpoint,
    recorder: Recorder,
    *,
    sender: str,
    foreign_recipient: str,
    timeout: float = 10.0,
    helo: str | None = None,
    expected_class: int = 5,
) -> RefusalResult:
    """Unauthenticated RCPT to ``foreign_recipient`` must be refused (endpoint: STARTTLS or none)."""
    smtp = await _session(endpoint, recorder, timeout, helo, verify=False)
    try:
        return await _sender_then_rcpt(
            "open_relay", smtp, recorder, sender, foreign_recipient, expected_class
        )
    finally:
        await _close(smtp)


async def own_domain_sender(
    endpoint: Endpoint,
    recorder: Recorder,
    *,
    sender: str,
    recipient: str,
    timeout: float = 10.0,
    helo: str | None = None,
    expected_class: int = 5,
) -> RefusalResult:
    """On the MX, unauthenticated MAIL FROM ``sender`` (in the own domain) to ``recipient``."""
    smtp = await _session(endpoint, recorder, timeout, helo, verify=False)
    try:
        return await _sender_then_rcpt("own_domain_sender", smtp, recorder, sender, recipient, expected_class)
    finally:
        await _close(smtp)


async def auth_before_tls(
    endpoint: Endpoint,
    recorder: Recorder,
    *,
    timeout: float = 10.0,
    helo: str | None = None,
    expected_class: int = 5,
) -> RefusalResult:
    """On the plain session: AUTH not offered (code None) or ``AUTH LOGIN`` refused; 334 is a failure."""
    plain = dataclasses.replace(endpoint, tls_mode="none")
    smtp = await _session(plain, recorder, timeout, helo, verify=False)
    try:
        offered = smtp.supports_extension("auth")
        code = await _command(smtp, recorder, "AUTH LOGIN")
        if code == 334:
            with contextlib.suppress(ProbeError):
                await _command(smtp, recorder, "*")
            return RefusalResult("auth_before_tls", False, 334, "AUTH", False)
        if not offered and code >= 500:
            return RefusalResult("auth_before_tls", True, code, "AUTH", code // 100 == expected_class)
        return RefusalResult.of("auth_before_tls", "AUTH", code, expected_class)
    finally:
        await _close(smtp)


async def forged_sender(
    endpoint: Endpoint,
    recorder: Recorder,
    *,
    credentials: Credentials,
    forged: str,
    recipient: str,
    timeout: float = 10.0,
    helo: str | None = None,
    expected_class: int = 5,
) -> RefusalResult:
    """On submission, after AUTH (over TLS, verified as configured), MAIL FROM ``forged`` must be refused."""
    recorder.masker.add(credentials.password, credentials.username)
    smtp = await _session(endpoint, recorder, timeout, helo, verify=True)
    try:
        recorder.debug("C: smtp", "AUTH ********")
        try:
            methods = smtp.supported_auth_methods
            if "plain" in methods:
                await smtp.auth_plain(credentials.username, credentials.password)
            else:
                await smtp.auth_login(credentials.username, credentials.password)
        except aiosmtplib.SMTPException as exc:
            raise ProbeError(recorder.masker(f"SMTP AUTH failed: {exc}"), reason="smtp_auth") from None
        return await _sender_then_rcpt("forged_sender", smtp, recorder, forged, recipient, expected_class)
    finally:
        await _close(smtp)
