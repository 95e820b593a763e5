"""TLS and certificate audit of one mail endpoint, on the real protocol dialogue.

One handshake with verification on, through the project's own SMTP/IMAP/POP3 clients (so STARTTLS is
done exactly as the round trip does it). If that fails for the server's parameters rather than its
certificate (DH key too small, RSA key exchange only, old versions only), a second handshake that still
verifies but accepts any parameters judges the certificate, and the refusal becomes a fact of its own
(``handshake_refused``). If the certificate fails, or no verifying handshake completes, an unverified look
gathers the chain, version and expiry anyway: an expired or untrusted certificate is exactly when the
dates matter most. Then, if asked, one short handshake pinned to each legacy version (TLS 1.0, 1.1) at
security level 0.

Facts go to ``recorder.tls[endpoint]`` as soon as anything is known, so they survive a later failure. A
failed verification is a fact (``verified=False`` with a reason), not an exception: :func:`probe_tls`
raises only when no TLS session could be set up at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import aiosmtplib

from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSession, IMAPSettings
from probes.clients.pop3 import POP3Client
from probes.clients.smtp import SMTPSettings, open_session
from probes.errors import ProbeError, ProbeTimeout
from probes.recorder import Recorder
from probes.tls.legacy import DEFAULT_RECHECK, LegacyCache
from probes.tls.scan import DEFAULT_RESCAN, ScanFacts, scan, scan_key
from probes.tls.scanning import SCAN_STEPS, ScanCache, apply_scan, failed_scan
from probes.wire.certs import (
    LEGACY_VERSIONS,
    VERIFY_REASONS,
    CertInfo,
    TLSFacts,
    cert_info,
    classify_verify_error,
    describe_refusal,
    earliest_expiry,
    facts_from_connection,
    find_ssl_error,
    hostname_matches,
    legacy_context,
    openssl_offers,
    parameters_refused,
    presented_chain,
)
from probes.wire.net import Endpoint, client_context, tcp_connect, tls_error_message
from probes.wire.slots import ServerSlots, maybe_session

__all__ = [
    "LEGACY_VERSIONS",
    "PROTOCOLS",
    "VERIFY_REASONS",
    "CertInfo",
    "TLSCheckSettings",
    "TLSFacts",
    "bounded_scan",
    "cert_info",
    "classify_verify_error",
    "earliest_expiry",
    "facts_from_connection",
    "hostname_matches",
    "imap_auth_offered",
    "legacy_context",
    "openssl_offers",
    "pop3_auth_offered",
    "presented_chain",
    "probe_tls",
    "scan_key",
    "scan_step",
    "smtp_auth_offered",
]

PROTOCOLS: Final = frozenset({"smtp", "imap", "pop3", "tcp"})
# Reasons of the protocol clients that mean "the TLS step failed" (STARTTLS refused, handshake, verify);
# every other reason means the server could not be reached or spoke garbage before TLS.
_TLS_STAGE_REASONS: Final = frozenset({"smtp_tls", "receive_tls", "tls_handshake"})
_CLOSE_TIMEOUT: Final = 2.0
_CLOSING: Final = 421  # SMTP: service not available, closing the transmission channel


@dataclass(frozen=True)
class TLSCheckSettings:
    """One endpoint to audit; ``endpoint.tls_mode`` says implicit TLS or STARTTLS, ``endpoint.tls`` how
    to verify (ca_file, server_name, client certificate)."""

    endpoint: Endpoint
    protocol: str  # smtp | imap | pop3 | tcp (tcp: implicit TLS with no dialogue at all)
    timeout: float = 10.0  # per step (connect, each command, each handshake)
    check_legacy: bool = True
    helo_name: str | None = None  # SMTP EHLO name; default: the local host name
    slots: ServerSlots | None = dataclasses.field(default=None, compare=False, repr=False)  # session limits
    legacy_cache: LegacyCache | None = dataclasses.field(default=None, compare=False, repr=False)
    legacy_recheck: float = DEFAULT_RECHECK  # with a cache: test legacy versions again after this long
    # The scan (issue 21): protocols SSLv2..TLS 1.3, weak classes, FS, chain, stapling, by hellos of our
    # own; off unless asked (the config turns it on). With it, TLS 1.0/1.1 answers come from the scan.
    scan: bool = False
    scan_cache: ScanCache | None = dataclasses.field(default=None, compare=False, repr=False)
    scan_recheck: float = DEFAULT_RESCAN  # with a cache: scan again after this long (or a new cert)
    # Prefixed to the legacy and scan cache keys: a /probe module's name and settings digest, so one
    # module's answers are never another's (empty for the daemon's own checks).
    cache_scope: tuple[str, ...] = ()


# ---- what a plain port offers before TLS (pure) -----------------------------------------------------


def smtp_auth_offered(extensions: Mapping[str, str] | Iterable[str]) -> bool:
    """EHLO advertised AUTH (either form; aiosmtplib files ``AUTH=LOGIN`` under ``auth`` too)."""
    return any(k.lower() == "auth" for k in extensions)


def imap_auth_offered(capabilities: Iterable[str]) -> bool:
    """LOGIN is usable unless LOGINDISABLED (RFC 3501 §6.2.3), and any AUTH= mechanism is an offer."""
    caps = {c.upper() for c in capabilities}
    return "LOGINDISABLED" not in caps or any(c.startswith("AUTH=") for c in caps)


def pop3_auth_offered(capabilities: Mapping[str, Sequence[str]]) -> bool | None:
    """USER, or SASL with at least one mechanism (RFC 2449); None when the server lists no CAPA at all."""
    if not capabilities:
        return None
    caps = {k.upper(): v for k, v in capabilities.items()}
    return "USER" in caps or bool(caps.get("SASL"))


# ---- the audit -----------------------------------------------------------------------------------------


async def probe_tls(settings: TLSCheckSettings, recorder: Recorder) -> TLSFacts:
    """Audit one endpoint (see :func:`_probe_tls`); errors leave with secrets masked."""
    with recorder.masked_errors():
        # One slot for the whole audit: its handshakes are sequential, one session at a time.
        async with maybe_session(settings.slots, settings.endpoint, settings.protocol, recorder):
            return await _probe_tls(settings, recorder)


async def _probe_tls(settings: TLSCheckSettings, recorder: Recorder) -> TLSFacts:
    """Audit one endpoint; phases ``tls_connect`` (TCP and the dialogue before TLS), ``tls_handshake``
    (STARTTLS and the verified handshake), ``tls_legacy`` (all legacy handshakes) and ``tls_scan``.

    Raises :class:`ProbeError` with reason ``tls_connect`` (no connection, or no sane dialogue before
    TLS: a greeting that refuses, an SMTP ``421`` at any step, a later look turned away so), ``tls_handshake``
    (no TLS session at all, STARTTLS not offered or refused included: the facts gathered so far are in
    ``recorder.tls``), ``timeout``, or ``config``.
    """
    ep = settings.endpoint
    _check(settings)
    facts = TLSFacts(
        endpoint=ep.address, protocol=settings.protocol, mode=ep.tls_mode, server_name=ep.server_hostname
    )

    def publish() -> None:
        recorder.tls[ep.address] = facts

    def on_plain(starttls: bool, auth: bool | None) -> None:
        facts.starttls_offered = starttls
        facts.auth_before_tls = auth
        publish()

    # 1. The verified handshake, as any client of this server would do it.
    first_error: ProbeError | None = None
    scratch = _scratch(recorder)
    try:
        async with _secured(settings, scratch, None, on_plain) as ssl_object:
            live = await facts_from_connection(ssl_object, ep, settings.protocol, ep.tls_mode)
    except ProbeError as exc:
        _copy_phases(scratch, recorder, failed=True)
        if isinstance(exc, ProbeTimeout):
            raise
        if not _tls_stage(exc):
            raise _connect_error(exc) from exc
        first_error = exc
        facts.error = exc.message
        publish()
        recorder.debug("tls:", f"verified handshake failed ({exc.reason}): {exc.message}")
    else:
        _copy_phases(scratch, recorder, failed=False)
        _merge(facts, live)
        publish()
        recorder.debug("tls:", f"verified handshake ok: {facts.version} {facts.cipher}")

    # 2. It failed. If not for the certificate (DH key too small, no shared cipher, old versions only),
    # judge the certificate on a second handshake that still verifies but accepts any parameters; if
    # that fails too, or the certificate was the reason, look once more without verification, for the
    # chain and the dates.
    turned_away: ProbeError | None = None  # a later session refused before TLS (421, BYE) or stalled
    if first_error is not None and facts.starttls_offered is not False:
        cert_error: ProbeError = first_error
        if _refused_in_handshake(first_error):
            try:
                seen = await _look(settings, recorder, _permissive_context(ep))
            except ProbeError as exc:
                recorder.debug("tls:", f"permissive verified handshake failed ({exc.reason}): {exc.message}")
                if _certificate_failed(exc):
                    cert_error = exc  # the certificate's own verdict, at last
                elif not _tls_stage(exc):
                    turned_away = exc
            else:
                _merge(facts, seen)
                facts.handshake_refused = describe_refusal(first_error, facts.version, facts.cipher)
                facts.error = _one_line(first_error)
                publish()
                recorder.debug("tls:", f"permissive verified handshake ok: {facts.version} {facts.cipher}")
        if not facts.verified:
            try:
                seen = await _look(settings, recorder, _unverified_context(ep))
            except ProbeError as exc:  # no session even unverified: handshake_ok stays False
                if not _tls_stage(exc):
                    turned_away = exc
            else:
                _merge(facts, seen)
                if _refused_in_handshake(first_error):
                    facts.handshake_refused = describe_refusal(first_error, facts.version, facts.cipher)
            facts.verified = False
            facts.verify_reason = classify_verify_error(cert_error, facts.chain, time.time())
            facts.error = _one_line(cert_error)
            publish()
            recorder.debug(
                "tls:",
                f"unverified look: handshake {'ok' if facts.handshake_ok else 'failed'}, "
                f"{len(facts.chain)} certificate(s), verify reason {facts.verify_reason}",
            )
        if facts.handshake_refused is not None:
            recorder.debug("tls:", f"refused by a client with today's defaults: {facts.handshake_refused}")

    # 3. Does the server still accept legacy versions? Not asked if there is no TLS to speak of, nor
    # when the scan (step 4) answers it with its own TLS 1.0/1.1 hellos.
    if settings.check_legacy and not settings.scan and facts.starttls_offered is not False:
        await _legacy_step(settings, facts, recorder)
        publish()

    # 4. The scan: what else the endpoint accepts (remembered; never fails the audit). Its TLS 1.0/1.1
    # answers stand for the legacy handshakes; only a version it could not tell gets them (as in step 3).
    if settings.scan and facts.starttls_offered is not False:
        await scan_step(settings, facts, recorder)
        publish()
        if settings.check_legacy and any(v is None for v in facts.legacy.values()):
            from_scan = dict(facts.legacy)
            await _legacy_step(settings, facts, recorder)
            facts.legacy = {n: a if a is not None else facts.legacy[n] for n, a in from_scan.items()}
            publish()

    if not facts.handshake_ok:
        if facts.verify_reason is None:
            facts.verify_reason = "other"
        recorder.facts.current_phase = "tls_handshake"  # the legacy phase has cleared it
        if isinstance(turned_away, ProbeTimeout):  # a later look stalled: the stall rule
            raise ProbeTimeout(f"{ep.address}: {facts.error or 'handshake failed'}; {turned_away.message}")
        if turned_away is not None:  # the server stopped talking: nothing more is known of its TLS
            recorder.facts.current_phase = "tls_connect"
            raise ProbeError(
                f"{ep.address}: {facts.error or 'handshake failed'}; another session to look again was "
                f"refused before TLS: {turned_away.message}",
                reason="tls_connect",
            )
        raise ProbeError(
            f"no TLS session with {ep.address}: {facts.error or 'handshake failed'}", reason="tls_handshake"
        )
    return facts


async def scan_step(settings: TLSCheckSettings, facts: TLSFacts, recorder: Recorder) -> bool:
    """Fill ``facts.scan`` (and the legacy answers, when asked) from the endpoint's scan: the remembered
    one while fresh, else a new one (phase ``tls_scan``) bounded by :data:`SCAN_STEPS` step timeouts.
    Returns whether a new scan was made. Never raises a :class:`ProbeError`: a scan that fails or
    overruns is a scan whose facts are unknown."""
    key, fingerprint = scan_key(settings), facts.leaf.fingerprint_sha256 if facts.leaf else None

    async def run() -> ScanFacts:  # the scanner records its own phase, tls_scan
        return await bounded_scan(settings, recorder)

    if settings.scan_cache is not None:
        found, new = await settings.scan_cache.get(key, fingerprint, settings.scan_recheck, run)
    else:
        found, new = await run(), True
    apply_scan(facts, found, legacy=settings.check_legacy, ca_file=settings.endpoint.tls.ca_file)
    recorder.debug(
        "tls:",
        f"scan {'made' if new else 'remembered'}: {found.connections} connection(s)"
        + (f", unknown: {', '.join(sorted(found.errors))}" if found.errors else ""),
    )
    return new


async def _legacy_step(settings: TLSCheckSettings, facts: TLSFacts, recorder: Recorder) -> None:
    """One OpenSSL handshake pinned to each legacy version (phase ``tls_legacy``), or the answers the
    legacy cache remembers for this certificate (or another run is testing for it right now)."""
    cache = settings.legacy_cache
    fingerprint = facts.leaf.fingerprint_sha256 if facts.leaf else None

    async def run() -> dict[str, bool | None]:
        with recorder.phase("tls_legacy"):
            return {
                name: await _accepts(settings, recorder, version) for name, version in LEGACY_VERSIONS.items()
            }

    if cache is None:
        facts.legacy, facts.legacy_checked_at = await run(), time.time()
        new = True
    else:  # same certificate, answered recently: no more sessions for it
        answer, new = await cache.get(legacy_key(settings), fingerprint, settings.legacy_recheck, run)
        facts.legacy, facts.legacy_checked_at = dict(answer.results), answer.checked_at
    answers = {True: "accepted", False: "refused", None: "not tested"}
    recorder.debug(
        "tls:",
        f"legacy {'tested' if new else 'remembered'}: "
        + ", ".join(f"{n} {answers[a]}" for n, a in facts.legacy.items()),
    )


def legacy_key(settings: TLSCheckSettings) -> tuple[str, ...]:
    """The legacy cache key of one endpoint: the settings' ``cache_scope`` (a /probe module's), then
    address, protocol, mode, SNI name."""
    ep = settings.endpoint
    return (*settings.cache_scope, ep.address, settings.protocol, ep.tls_mode, ep.server_hostname)


async def bounded_scan(settings: TLSCheckSettings, recorder: Recorder) -> ScanFacts:
    """:func:`probes.tls.scan.scan` within its own time; whatever goes wrong is an unknown scan. The
    caller holds the endpoint's session slot (the audit's, or the round trip's for its scan): the scanner
    is given none, so it does not wait for a second one."""
    budget = settings.timeout * SCAN_STEPS
    try:
        async with asyncio.timeout(budget):
            return await scan(dataclasses.replace(settings, slots=None), recorder)
    except TimeoutError:
        return failed_scan(f"no scan result within {budget:g}s")
    except ProbeError as exc:
        return failed_scan(f"{exc.reason}: {exc.message}")
    except Exception as exc:  # a bug in the scanner must not fail the audit: unknown, and said loudly
        recorder.debug("tls:", f"scan failed: {type(exc).__name__}: {exc}")
        return failed_scan(f"internal: {type(exc).__name__}: {exc}")


async def _look(settings: TLSCheckSettings, recorder: Recorder, context: ssl.SSLContext) -> TLSFacts:
    """One more session secured with ``context``: the facts its handshake shows."""
    ep = settings.endpoint
    async with _secured(settings, _scratch(recorder), context, None) as ssl_object:
        return await facts_from_connection(ssl_object, ep, settings.protocol, ep.tls_mode)


def _check(settings: TLSCheckSettings) -> None:
    ep = settings.endpoint
    if settings.protocol not in PROTOCOLS:
        raise ProbeError(f"unknown TLS check protocol {settings.protocol!r}", reason="config")
    if ep.tls_mode not in ("implicit", "starttls"):
        raise ProbeError(
            f"a TLS check needs tls mode implicit or starttls, not {ep.tls_mode!r}", reason="config"
        )
    if settings.protocol == "tcp" and ep.tls_mode != "implicit":
        raise ProbeError("plain tcp has no STARTTLS: use mode implicit", reason="config")


def _merge(facts: TLSFacts, live: TLSFacts) -> None:
    """Take what a live connection showed; the dialogue facts (STARTTLS, AUTH, legacy) stay ours."""
    facts.handshake_ok = live.handshake_ok
    facts.version = live.version
    facts.cipher = live.cipher
    facts.chain = live.chain
    facts.hostname_match = live.hostname_match
    facts.verified = live.verified
    facts.verify_reason = live.verify_reason
    if live.error:
        facts.error = live.error
    if facts.mode == "starttls":
        facts.starttls_offered = True


def _one_line(exc: BaseException) -> str:
    err = find_ssl_error(exc)
    if isinstance(err, ssl.SSLCertVerificationError):
        return tls_error_message(err)
    return " ".join(str(exc).split())


def _tls_stage(exc: ProbeError) -> bool:
    """Did the dialogue reach TLS and fail there (STARTTLS refused or not offered, the handshake, the
    certificate)? An SMTP ``421`` is never that, whatever step it answers (STARTTLS included): the
    server closes the channel (RFC 5321 §3.8, rate limiting, overload) and says nothing about TLS."""
    return exc.reason in _TLS_STAGE_REASONS and exc.code != _CLOSING


def _certificate_failed(exc: BaseException) -> bool:
    return isinstance(find_ssl_error(exc), ssl.SSLCertVerificationError)


def _refused_in_handshake(exc: ProbeError) -> bool:
    """The handshake itself failed, not on the certificate: an ``ssl`` error other than a verification
    failure (probes.wire.certs.parameters_refused), or the server hanging up mid-handshake (some do that
    instead of an alert). A more permissive handshake may then judge the certificate."""
    return parameters_refused(exc) or (_handshake_tried(exc) and not _certificate_failed(exc))


def _connect_error(exc: ProbeError) -> ProbeError:
    if exc.reason == "config":
        return exc
    return ProbeError(exc.message, reason="tls_connect", code=exc.code)


def _scratch(recorder: Recorder) -> Recorder:
    """A recorder for one look: shares the transcript and clock, keeps the clients' own phase names apart."""
    return Recorder(masker=recorder.masker, transcript=recorder.transcript, clock=recorder.clock)


