"""The domain check: MX resolution and per-MX STARTTLS (mx), DANE/TLSA (dane), MTA-STS (mtasts), DNS
blocklists (dnsbl), must-refuse relay/auth checks (mustrefuse), all run by :func:`probe_domain` (probe).
"""

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
