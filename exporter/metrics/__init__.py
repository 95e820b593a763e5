"""Metric families rendered from stored outcomes: declared as data (``family``: FamilySpec, render),
shared run families (run), per kind (roundtrip, tls, domain; each kind's module in ``exporter/kinds/``
names its own). The collector, the pre-rendered cache and the registries
(:mod:`exporter.metrics.collector`) read the registry of kinds and are imported by their module path:
the kind modules import these families, and need not load the collector with them.
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from exporter.metrics.domain import domain_fact_families, domain_families, hygiene_families
    from exporter.metrics.family import FamilySpec, HistogramSpec, render
    from exporter.metrics.roundtrip import roundtrip_families
    from exporter.metrics.tls import blackbox_families, tls_check_families, tls_families

__all__ = [
    "FamilySpec",
    "HistogramSpec",
    "blackbox_families",
    "domain_fact_families",
    "domain_families",
    "hygiene_families",
    "render",
    "roundtrip_families",
    "tls_check_families",
    "tls_families",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "domain": "domain_fact_families domain_families hygiene_families",
            "family": "FamilySpec HistogramSpec render",
            "roundtrip": "roundtrip_families",
            "tls": "blackbox_families tls_check_families tls_families",
        },
    )
