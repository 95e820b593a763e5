"""MX coverage: resolve a domain's MX (falling back to its A/AAAA, RFC 5321 §5.1) and check every MX host
at every address on port 25, as a sending MTA would meet it.

Per address: banner, EHLO, STARTTLS offered, the verified handshake against the MX *name* (not the
address), TLS version, legacy versions accepted, per-stage timings — all by calling ``probes.tls.audit``'s
audit, so the SMTP dialogue is the project's one. Beside it, the presented chain (for DANE and the
certificate hygiene), and optionally whether MAIL FROM is refused before STARTTLS. Bounded by
``max_hosts`` times ``max_addresses``: a domain listing hundreds of MX cannot make the monitor a flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiosmtplib

from probes.clients.smtp import SMTPSettings, open_session
from probes.errors import ProbeError, never_answered
from probes.recorder import Recorder
from probes.tls.audit import TLSCheckSettings, TLSFacts, probe_tls
from probes.tls.scan import DEFAULT_RESCAN
from probes.tls.scanning import ScanCache
from probes.wire.certs import presented_chain
from probes.wire.dns import DNSError, DNSSECStatus, DNSSettings, addresses, query, weakest
from probes.wire.net import Endpoint, TLSSettings, client_context, family_of, source_for
from probes.wire.slots import ServerSlots, maybe_session

_CLOSE_TIMEOUT: Final = 2.0


# ---- resolution (pure part) ----------------------------------------------------------------------


@dataclass(frozen=True)
class MXRecord:
    preference: int
    host: str  # lower case, no trailing dot


def order_mx(records: Iterable[tuple[int, str]]) -> tuple[list[MXRecord], bool]:
    """Sort by preference then name, drop duplicates; second value: a null MX (RFC 7505, "0 .") alone.

    A null MX beside real ones is ignored (the real ones still receive mail).
    """
    seen: set[str] = set()
    out: list[MXRecord] = []
    null = False
    for pref, host in sorted(records, key=lambda r: (r[0], r[1].lower())):
        name = host.lower().rstrip(".")
        if not name:
            null = True
            continue
        if name in seen:
            continue
        seen.add(name)
        out.append(MXRecord(pref, name))
    return out, null and not out


@dataclass(frozen=True)
class MXHost:
    name: str
    preference: int
    addresses: tuple[str, ...]
    dnssec: DNSSECStatus  # of this host's address records
    error: str | None = None  # the host did not resolve


@dataclass(frozen=True)
class MXResolution:
    domain: str
    hosts: tuple[MXHost, ...]
    implicit: bool  # no MX: the domain's own A/AAAA (RFC 5321 §5.1)
    null_mx: bool  # the domain says it accepts no mail
    dnssec: DNSSECStatus  # of the MX answer
    dropped_hosts: int = 0  # over max_hosts
    dropped_addresses: int = 0  # over max_addresses, summed over hosts


async def resolve_mx(
    domain: str, settings: DNSSettings, *, max_hosts: int = 10, max_addresses: int = 4
) -> MXResolution:
    """MX, or the implicit MX; each host's A and AAAA asked at once. Raises DNSError if MX itself fails."""
    name = domain.rstrip(".").lower()
    answer = await query(f"{name}.", "MX", settings)
    records, null = order_mx(
        (int(r.preference), r.exchange.to_text())  # type: ignore[attr-defined]
        for r in answer.records
    )
    implicit = not records and not null
    if implicit:
        records = [MXRecord(0, name)]
    kept = records[:max_hosts]

    async def host(rec: MXRecord) -> tuple[MXHost, int]:
        try:
            addrs, status = await addresses(f"{rec.host}.", settings)
        except DNSError as exc:
            return MXHost(rec.host, rec.preference, (), "error", f"addresses: {exc.rcode}"), 0
        addrs = sorted(set(addrs), key=_address_key)
        return MXHost(rec.host, rec.preference, tuple(addrs[:max_addresses]), status), max(
            0, len(addrs) - max_addresses
        )

    hosts = await asyncio.gather(*(host(r) for r in kept)) if not null else []
    return MXResolution(
        domain=name,
        hosts=tuple(h for h, _ in hosts),
        implicit=implicit,
        null_mx=null,
        dnssec=answer.dnssec,
        dropped_hosts=len(records) - len(kept),
        dropped_addresses=sum(d for _, d in hosts),
    )


