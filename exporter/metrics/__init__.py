"""Metric families rendered from stored outcomes: shared run families (run), per kind (roundtrip, tls,
domain). The collector, the pre-rendered cache and the registries (:mod:`exporter.metrics.collector`)
sit above the kinds table that names these families, so they are imported by their module path and not
re-exported here (that would make a circle: kinds -> metrics -> collector -> kinds).
"""

from exporter.metrics.domain import domain_fact_families, domain_families, hygiene_families
from exporter.metrics.roundtrip import roundtrip_families
from exporter.metrics.tls import blackbox_families, tls_check_families, tls_families

__all__ = [
    "blackbox_families",
    "domain_fact_families",
    "domain_families",
    "hygiene_families",
    "roundtrip_families",
    "tls_check_families",
    "tls_families",
]