def _copy_phases(scratch: Recorder, recorder: Recorder, *, failed: bool) -> None:
    """The clients time connect/banner/ehlo/tls; the audit reports tls_connect and tls_handshake."""
    ph = scratch.phases
    connect = sum(v for k, v in ph.items() if k != "look_tls")
    recorder.set_phase("tls_connect", connect)
    if "look_tls" in ph:
        recorder.set_phase("tls_handshake", ph["look_tls"])
    if failed:
        current = scratch.facts.current_phase
        recorder.facts.current_phase = "tls_handshake" if current == "look_tls" else "tls_connect"


def _permissive_context(ep: Endpoint) -> ssl.SSLContext:
    """Verification as the endpoint asks (trust store, name, client certificate), with any parameters:
    TLS 1.0+, every suite, security level 0. Shared and cached like every client context."""
    return client_context(ep.tls, any_version=openssl_offers(ssl.TLSVersion.TLSv1))


def _unverified_context(ep: Endpoint) -> ssl.SSLContext:
    """No verification (the client certificate kept), and old versions allowed too: a server that speaks
    only TLS 1.0 still shows its certificate. The server picks its best version, as it would anyway.
    Shared and cached like every client context (probes.wire.net.client_context)."""
    unverified = dataclasses.replace(ep.tls, insecure_skip_verify=True)
    return client_context(unverified, any_version=openssl_offers(ssl.TLSVersion.TLSv1))