def _address_key(address: str) -> tuple[int, str]:
    return (1 if ":" in address else 0, address)


# ---- one address on port 25 ----------------------------------------------------------------------


@dataclass(frozen=True)
class MXCheckSettings:
    port: int = 25
    timeout: float = 10.0  # per step
    check_legacy: bool = True
    ca_file: str | None = None  # None: the system trust store
    helo_name: str | None = None
    # Local addresses to connect from: one, or one per family (IPv4, IPv6). An address of a family
    # without one is connected from the system's default source (an IPv4 source cannot reach an IPv6 MX).
    source_address: str | tuple[str, ...] | None = None
    check_plain_mail_from: bool = False  # does the server refuse MAIL FROM before STARTTLS?
    mail_from: str = ""  # the envelope sender of that test ("" = the null sender <>)
    slots: ServerSlots | None = field(default=None, compare=False, repr=False)  # per-server session limits
    scan: bool = False  # the TLS scan of each address (probes.tls.scan), in its audit
    scan_cache: ScanCache | None = field(default=None, compare=False, repr=False)  # scans per address
    scan_recheck: float = DEFAULT_RESCAN


@dataclass
class AddressReport:
    mx: str
    address: str
    tls: TLSFacts | None = None  # from probes.tls.audit: STARTTLS, verification, version, legacy
    chain: list[bytes] = field(default_factory=list)  # DER, leaf first, as presented
    phases: dict[str, float] = field(default_factory=dict)  # tls_connect, tls_handshake, tls_legacy, ...
    error: str | None = None  # one line: why the address could not be checked fully
    reason: str | None = None  # the ProbeError reason when the audit failed
    plain_mail_from_code: int | None = None  # reply to MAIL FROM before STARTTLS (None: not asked)
    # The first session got no answer at all (connect refused or timed out, no banner): every later
    # session of this run to the address is skipped (a hung address would cost one timeout each).
    no_answer: bool = False
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def plain_mail_from_refused(self) -> bool | None:
        code = self.plain_mail_from_code
        return None if code is None else code >= 400


