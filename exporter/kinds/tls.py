"""The TLS check: an audit of one endpoint that needs no mailbox (section ``tls_checks``): handshake,
verification, legacy versions, STARTTLS and AUTH before TLS, and the chain's hygiene. ``/probe`` runs the
same audit against a target its caller names (``TARGET``)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from prometheus_client.core import Metric

from exporter.config import Config, ModuleConfig, TLSCheckConfig, default_port
from exporter.metrics.tls import blackbox_families, tls_check_families, tls_families
from exporter.registry import Kind, Verdict
from exporter.run.results import TLS_OUTCOMES
from exporter.run.settings import tls_settings
from probes.context import ProbeContext
from probes.recorder import Recorder
from probes.tls.audit import TLSCheckSettings, TLSFacts, probe_tls
from probes.tls.legacy import LegacyCache
from probes.tls.scanning import SCAN_STEPS, ScanCache
from probes.wire.net import Endpoint
from probes.wire.slots import ServerSlots

STEPS = 7  # connect, dialogue, verified + permissive verified + unverified handshakes, two legacy ones
# With the scan on, the run gets SCAN_STEPS more step timeouts: the scan's own bound (probes.tls.scanning).


def tls_check_settings(
    check: TLSCheckConfig | ModuleConfig,
    host: str,
    port: int | None,
    slots: ServerSlots | None = None,
    legacy: LegacyCache | None = None,
    scans: ScanCache | None = None,
    scope: tuple[str, ...] = (),
) -> TLSCheckSettings:
    if port is None:
        port = default_port(check.protocol, check.tls)
    endpoint = Endpoint(
        host=host,
        port=port,
        tls_mode=check.tls,
        tls=tls_settings(check.tls_config),
        source_address=getattr(check, "source_address", None),
    )
    return TLSCheckSettings(
        endpoint=endpoint,
        protocol=check.protocol,
        timeout=check.timeout,
        check_legacy=check.check_legacy,
        helo_name=check.helo,
        slots=slots,
        legacy_cache=legacy,
        legacy_recheck=check.legacy_recheck,
        scan=check.scan,
        scan_cache=scans,
        scan_recheck=check.scan_recheck,
        cache_scope=scope,
    )


def module_scope(module: ModuleConfig) -> tuple[str, ...]:
    """The cache scope of a /probe module: a digest of all its settings, so a target's remembered legacy
    answers and scan are reused only by a module that would make the same handshakes (another
    ``tls_config``, ``helo``, ``timeout``, … is another key), and never by the daemon's own checks."""
    digest = hashlib.sha256(module.model_dump_json().encode()).hexdigest()[:16]
    return ("probe", digest)


def tls_outcome(facts: TLSFacts | None) -> str:
    """``success`` only for a verified chain whose name matches, not revoked, reached with today's
    defaults. Otherwise, the certificate first: ``tls_revoked`` (a stapled OCSP response says revoked;
    the responder's and the CRL's answers are judged by the runner, exporter.run.runner), ``tls_verify``
    (the certificate does not verify), then ``tls_params`` (it verifies, but only on a permissive
    handshake: a client with today's defaults is refused). The facts are exported in every case."""
    if facts is None or not facts.handshake_ok:
        return "tls_handshake"
    if facts.ocsp_staple_status == "revoked":
        return "tls_revoked"
    if not facts.verified:
        return "tls_verify"
    if facts.handshake_refused is not None:
        return "tls_params"
    return "success"


def outcome_message(facts: TLSFacts, reason: str) -> str:
    """The one line of a failed check, said in the words of its reason."""
    if reason == "tls_revoked":
        return f"certificate of {facts.endpoint} is revoked (stapled OCSP response)"
    if reason == "tls_params":
        return (
            f"{facts.endpoint}: the certificate verifies, but a client with today's defaults is refused: "
            f"{facts.handshake_refused}"
        )
    return facts.error or f"certificate not verified: {facts.verify_reason}"


async def probe(settings: TLSCheckSettings, ctx: ProbeContext) -> TLSFacts:
    """The one probe signature over the library's audit; legacy answers and scans are remembered in
    ``ctx.legacy`` / ``ctx.scans`` when the settings bring no cache of their own (``/probe``)."""
    if settings.scan and settings.scan_cache is None and ctx.scans is not None:
        settings = dataclasses.replace(settings, scan_cache=ctx.scans)
    if settings.check_legacy and settings.legacy_cache is None and ctx.legacy is not None:
        settings = dataclasses.replace(settings, legacy_cache=ctx.legacy)
    return await probe_tls(settings, ctx.recorder)


def judge(facts: TLSFacts | None, reason: str, message: str) -> Verdict:
    if facts is None:
        return Verdict(reason, message)
    reason = tls_outcome(facts)
    if reason != "success":
        message = outcome_message(facts, reason)
    return Verdict(reason, message)


@dataclass(frozen=True)
class Target:
    """How ``/probe?module=…&target=…`` runs this kind against a target its caller names: the
    blackbox_exporter names (probe_success, probe_ssl_*) and the mailcanary_tls_* facts."""

    steps: int = STEPS

    def settings(
        self, module: ModuleConfig, host: str, port: int | None, slots: ServerSlots | None
    ) -> TLSCheckSettings:
        return tls_check_settings(module, host, port, slots, scope=module_scope(module))

    def recover(self, rec: Recorder, settings: TLSCheckSettings) -> TLSFacts | None:
        return rec.tls.get(settings.endpoint.address)

    def outcome(self, facts: TLSFacts | None) -> str:
        return tls_outcome(facts)

    def error(self, facts: TLSFacts | None) -> str | None:
        return facts.error if facts is not None else None

    def metrics(self, facts: TLSFacts | None, success: bool, duration: float) -> list[Metric]:
        metrics = list(blackbox_families(facts, success, duration))
        if facts is not None:
            metrics.extend(tls_families([([], facts)], []))
        return metrics


TARGET = Target()


def _sessions(check: TLSCheckConfig) -> list[tuple[Endpoint, str, int | None]]:
    return [(tls_check_settings(check, check.host, check.port).endpoint, check.protocol, check.max_sessions)]


def _deadline(check: TLSCheckConfig, cfg: Config) -> float:
    return check.timeout * (STEPS + (SCAN_STEPS if check.scan else 0))


KIND = Kind(
    name="tls",
    section="tls_checks",
    model=TLSCheckConfig,
    settings=lambda check, env: tls_check_settings(
        check, check.host, check.port, env.slots, env.legacy, env.scans
    ),
    probe=probe,
    deadline=_deadline,
    outcomes=TLS_OUTCOMES,
    families=tls_check_families,
    noun="TLS check",
    plural="TLS checks",
    judge=judge,
    endpoints=lambda c: {tls_check_settings(c, c.host, c.port).endpoint.address},
    hygiene=True,
    sessions=_sessions,
    count_zero=True,
    done="TLS checks verified",
    # a result without config: a TLS check has no delivery, placement or detail of its own
    claims=lambda run: run.delivery is None and run.placement is None and run.detail is None,
    target=TARGET,
)