async def _accepts(settings: TLSCheckSettings, recorder: Recorder, version: ssl.TLSVersion) -> bool | None:
    """True/False: the server did/did not complete a handshake pinned to ``version``. None: unknown —
    this machine's OpenSSL cannot offer it, or the attempt failed before or beside TLS (connect, timeout)."""
    if not openssl_offers(version):
        return None
    try:
        async with _secured(settings, _scratch(recorder), legacy_context(version), None) as ssl_object:
            return bool(ssl_object.version())
    except ProbeTimeout:
        return None
    except ProbeError as exc:
        # Refused means a hello was answered with a failed handshake; a 421, or STARTTLS refused before
        # any hello, says nothing about the version (unknown, never a false "refused").
        return False if _tls_stage(exc) and _handshake_tried(exc) else None


def _handshake_tried(exc: ProbeError) -> bool:
    """The failure came from the handshake itself (an ``ssl``/OS error behind it), not from a STARTTLS
    command answered with a refusal."""
    return find_ssl_error(exc) is not None or isinstance(exc.__cause__, OSError | EOFError)


# ---- one secured connection per protocol, through the project's clients --------------------------------


PlainCallback = Callable[[bool, bool | None], None]  # (STARTTLS offered, AUTH offered before TLS)


@contextlib.asynccontextmanager
async def _secured(
    settings: TLSCheckSettings,
    recorder: Recorder,
    context: ssl.SSLContext | None,
    on_plain: PlainCallback | None,
) -> AsyncIterator[ssl.SSLObject]:
    """A connection secured as the endpoint asks (``context`` None: the endpoint's verified context),
    closed politely on exit. Phases in ``recorder`` are named ``look_*``."""
    protocol = settings.protocol
    if protocol == "smtp":
        async with _smtp(settings, recorder, context, on_plain) as obj:
            yield obj
    elif protocol == "imap":
        async with _imap(settings, recorder, context, on_plain) as obj:
            yield obj
    elif protocol == "pop3":
        async with _pop3(settings, recorder, context, on_plain) as obj:
            yield obj
    else:
        async with _tcp(settings, recorder, context) as obj:
            yield obj


