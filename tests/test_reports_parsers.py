"""The reports kind's pure parts: TLS-RPT and DMARC parsers, bounded unpacking of hostile attachments,
the once-only state. Built to RFC 8460 §4 and RFC 7489 appendix C by tests/support/reports.py; fuzzed
with Hypothesis (any bytes: a ReportError or a report, never anything else)."""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes.reports import (
    RESULT_LABELS,
    Limits,
    ReportError,
    ReportState,
    Rules,
    attachments,
    gunzip,
    load_state,
    org_label,
    parse_dmarc,
    parse_tlsrpt,
    save_state,
    shown,
    unpack,
)
from tests.support.reports import (
    DAY0,
    ENTITY_XML,
    XXE_XML,
    Mail,
    Policy,
    Row,
    dmarc_mail,
    dmarc_xml,
    every_result_type,
    gzip_bomb,
    gzipped,
    mail,
    tlsrpt,
    tlsrpt_mail,
    zip_bomb,
    zipped,
)

LIMITS = Limits()
GIB = 1 << 30


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """A 1 GiB gzip and a 1 GiB zip (about 1 MB each): built once per module."""
    return {"gzip": gzip_bomb(GIB), "zip": zip_bomb(GIB)}


def test_tlsrpt_every_result_type_and_policy_type() -> None:
    doc = tlsrpt(
        "Google Inc.",
        "2026-12-04T00:00:00Z_example.test",
        DAY0,
        [
            Policy(failures=every_result_type()),
            Policy(type="tlsa", ok=7),
            Policy(type="no-policy-found", ok=3),
        ],
    )
    rep = parse_tlsrpt(json.dumps(doc).encode(), LIMITS)
    assert rep.org == "Google Inc." and rep.report_id.endswith("example.test")
    assert rep.begin == DAY0 and rep.end == DAY0 + 86399
    sts, tlsa, none = rep.policies
    assert [f.result_type for f in sts.failures] == [*RESULT_LABELS[:-1], "other"]
    assert sts.failed == sts.detail_sum == sum(range(1, 12)) + 5
    assert (tlsa.policy_type, tlsa.successful, none.policy_type) == ("tlsa", 7, "no-policy-found")


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[" * 100_000, "bad_json"),  # nested too deep: RecursionError, not a crash
        (b'{"organization-name": "x"}', "bad_report"),
        (json.dumps({**tlsrpt("o", "r", DAY0, [Policy()]), "policies": {}}).encode(), "bad_report"),
        (json.dumps(tlsrpt("o", "r", DAY0, [Policy(type="dnssec")])).encode(), "bad_report"),
        (json.dumps(tlsrpt("o", "r", DAY0, [Policy(ok=-1)])).encode(), "bad_report"),
        (json.dumps(tlsrpt("o", "r", DAY0, [Policy()] * 11)).encode(), "too_many_records"),
    ],
)
def test_tlsrpt_refuses(doc: bytes, reason: str) -> None:
    with pytest.raises(ReportError) as err:
        parse_tlsrpt(doc, Limits(max_records=10))
    assert err.value.reason == reason and err.value.kind == "tlsrpt"


def test_dmarc_report_and_namespace() -> None:
    rows = [Row("192.0.2.1", 10), Row("203.0.113.9", 3, "reject", "fail", "fail"), Row("2001:db8::1", 1)]
    for ns in (None, "urn:ietf:params:xml:ns:dmarc-2.0"):
        rep = parse_dmarc(dmarc_xml("Yahoo", "r1", DAY0, rows, namespace=ns), LIMITS)
        assert (rep.org, rep.report_id, rep.begin) == ("Yahoo", "r1", DAY0)
        assert (rep.policy.p, rep.policy.sp, rep.policy.pct) == ("reject", "quarantine", 100)
        assert [(r.source_ip, r.count, r.disposition, r.dkim, r.spf) for r in rep.records] == [
            ("192.0.2.1", 10, "none", "pass", "pass"),
            ("203.0.113.9", 3, "reject", "fail", "fail"),
            ("2001:db8::1", 1, "none", "pass", "pass"),
        ]


@pytest.mark.parametrize(("xml", "reason"), [(ENTITY_XML, "forbidden_xml"), (XXE_XML, "forbidden_xml")])
def test_dmarc_refuses_entities_and_external_references(xml: bytes, reason: str) -> None:
    with pytest.raises(ReportError) as err:
        parse_dmarc(xml, LIMITS)
    assert err.value.reason == reason


