"""Probe kinds as one plain table (blackbox_exporter's map of probers): kind -> config section and model,
how the runner runs an entry (settings builder, ``probe_*`` function, deadline, outcome), which TLS
endpoints it reports on, and its result exporter (the per-kind metric families).

The daemon, the scheduler, the one-shot ``mailcanary probe`` and the metrics loop over :data:`KINDS`; a
new kind is a file in ``probes/``, its families, and one entry here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from exporter.config import Config, DomainCheckConfig, RoundTripConfig, TLSCheckConfig
from exporter.metrics.domain import domain_families
from exporter.metrics.roundtrip import roundtrip_families
from exporter.metrics.tls import tls_check_families
from exporter.run.results import ProbeStats, RunResult
from exporter.run.runner import Runner, endpoint_of, tls_check_settings

Entry = RoundTripConfig | TLSCheckConfig | DomainCheckConfig
Families = Callable[[dict[str, ProbeStats], list[str]], list[Metric]]


@dataclass(frozen=True)
class Kind:
    name: str  # the `kind` label of mailcanary_config_probes and the status page
    section: str  # the config key that lists its entries
    model: type[Entry]
    run: Callable[[Runner, Any, bool], Awaitable[RunResult]]  # (runner, entry, debug)
    endpoints: Callable[[Any], set[str]]  # TLS endpoints whose facts the entry reports
    spec: Callable[[Config, Any], object]  # what a reload compares: a changed spec reschedules the job

    @property
    def families(self) -> Families:
        """The result exporter: this kind's metric families for (snapshot, probe names)."""
        return _families(self.name)

    def entries(self, cfg: Config) -> Sequence[Entry]:
        entries: Sequence[Entry] = getattr(cfg, self.section)
        return entries


def _roundtrip_endpoints(p: RoundTripConfig) -> set[str]:
    return {endpoint_of(p.smtp, "smtp").address, endpoint_of(p.receive, p.receive.protocol).address}


_FAMILIES: dict[str, Families] = {
    "roundtrip": roundtrip_families,
    "tls": tls_check_families,
    "domain": domain_families,
}


def _families(kind: str) -> Families:
    """The result exporter of ``kind``."""
    return _FAMILIES[kind]


KINDS: tuple[Kind, ...] = (
    Kind(
        "roundtrip",
        "roundtrip",
        RoundTripConfig,
        lambda runner, entry, debug: runner.run_roundtrip(entry, debug=debug),
        _roundtrip_endpoints,
        lambda cfg, p: (p, cfg.timeout_of(p)),
    ),
    Kind(
        "tls",
        "tls_checks",
        TLSCheckConfig,
        lambda runner, entry, debug: runner.run_tls_check(entry, debug=debug),
        lambda c: {tls_check_settings(c, c.host, c.port).endpoint.address},
        lambda cfg, c: c,
    ),
    Kind(
        "domain",
        "domain_checks",
        DomainCheckConfig,
        lambda runner, entry, debug: runner.run_domain_check(entry, debug=debug),
        lambda d: set(),  # its MX facts are series of its own (mailcanary_domain_*)
        lambda cfg, d: d,
    ),
)
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}


def configured(cfg: Config) -> list[tuple[Kind, Entry]]:
    """Every entry of every kind, in table order (names are unique across kinds: exporter.config.model)."""
    return [(kind, entry) for kind in KINDS for entry in kind.entries(cfg)]


def find(cfg: Config, name: str) -> tuple[Kind, Entry] | None:
    for kind, entry in configured(cfg):
        if entry.name == name:
            return kind, entry
    return None