def source_addresses(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``source_address`` as a tuple (one address, or one per family)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def source_toward(address: str, value: str | Sequence[str] | None) -> str | None:
    """The local address to connect to ``address`` (an IP literal) from: that family's, else None."""
    sources = source_addresses(value)
    try:
        return source_for(sources, family_of(address))
    except ValueError:  # not an IP literal (MX addresses always are): one source as given, else none
        return sources[0] if len(sources) == 1 else None


def _endpoint(mx: str, address: str, settings: MXCheckSettings, mode: str = "starttls") -> Endpoint:
    return Endpoint(
        host=address,
        port=settings.port,
        tls_mode=mode,  # type: ignore[arg-type]
        tls=TLSSettings(ca_file=settings.ca_file, server_name=mx),
        source_address=source_toward(address, settings.source_address),
    )


async def check_address(
    mx: str, address: str, settings: MXCheckSettings, recorder: Recorder
) -> AddressReport:
    """Audit one (mx, address); never raises a ProbeError: failures end in ``error``/``reason``."""
    report = AddressReport(mx=mx, address=address)
    ep = _endpoint(mx, address, settings)
    scratch = Recorder(masker=recorder.masker, transcript=recorder.transcript, clock=recorder.clock)
    audit = TLSCheckSettings(
        ep,
        "smtp",
        timeout=settings.timeout,
        check_legacy=settings.check_legacy,
        helo_name=settings.helo_name,
        slots=settings.slots,  # the MX's smtpd count against the same limits as every other session
        scan=settings.scan,
        scan_cache=settings.scan_cache,
        scan_recheck=settings.scan_recheck,
    )
    try:
        report.tls = await probe_tls(audit, scratch)
    except ProbeError as exc:
        report.tls = scratch.tls.get(ep.address)
        report.error, report.reason = exc.message, exc.reason
        report.no_answer = never_answered(exc)
    report.phases.update(scratch.phases)
    if report.no_answer:
        recorder.debug("mx:", f"{address}: no answer ({report.error}); no more sessions to it this run")
        return report
    if report.tls is not None and report.tls.handshake_ok:
        presented = [c.der for c in report.tls.chain]
        if presented and all(presented):
            report.chain = presented  # the audit's own session showed it: no session more
        else:
            with contextlib.suppress(ProbeError):
                report.chain = await _chain(ep, settings, recorder)
    if settings.check_plain_mail_from:
        try:
            report.plain_mail_from_code = await _plain_mail_from(mx, address, settings, recorder)
        except ProbeError as exc:  # no code to judge: the report says so (skipped), never a failure
            report.no_answer = never_answered(exc)
            recorder.debug("mx:", f"{address}: MAIL FROM before STARTTLS: {exc.reason}: {exc.message}")
    return report


async def _chain(ep: Endpoint, settings: MXCheckSettings, recorder: Recorder) -> list[bytes]:
    """The presented chain in DER from one more STARTTLS session, unverified (DANE judges it itself)."""
    scratch = Recorder(masker=recorder.masker, transcript=recorder.transcript, clock=recorder.clock)
    ctx = client_context(dataclasses.replace(ep.tls, insecure_skip_verify=True))
    async with maybe_session(settings.slots, ep, "smtp", scratch):
        smtp = await open_session(
            SMTPSettings(endpoint=ep, helo_name=settings.helo_name, timeout=settings.timeout),
            scratch,
            "dane",
            tls_context=ctx,
        )
        return await _presented(smtp)


async def _presented(smtp: aiosmtplib.SMTP) -> list[bytes]:
    try:
        obj = smtp.get_transport_info("ssl_object")
        return presented_chain(obj) if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else []
    finally:
        await _quit(smtp)


async def _plain_mail_from(mx: str, address: str, settings: MXCheckSettings, recorder: Recorder) -> int:
    """MAIL FROM on the plain session (no STARTTLS); RSET and QUIT after: no RCPT, no DATA, ever."""
    ep = _endpoint(mx, address, settings, mode="none")
    scratch = Recorder(masker=recorder.masker, transcript=recorder.transcript, clock=recorder.clock)
    async with maybe_session(settings.slots, ep, "smtp", scratch):
        smtp = await open_session(
            SMTPSettings(endpoint=ep, helo_name=settings.helo_name, timeout=settings.timeout),
            scratch,
            "plain",
        )
        return await _mail_from(smtp, settings, recorder)


async def _mail_from(smtp: aiosmtplib.SMTP, settings: MXCheckSettings, recorder: Recorder) -> int:
    try:
        recorder.debug("C: smtp", f"MAIL FROM:<{settings.mail_from}> (before STARTTLS)")
        try:
            resp = await smtp.mail(settings.mail_from)
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ProbeError(f"MAIL FROM before STARTTLS: {exc}", reason="smtp_protocol") from exc
        recorder.debug("S: smtp", f"{resp.code} {resp.message}")
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.rset()
        return resp.code
    finally:
        await _quit(smtp)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await asyncio.wait_for(smtp.quit(), timeout=_CLOSE_TIMEOUT)
    smtp.close()


async def check_all(
    resolution: MXResolution, settings: MXCheckSettings, recorder: Recorder, *, concurrency: int = 4
) -> list[AddressReport]:
    """Every (mx, address) of a resolution, at most ``concurrency`` at once, in MX order."""
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(mx: str, address: str) -> AddressReport:
        async with slots:
            return await check_address(mx, address, settings, recorder)

    pairs = [(h.name, a) for h in resolution.hosts for a in h.addresses]
    return list(await asyncio.gather(*(one(m, a) for m, a in pairs)))


def resolution_dnssec(resolution: MXResolution) -> DNSSECStatus:
    """The MX answer and every host's addresses together."""
    return weakest([resolution.dnssec, *(h.dnssec for h in resolution.hosts)])


def hosts_of(resolution: MXResolution) -> Sequence[str]:
    return [h.name for h in resolution.hosts]
