"""DNS blocklists: is an address listed? Pure answer classification (fuzzed) beside the lookup.

A listing is an A record in 127.0.0.0/8. 127.255.255.x is no listing but the list refusing us (Spamhaus:
.252 typo, .254 public/open resolver, .255 rate-limited): told apart, because reporting those as "listed"
would be a false alarm and as "not listed" a false OK. 127.0.0.1 and anything outside 127/8 (an ISP
resolver rewriting NXDOMAIN) is an error. Multi-code answers are aggregated in a sorted, stable way so the
same answer in another order never flaps. The TXT reason goes to logs only (free text: never a label).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from probes.wire.dns import DNSSettings

Status = Literal["not_listed", "listed", "refused", "error"]
STATUSES: Final[tuple[str, ...]] = ("not_listed", "listed", "refused", "error")
_LOOPBACK_NET: Final = ipaddress.ip_network("127.0.0.0/8")
_REFUSED_NET: Final = ipaddress.ip_network("127.255.255.0/24")
MAX_REASON: Final = 512


@dataclass(frozen=True)
class Listing:
    zone: str
    address: str
    status: Status
    codes: tuple[str, ...] = ()  # the listing codes, sorted (e.g. ("127.0.0.2", "127.0.0.4"))
    reason: str | None = None  # TXT, for logs only, at most MAX_REASON characters


def reverse_name(address: str, zone: str) -> str:
    """``1.2.0.192.zone.`` for IPv4, nibble-reversed for IPv6 (RFC 5782 §2.1, §2.4)."""
    ip = ipaddress.ip_address(address)
    labels = ip.reverse_pointer.split(".")
    # reverse_pointer ends in in-addr.arpa / ip6.arpa: drop those two labels.
    return ".".join([*labels[:-2], zone.rstrip(".")]) + "."


def classify(answers: Iterable[str]) -> tuple[Status, tuple[str, ...]]:
    """The status of a NOERROR answer's A records (an empty answer or NXDOMAIN is "not_listed").

    listed wins over refused (a real listing code is a fact even beside a refusal code), any address
    outside 127/8 or 127.0.0.1 makes it an error unless a listing is there too. Codes are sorted.
    """
    listed: set[ipaddress.IPv4Address] = set()
    refused = False
    error = False
    for text in answers:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            error = True
            continue
        if not isinstance(ip, ipaddress.IPv4Address) or ip not in _LOOPBACK_NET:
            error = True
        elif ip in _REFUSED_NET:
            refused = True
        elif ip == ipaddress.IPv4Address("127.0.0.1"):
            error = True
        else:
            listed.add(ip)
    codes = tuple(str(ip) for ip in sorted(listed))
    if listed:
        return "listed", codes
    if error:
        return "error", ()
    if refused:
        return "refused", ()
    return "not_listed", ()


async def lookup(address: str, zone: str, settings: DNSSettings, *, want_reason: bool = True) -> Listing:
    """One address against one zone; DNS failures are ``error``, never an exception."""
    from probes.wire.dns import DNSError, query  # dnspython, loaded with the first DNSBL lookup

    name = reverse_name(address, zone)
    try:
        answer = await query(name, "A", settings)
    except DNSError:
        return Listing(zone, address, "error")
    if answer.rcode == "NXDOMAIN" or not answer.records:
        return Listing(zone, address, "not_listed")
    status, codes = classify(r.to_text() for r in answer.records)
    reason: str | None = None
    if status == "listed" and want_reason:
        try:
            txt = await query(name, "TXT", settings)
            reason = (
                " | ".join(
                    sorted(b"".join(r.strings).decode("utf-8", "replace") for r in txt.records)  # type: ignore[attr-defined]
                )[:MAX_REASON]
                or None
            )
        except DNSError:
            reason = None
    return Listing(zone, address, status, codes, reason)


@dataclass
class ListingCache:
    """Answers per (address, zone), reused for ``ttl`` seconds so that many probes sending from one IP
    ask each zone once per period, not once per run. Bounded: the oldest entry goes when full."""

    max_entries: int = 4096
    _entries: dict[tuple[str, str], tuple[float, Listing]] = field(default_factory=dict)

    async def lookup(self, address: str, zone: str, settings: DNSSettings, ttl: float) -> Listing:
        now = time.monotonic()
        key = (address, zone)
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        listing = await lookup(address, zone, settings)
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (now + ttl, listing)
        return listing

    def __len__(self) -> int:
        return len(self._entries)