def test_dmarc_refuses_bad_xml_and_too_many_records() -> None:
    with pytest.raises(ReportError) as err:
        parse_dmarc(b"<feedback><report_metadata>", LIMITS)
    assert err.value.reason == "bad_xml"
    many = dmarc_xml("o", "r", DAY0, [Row("192.0.2.1", 1)] * 11)
    with pytest.raises(ReportError) as err:
        parse_dmarc(many, Limits(max_records=10))
    assert err.value.reason == "too_many_records"
    bad_ip = dmarc_xml("o", "r", DAY0, [Row("not-an-ip", 1)])
    with pytest.raises(ReportError) as err:
        parse_dmarc(bad_ip, LIMITS)
    assert err.value.reason == "bad_report"


def test_mail_forms_zip_any_name_gzip_plain_and_tlsrpt_media_types() -> None:
    xml = dmarc_xml("Microsoft", "r2", DAY0, [Row("192.0.2.1", 2)])
    for how in ("zip", "gzip", "plain"):
        (att,) = attachments(
            dmarc_mail(xml, how=how, name="whatever-name.bin" if how == "zip" else None), LIMITS
        )
        assert att.data == xml, how
    doc = tlsrpt("Org", "id", DAY0, [Policy()])
    for media in ("application/tlsrpt+gzip", "application/tlsrpt+json", "application/tlsrpt"):
        (att,) = attachments(tlsrpt_mail(doc, media=media), LIMITS)
        assert json.loads(att.data) == doc and att.hint == "tlsrpt", media


def _peak(fn: object) -> tuple[int, ReportError]:
    tracemalloc.start()
    try:
        assert callable(fn)
        fn()
    except ReportError as exc:
        err = exc
    else:  # pragma: no cover - the assertion below says what went wrong
        raise AssertionError("the bomb was not refused")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, err


@pytest.mark.parametrize("kind", ["gzip", "zip"])
def test_bombs_are_refused_with_bounded_memory(bombs: dict[str, bytes], kind: str) -> None:
    """1 GiB decompressed is refused at the 20 MiB cap: the peak of what Python allocated stays near the
    cap (output kept so far plus one chunk), never near the gigabyte."""
    peak, err = _peak(lambda: unpack(bombs[kind], LIMITS))
    assert err.reason == "bomb"
    assert peak < 3 * LIMITS.max_decompressed_bytes, peak


def test_ratio_cap_refuses_a_small_bomb() -> None:
    data = gzipped(b"{" + b" " * (4 * 1024 * 1024))  # 4 MiB from ~4 KiB: under the size cap, over 100:1
    with pytest.raises(ReportError) as err:
        unpack(data, LIMITS)
    assert err.value.reason == "bomb" and "max_ratio" in str(err.value)


def test_a_zip_that_lies_about_its_size_is_refused_mid_stream() -> None:
    """Local and central headers say 1,000 bytes; the entry inflates to 50 MiB: the read stops at what
    the header allowed and the CRC check refuses it (bad_archive), memory bounded."""
    data = bytearray(zipped(b"<" * (50 * 1024 * 1024), "r.xml"))
    struct.pack_into("<I", data, 22, 1000)  # local header: uncompressed size
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1000)  # central directory: uncompressed size
    peak, err = _peak(lambda: unpack(bytes(data), LIMITS))
    assert err.reason == "bad_archive"
    assert peak < 2 * 1024 * 1024 + len(data), peak


def test_gzip_bomb_in_a_mail(bombs: dict[str, bytes]) -> None:
    raw = mail(Mail("Report domain: example.test", [(bombs["gzip"], "application/gzip", "r.xml.gz")]))
    peak, err = _peak(lambda: attachments(raw, LIMITS))
    assert err.reason == "bomb" and err.kind == "dmarc"
    assert peak < 3 * LIMITS.max_decompressed_bytes + 4 * len(raw)


def test_attachment_cap_refuses_before_decoding() -> None:
    raw = mail(Mail("big", [(b"x" * 200_000, "application/gzip", "r.xml.gz")]))
    with pytest.raises(ReportError) as err:
        attachments(raw, Limits(max_attachment_bytes=100_000))
    assert err.value.reason == "too_large"


