"""DNS queries for the domain checks: explicit resolvers, bounded time, DNSSEC status from the AD bit.

Why the AD bit of a validating resolver and not validation in-process: it is what Postfix itself relies on
for DANE (``smtp_dns_support_level = dnssec``), so the monitor judges a domain with the same trust the MTA
uses; the resolver keeps the root trust anchor up to date (RFC 5011), which an exporter should not; and
in-process validation would mean walking and caching the DS chain from the root on every check. The
resolver must be trusted and near (loopback or a trusted link, RFC 6698 §4.1): the AD bit is only as good
as the path to it. Bogus is told apart from a plain failure by asking again with CD (checking disabled):
a SERVFAIL that turns into an answer under CD is a validation failure.

Resolvers are always explicit when configured (``configure=False``: /etc/resolv.conf is never read then),
so tests point at loopback and can never leak a query elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

DNSSECStatus = Literal["secure", "insecure", "bogus", "error"]
DNSSEC_STATUSES: Final[tuple[str, ...]] = ("secure", "insecure", "bogus", "error")
_EDNS_PAYLOAD: Final = 1232  # the DNS flag day 2020 size: no IP fragmentation
MAX_RECORDS: Final = 64  # per answer: more is a broken or hostile zone, not a mail domain


@dataclass(frozen=True)
class DNSSettings:
    """Where and how to ask. ``nameservers`` empty: the system's resolv.conf (never in tests)."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 3.0  # per query and server
    attempts: int = 2  # per server, UDP (TCP on truncation)


@dataclass(frozen=True)
class DNSAnswer:
    """One question's outcome: records of the asked type (CNAMEs followed by the resolver), DNSSEC status."""

    name: str
    rdtype: str
    rcode: str  # NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ... or TIMEOUT
    records: tuple[dns.rdata.Rdata, ...] = field(default=())
    dnssec: DNSSECStatus = "insecure"
    truncated_records: bool = False  # more than MAX_RECORDS were served; the rest are dropped

    @property
    def ok(self) -> bool:
        return self.rcode in ("NOERROR", "NXDOMAIN")

    @property
    def exists(self) -> bool:
        return self.rcode == "NOERROR" and bool(self.records)


class DNSError(Exception):
    """No usable answer from any nameserver (timeout, SERVFAIL, REFUSED): ``rcode`` says which."""

    def __init__(self, message: str, rcode: str) -> None:
        super().__init__(message)
        self.rcode = rcode


def nameservers(settings: DNSSettings) -> tuple[str, ...]:
    """The servers to ask: configured ones, else the system's (read here, once per call)."""
    if settings.nameservers:
        return settings.nameservers
    system = dns.resolver.Resolver(configure=True)
    return tuple(str(ns) for ns in system.nameservers)


async def _ask(
    qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, server: str, settings: DNSSettings, *, cd: bool
) -> dns.message.Message:
    query = dns.message.make_query(qname, rdtype, want_dnssec=True, payload=_EDNS_PAYLOAD)
    query.flags |= dns.flags.AD | dns.flags.RD
    if cd:
        query.flags |= dns.flags.CD
    response, _ = await dns.asyncquery.udp_with_fallback(
        query, server, timeout=settings.timeout, port=settings.port
    )
    return response


async def query(name: str, rdtype: str, settings: DNSSettings) -> DNSAnswer:
    """Ask each nameserver in turn; the first NOERROR/NXDOMAIN answer wins.

    SERVFAIL everywhere is asked once more with CD: an answer then means the data is there but does not
    validate (``bogus``); otherwise the last failure is raised as :class:`DNSError`.
    """
    qname = dns.name.from_text(name)
    qtype = dns.rdatatype.from_text(rdtype)
    last = "TIMEOUT"
    servers = nameservers(settings)
    if not servers:
        raise DNSError("no nameserver configured", "TIMEOUT")
    for server in servers:
        for _ in range(max(1, settings.attempts)):
            try:
                response = await _ask(qname, qtype, server, settings, cd=False)
            except (dns.exception.Timeout, TimeoutError):
                last = "TIMEOUT"
                continue
            except (OSError, dns.exception.DNSException) as exc:
                last = f"ERROR {type(exc).__name__}"
                break
            rcode = dns.rcode.to_text(response.rcode())
            if rcode in ("NOERROR", "NXDOMAIN"):
                return _answer(name, rdtype, qname, qtype, response, rcode)
            last = rcode
            break
    if last == "SERVFAIL":
        for server in servers:
            with contextlib.suppress(dns.exception.DNSException, OSError, TimeoutError):
                response = await _ask(qname, qtype, server, settings, cd=True)
                rcode = dns.rcode.to_text(response.rcode())
                if rcode in ("NOERROR", "NXDOMAIN"):
                    answer = _answer(name, rdtype, qname, qtype, response, rcode)
                    return DNSAnswer(
                        answer.name,
                        answer.rdtype,
                        answer.rcode,
                        answer.records,
                        "bogus",
                        answer.truncated_records,
                    )
    raise DNSError(f"{rdtype} {name}: {last}", last)


def _answer(
    name: str,
    rdtype: str,
    qname: dns.name.Name,
    qtype: dns.rdatatype.RdataType,
    response: dns.message.Message,
    rcode: str,
) -> DNSAnswer:
    records: list[dns.rdata.Rdata] = []
    for rrset in response.answer:
        if rrset.rdtype == qtype:
            records.extend(rrset)
    truncated = len(records) > MAX_RECORDS
    secure = bool(response.flags & dns.flags.AD)
    return DNSAnswer(
        name=name,
        rdtype=rdtype,
        rcode=rcode,
        records=tuple(records[:MAX_RECORDS]),
        dnssec="secure" if secure else "insecure",
        truncated_records=truncated,
    )


async def addresses(host: str, settings: DNSSettings) -> tuple[list[str], DNSSECStatus]:
    """A then AAAA of ``host`` (both asked at once); the DNSSEC status is the weaker of the two."""
    results = await asyncio.gather(
        query(host, "A", settings), query(host, "AAAA", settings), return_exceptions=True
    )
    out: list[str] = []
    statuses: list[DNSSECStatus] = []
    errors: list[DNSError] = []
    for res in results:
        if isinstance(res, DNSError):
            errors.append(res)
        elif isinstance(res, BaseException):
            raise res
        else:
            out.extend(r.to_text() for r in res.records)
            statuses.append(res.dnssec)
    if errors and not out:
        raise errors[0]
    return out, weakest(statuses or ["error"])


def weakest(statuses: Sequence[DNSSECStatus]) -> DNSSECStatus:
    """bogus beats error beats insecure beats secure: one weak link makes the whole weak."""
    for status in ("bogus", "error", "insecure"):
        if status in statuses:
            return status
    return "secure" if statuses else "error"


class DNSResolver(AbstractResolver):
    """aiohttp name resolution through our resolvers (never the system's when they are configured)."""

    def __init__(self, settings: DNSSettings) -> None:
        self.settings = settings

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[ResolveResult]:
        try:
            addrs, _ = await addresses(host, self.settings)
        except DNSError as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        if not addrs:
            raise OSError(f"cannot resolve {host}: no address")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addrs
        ]

    async def close(self) -> None:
        return None
