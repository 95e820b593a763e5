"""DMARC aggregate reports (RFC 7489 appendix C): XML in, a small typed report out, parsed with
``defusedxml`` (no DTD, no entities, no external references: a billion-laughs or an XXE report is refused,
never expanded). Pure, safe on arbitrary bytes (fuzzed). The DMARCbis namespace is accepted too."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

from probes.reports.unpack import Limits, ReportError

DISPOSITIONS: Final[tuple[str, ...]] = ("none", "quarantine", "reject")
DISPOSITION_LABELS: Final[tuple[str, ...]] = (*DISPOSITIONS, "other")
POLICIES: Final[tuple[str, ...]] = ("none", "quarantine", "reject")
UNKNOWN: Final = "unknown"  # the source label of every IP no configured sender covers


@dataclass(frozen=True)
class Record:
    source_ip: str  # as sent (validated as an IP literal): logs and the status page only
    count: int
    disposition: str  # one of DISPOSITION_LABELS
    dkim: str  # DMARC-aligned DKIM result: pass or fail
    spf: str  # DMARC-aligned SPF result: pass or fail
    header_from: str  # lower case


@dataclass(frozen=True)
class Published:
    domain: str
    p: str  # one of POLICIES, or other
    sp: str  # one of POLICIES, or other (p when absent, RFC 7489 §6.3)
    pct: int


@dataclass(frozen=True)
class DMARCReport:
    org: str
    report_id: str
    begin: float
    end: float
    policy: Published
    records: tuple[Record, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: Element | None, name: str) -> Element | None:
    if el is None:
        return None
    for c in el:
        if isinstance(c.tag, str) and _local(c.tag) == name:
            return c
    return None


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if isinstance(c.tag, str) and _local(c.tag) == name]


def _text(el: Element | None, *path: str, required: bool = True) -> str:
    for name in path:
        el = _child(el, name)
    value = (el.text or "").strip() if el is not None else ""
    if not value and required:
        raise ReportError("bad_report", f"DMARC: {'/'.join(path)} missing", "dmarc")
    return value[:1024]


def _int(value: str, what: str, low: int = 0, high: int = 2**53) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ReportError("bad_report", f"DMARC: {what} is not an integer", "dmarc") from None
    if not low <= n < high:
        raise ReportError("bad_report", f"DMARC: {what} out of range", "dmarc")
    return n


def _word(value: str, choices: Sequence[str]) -> str:
    v = value.strip().lower()
    return v if v in choices else "other"


def _result(value: str) -> str:
    """policy_evaluated dkim/spf: pass, else fail (a reporter's temperror or empty value did not pass)."""
    return "pass" if value.strip().lower() == "pass" else "fail"


def parse_dmarc(data: bytes, limits: Limits) -> DMARCReport:
    """One aggregate report from its XML bytes (already decompressed and size-capped)."""
    if len(data) > limits.max_decompressed_bytes:
        raise ReportError("too_large", "DMARC XML over max_decompressed_bytes", "dmarc")
    try:
        root = defusedxml.ElementTree.fromstring(data, forbid_dtd=True)
    except (defusedxml.DTDForbidden, defusedxml.EntitiesForbidden, defusedxml.ExternalReferenceForbidden):
        raise ReportError("forbidden_xml", "DMARC: a DTD, entity or external reference", "dmarc") from None
    except (ParseError, ValueError, RecursionError):
        raise ReportError("bad_xml", "DMARC: not well-formed XML", "dmarc") from None
    if _local(root.tag) != "feedback":
        raise ReportError("bad_report", "DMARC: the root element is not feedback", "dmarc")
    meta = _child(root, "report_metadata")
    begin = _int(_text(meta, "date_range", "begin"), "date_range/begin")
    end = _int(_text(meta, "date_range", "end"), "date_range/end")
    pub = _child(root, "policy_published")
    p = _word(_text(pub, "p"), POLICIES)
    sp_text = _text(pub, "sp", required=False)
    pct_text = _text(pub, "pct", required=False)
    published = Published(
        domain=_text(pub, "domain").lower().rstrip("."),
        p=p,
        sp=_word(sp_text, POLICIES) if sp_text else p,
        pct=_int(pct_text, "pct", 0, 101) if pct_text else 100,
    )
    raw = _children(root, "record")
    if len(raw) > limits.max_records:
        raise ReportError("too_many_records", f"DMARC: more than {limits.max_records} records", "dmarc")
    records = []
    for rec in raw:
        row = _child(rec, "row")
        ip = _text(row, "source_ip")
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise ReportError("bad_report", "DMARC: source_ip is not an IP address", "dmarc") from None
        evaluated = _child(row, "policy_evaluated")
        records.append(
            Record(
                source_ip=ip,
                count=_int(_text(row, "count"), "count"),
                disposition=_word(_text(evaluated, "disposition"), DISPOSITIONS),
                dkim=_result(_text(evaluated, "dkim", required=False)),
                spf=_result(_text(evaluated, "spf", required=False)),
                header_from=_text(rec, "identifiers", "header_from").lower().rstrip("."),
            )
        )
    return DMARCReport(
        org=_text(meta, "org_name"),
        report_id=_text(meta, "report_id"),
        begin=float(begin),
        end=float(end),
        policy=published,
        records=tuple(records),
    )


Networks = Sequence[tuple[str, Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]]]


def classify(ip: str, senders: Networks) -> str:
    """The configured sender whose networks hold ``ip`` (the first that does), else ``unknown``."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return UNKNOWN
    for name, networks in senders:
        if any(address.version == n.version and address in n for n in networks):
            return name
    return UNKNOWN