def test_state_counts_once_never_merges_orgs_and_survives_a_round_trip(tmp_path: Path) -> None:
    rules = Rules(domains=("example.test",), mx_hosts=("mx.example.test",), max_orgs=2)
    state = ReportState()
    now = DAY0 + 2 * 86400
    rep = parse_tlsrpt(
        json.dumps(tlsrpt("Google Inc.", "same-id", DAY0, [Policy(failures=every_result_type())])).encode(),
        LIMITS,
    )
    assert state.check("tlsrpt", rep.org, rep.report_id, rep.end, "d1", now, rules.window) is None
    state.add_tls(rep, rules, now)
    state.remember("tlsrpt", rep.org, rep.report_id, rep.end, "d1")
    assert state.check("tlsrpt", rep.org, rep.report_id, rep.end, "d1", now, rules.window) == "duplicate"
    assert (
        state.check("tlsrpt", rep.org, rep.report_id, rep.end, "d2", now, rules.window) == "changed_duplicate"
    )
    assert state.check("tlsrpt", "Other Org", rep.report_id, rep.end, "d1", now, rules.window) is None
    assert state.check("tlsrpt", "x", "y", DAY0 - 30 * 86400, "d", now, rules.window) == "too_old"
    assert state.org("tlsrpt", "Second", 2) == "second" and state.org("tlsrpt", "Third", 2) == "other"
    assert state.tls_failures[("example.test", "sts", "google_inc.", "certificate-expired")] == 3
    assert state.tls_mx[("example.test", "mx.example.test")] == 71
    path = tmp_path / "reports-x.json"
    save_state(path, state)
    again, problem = load_state(path)
    assert problem is None and again.to_json() == state.to_json()
    path.write_bytes(b'{"version": 1, "tls_sessions": [["a", 1]]}')
    fresh, problem = load_state(path)
    assert problem is not None and fresh.to_json() == ReportState().to_json()
    assert (tmp_path / "reports-x.json.corrupt").exists()


def test_org_label_is_bounded() -> None:
    assert org_label("Google Inc.") == "google_inc."
    assert org_label("  Mail.Ru <dmarc> ") == "mail.ru_dmarc"
    assert len(org_label("x" * 500)) == 64 and org_label("!!!") == "unnamed"


@given(st.binary(max_size=4096))
def test_fuzz_unpack_and_parsers_raise_only_report_errors(data: bytes) -> None:
    small = Limits(max_decompressed_bytes=1 << 20, max_records=50)
    for fn in (
        lambda: unpack(data, small),
        lambda: parse_tlsrpt(data, small),
        lambda: parse_dmarc(data, small),
        lambda: attachments(data, small),
    ):
        with contextlib.suppress(ReportError):
            fn()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


@given(json_values, st.sampled_from(["policies", "date-range", "summary", "failure-details", "report-id"]))
def test_fuzz_tlsrpt_structure(value: object, key: str) -> None:
    """A valid report with one field replaced by any JSON value: a report or a ReportError."""
    doc = tlsrpt("o", "r", DAY0, [Policy(failures=every_result_type())])
    if key in ("summary", "failure-details"):
        doc["policies"][0][key] = value
    else:
        doc[key] = value
    try:
        rep = parse_tlsrpt(json.dumps(doc).encode(), LIMITS)
    except ReportError:
        return
    assert all(p.successful >= 0 and p.failed >= 0 for p in rep.policies)


@given(
    st.text(max_size=40), st.sampled_from(["count", "source_ip", "disposition", "begin", "p", "header_from"])
)
def test_fuzz_dmarc_fields(text: str, field: str) -> None:
    xml = dmarc_xml("o", "r", DAY0, [Row("192.0.2.1", 5)]).decode()
    marker = {"count": "<count>5</count>", "source_ip": "<source_ip>192.0.2.1</source_ip>"}.get(field)
    if marker is None:
        marker = {"disposition": "<disposition>none</disposition>", "begin": f"<begin>{DAY0}</begin>"}.get(
            field,
            {"p": "<p>reject</p>", "header_from": "<header_from>example.test</header_from>"}.get(field, ""),
        )
    tag = marker[1 : marker.index(">")]
    safe = "".join(c for c in text if c.isprintable())
    xml = xml.replace(marker, f"<{tag}>{escape(safe)}</{tag}>")
    try:
        rep = parse_dmarc(xml.encode(), LIMITS)
    except ReportError:
        return
    assert all(r.count >= 0 and r.dkim in ("pass", "fail") for r in rep.records)


def test_report_text_in_the_log_is_printable_and_bounded() -> None:
    assert shown("Evil\nOrg\x1b[31m" + "x" * 500) == "Evil?Org?[31m" + "x" * 115


@given(st.binary(max_size=3 * 64 * 1024 + 100), st.integers(min_value=1, max_value=3))
def test_fuzz_gunzip_round_trips_across_chunk_boundaries(data: bytes, members: int) -> None:
    """Whatever the sizes (around the 64 KiB decompression step) and however many members, gzip in is
    the data out (highly compressible data: the output runs ahead of the input)."""
    body = (data * 3)[: 3 * 64 * 1024 + 100] if data else b""
    packed = b"".join(gzipped(body) for _ in range(members))
    assert gunzip(packed, Limits(max_decompressed_bytes=1 << 22, max_ratio=10_000)) == body * members
