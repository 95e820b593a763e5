"""MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): record and policy parsers (pure, fuzzed) and the fetch.

The policy is fetched from ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with a verified
certificate, no redirects (§3.3), ``text/plain`` and at most 64 KB read (§3.2 says senders may stop
there). Names are resolved through ``probes.wire.dns`` (never the system resolver when resolvers are set).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from probes.wire.certs import dns_pattern_matches
from probes.wire.dns import DNSResolver, DNSSettings, query
from probes.wire.net import source_socket_factory

MAX_POLICY_BYTES: Final = 64 * 1024
MAX_AGE_LIMIT: Final = 31557600  # one year, RFC 8461 §3.2
MODES: Final = ("enforce", "testing", "none")
POLICY_PATH: Final = "/.well-known/mta-sts.txt"
_STS_ID: Final = re.compile(r"[A-Za-z0-9]{1,32}")


# ---- TXT records (pure) ------------------------------------------------------------------------------


def txt_fields(text: str) -> list[tuple[str, str]] | None:
    """``k=v; k=v`` fields (RFC 8461 §3.1 / RFC 8460 §3 grammar, lenient on spaces); None if malformed."""
    out: list[tuple[str, str]] = []
    for part in text.split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", key):
            return None
        out.append((key, value.strip(" \t")))
    return out


@dataclass(frozen=True)
class STSRecord:
    valid: bool
    id: str | None = None
    error: str | None = None


def parse_sts_records(texts: Sequence[str]) -> STSRecord:
    """Among the TXT strings of ``_mta-sts.<domain>``, exactly one must start with ``v=STSv1``."""
    candidates = [t for t in texts if t.startswith("v=STSv1")]
    if not candidates:
        return STSRecord(False, error="no v=STSv1 record")
    if len(candidates) > 1:
        return STSRecord(False, error=f"{len(candidates)} v=STSv1 records (exactly one allowed)")
    fields = txt_fields(candidates[0])
    if fields is None or not fields or fields[0] != ("v", "STSv1"):
        return STSRecord(False, error="malformed v=STSv1 record")
    ids = [v for k, v in fields if k == "id"]
    if len(ids) != 1 or not _STS_ID.fullmatch(ids[0]):
        return STSRecord(False, error="id missing or not 1-32 letters and digits")
    return STSRecord(True, id=ids[0])


@dataclass(frozen=True)
class TLSRPTRecord:
    valid: bool
    rua: tuple[str, ...] = ()
    error: str | None = None


def parse_tlsrpt_records(texts: Sequence[str]) -> TLSRPTRecord:
    """``_smtp._tls.<domain>``: exactly one ``v=TLSRPTv1`` with ``rua`` of mailto: / https: URIs."""
    candidates = [t for t in texts if t.startswith("v=TLSRPTv1")]
    if len(candidates) != 1:
        return TLSRPTRecord(False, error=f"{len(candidates)} v=TLSRPTv1 records (exactly one needed)")
    fields = txt_fields(candidates[0])
    if fields is None or not fields or fields[0] != ("v", "TLSRPTv1"):
        return TLSRPTRecord(False, error="malformed v=TLSRPTv1 record")
    ruas = [v for k, v in fields if k == "rua"]
    if len(ruas) != 1:
        return TLSRPTRecord(False, error="rua missing or repeated")
    uris = tuple(u.strip() for u in ruas[0].split(",") if u.strip())
    if not uris or not all(re.match(r"(?i)(mailto:[^@\s]+@[^@\s]+|https://\S+)$", u) for u in uris):
        return TLSRPTRecord(False, error="rua must list mailto: or https: URIs")
    return TLSRPTRecord(True, rua=uris)


def txt_strings(rdatas: Iterable[Any]) -> list[str]:
    """The character-strings of each TXT record joined (a long record is split into 255-byte strings)."""
    return [b"".join(r.strings).decode("utf-8", "replace") for r in rdatas]


# ---- the policy (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    valid: bool
    mode: str | None = None
    max_age: int | None = None
    mx: tuple[str, ...] = ()
    error: str | None = None


def parse_policy(text: str) -> Policy:
    """RFC 8461 §3.2: ``key: value`` lines (CRLF or LF); version STSv1, mode, max_age, mx (≥1 unless none).

    Unknown keys are ignored as the RFC asks; a repeated single-valued key is an error.
    """
    single: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not key:
            return Policy(False, error="a line is not key: value")
        if key == "mx":
            mx.append(value)
        elif key in ("version", "mode", "max_age"):
            if key in single:
                return Policy(False, error=f"{key} repeated")
            single[key] = value
    if single.get("version") != "STSv1":
        return Policy(False, error="version is not STSv1")
    mode = single.get("mode")
    if mode not in MODES:
        return Policy(False, error="mode is not enforce, testing or none")
    age_text = single.get("max_age", "")
    if not age_text.isdigit() or len(age_text) > 10 or int(age_text) > MAX_AGE_LIMIT:
        return Policy(False, mode=mode, error="max_age is not 0..31557600")
    if mode != "none" and not mx:
        return Policy(False, mode=mode, max_age=int(age_text), error="no mx line")
    if any(not _mx_pattern_ok(p) for p in mx):
        return Policy(False, mode=mode, max_age=int(age_text), error="malformed mx pattern")
    return Policy(True, mode=mode, max_age=int(age_text), mx=tuple(p.lower().rstrip(".") for p in mx))


def _mx_pattern_ok(pattern: str) -> bool:
    body = pattern[2:] if pattern.startswith("*.") else pattern
    return bool(body) and all(
        re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?", lb)
        for lb in body.rstrip(".").split(".")
    )


def mx_covered(host: str, patterns: Sequence[str]) -> bool:
    """RFC 8461 §4.1: an exact name, or ``*.`` matching exactly one left-most label."""
    name = host.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p.startswith("*."):
            if dns_pattern_matches(p, name) or _one_label_under(p[2:], name):
                return True
        elif p == name:
            return True
    return False


def _one_label_under(suffix: str, name: str) -> bool:
    first, dot, rest = name.partition(".")
    return bool(first) and bool(dot) and rest == suffix


# ---- the fetch -----------------------------------------------------------------------------------


@dataclass
class PolicyFetch:
    """How the HTTPS fetch went; ``policy`` only when it arrived as the RFC asks."""

    status: int | None = None
    content_type: str | None = None
    size: int = 0
    error: str | None = None  # fixed words: connect, tls, redirect, status, content_type, too_large, timeout
    policy: Policy | None = None
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)


async def fetch_policy(
    domain: str,
    dns_settings: DNSSettings,
    *,
    ssl_context: ssl.SSLContext,
    timeout: float = 10.0,
    port: int = 443,
    source: Sequence[str] = (),
) -> PolicyFetch:
    """GET the policy; every failure is a fixed ``error`` word, never an exception. ``source``: local
    addresses to connect from, at most one per family (none of the server's family: the default)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    out = PolicyFetch()
    host = f"mta-sts.{domain.rstrip('.')}"
    url = f"https://{host}{'' if port == 443 else f':{port}'}{POLICY_PATH}"
    connector = aiohttp.TCPConnector(
        resolver=DNSResolver(dns_settings),
        ssl=ssl_context,
        limit=1,
        socket_factory=source_socket_factory(source),
    )
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False
            ) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            out.status = resp.status
            out.content_type = resp.content_type
            if 300 <= resp.status < 400:
                out.error = "redirect"
            elif resp.status != 200:
                out.error = "status"
            elif resp.content_type != "text/plain":
                out.error = "content_type"
            else:
                body = await resp.content.read(MAX_POLICY_BYTES + 1)
                out.size = len(body)
                if len(body) > MAX_POLICY_BYTES:
                    out.error = "too_large"
                else:
                    out.policy = parse_policy(body.decode("utf-8", "replace"))
                    if not out.policy.valid:
                        out.error = "invalid"
    except TimeoutError:
        out.error = "timeout"
    except aiohttp.ClientConnectorCertificateError:
        out.error = "tls"
    except aiohttp.ClientSSLError:
        out.error = "tls"
    except (aiohttp.ClientError, OSError):
        out.error = "connect"
    finally:
        out.seconds = loop.time() - began
    return out


async def fetch_sts_record(domain: str, settings: DNSSettings) -> STSRecord:
    answer = await query(f"_mta-sts.{domain.rstrip('.')}.", "TXT", settings)
    return parse_sts_records(txt_strings(answer.records))


async def fetch_tlsrpt_record(domain: str, settings: DNSSettings) -> TLSRPTRecord:
    answer = await query(f"_smtp._tls.{domain.rstrip('.')}.", "TXT", settings)
    return parse_tlsrpt_records(txt_strings(answer.records))
