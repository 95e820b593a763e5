"""The TLS scan (issue 21) as the exporter shows it, from hand-built facts: its metric families (every fact
absent while unknown, ``scan_unknown`` says which), the remembered scans (ScanCache), the audit's scan
step (TLS 1.0/1.1 from the scan, a scanner that fails is an unknown scan), ``mailcanary probe``'s summary
(never GOOD for what was not checked) and the status page's table."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from prometheus_client.core import Metric

from exporter.cli import _tls_report
from exporter.metrics.collector import ExporterState
from exporter.metrics.domain import address_scan_specs
from exporter.metrics.family import render
from exporter.metrics.tls import tls_families
from exporter.run.history import History
from exporter.run.results import ResultStore, RunResult
from exporter.web.status import render_status
from probes.recorder import Recorder
from probes.tls import audit
from probes.tls.audit import TLSCheckSettings, TLSFacts, scan_step
from probes.tls.scan import ScanFacts
from probes.tls.scanning import SCAN_FACTS, UNKNOWN_RETRY, ScanCache, apply_scan, failed_scan
from probes.wire.net import Endpoint, TLSSettings
from probes.wire.slots import ServerSlots
from tests.mailstack.variants import Issued, TestPKI
from tests.support.tlsfacts import facts as full_facts
from tests.support.tlsfacts import scan as weak_scan

NOW = 1_700_000_300.0


def samples(metrics: list[Metric], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """name's samples as {sorted own labels (probe/endpoint/protocol dropped): value}."""
    out = {}
    for fam in metrics:
        for s in fam.samples:
            if s.name == name:
                labels = {k: v for k, v in s.labels.items() if k not in ("probe", "endpoint", "protocol")}
                out[tuple(sorted(labels.items()))] = s.value
    return out


def rendered(f: TLSFacts) -> list[Metric]:
    return list(tls_families([(["p", f.endpoint, f.protocol], f)], ["probe", "endpoint", "protocol"]))


