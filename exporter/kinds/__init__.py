"""The built-in probe kinds, one module each: ``roundtrip`` (canary round trips), ``tls`` (TLS checks),
``domain`` (domain checks) and ``reports`` (TLS-RPT and DMARC reports). Each declares itself once as a
:class:`exporter.registry.Kind` (``KIND``); they are registered here, in this order (the order of
config sections and /metrics families). A new kind is a new module and one line here, or, from outside
the project, one call to :func:`exporter.registry.register` (docs/architecture.md, "Adding a probe kind")."""

from exporter.kinds import domain, heartbeats, reports, roundtrip, tls
from exporter.registry import register

BUILTIN = (roundtrip.KIND, tls.KIND, domain.KIND, heartbeats.KIND, reports.KIND)
for _kind in BUILTIN:
    register(_kind)

__all__ = ["BUILTIN", "domain", "heartbeats", "reports", "roundtrip", "tls"]
