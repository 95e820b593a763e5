"""SMTP submission of a canary with aiosmtplib, phase by phase, every failure mapped to a fixed reason."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPResponse

from probes.auth.credentials import Credentials
from probes.auth.oauth import error_of_challenge, initial_response
from probes.errors import ProbeError, ProbeTimeout, Reason
from probes.recorder import MASK, Recorder
from probes.wire.certs import facts_from_connection
from probes.wire.net import CLOSE_TIMEOUT, Endpoint, client_context, tcp_connect, tls_error_message

# Longest AUTH line with an inline initial response (CRLF included): far below Postfix's line_length_limit
# (2048), which truncates longer lines; RFC 4954 allows 12288, but an empty challenge works everywhere.
SMTP_INLINE_MAX = 1000


@dataclass(frozen=True)
class SMTPSettings:
    endpoint: Endpoint
    credentials: Credentials | None = None
    allow_plaintext_auth: bool = False
    helo_name: str | None = None  # default: aiosmtplib's (the local FQDN)
    timeout: float = 10.0  # per command


@dataclass(frozen=True)
class SendResult:
    accepted_at: float  # recorder clock (monotonic) when the server accepted the end of DATA
    reply: str  # the final reply text, e.g. "2.0.0 Ok: queued as 4Xyz" (debug output only: unbounded)
    tls_version: str | None


@functools.cache
def _local_name() -> str:
    """The EHLO name: the host name as configured, not a DNS lookup (aiosmtplib's getfqdn may stall)."""
    return socket.gethostname() or "localhost"


def _fail(exc: BaseException, reason: Reason, step: str) -> ProbeError:
    """Turn an aiosmtplib/OS error into a probe error that names the step that failed."""
    if isinstance(exc, ProbeError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | aiosmtplib.SMTPConnectTimeoutError | TimeoutError):
        return ProbeTimeout(f"SMTP {step}: no reply within the command timeout")
    cause = exc.__cause__ or exc.__context__
    for candidate in (exc, cause):
        if isinstance(candidate, ssl.SSLError):
            return ProbeError(f"SMTP {step}: {tls_error_message(candidate)}", reason="smtp_tls")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code < 0:
        # -1: aiosmtplib could not frame the reply (garbage, a line over its limit)
        text = " ".join(exc.message.split())[:200]
        return ProbeError(f"SMTP {step}: {text}", reason="smtp_protocol")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = " ".join(exc.message.split())
        return ProbeError(f"SMTP {step} answered {exc.code} {text}", reason=reason, code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return ProbeError(f"SMTP {step}: server closed the connection", reason="smtp_protocol")
    return ProbeError(f"SMTP {step}: {exc}", reason=reason)


def _reply(recorder: Recorder, step: str, response: SMTPResponse) -> None:
    for line in response.message.splitlines() or [""]:
        recorder.debug("S: smtp", f"{response.code} {line}")
    if not 200 <= response.code < 400:
        text = " ".join(response.message.split())
        raise ProbeError(
            f"SMTP {step} answered {response.code} {text}", reason="smtp_rejected", code=response.code
        )


async def _step(
    recorder: Recorder, step: str, aw: Awaitable[SMTPResponse], reason: Reason = "smtp_rejected"
) -> SMTPResponse:
    """One command: a library or OS error, or a failure reply, becomes a probe error naming the step."""
    try:
        resp = await aw
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise _fail(exc, reason, step) from exc
    _reply(recorder, step, resp)
    return resp


async def send_message(
    settings: SMTPSettings,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    recorder: Recorder,
    prefix: str = "smtp",
) -> SendResult:
    """Submit ``message`` and return when the server has accepted DATA.

    Phases: ``connect`` (TCP), ``banner``, ``ehlo``, ``tls`` (STARTTLS, or for implicit TLS the handshake
    together with the greeting, which aiosmtplib reads in the same call), ``auth``, ``send``.
    """
    creds = settings.credentials
    if creds is not None and settings.endpoint.tls_mode == "none" and not settings.allow_plaintext_auth:
        raise ProbeError("refusing SMTP AUTH over an unencrypted connection", reason="config")
    smtp = await open_session(settings, recorder, prefix)
    try:
        ssl_object = smtp.get_transport_info("ssl_object")
        tls_version = ssl_object.version() if ssl_object is not None else None
        if creds is not None:
            await _auth(smtp, creds, recorder, prefix)
        with recorder.phase(f"{prefix}_send"):
            result = await _send(smtp, sender, recipients, message, recorder)
        accepted_at = recorder.clock()
        await send_quit(smtp, recorder)
        return SendResult(accepted_at=accepted_at, reply=result, tls_version=tls_version)
    finally:
        await close_session(smtp)


async def send_quit(smtp: aiosmtplib.SMTP, recorder: Recorder) -> None:
    """Say QUIT and go (the caller closes the session next): nothing depends on the 221 once the
    message is accepted, so it is not waited for, and not read (the transcript shows no reply)."""
    transport = smtp.transport
    if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
        return
    recorder.debug("C: smtp", "QUIT")
    with contextlib.suppress(OSError, RuntimeError):
        transport.write(b"QUIT\r\n")


class _Gone(asyncio.Protocol):
    """Stands in for aiosmtplib's protocol while a session closes: tells when the connection is gone
    (after the TLS close_notify exchange), drops what the server still sends (the 221 is not read)."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            if not self.gone.done():
                self.gone.set_result(None)


async def close_session(smtp: aiosmtplib.SMTP) -> None:
    """Close the session and wait until its connection is gone, at most CLOSE_TIMEOUT (else abort it):
    no transport outlives the run. Never raises but for cancellation (closing must not mask the run's
    result)."""
    transport = smtp.transport
    if not isinstance(transport, asyncio.Transport) or transport.is_closing():
        smtp.close()
        return
    gone = _Gone(transport.get_protocol())
    transport.set_protocol(gone)
    smtp.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await asyncio.shield(gone.gone)
    except asyncio.CancelledError:
        transport.abort()
        raise
    except Exception:
        transport.abort()


async def open_session(
    settings: SMTPSettings,
    recorder: Recorder,
    prefix: str = "smtp",
    *,
    tls_context: ssl.SSLContext | None = None,
    on_plaintext: Callable[[aiosmtplib.SMTP], None] | None = None,
) -> aiosmtplib.SMTP:
    """Connect, read the banner, EHLO and secure the session as the endpoint asks; no AUTH, no mail.

    ``tls_context`` replaces the endpoint's context (the TLS audit's unverified and legacy looks);
    ``on_plaintext`` is shown the session after the first EHLO, before STARTTLS (what it offers in
    clear). The TLS facts of the secured connection go to ``recorder.tls``. The caller closes the
    session (``close()``; ``quit()`` first to be polite).
    """
    ep = settings.endpoint
    ctx = (tls_context or client_context(ep.tls)) if ep.tls_mode != "none" else None
    with recorder.phase(f"{prefix}_connect"):
        try:
            sock = await tcp_connect(ep, reason="smtp_connect", timeout=settings.timeout)
        except ProbeError as exc:
            exc.no_answer = True  # refused, unreachable or timed out: nobody there to answer
            raise
    smtp = aiosmtplib.SMTP(
        hostname=ep.server_hostname,  # with sock= this is only the TLS server name
        use_tls=ep.tls_mode == "implicit",
        start_tls=False,
        tls_context=ctx,
        timeout=settings.timeout,
        local_hostname=settings.helo_name or _local_name(),
    )
    try:
        banner_phase = f"{prefix}_tls" if ep.tls_mode == "implicit" else f"{prefix}_banner"
        recorder.debug("C: smtp", f"connect {ep.address} ({ep.tls_mode})")
        with recorder.phase(banner_phase):
            try:
                banner = await smtp.connect(sock=sock)
            except aiosmtplib.SMTPConnectResponseError as exc:
                raise _fail(exc, "smtp_rejected", "banner") from exc
            except aiosmtplib.SMTPResponseException as exc:
                # aiosmtplib's own framing (lines <= 8 KiB, replies <= 32 KiB): a garbage or endless
                # banner is a protocol failure, not a failed connect.
                raise _fail(exc, "smtp_protocol", "banner") from exc
            except (aiosmtplib.SMTPException, OSError) as exc:
                reason: Reason = "smtp_tls" if ep.tls_mode == "implicit" else "smtp_connect"
                err = _fail(exc, reason, "connect")
                # No banner at all (silence until the timeout, or closed before a greeting); a failed
                # implicit-TLS handshake is an answer of sorts and not counted.
                err.no_answer = err.reason != "smtp_tls"
                raise err from exc
        _reply(recorder, "banner", banner)
        await _ehlo(smtp, recorder, prefix)
        if ep.tls_mode == "starttls":
            if on_plaintext is not None:
                on_plaintext(smtp)
            if not smtp.supports_extension("starttls"):
                raise ProbeError("SMTP server does not offer STARTTLS", reason="smtp_tls")
            recorder.debug("C: smtp", "STARTTLS")
            with recorder.phase(f"{prefix}_tls"):
                starttls = smtp.starttls(server_hostname=ep.server_hostname, tls_context=ctx)
                await _step(recorder, "STARTTLS", starttls, "smtp_tls")
            await _ehlo(smtp, recorder, prefix)
        ssl_object = smtp.get_transport_info("ssl_object")
        if ssl_object is not None:  # the TLS audit of this endpoint, from this very connection
            recorder.tls[ep.address] = await facts_from_connection(ssl_object, ep, "smtp", ep.tls_mode)
    except BaseException:
        smtp.close()
        raise
    return smtp


async def _ehlo(smtp: aiosmtplib.SMTP, recorder: Recorder, prefix: str) -> None:
    recorder.debug("C: smtp", f"EHLO {smtp.local_hostname}")
    with recorder.phase(f"{prefix}_ehlo"):
        await _step(recorder, "EHLO", smtp.ehlo())


async def _auth(smtp: aiosmtplib.SMTP, creds: Credentials, recorder: Recorder, prefix: str) -> None:
    if creds.token_source is not None:
        with recorder.phase(f"{prefix}_auth"):
            await _auth_oauth(smtp, creds, recorder)
        return
    methods = [m for m in ("plain", "login") if m in smtp.supported_auth_methods]
    if not methods:
        offered = " ".join(smtp.supported_auth_methods) or "none"
        raise ProbeError(
            f"SMTP server offers no AUTH PLAIN or LOGIN (offered: {offered})",
            reason="smtp_auth",
        )
    method = methods[0]
    recorder.debug("C: smtp", f"AUTH {method.upper()} ********")
    login = smtp.auth_plain if method == "plain" else smtp.auth_login
    with recorder.phase(f"{prefix}_auth"):
        await _step(recorder, "AUTH", login(creds.username, creds.password), "smtp_auth")


async def _auth_oauth(smtp: aiosmtplib.SMTP, creds: Credentials, recorder: Recorder) -> None:
    """XOAUTH2 / OAUTHBEARER (aiosmtplib has only XOAUTH2, and no way to pick from the offer): on
    failure the server sends an error challenge, answered by an empty line (RFC 7628 §3.2.3)."""
    mech, encoded = await initial_response(creds, smtp.server_auth_methods, recorder, "smtp_auth", "SMTP")
    inline = len(encoded) + len(mech) + 7 <= SMTP_INLINE_MAX
    recorder.debug("C: smtp", f"AUTH {mech} ********" if inline else f"AUTH {mech}")
    try:
        if inline:
            resp = await smtp.execute_command(b"AUTH", mech.encode(), encoded.encode())
        else:
            # Postfix cuts command lines at line_length_limit (2048): a JWT-sized initial response must
            # follow the server's empty challenge instead (RFC 4954 section 4).
            resp = await smtp.execute_command(b"AUTH", mech.encode())
            if resp.code == 334:
                recorder.debug("S: smtp", f"334 {resp.message}")
                recorder.debug("C: smtp", MASK)
                resp = await smtp.execute_command(encoded.encode())
        detail = ""
        if resp.code == 334:
            detail = error_of_challenge(resp.message.encode())
            recorder.debug("S: smtp", f"334 {resp.message}")
            recorder.debug("C: smtp", "")
            resp = await smtp.execute_command(b"")
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise _fail(exc, "smtp_auth", "AUTH") from exc
    for line in resp.message.splitlines() or [""]:
        recorder.debug("S: smtp", f"{resp.code} {line}")
    if resp.code != 235:
        text = " ".join(resp.message.split())
        extra = f" [{detail}]" if detail else ""
        if creds.token_source is not None:
            creds.token_source.invalidate()  # refused: the next run asks for a fresh one
        message = f"SMTP AUTH {mech} answered {resp.code} {text}{extra}"
        raise ProbeError(message, reason="smtp_auth", code=resp.code)


async def _send(
    smtp: aiosmtplib.SMTP, sender: str, recipients: Sequence[str], message: bytes, recorder: Recorder
) -> str:
    recorder.debug("C: smtp", f"MAIL FROM:<{sender}>")
    await _step(recorder, "MAIL FROM", smtp.mail(sender))
    for rcpt in recipients:
        recorder.debug("C: smtp", f"RCPT TO:<{rcpt}>")
        await _step(recorder, "RCPT TO", smtp.rcpt(rcpt))
    recorder.debug("C: smtp", f"DATA ({len(message)} bytes)")
    return (await _step(recorder, "DATA", smtp.data(message))).message
