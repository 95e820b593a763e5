"""One mail domain from the outside: every check of this package put together, and a report per MX.

:func:`probe_domain` is the ``probe_*`` function of the ``domain_checks`` kind: MX coverage (every host,
every address, bounded), DANE per MX, MTA-STS and TLS-RPT, DNSBL for each MX address, certificate
hygiene and OCSP of each presented leaf, and, when asked, the must-refuse checks on each MX address.
Every sub-check's failure is a fact in the report (a fixed word), never an exception: the domain is
judged as a whole by :attr:`DomainReport.problems`. Only a failing MX lookup raises (nothing to check).
:func:`render_report` is pure and gives the text ``mailcanary probe`` prints (internet.nl-like).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from probes.domain import dane, dnsbl, mtasts, mustrefuse
from probes.domain.mx import (
    AddressReport,
    MXCheckSettings,
    MXResolution,
    check_all,
    resolution_dnssec,
    resolve_mx,
    source_addresses,
    source_toward,
)
from probes.errors import ProbeError, never_answered
from probes.recorder import Recorder
from probes.tls import summary as tls_summary
from probes.tls.hygiene import (
    CRLCache,
    CRLResult,
    KeyFacts,
    OCSPCache,
    OCSPResult,
    crl_status,
    key_facts,
    ocsp_status,
)
from probes.wire.dns import DNSError, DNSSettings
from probes.wire.net import Endpoint, TLSSettings
from probes.wire.slots import maybe_session


@dataclass(frozen=True)
class DomainSettings:
    domain: str
    dns: DNSSettings = field(default_factory=DNSSettings)
    mx: MXCheckSettings = field(default_factory=MXCheckSettings)
    max_hosts: int = 10
    max_addresses: int = 4  # per host
    concurrency: int = 4  # addresses checked at once
    dnsbl_zones: tuple[str, ...] = ()
    check_dane: bool = True
    check_mta_sts: bool = True
    mta_sts_port: int = 443
    mta_sts_ca_file: str | None = None  # None: the system trust store
    check_ocsp: bool = True
    check_crl: bool = False  # also fetch the CRL the leaf names (HTTP, up to 4 MB, cached until nextUpdate)
    must_refuse: bool = False  # open relay, AUTH before TLS, own-domain sender (on every MX address)
    relay_sender: str = "mailcanary-relay-test@example.net"
    foreign_recipient: str = "mailcanary-relay-test@example.invalid"
    local_recipient: str | None = None  # default: postmaster@<domain>
    timeout: float = 10.0  # per step of the DNS and HTTPS checks


@dataclass
class MXAddressResult:
    report: AddressReport
    dane: dane.DANEResult | None = None
    leaf: KeyFacts | None = None
    ocsp: OCSPResult | None = None
    crl: CRLResult | None = None
    listings: list[dnsbl.Listing] = field(default_factory=list)
    refusals: list[mustrefuse.RefusalResult] = field(default_factory=list)
    # Must-refuse checks (and mail_from_before_tls) asked but not judged, with why: ``no_answer`` (the
    # address did not answer a session of this run: nothing more is asked of it) or ``no_result`` (the
    # session failed before the answer that decides). Neither a pass nor a failure.
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class DomainReport:
    domain: str
    resolution: MXResolution | None = None
    addresses: list[MXAddressResult] = field(default_factory=list)
    sts_record: mtasts.STSRecord | None = None
    sts_policy: mtasts.PolicyFetch | None = None
    tlsrpt: mtasts.TLSRPTRecord | None = None
    seconds: float = 0.0

    @property
    def uncovered_mx(self) -> list[str]:
        """MX hosts the MTA-STS policy does not name (enforce with one of these is the worst case)."""
        policy = self.sts_policy.policy if self.sts_policy else None
        if policy is None or not policy.valid or self.resolution is None:
            return []
        return [h.name for h in self.resolution.hosts if not mtasts.mx_covered(h.name, policy.mx)]

    @property
    def problems(self) -> list[str]:
        """Fixed-word findings, one per (check, where): empty means the domain passes."""
        out: list[str] = []
        res = self.resolution
        if res is None:
            return ["mx_lookup"]
        if res.null_mx:
            return []
        dnssec = resolution_dnssec(res)  # the MX answer and every host's addresses, as the metric
        if dnssec != "secure":
            out.append(f"mx_dnssec_{dnssec}")
        for r in self.addresses:
            where = f"{r.report.mx}/{r.report.address}"
            tls = r.report.tls
            if tls is None or not tls.handshake_ok:
                out.append(f"{where}: no_tls")
                continue
            if not tls.verified:
                out.append(f"{where}: cert_{tls.verify_reason}")
            if tls.handshake_refused is not None:  # a sender with today's defaults is refused
                out.append(f"{where}: tls_params")
            if tls.ocsp_staple_status == "revoked":
                out.append(f"{where}: ocsp_staple_revoked")
            if any(tls.legacy.values()):
                out.append(f"{where}: legacy_tls")
            if r.dane is not None and r.dane.present and not r.dane.valid:
                out.append(f"{where}: dane_invalid")
            if r.leaf is not None and (r.leaf.weak_key or r.leaf.weak_signature):
                out.append(f"{where}: weak_certificate")
            if r.ocsp is not None and r.ocsp.status in ("revoked", "invalid", "unreachable"):
                out.append(f"{where}: ocsp_{r.ocsp.status}")
            if r.crl is not None and r.crl.status in ("revoked", "invalid", "unreachable"):
                out.append(f"{where}: crl_{r.crl.status}")
            out += [f"{where}: dnsbl_{li.zone}" for li in r.listings if li.status == "listed"]
            out += [f"{where}: accepts_{f.check}" for f in r.refusals if not f.success]
        if self.sts_policy is not None and self.sts_policy.error is not None:
            out.append(f"mta_sts_{self.sts_policy.error}")
        uncovered = self.uncovered_mx
        if uncovered:
            out.append("mta_sts_mx_uncovered")
        return out


async def probe_domain(
    settings: DomainSettings,
    recorder: Recorder,
    cache: OCSPCache | None = None,
    crl_cache: CRLCache | None = None,
) -> DomainReport:
    """Check one domain; raises ProbeError(``dns_lookup``) only when its MX cannot be looked up at all."""
    began = time.monotonic()
    report = DomainReport(domain=settings.domain.rstrip(".").lower())
    try:
        report.resolution = await resolve_mx(
            report.domain, settings.dns, max_hosts=settings.max_hosts, max_addresses=settings.max_addresses
        )
    except DNSError as exc:
        raise ProbeError(f"MX lookup of {report.domain} failed: {exc.rcode}", reason="dns_lookup") from exc
    res = report.resolution
    # One cache per run at least: addresses presenting one certificate ask its responder once.
    cache = cache if cache is not None else OCSPCache()
    crl_cache = crl_cache if crl_cache is not None else CRLCache()
    extra: list[asyncio.Task[object]] = []
    async with asyncio.TaskGroup() as tg:
        if settings.check_mta_sts:
            extra.append(tg.create_task(_mta_sts(report, settings)))
        reports = await check_all(res, settings.mx, recorder, concurrency=settings.concurrency)
    queued = [r for r in reports if r.reason == "queue_timeout"]
    if queued:  # our own session limit, not the domain's fault: the whole check says so
        raise ProbeError(
            f"no session slot for {queued[0].mx}/{queued[0].address}: {queued[0].error}",
            reason="queue_timeout",
        )
    report.addresses = [MXAddressResult(r) for r in reports]
    await asyncio.gather(*(_per_address(a, settings, recorder, cache, crl_cache) for a in report.addresses))
    report.seconds = time.monotonic() - began
    recorder.facts.domain_dnssec = resolution_dnssec(res)
    return report


async def _mta_sts(report: DomainReport, settings: DomainSettings) -> None:
    try:
        report.sts_record = await mtasts.fetch_sts_record(report.domain, settings.dns)
    except DNSError:
        report.sts_record = mtasts.STSRecord(False, error="lookup failed")
    try:
        report.tlsrpt = await mtasts.fetch_tlsrpt_record(report.domain, settings.dns)
    except DNSError:
        report.tlsrpt = mtasts.TLSRPTRecord(False, error="lookup failed")
    if report.sts_record.valid:
        ctx = ssl.create_default_context(cafile=settings.mta_sts_ca_file)
        report.sts_policy = await mtasts.fetch_policy(
            report.domain,
            settings.dns,
            ssl_context=ctx,
            timeout=settings.timeout,
            port=settings.mta_sts_port,
            source=source_addresses(settings.mx.source_address),
        )


async def _per_address(
    result: MXAddressResult,
    settings: DomainSettings,
    recorder: Recorder,
    cache: OCSPCache | None,
    crl_cache: CRLCache | None = None,
) -> None:
    rep = result.report
    chain = rep.chain
    sources = source_addresses(settings.mx.source_address)
    if settings.check_dane and chain:
        try:
            records, status = await dane.fetch_tlsa(rep.mx, settings.dns, port=settings.mx.port)
            result.dane = dane.evaluate(records, chain, status)
        except DNSError:
            result.dane = dane.DANEResult(False, "error", 0, False, (), False)
    if chain:
        try:
            result.leaf = key_facts(chain[0])
        except ValueError:
            result.leaf = None
        if settings.check_ocsp and result.leaf is not None and result.leaf.ocsp_url is not None:
            issuer = chain[1] if len(chain) > 1 else None
            result.ocsp = await ocsp_status(
                chain[0], issuer, timeout=settings.timeout, cache=cache, dns=settings.dns, source=sources
            )
        if settings.check_crl and result.leaf is not None and result.leaf.crl_url is not None:
            issuer = chain[1] if len(chain) > 1 else None
            result.crl = await crl_status(
                chain[0], issuer, timeout=settings.timeout, cache=crl_cache, dns=settings.dns, source=sources
            )
    for zone in settings.dnsbl_zones:
        listing = await dnsbl.lookup(rep.address, zone, settings.dns)
        if listing.reason:
            recorder.debug("dnsbl:", f"{rep.address} listed in {zone}: {listing.reason}")  # logs only
        result.listings.append(listing)
    if settings.mx.check_plain_mail_from and rep.plain_mail_from_code is None:
        result.skipped[PLAIN_MAIL_FROM] = "no_answer" if rep.no_answer else "no_result"
    if settings.must_refuse:
        result.refusals = await _refusals(rep, settings, recorder, result.skipped)


PLAIN_MAIL_FROM = "mail_from_before_tls"  # the check name of MAIL FROM on the plain session
SKIP_REASONS = ("no_answer", "no_result")


async def _refusals(
    rep: AddressReport, settings: DomainSettings, recorder: Recorder, skipped: dict[str, str]
) -> list[mustrefuse.RefusalResult]:
    mxs = settings.mx
    ep = Endpoint(
        rep.address,
        mxs.port,
        tls_mode="starttls" if rep.tls is not None and rep.tls.starttls_offered else "none",
        tls=TLSSettings(ca_file=mxs.ca_file, server_name=rep.mx),
        source_address=source_toward(rep.address, mxs.source_address),
    )
    out: list[mustrefuse.RefusalResult] = []
    local = settings.local_recipient or f"postmaster@{settings.domain}"
    # Factories, not coroutines: one that raised must not leave the others never awaited.
    calls: list[Callable[[], Awaitable[mustrefuse.RefusalResult]]] = [
        functools.partial(
            mustrefuse.open_relay,
            ep,
            recorder,
            sender=settings.relay_sender,
            foreign_recipient=settings.foreign_recipient,
            timeout=mxs.timeout,
            helo=mxs.helo_name,
        ),
        functools.partial(mustrefuse.auth_before_tls, ep, recorder, timeout=mxs.timeout, helo=mxs.helo_name),
        functools.partial(
            mustrefuse.own_domain_sender,
            ep,
            recorder,
            sender=f"mailcanary-spoof-test@{settings.domain}",
            recipient=local,
            timeout=mxs.timeout,
            helo=mxs.helo_name,
        ),
    ]
    names = ("open_relay", "auth_before_tls", "own_domain_sender")
    dead = rep.no_answer  # a session of this run got no answer at all: ask nothing more of the address
    for name, call in zip(names, calls, strict=True):
        if dead:
            skipped[name] = "no_answer"
            continue
        try:
            async with maybe_session(mxs.slots, ep, "smtp", recorder):
                out.append(await call())
        except ProbeError as exc:  # no answer to judge (a queue timeout included): skipped, never a failure
            dead = never_answered(exc)
            skipped[name] = "no_answer" if dead else "no_result"
            recorder.debug("refuse:", f"{rep.address}: {exc.reason}: {exc.message}")
    if dead and not rep.no_answer:
        recorder.debug("refuse:", f"{rep.address}: no answer; no more sessions to it this run")
    return out


# ---- the report (pure) ---------------------------------------------------------------------------


def _yn(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[value]


def _dnssec_text(res: MXResolution) -> str:
    """The status ``mx_dnssec_valid`` and the findings use (MX answer and hosts' addresses together), and
    which part is weaker when they differ."""
    overall = resolution_dnssec(res)
    weaker = [f"{h.name} addresses {h.dnssec}" for h in res.hosts if h.dnssec != "secure"]
    if res.dnssec != "secure":
        weaker.insert(0, f"MX answer {res.dnssec}")
    return overall if overall == "secure" else f"{overall} ({'; '.join(weaker)})"


_SKIP_TEXT = {"no_answer": "the address did not answer", "no_result": "the session failed before an answer"}


def _skipped_lines(a: MXAddressResult) -> list[str]:
    return [
        f"    must refuse {check}: skipped ({_SKIP_TEXT.get(why, why)})" for check, why in a.skipped.items()
    ]


def render_report(report: DomainReport, now: float | None = None) -> str:
    """Text for humans: domain-wide lines, then one block per MX address, then the verdict."""
    now = time.time() if now is None else now
    lines = [f"domain {report.domain}"]
    res = report.resolution
    if res is None:
        return "\n".join([*lines, "  MX lookup failed", "verdict: FAIL (mx_lookup)"])
    if res.null_mx:
        return "\n".join([*lines, "  null MX (accepts no mail)", "verdict: OK"])
    kind = "implicit (A/AAAA)" if res.implicit else "MX"
    lines.append(f"  {kind}: {', '.join(h.name for h in res.hosts) or '-'}  dnssec {_dnssec_text(res)}")
    if res.dropped_hosts or res.dropped_addresses:
        lines.append(f"  not checked (limits): {res.dropped_hosts} hosts, {res.dropped_addresses} addresses")
    if report.sts_record is not None:
        rec = report.sts_record
        lines.append(f"  MTA-STS record: {'valid id=' + (rec.id or '') if rec.valid else rec.error}")
    if report.sts_policy is not None:
        fetch = report.sts_policy
        policy = fetch.policy
        if fetch.error is None and policy is not None:
            uncovered = report.uncovered_mx
            lines.append(
                f"  MTA-STS policy: mode {policy.mode}, max_age {policy.max_age}, "
                f"MX uncovered: {', '.join(uncovered) if uncovered else 'none'}"
            )
        else:
            lines.append(f"  MTA-STS policy: {fetch.error}")
    if report.tlsrpt is not None:
        rpt = report.tlsrpt
        lines.append(f"  TLS-RPT: {'valid ' + ','.join(rpt.rua) if rpt.valid else rpt.error}")
    for a in report.addresses:
        r = a.report
        lines.append(f"  MX {r.mx} [{r.address}]")
        tls = r.tls
        if tls is None:
            lines.append(f"    unreachable: {r.error}")
            lines += _skipped_lines(a)
            continue
        legacy = ", ".join(f"{k} {_yn(v)}" for k, v in tls.legacy.items())
        lines.append(
            f"    STARTTLS {_yn(tls.starttls_offered)}  handshake {_yn(tls.handshake_ok)}  "
            f"{tls.version or '-'}  legacy: {legacy}"
        )
        verdict = "yes" if tls.verified else f"no ({tls.verify_reason})"
        lines.append(f"    certificate verified {verdict}  name matches {_yn(tls.hostname_match)}")
        if tls.handshake_refused is not None:
            lines.append(f"    refused by a client with today's defaults: {tls.handshake_refused}")
        lines += tls_summary.summary(tls, now)  # the TLS scan, testssl-like ("not checked" when off)
        found = tls_summary.findings(tls)
        if found:
            lines.append(f"    TLS scan findings: {'; '.join(found)}")
        if a.leaf is not None:
            lf = a.leaf
            lines.append(
                f"    key {lf.key_type} {lf.key_bits}  signature {lf.signature_hash or '-'}  "
                f"validity {lf.validity_days:.0f} days  SCTs {lf.sct_count}"
            )
        if a.ocsp is not None:
            lines.append(f"    OCSP {a.ocsp.status}")
        if a.crl is not None:
            lines.append(f"    CRL {a.crl.status}")
        if a.dane is not None:
            d = a.dane
            lines.append(
                f"    DANE present {_yn(d.present)}  dnssec {d.dnssec}  matches {_yn(d.matched)}  "
                f"rollover ready {_yn(d.rollover_ready)}"
            )
        if r.plain_mail_from_code is not None:
            lines.append(f"    MAIL FROM before STARTTLS answered {r.plain_mail_from_code}")
        for li in a.listings:
            codes = f" {','.join(li.codes)}" if li.codes else ""
            lines.append(f"    DNSBL {li.zone}: {li.status}{codes}")
        for f in a.refusals:
            lines.append(
                f"    must refuse {f.check}: {'refused' if f.refused else 'ACCEPTED'} "
                f"({f.code or '-'} at {f.stage})"
            )
        lines += _skipped_lines(a)
        phases = "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(r.phases.items()))
        lines.append(f"    timings: {phases}")
    problems = report.problems
    lines.append("verdict: OK" if not problems else f"verdict: FAIL ({'; '.join(problems)})")
    return "\n".join(lines)


def problems_of(reports: Sequence[DomainReport]) -> dict[str, list[str]]:
    return {r.domain: r.problems for r in reports}
