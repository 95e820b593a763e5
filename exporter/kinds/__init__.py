"""The built-in probe kinds, one module each: ``roundtrip`` (canary round trips), ``tls`` (TLS checks)
and ``domain`` (domain checks). Each declares itself once as a :class:`exporter.registry.Kind`
(``KIND``); they are registered here, in this order (the order of config sections and /metrics
families). A new kind is a new module and one line here, or, from outside the project, one call to
:func:`exporter.registry.register` (see docs/architecture.md, "Adding a probe kind")."""

from exporter.kinds import domain, heartbeats, roundtrip, tls
from exporter.registry import register

BUILTIN = (roundtrip.KIND, tls.KIND, domain.KIND, heartbeats.KIND)
for _kind in BUILTIN:
    register(_kind)

__all__ = ["BUILTIN", "domain", "heartbeats", "roundtrip", "tls"]