def _require(ssl_object: object) -> ssl.SSLObject:
    if not isinstance(ssl_object, ssl.SSLObject):  # pragma: no cover - the clients secure or raise
        raise ProbeError("the connection is not encrypted after the handshake", reason="tls_handshake")
    return ssl_object


@contextlib.asynccontextmanager
async def _smtp(
    settings: TLSCheckSettings,
    recorder: Recorder,
    context: ssl.SSLContext | None,
    on_plain: PlainCallback | None,
) -> AsyncIterator[ssl.SSLObject]:
    def plain(smtp: aiosmtplib.SMTP) -> None:
        if on_plain is not None:
            on_plain(smtp.supports_extension("starttls"), smtp_auth_offered(smtp.esmtp_extensions))

    smtp_settings = SMTPSettings(
        endpoint=settings.endpoint, helo_name=settings.helo_name, timeout=settings.timeout
    )
    smtp = await open_session(smtp_settings, recorder, "look", tls_context=context, on_plaintext=plain)
    try:
        yield _require(smtp.get_transport_info("ssl_object"))
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), timeout=min(settings.timeout, _CLOSE_TIMEOUT))
        smtp.close()


@contextlib.asynccontextmanager
async def _imap(
    settings: TLSCheckSettings,
    recorder: Recorder,
    context: ssl.SSLContext | None,
    on_plain: PlainCallback | None,
) -> AsyncIterator[ssl.SSLObject]:
    # Credentials are required by IMAPSettings but never used: secure() stops before LOGIN.
    imap_settings = IMAPSettings(
        endpoint=settings.endpoint, credentials=Credentials("", ""), timeout=settings.timeout, use_idle=False
    )
    session = IMAPSession(imap_settings, recorder, prefix="look")
    try:
        try:
            await session.secure(context)
        finally:
            if on_plain is not None and session.plain_capabilities is not None:
                caps = session.plain_capabilities
                on_plain("STARTTLS" in {c.upper() for c in caps}, imap_auth_offered(caps))
        yield _require(session.ssl_object)
    finally:
        await session.close()


