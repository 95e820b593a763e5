"""The domain check: one mail domain from the outside (section ``domain_checks``): every MX and
address, DANE, MTA-STS, TLS-RPT, DNSBL, certificate hygiene and what a server must refuse. Its facts are
series of their own (``mailcanary_domain_*``), from the report kept in ``RunResult.detail``."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, TypeGuard

from exporter.config import Config, DomainCheckConfig, LoadedConfig
from exporter.metrics.domain import domain_families
from exporter.registry import Kind, Verdict
from exporter.run.results import DOMAIN_OUTCOMES

if TYPE_CHECKING:  # the domain check's modules (dnspython, MTA-STS, DANE) load with its first entry
    from probes.context import ProbeContext
    from probes.domain.probe import DomainReport, DomainSettings
    from probes.tls.scanning import ScanCache
    from probes.wire.slots import ServerSlots


def domain_settings(
    check: DomainCheckConfig, slots: ServerSlots | None = None, scans: ScanCache | None = None
) -> DomainSettings:
    """A domain_checks entry as the probe library's settings."""
    from probes.domain.mx import MXCheckSettings
    from probes.domain.probe import DomainSettings
    from probes.wire.dns import DNSSettings

    refuse = check.must_refuse
    return DomainSettings(
        domain=check.domain,
        dns=DNSSettings(nameservers=tuple(check.resolvers), port=check.resolver_port, timeout=check.timeout),
        mx=MXCheckSettings(
            port=check.port,
            timeout=check.timeout,
            check_legacy=check.check_legacy,
            ca_file=check.ca_file,
            helo_name=check.helo,
            source_address=check.source_addresses,
            check_plain_mail_from=refuse.enabled and refuse.mail_from_before_tls,
            slots=slots,
            scan=check.scan,
            scan_cache=scans,
            scan_recheck=check.scan_recheck,
        ),
        max_hosts=check.max_mx,
        max_addresses=check.max_addresses,
        concurrency=check.concurrency,
        dnsbl_zones=tuple(check.dnsbl_zones),
        check_dane=check.check_dane,
        check_mta_sts=check.check_mta_sts,
        mta_sts_port=check.mta_sts_port,
        mta_sts_ca_file=check.mta_sts_ca_file,
        check_ocsp=check.check_ocsp,
        check_crl=check.check_crl,
        must_refuse=refuse.enabled,
        relay_sender=refuse.relay_sender,
        foreign_recipient=refuse.foreign_recipient,
        local_recipient=refuse.local_recipient,
        timeout=check.timeout,
    )


def domain_outcome(report: DomainReport) -> tuple[str, str]:
    """``success`` for a domain without findings, else ``domain_findings`` naming the first few."""
    problems = report.problems
    if not problems:
        return "success", "ok"
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "domain_findings", f"{len(problems)} findings: {'; '.join(problems[:5])}{more}"


async def probe(settings: DomainSettings, ctx: ProbeContext) -> DomainReport:
    """The one probe signature: the library's domain check with the OCSP and CRL caches from ``ctx``."""
    from probes.domain.probe import probe_domain

    return await probe_domain(settings, ctx.recorder, ctx.ocsp, ctx.crl)


def judge(report: DomainReport | None, reason: str, message: str) -> Verdict:
    if report is None:
        return Verdict(reason, message)
    reason, message = domain_outcome(report)
    return Verdict(reason, message, detail=report)


def load(loaded: LoadedConfig, check: DomainCheckConfig, where: str, environ: dict[str, str]) -> list[str]:
    """Where the check connects from, per address family (said by check-config): a source address binds
    only to its own family, the other family uses the system's default source."""
    sources = check.source_addresses
    if sources:
        by_family = {ipaddress.ip_address(a).version: a for a in sources}
        said = [
            f"IPv{v} from {by_family[v]}" if v in by_family else f"IPv{v} from the default source"
            for v in (4, 6)
        ]
        loaded.notes.append(
            f"{loaded.path}: {where}.source_address: MX addresses (and the MTA-STS, OCSP and CRL "
            f"servers) are connected {', '.join(said)}"
        )
    return []


def _is_report(detail: object) -> TypeGuard[DomainReport]:
    """A domain check's report (no result holds one before the domain check's module is loaded)."""
    from probes.domain.probe import DomainReport

    return isinstance(detail, DomainReport)


def _report_detail(detail: object) -> list[str]:
    from probes.domain.probe import render_report

    return [f"  {line}" for line in render_report(detail).splitlines()] if _is_report(detail) else []


def _deadline(check: DomainCheckConfig, cfg: Config) -> float:
    return check.timeout * check.steps


KIND = Kind(
    name="domain",
    section="domain_checks",
    model=DomainCheckConfig,
    settings=lambda check, env: domain_settings(check, env.slots, env.scans),
    probe=probe,
    deadline=_deadline,
    outcomes=DOMAIN_OUTCOMES,
    families=domain_families,
    noun="domain check",
    plural="domain checks",
    judge=judge,
    load=load,
    done="domains without findings",
    claims=lambda run: _is_report(run.detail),
    report_detail=lambda run: _report_detail(run.detail),
    # its MX facts are series of its own (mailcanary_domain_*): no TLS endpoints, no chain hygiene
)
