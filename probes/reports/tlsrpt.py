"""TLS-RPT aggregate reports (RFC 8460 §4): JSON in, a small typed report out. Pure, safe on arbitrary
bytes (fuzzed). Lenient where a real reporter deviates harmlessly (no failure details, unknown result
types, extra fields), strict where the numbers would lie (counts must be non-negative integers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from probes.reports.unpack import Limits, ReportError

POLICY_TYPES: Final[tuple[str, ...]] = ("sts", "tlsa", "no-policy-found")
# RFC 8460 §4.3 result types; anything else a reporter sends is counted as `other`.
RESULT_TYPES: Final[tuple[str, ...]] = (
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)
RESULT_LABELS: Final[tuple[str, ...]] = (*RESULT_TYPES, "other")
MAX_COUNT: Final = 2**53  # a session count above this is not a count


@dataclass(frozen=True)
class Failure:
    result_type: str  # one of RESULT_LABELS
    count: int
    mx: str  # receiving-mx-hostname, lower case without the final dot ("" if absent)
    sending_ip: str  # sending-mta-ip ("" if absent): logs only


@dataclass(frozen=True)
class PolicyResult:
    policy_type: str  # one of POLICY_TYPES (an unknown type is refused: bad_report)
    domain: str  # policy-domain, lower case
    successful: int
    failed: int
    failures: tuple[Failure, ...]

    @property
    def detail_sum(self) -> int:
        return sum(f.count for f in self.failures)


@dataclass(frozen=True)
class TLSReport:
    org: str  # organization-name as sent (the label is made from it elsewhere)
    report_id: str
    begin: float  # date-range start, unix seconds
    end: float
    policies: tuple[PolicyResult, ...]


def _str(obj: dict[str, Any], key: str, required: bool = True) -> str:
    v = obj.get(key)
    if isinstance(v, str) and v.strip():
        return v.strip()[:1024]
    if required:
        raise ReportError("bad_report", f"TLS-RPT: {key} missing or not a string", "tlsrpt")
    return ""


def _count(obj: dict[str, Any], key: str) -> int:
    v = obj.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_COUNT:
        raise ReportError("bad_report", f"TLS-RPT: {key} is not a non-negative integer", "tlsrpt")
    return v


def _time(value: str, key: str) -> float:
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ReportError("bad_report", f"TLS-RPT: {key} is not an RFC 3339 date-time", "tlsrpt") from None
    if when.tzinfo is None:
        raise ReportError("bad_report", f"TLS-RPT: {key} has no time zone", "tlsrpt")
    return when.timestamp()


def _obj(v: object, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ReportError("bad_report", f"TLS-RPT: {what} is not an object", "tlsrpt")
    return v


def parse_tlsrpt(data: bytes, limits: Limits) -> TLSReport:
    """One report from its JSON bytes (already decompressed and size-capped)."""
    if len(data) > limits.max_decompressed_bytes:
        raise ReportError("too_large", "TLS-RPT JSON over max_decompressed_bytes", "tlsrpt")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ReportError("bad_json", "TLS-RPT: not a JSON document", "tlsrpt") from None
    top = _obj(doc, "the report")
    dates = _obj(top.get("date-range"), "date-range")
    begin = _time(_str(dates, "start-datetime"), "start-datetime")
    end = _time(_str(dates, "end-datetime"), "end-datetime")
    raw = top.get("policies")
    if not isinstance(raw, list):
        raise ReportError("bad_report", "TLS-RPT: policies is not a list", "tlsrpt")
    records = len(raw)
    policies: list[PolicyResult] = []
    for item in raw:
        if records > limits.max_records:
            raise ReportError(
                "too_many_records", f"TLS-RPT: more than {limits.max_records} records", "tlsrpt"
            )
        entry = _obj(item, "a policies entry")
        pol = _obj(entry.get("policy"), "policy")
        ptype = _str(pol, "policy-type").lower()
        if ptype not in POLICY_TYPES:
            raise ReportError(
                "bad_report", "TLS-RPT: policy-type is not sts, tlsa or no-policy-found", "tlsrpt"
            )
        summary = _obj(entry.get("summary"), "summary")
        details = entry.get("failure-details", [])
        if not isinstance(details, list):
            raise ReportError("bad_report", "TLS-RPT: failure-details is not a list", "tlsrpt")
        records += len(details)
        if records > limits.max_records:
            raise ReportError(
                "too_many_records", f"TLS-RPT: more than {limits.max_records} records", "tlsrpt"
            )
        failures = []
        for d in details:
            fd = _obj(d, "a failure-details entry")
            rtype = _str(fd, "result-type", required=False).lower()
            failures.append(
                Failure(
                    result_type=rtype if rtype in RESULT_TYPES else "other",
                    count=_count(fd, "failed-session-count"),
                    mx=_str(fd, "receiving-mx-hostname", required=False).lower().rstrip("."),
                    sending_ip=_str(fd, "sending-mta-ip", required=False)[:64],
                )
            )
        policies.append(
            PolicyResult(
                policy_type=ptype,
                domain=_str(pol, "policy-domain").lower().rstrip("."),
                successful=_count(summary, "total-successful-session-count"),
                failed=_count(summary, "total-failure-session-count"),
                failures=tuple(failures),
            )
        )
    return TLSReport(
        org=_str(top, "organization-name"),
        report_id=_str(top, "report-id"),
        begin=begin,
        end=end,
        policies=tuple(policies),
    )