@contextlib.asynccontextmanager
async def _pop3(
    settings: TLSCheckSettings,
    recorder: Recorder,
    context: ssl.SSLContext | None,
    on_plain: PlainCallback | None,
) -> AsyncIterator[ssl.SSLObject]:
    def plain(caps: Mapping[str, Sequence[str]]) -> None:
        if on_plain is not None:
            on_plain("STLS" in {k.upper() for k in caps}, pop3_auth_offered(caps))

    client = await POP3Client.connect(
        settings.endpoint,
        recorder,
        phase_prefix="look",
        timeout=settings.timeout,
        tls_context=context,
        on_plaintext=plain,
    )
    try:
        yield _require(client.ssl_object)
    finally:
        with contextlib.suppress(ProbeError):
            await client.quit()
        await client.close()


@contextlib.asynccontextmanager
async def _tcp(
    settings: TLSCheckSettings, recorder: Recorder, context: ssl.SSLContext | None
) -> AsyncIterator[ssl.SSLObject]:
    """Implicit TLS with no protocol dialogue (any TLS service; the same phases as the mail clients)."""
    ep = settings.endpoint
    with recorder.phase("look_connect"):
        sock = await tcp_connect(ep, reason="tls_connect", timeout=settings.timeout)
    ctx = context or client_context(ep.tls)
    with recorder.phase("look_tls"):
        try:
            # One stall rule: the step deadline is ours (asyncio's own handshake timeout is set later).
            async with asyncio.timeout(settings.timeout):
                _, writer = await asyncio.open_connection(
                    sock=sock,
                    ssl=ctx,
                    server_hostname=ep.server_hostname,
                    ssl_handshake_timeout=settings.timeout + 5,
                )
        except TimeoutError as exc:
            sock.close()
            raise ProbeTimeout(f"TLS handshake with {ep.address} timed out") from exc
        except (OSError, EOFError) as exc:
            sock.close()
            raise ProbeError(tls_error_message(exc), reason="tls_handshake") from exc
    try:
        yield _require(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), timeout=_CLOSE_TIMEOUT)
