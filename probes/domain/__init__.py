"""The domain check: MX resolution and per-MX STARTTLS (mx), DANE/TLSA (dane), MTA-STS (mtasts), DNS
blocklists (dnsbl), must-refuse relay/auth checks (mustrefuse), all run by :func:`probe_domain` (probe).
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.domain.dnsbl import STATUSES, Listing, ListingCache
    from probes.domain.mtasts import mx_covered
    from probes.domain.mx import (
        AddressReport,
        MXCheckSettings,
        MXHost,
        MXResolution,
        check_address,
        check_all,
        resolution_dnssec,
        resolve_mx,
    )
    from probes.domain.probe import DomainReport, DomainSettings, MXAddressResult, probe_domain, render_report

__all__ = [
    "STATUSES",
    "AddressReport",
    "DomainReport",
    "DomainSettings",
    "Listing",
    "ListingCache",
    "MXAddressResult",
    "MXCheckSettings",
    "MXHost",
    "MXResolution",
    "check_address",
    "check_all",
    "mx_covered",
    "probe_domain",
    "render_report",
    "resolution_dnssec",
    "resolve_mx",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "dnsbl": "STATUSES Listing ListingCache",
            "mtasts": "mx_covered",
            "mx": (
                "AddressReport MXCheckSettings MXHost MXResolution check_address check_all"
                " resolution_dnssec resolve_mx"
            ),
            "probe": "DomainReport DomainSettings MXAddressResult probe_domain render_report",
        },
    )
