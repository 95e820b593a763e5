"""The Grafana dashboards of dashboards/, one module each, built with grafana-foundation-sdk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import domains, overview, probe, reports, tls

DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "mailcanary-overview.json": overview.build,
    "mailcanary-tls.json": tls.build,
    "mailcanary-probe.json": probe.build,
    "mailcanary-domains.json": domains.build,
    "mailcanary-reports.json": reports.build,
}