def clean_scan() -> ScanFacts:
    """A server that is fine on every count the scan tells."""
    s = ScanFacts(checked_at=NOW - 3600, connections=11)
    s.protocols = {p: p in ("TLSv1.2", "TLSv1.3") for p in s.protocols}
    s.classes = dict.fromkeys(s.classes, False)
    s.non_fs, s.dh_bits, s.tls13_group = False, None, "x25519"
    s.secure_renegotiation, s.compression, s.stapled = True, False, False
    s.preferred = {"TLSv1.2": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLSv1.3": "TLS_AES_128_GCM_SHA256"}
    return s


def clean_facts() -> TLSFacts:
    f = full_facts("mx:25", "smtp")
    f.legacy = {"TLSv1": False, "TLSv1.1": False}
    f.scan = clean_scan()
    f.chain_complete, f.chain_ordered, f.chain_superfluous, f.ocsp_staple_status = True, True, 0, None
    return f


# ---- metrics -------------------------------------------------------------------------------------------


def test_scan_families_say_what_was_answered_and_leave_unknown_out() -> None:
    m = rendered(full_facts("h:25", "smtp"))  # SSLv3, 3DES, non-FS, DH 1024; SSLv2 and RC4 unknown
    protocols = samples(m, "mailcanary_tls_protocol_accepted")
    assert protocols[(("version", "SSLv3"),)] == 1 and protocols[(("version", "TLSv1.1"),)] == 0
    assert (("version", "SSLv2"),) not in protocols  # unknown: no sample, never a false 0
    classes = samples(m, "mailcanary_tls_cipher_class_accepted")
    assert classes[(("class", "3des"),)] == 1 and classes[(("class", "null"),)] == 0
    assert (("class", "rc4"),) not in classes
    assert samples(m, "mailcanary_tls_forward_secrecy") == {(): 0}
    assert samples(m, "mailcanary_tls_dh_group_bits") == {(): 1024}
    assert samples(m, "mailcanary_tls_tls13_group_info") == {(("group", "x25519"),): 1}
    preferred = samples(m, "mailcanary_tls_preferred_cipher_info")
    assert preferred == {
        (("cipher", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"), ("version", "TLSv1.2")): 1,
        (("cipher", "TLS_AES_256_GCM_SHA384"), ("version", "TLSv1.3")): 1,
    }
    assert samples(m, "mailcanary_tls_secure_renegotiation") == {(): 1}
    assert samples(m, "mailcanary_tls_compression") == {(): 0}
    assert samples(m, "mailcanary_tls_chain_complete") == {(): 1}
    assert samples(m, "mailcanary_tls_chain_ordered") == {(): 0}
    assert samples(m, "mailcanary_tls_chain_superfluous_certs") == {(): 1}
    assert samples(m, "mailcanary_tls_ocsp_stapled") == {(): 1}
    staple = samples(m, "mailcanary_tls_ocsp_staple_status")
    assert staple[(("status", "good"),)] == 1 and staple[(("status", "revoked"),)] == 0 and len(staple) == 5
    assert samples(m, "mailcanary_tls_scan_checked_timestamp_seconds") == {(): 1_700_000_200.0}
    assert samples(m, "mailcanary_tls_scan_connections") == {(): 12}
    unknown = samples(m, "mailcanary_tls_scan_unknown")
    assert {k[0][1] for k, v in unknown.items() if v == 1} == {"SSLv2", "rc4"}
    assert len(unknown) == len(SCAN_FACTS)  # a fixed set: bounded series


def test_no_scan_means_no_scan_series_at_all() -> None:
    f = full_facts("h:25", "smtp", ok=False)  # scan None: not checked
    m = rendered(f)
    for fam in m:
        if fam.name.startswith(("mailcanary_tls_protocol", "mailcanary_tls_scan", "mailcanary_tls_chain")):
            assert fam.samples == [], fam.name
    assert samples(m, "mailcanary_tls_forward_secrecy") == {}


def test_a_scan_that_learnt_nothing_exports_its_time_and_every_fact_unknown() -> None:
    f = full_facts("h:25", "smtp")
    f.scan = failed_scan("421 too many", clock=lambda: NOW)
    f.chain_complete = f.ocsp_staple_status = None
    m = rendered(f)
    assert samples(m, "mailcanary_tls_protocol_accepted") == {}
    assert samples(m, "mailcanary_tls_scan_checked_timestamp_seconds") == {(): NOW}
    assert set(samples(m, "mailcanary_tls_scan_unknown").values()) == {1}


def test_domain_addresses_get_the_same_families_under_their_prefix() -> None:
    address = SimpleNamespace(report=SimpleNamespace(tls=full_facts("192.0.2.1:25", "smtp")))
    silent = SimpleNamespace(report=SimpleNamespace(tls=None))  # did not answer: no sample at all
    labels = ["probe", "domain", "mx", "address"]
    rows: list[tuple[list[str], Any]] = [
        (["d", "example.com", "mx.example.com", "192.0.2.1"], address),
        (["d", "example.com", "mx.example.com", "192.0.2.2"], silent),
    ]
    m = render(address_scan_specs(), rows, labels)
    names = {fam.name for fam in m}
    assert "mailcanary_domain_mx_protocol_accepted" in names and "mailcanary_domain_mx_scan_unknown" in names
    sslv3 = [s for fam in m for s in fam.samples if s.name == "mailcanary_domain_mx_protocol_accepted"]
    assert {s.labels["address"] for s in sslv3} == {"192.0.2.1"}


# ---- remembered scans ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_cache_reuses_until_recheck_or_a_new_certificate() -> None:
    clock = Clock()
    cache = ScanCache(clock=clock)
    s = clean_scan()
    s.checked_at = clock.now
    cache.put(("k",), s, "fp1")
    assert cache.fresh(("k",), "fp1", 86400) is s
    assert cache.fresh(("k",), "fp2", 86400) is None  # another certificate: scan again
    clock.now += 86400
    assert cache.fresh(("k",), "fp1", 86400) is None


def test_an_incomplete_scan_is_retried_after_an_hour_and_bounded() -> None:
    clock = Clock()
    cache = ScanCache(clock=clock, max_entries=2)
    partial = clean_scan()
    partial.checked_at, partial.errors = clock.now, {"SSLv2": "421"}
    cache.put(("k",), partial, None)
    clock.now += UNKNOWN_RETRY - 1
    assert cache.fresh(("k",), None, 86400) is partial
    clock.now += 1
    assert cache.fresh(("k",), None, 86400) is None
    again = clean_scan()
    again.errors = {"SSLv2": "timeout"}  # the early retry could not tell either: wait the whole period
    cache.put(("k",), again, None)
    clock.now += 86400 - 1
    assert cache.fresh(("k",), None, 86400) is again
    clock.now += 1
    assert cache.fresh(("k",), None, 86400) is None  # at most two scans a period
    cache.put(("a",), clean_scan(), None)
    cache.put(("b",), clean_scan(), None)
    assert len(cache) == 2 and cache.fresh(("k",), None, 1e9) is None  # the oldest went


def test_a_scan_that_learnt_nothing_keeps_the_earlier_facts_but_counts_as_an_attempt() -> None:
    clock = Clock()
    cache = ScanCache(clock=clock)
    good = weak_scan()
    cache.put(("k",), good, "fp")
    clock.now += 2 * 86400
    kept = cache.put(("k",), failed_scan("421", clock), "fp")
    assert kept is good  # SSLv3 stays known (with its own, older time): no alert resolves on a 421
    assert cache.fresh(("k",), "fp", 86400) is good  # and no new scan before UNKNOWN_RETRY
    clock.now += UNKNOWN_RETRY  # that was the early retry of an incomplete scan: the next is a period on
    assert cache.fresh(("k",), "fp", 86400) is good
    clock.now += 86400
    assert cache.fresh(("k",), "fp", 86400) is None


async def test_two_runs_share_one_scan_and_a_cut_short_scan_is_remembered_as_unknown() -> None:
    cache = ScanCache()
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def run() -> ScanFacts:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return clean_scan()

    first = asyncio.create_task(cache.get(("k",), None, 86400, run))
    await started.wait()
    second = asyncio.create_task(cache.get(("k",), None, 86400, run))
    release.set()
    (a, new_a), (b, new_b) = await first, await second
    assert calls == 1 and a is b and (new_a, new_b) == (True, False)

    slow = asyncio.create_task(cache.get(("x",), None, 86400, asyncio.Event().wait))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    remembered = cache.fresh(("x",), None, 86400)
    assert remembered is not None and "scan" in remembered.errors  # not started again at every scrape


# ---- the audit's scan step ------------------------------------------------------------------------------


def settings(cache: ScanCache | None, *, legacy: bool = True) -> TLSCheckSettings:
    ep = Endpoint(host="127.0.0.1", port=25, tls_mode="starttls", tls=TLSSettings(server_name="mx"))
    return TLSCheckSettings(
        ep, "smtp", timeout=1.0, check_legacy=legacy, scan=True, scan_cache=cache, slots=ServerSlots()
    )


async def test_scan_step_answers_legacy_versions_and_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    async def fake_scan(s: TLSCheckSettings, rec: Recorder) -> ScanFacts:
        calls.append(s.endpoint.address)
        assert s.slots is None  # the caller holds the slot: the scanner must not wait for a second one
        with rec.phase("tls_scan"):
            return weak_scan()

    monkeypatch.setattr(audit, "scan", fake_scan)
    cache = ScanCache()
    first, rec = full_facts("127.0.0.1:25", "smtp", ok=False), Recorder()
    assert await scan_step(settings(cache), first, rec) is True
    assert first.legacy == {"TLSv1": True, "TLSv1.1": False}  # from the scan, not OpenSSL handshakes
    assert first.legacy_checked_at == 1_700_000_200.0 and "tls_scan" in rec.phases
    again, rec2 = full_facts("127.0.0.1:25", "smtp", ok=False), Recorder()
    assert await scan_step(settings(cache), again, rec2) is False
    assert calls == ["127.0.0.1:25"] and "tls_scan" not in rec2.phases and again.scan is first.scan
    untouched = full_facts("127.0.0.1:25", "smtp", ok=False)
    await scan_step(settings(cache, legacy=False), untouched, Recorder())
    assert untouched.legacy == {"TLSv1": False, "TLSv1.1": None}  # check_legacy off: not filled


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (NotImplementedError("not yet"), "internal: NotImplementedError"),
        (TimeoutError(), "no scan result within"),
    ],
)
async def test_a_scanner_that_fails_gives_an_unknown_scan_not_a_failed_audit(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, words: str
) -> None:
    async def broken(s: TLSCheckSettings, rec: Recorder) -> ScanFacts:
        raise error

    monkeypatch.setattr(audit, "scan", broken)
    f = full_facts("127.0.0.1:25", "smtp", ok=False)
    await scan_step(settings(None), f, Recorder())
    assert f.scan is not None and f.scan.checked_at is not None and words in f.scan.errors["scan"]
    assert f.legacy == {"TLSv1": None, "TLSv1.1": None}  # unknown, not "refused"


# ---- mailcanary probe -----------------------------------------------------------------------------------


def test_report_of_an_sslv3_server_without_a_tls_session_names_what_it_speaks() -> None:
    f = TLSFacts(endpoint="old:25", protocol="smtp", mode="starttls", starttls_offered=True)
    s = ScanFacts(checked_at=NOW, connections=9)
    s.protocols = {p: p == "SSLv3" for p in s.protocols}
    s.classes = {c: c in ("null", "rc4") for c in s.classes}
    f.scan, f.error = s, "no TLS session"
    text = "\n".join(_tls_report("old:25", f, NOW))
    assert "SSLv3 OFFERED" in text and "TLSv1.2 not offered" in text and "NULL OFFERED" in text
    assert "findings   accepts SSLv3; accepts NULL suites; accepts RC4 suites" in text
    assert "verdict    NEEDS ATTENTION" in text


def test_report_never_says_good_for_what_was_not_checked() -> None:
    f = clean_facts()
    f.scan = None
    text = "\n".join(_tls_report("mx:25", f, NOW))
    assert "not checked (scan off)" in text
    assert "verdict    GOOD as far as checked; not checked or unknown: SSLv2/SSLv3" in text
    f = clean_facts()
    f.scan.protocols["SSLv2"] = None  # type: ignore[union-attr]
    f.chain_complete = None
    text = "\n".join(_tls_report("mx:25", f, NOW))
    assert "SSLv2 unknown" in text and "chain      unknown" in text
    assert "verdict    GOOD as far as checked; not checked or unknown: SSLv2, chain" in text


def test_report_of_a_clean_fully_scanned_server_is_good() -> None:
    text = "\n".join(_tls_report("mx:25", clean_facts(), NOW))
    assert "verdict    GOOD\n" in text + "\n"
    assert "forward secrecy  yes" in text and "chain      complete, ordered, 0 superfluous" in text
    assert "OCSP staple not offered" in text and "1.0 h ago), 11 connection(s)" in text


def test_report_of_a_weak_scan_lists_each_finding() -> None:
    f = full_facts("h:25", "smtp")
    f.ocsp_staple_status, f.chain_complete = "revoked", False
    text = "\n".join(_tls_report("h:25", f, NOW))
    for finding in (
        "accepts SSLv3",
        "accepts 3DES suites",
        "accepts a suite without forward secrecy",
        "stapled OCSP response says revoked",
        "chain incomplete",
        "chain misordered",
        "DH group of 1024 bits",
    ):
        assert finding in text
    assert "SSLv2 unknown" in text and "RC4 unknown" in text
    assert "verdict    REVOKED (stapled OCSP response)" in text  # the verdict reads the staple the scan saw


# ---- status page ----------------------------------------------------------------------------------------


def test_status_page_shows_the_scan_per_endpoint_with_unknown_and_unscanned() -> None:
    store = ResultStore()
    store.ensure(["a", "b"])
    tls = {"h:25": full_facts("h:25", "smtp"), "plain:143": full_facts("plain:143", "imap", ok=False)}
    store.record(RunResult("a", True, "success", "ok", NOW - 10, 1.0, {}, tls=tls))
    page = render_status(store.snapshot(), ExporterState(probes={"a": "tls"}), History(), {}, now=NOW)
    assert '<table id="tls-scan">' in page
    row = page.split('data-endpoint="h:25" data-findings="')[1].split("</tr>")[0]  # the scan table's row
    assert row.startswith("5")  # SSLv3, 3DES, no FS, misordered chain, DH 1024
    assert '<span class="fail">SSLv3</span> <span class="fail">TLSv1</span>' in row
    assert '<span class="fail">3DES</span>' in row and "(unknown: SSLv2)" in row and "(unknown: RC4)" in row
    assert '<span class="ok">good</span>' in row and "2 min ago" in row and ">12</td>" in row
    assert "not checked (scan off)" in page.split('data-endpoint="plain:143" data-findings="0">')[1]


# ---- the served chain and the staple, judged when the scan is folded in -------------------------------


def _revoked_staple(leaf: Issued, issuer: Issued) -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.REVOKED,
            this_update=now - dt.timedelta(hours=1),
            next_update=now + dt.timedelta(days=1),
            revocation_time=now - dt.timedelta(hours=2),
            revocation_reason=x509.ReasonFlags.key_compromise,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        .sign(issuer.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_apply_scan_judges_the_served_chain_and_a_revoked_staple(tmp_path: Path) -> None:
    pki = TestPKI("scan report")
    inter = pki.ca("scan intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(900))
    leaf = pki.leaf(["mail.example.test"], issuer=inter, common_name="mail.example.test")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.root.pem)
    staple = _revoked_staple(leaf, inter)

    s = clean_scan()
    s.served_chain, s.stapled, s.ocsp_staple = [leaf.der, inter.der], True, staple
    f = full_facts("mx:25", "smtp")
    apply_scan(f, s, legacy=False, ca_file=str(ca))
    assert (f.chain_complete, f.chain_ordered, f.chain_superfluous, f.chain_anchor_sent) == (
        True,
        True,
        0,
        False,
    )
    assert f.ocsp_staple_status == "revoked"  # what the verdict (i21-verdict) reads
    m = rendered(f)
    assert samples(m, "mailcanary_tls_ocsp_staple_status")[(("status", "revoked"),)] == 1
    assert "stapled OCSP response says revoked" in "\n".join(_tls_report("mx:25", f, NOW))

    missing = clean_scan()
    missing.served_chain, missing.stapled, missing.ocsp_staple = [leaf.der], True, staple
    g = full_facts("mx:25", "smtp")
    g.ocsp_staple_status = None
    apply_scan(g, missing, legacy=False, ca_file=str(ca))
    assert g.chain_complete is False  # no AIA fetching: the intermediate is missing
    assert g.ocsp_staple_status is None  # its issuer unknown: the staple cannot be checked (never "good")
    assert samples(rendered(g), "mailcanary_tls_chain_complete") == {(): 0}
    text = "\n".join(_tls_report("mx:25", g, NOW))
    assert "chain incomplete" in text and "OCSP staple offered, status unknown" in text

    sub = pki.ca("scan sub-intermediate", issuer=inter, not_before=pki.days(-1), not_after=pki.days(800))
    deep = pki.leaf(["mail.example.test"], issuer=sub, common_name="mail.example.test")
    misordered = clean_scan()
    misordered.served_chain = [deep.der, inter.der, sub.der]  # the issuer's issuer before the issuer
    h = full_facts("mx:25", "smtp")
    apply_scan(h, misordered, legacy=False, ca_file=str(ca))
    assert h.chain_ordered is False and h.ocsp_staple_status == "good"  # untouched: nothing stapled
