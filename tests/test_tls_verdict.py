"""The TLS audit must not lie (issue 21): a handshake refused for its parameters is not a certificate
verdict, a revoked certificate is a failure, and a server that will not talk before TLS (``421``,
``* BYE``, ``-ERR``) is ``tls_connect``, not ``tls_handshake``.

Real parts: OpenSSL servers (Python's ``ssl``, blocking sockets, tests/support/weaktls.py) offering
exactly RSA key exchange only, or DHE with the 1024-bit Oakley group 2 at ``@SECLEVEL=0``; a real OCSP
responder built with ``cryptography``; the daemon's own runner, metrics and one-shot report. The
dialogue failures before TLS come from fault servers (tests/support/faultservers.py): no real server
shows them on cue.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import report
from exporter.config import load_config
from exporter.kinds.tls import judge, tls_outcome
from exporter.metrics.collector import ExporterState, SeriesCache
from exporter.registry import Verdict, find
from exporter.run.history import History
from exporter.run.results import OUTCOMES, TLS_OUTCOMES, ResultStore
from exporter.run.runner import Runner, make_masker, revoked_verdict
from exporter.state.ledger import Ledger
from exporter.web.status import render_status
from probes.domain.mx import MXCheckSettings, MXHost, MXResolution, check_address
from probes.domain.probe import DomainReport, MXAddressResult, render_report
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.tls.audit import TLSCheckSettings, TLSFacts, probe_tls
from probes.tls.hygiene import Hygiene, OCSPResult, key_facts
from probes.wire.certs import describe_refusal, forward_secret, parameters_refused
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack.variants import Issued, TestPKI
from tests.support.faultservers import pretls_handler, serving
from tests.support.weaktls import (
    DHE_ONLY,
    RSA_KX_ONLY,
    OCSPResponder,
    RSALeaf,
    rsa_leaf,
    serve_tls,
    server_context,
    write_dh_params,
)

NAME = "mail.example.test"
MODERN = "ECDHE-RSA-AES256-GCM-SHA384"


@dataclass
class PKI:
    pki: TestPKI
    inter: Issued
    ca_file: Path
    leaf: RSALeaf
    dh1024: Path
    directory: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("weaktls")
    pki = TestPKI("mailcanary weak tls")
    inter = pki.ca("weak tls intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(400))
    return PKI(
        pki,
        inter,
        pki.write_ca(d / "ca.pem"),
        rsa_leaf(pki, inter, [NAME], d),
        write_dh_params(d / "dh1024.pem"),
        d,
    )


def weak_context(pki: PKI, weakness: str, leaf: RSALeaf | None = None) -> ssl.SSLContext:
    leaf = leaf or pki.leaf
    if weakness == "dhe1024":
        return server_context(
            leaf, ciphers=DHE_ONLY, max_version=ssl.TLSVersion.TLSv1_2, dh_params=pki.dh1024
        )
    if weakness == "rsa_kx":
        return server_context(leaf, ciphers=RSA_KX_ONLY, max_version=ssl.TLSVersion.TLSv1_2)
    return server_context(leaf, ciphers=MODERN, max_version=ssl.TLSVersion.TLSv1_3)


def endpoint(port: int, protocol: str, ca_file: Path | None) -> Endpoint:
    mode = "implicit" if protocol == "tcp" else "starttls"
    tls = TLSSettings(ca_file=str(ca_file) if ca_file else None, server_name=NAME)
    return Endpoint("127.0.0.1", port, tls_mode=mode, tls=tls)  # type: ignore[arg-type]


async def audit(port: int, protocol: str, ca_file: Path | None) -> tuple[TLSFacts | None, ProbeError | None]:
    ep = endpoint(port, protocol, ca_file)
    rec = Recorder(transcript=[])
    try:
        return await probe_tls(TLSCheckSettings(ep, protocol, timeout=5.0), rec), None
    except ProbeError as exc:
        return rec.tls.get(ep.address), exc


# ---- 1. a handshake refused for its parameters is not a certificate verdict ---------------------------


WEAK = [
    ("dhe1024", "DH key too small; the server chose DHE-RSA-AES256-GCM-SHA384 (TLSv1.2)"),
    (
        "rsa_kx",
        "handshake_failure alert (no cipher suite in common); the server chose AES256-GCM-SHA384 (TLSv1.2): "
        "RSA key exchange, no forward secrecy",
    ),
]


@pytest.mark.parametrize("protocol", ["tcp", "smtp"])
@pytest.mark.parametrize(("weakness", "refused"), WEAK)
async def test_weak_parameters_with_a_good_certificate(
    pki: PKI, weakness: str, refused: str, protocol: str
) -> None:
    """Was: verified 0, verify reason ``other``, outcome ``tls_verify`` (renew a good certificate). Now the
    certificate verifies (on a permissive handshake that still verifies) and the refusal is its own fact."""
    async with serve_tls(weak_context(pki, weakness), protocol) as port:
        facts, error = await audit(port, protocol, pki.ca_file)
    assert error is None and facts is not None
    assert (facts.handshake_ok, facts.verified, facts.verify_reason, facts.hostname_match) == (
        True,
        True,
        None,
        True,
    )
    assert facts.handshake_refused == refused
    assert facts.chain[0].fingerprint_sha256 == pki.leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert tls_outcome(facts) == "tls_params"
    verdict = judge(facts, "success", "ok")
    assert verdict.reason == "tls_params"
    said = "the certificate verifies, but a client with today's defaults is refused"
    assert verdict.message == f"{facts.endpoint}: {said}: {refused}"


@pytest.mark.parametrize("weakness", ["dhe1024", "rsa_kx"])
async def test_weak_parameters_and_an_untrusted_certificate(pki: PKI, weakness: str) -> None:
    """Both wrong, and the outcome is the certificate's (``tls_verify``, reason ``untrusted``, not
    ``other``). RSA key exchange is refused before any certificate is sent: the permissive verifying
    handshake judges the certificate and the refusal is kept. A DHE server's certificate comes before its
    DH key: the verified handshake fails on the certificate first, and the DH refusal stays unknown."""
    async with serve_tls(weak_context(pki, weakness), "tcp") as port:
        facts, error = await audit(port, "tcp", None)  # the system store does not know our root
    assert error is None and facts is not None
    assert (facts.handshake_ok, facts.verified, facts.verify_reason) == (True, False, "untrusted")
    assert facts.error == "certificate verification failed: unable to get local issuer certificate"
    assert (facts.handshake_refused is not None) is (weakness == "rsa_kx")
    assert tls_outcome(facts) == "tls_verify"


async def test_modern_server_needs_no_second_look(pki: PKI) -> None:
    async with serve_tls(weak_context(pki, "modern"), "smtp") as port:
        facts, error = await audit(port, "smtp", pki.ca_file)
    assert error is None and facts is not None
    assert (facts.verified, facts.handshake_refused, tls_outcome(facts)) == (True, None, "success")


async def test_weak_parameters_through_the_daemons_runner(pki: PKI, tmp_path: Path) -> None:
    """The whole way out: ``cert_verified 1``, no verify error series, ``check_success 0``, outcome
    ``tls_params``; ``mailcanary probe`` CRITICAL with the refusal in words; the status page says it."""
    async with serve_tls(weak_context(pki, "dhe1024"), "smtp") as port:
        loaded = load_config(tls_check_config(tmp_path, port, pki.ca_file, name="weakdh"))
        found = find(loaded.config, "weakdh")
        assert found is not None
        store = ResultStore()
        store.ensure(["weakdh"])
        state = ExporterState(probes={"weakdh": "tls"})
        cache = SeriesCache(store, state)
        history = History()
        masker = make_masker(loaded)
        runner = Runner(
            loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=store, masker=masker, history=history
        )
        run = await runner.run(*found)
    assert (run.success, run.reason) == (False, "tls_params")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(cache.text())
        for s in fam.samples
    }
    where = frozenset({("probe", "weakdh"), ("endpoint", f"127.0.0.1:{port}"), ("protocol", "smtp")})
    assert samples[("mailcanary_tls_cert_verified", where)] == 1
    assert not [k for k in samples if k[0] == "mailcanary_tls_cert_verify_error_info"]
    assert samples[("mailcanary_tls_check_success", frozenset({("probe", "weakdh")}))] == 0
    outcome = frozenset({("probe", "weakdh"), ("outcome", "tls_params")})
    assert samples[("mailcanary_tls_check_runs_total", outcome)] == 1
    text, code = report([run], entries={"weakdh": found[1]})
    assert code == 2 and text.startswith("MAILCANARY CRITICAL - weakdh: tls_params")
    refused = "DH key too small; the server chose DHE-RSA-AES256-GCM-SHA384 (TLSv1.2)"
    assert f"    refused    by a client with today's defaults: {refused}" in text
    assert "    verified   yes" in text and "verdict    NEEDS ATTENTION" in text
    page = render_status(store.snapshot(), state, history, {})
    assert "FAILED tls_params" in page
    assert escape(f"refused by a client with today's defaults: {refused}") in page


# ---- 2. revoked is a failure -----------------------------------------------------------------------------


@pytest.fixture
async def responder(pki: PKI) -> AsyncIterator[OCSPResponder]:
    async with OCSPResponder(pki.inter).running() as r:
        yield r


def tls_check_config(tmp_path: Path, port: int, ca_file: Path, name: str = "revoked") -> str:
    path = tmp_path / "mailcanary.yml"
    path.write_text(
        f"""
global: {{state_dir: {tmp_path / "state"}, check_ocsp: true, ocsp_timeout: 5s}}
tls_checks:
  - name: {name}
    host: 127.0.0.1
    port: {port}
    protocol: smtp
    tls: starttls
    timeout: 5s
    check_legacy: false
    tls_config: {{ca_file: {ca_file}, server_name: {NAME}}}
"""
    )
    return str(path)


@pytest.mark.parametrize("status", ["revoked", "good"])
async def test_revoked_certificate_fails_the_check(
    pki: PKI, responder: OCSPResponder, tmp_path: Path, status: str
) -> None:
    """Was: ``check_success 1`` and ``mailcanary probe`` OK while the OCSP status series said revoked."""
    leaf = rsa_leaf(pki.pki, pki.inter, [NAME], pki.directory, ocsp_url=responder.url)
    responder.answer(leaf.cert, status)
    async with serve_tls(weak_context(pki, "modern", leaf), "smtp") as port:
        loaded = load_config(tls_check_config(tmp_path, port, pki.ca_file))
        found = find(loaded.config, "revoked")
        assert found is not None
        store = ResultStore()
        store.ensure(["revoked"])
        cache = SeriesCache(store, ExporterState(probes={"revoked": "tls"}))
        runner = Runner(
            loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=store, masker=make_masker(loaded)
        )
        run = await runner.run(*found)
    assert responder.asked == [leaf.cert.serial_number]
    address = f"127.0.0.1:{port}"
    answer = run.hygiene[address].ocsp
    assert run.tls[address].verified and answer is not None and answer.status == status
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(cache.text())
        for s in fam.samples
    }
    text, code = report([run], entries={"revoked": found[1]})
    if status == "good":
        assert (run.success, run.reason) == (True, "success")
        assert code == 0 and "verdict    GOOD" in text
        return
    assert (run.success, run.reason) == (False, "tls_revoked")
    assert run.message == f"certificate of {address} is revoked (OCSP responder)"
    assert samples[("mailcanary_tls_check_success", frozenset({("probe", "revoked")}))] == 0
    outcome = frozenset({("probe", "revoked"), ("outcome", "tls_revoked")})
    assert samples[("mailcanary_tls_check_runs_total", outcome)] == 1
    assert code == 2 and text.startswith("MAILCANARY CRITICAL - revoked: tls_revoked")
    assert "verdict    REVOKED (OCSP responder)" in text
    page = render_status(store.snapshot(), ExporterState(probes={"revoked": "tls"}), History(), {})
    assert "FAILED tls_revoked" in page and "REVOKED (OCSP responder)" in page


def _facts(**kw: object) -> TLSFacts:
    f = TLSFacts(
        endpoint="mx.example.test:25", protocol="smtp", mode="starttls", handshake_ok=True, verified=True
    )
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def test_a_stapled_revoked_response_fails_the_check_by_itself() -> None:
    """The scan (i21-report) fills ``ocsp_staple_status``; the verdict honours it already, before the
    certificate's other verdicts, and a good staple changes nothing."""
    assert judge(_facts(ocsp_staple_status="revoked"), "success", "ok") == Verdict(
        "tls_revoked", "certificate of mx.example.test:25 is revoked (stapled OCSP response)"
    )
    assert (
        tls_outcome(_facts(ocsp_staple_status="revoked", verified=False, verify_reason="expired"))
        == "tls_revoked"
    )
    assert tls_outcome(_facts(ocsp_staple_status="good")) == "success"
    assert tls_outcome(_facts(ocsp_staple_status="revoked", handshake_ok=False)) == "tls_handshake"


def test_a_round_trip_through_a_revoked_endpoint_fails(pki: PKI) -> None:
    """The round trip's SMTP or receiving endpoint: delivered, but ``tls_revoked`` (its delivery facts kept);
    a failure that came first (a timeout) keeps its own reason."""
    facts = {"smtp.example.test:587": _facts(endpoint="smtp.example.test:587")}
    keys = key_facts(pki.leaf.der)
    revoked = {"smtp.example.test:587": Hygiene(keys, OCSPResult("revoked"))}
    delivered = Verdict("success", "ok", delivery=1.5, placement="inbox")
    got = revoked_verdict(delivered, facts, revoked)
    assert got == Verdict(
        "tls_revoked",
        "certificate of smtp.example.test:587 is revoked (OCSP responder)",
        delivery=1.5,
        placement="inbox",
    )
    assert revoked_verdict(Verdict("timeout", "slow"), facts, revoked) == Verdict("timeout", "slow")
    good = {"smtp.example.test:587": Hygiene(keys, OCSPResult("good"))}
    assert revoked_verdict(delivered, facts, good) is delivered
    stapled = {
        "smtp.example.test:587": _facts(endpoint="smtp.example.test:587", ocsp_staple_status="revoked")
    }
    assert revoked_verdict(delivered, stapled, {}).reason == "tls_revoked"


# ---- 3. the dialogue before TLS -------------------------------------------------------------------------

# (protocol, step, reply, server closes, outcome). The rule (docs/tls.md): the server closing the channel
# or refusing the session (SMTP 421 at any step, a greeting that is not a welcome, IMAP * BYE, POP3 -ERR
# greeting) is tls_connect — nothing about TLS is known; STARTTLS/STLS refused while the session goes on
# (SMTP 454/5xx, IMAP NO/BAD, POP3 -ERR) is tls_handshake — the server speaks but will not do TLS.
DIALOGUES = [
    ("smtp", "greeting", b"421 4.7.0 mx Error: too many connections from 127.0.0.1\r\n", True, "tls_connect"),
    ("smtp", "greeting", b"554 5.7.1 go away\r\n", True, "tls_connect"),
    ("smtp", "EHLO", b"421 4.3.2 mx shutting down\r\n", True, "tls_connect"),
    ("smtp", "STARTTLS", b"421 4.7.0 mx Error: too many connections\r\n", True, "tls_connect"),
    ("smtp", "STARTTLS", b"454 4.7.0 TLS not available due to local problem\r\n", False, "tls_handshake"),
    ("imap", "greeting", b"* BYE too many connections\r\n", True, "tls_connect"),
    ("imap", "STARTTLS", b"* BYE server shutting down\r\n", True, "tls_connect"),
    ("imap", "STARTTLS", b"{tag} NO [UNAVAILABLE] TLS not available\r\n", False, "tls_handshake"),
    ("pop3", "greeting", b"-ERR [SYS/TEMP] too many connections\r\n", True, "tls_connect"),
    ("pop3", "STLS", b"-ERR TLS not available\r\n", False, "tls_handshake"),
]


async def test_rate_limited_after_a_failed_verification_is_tls_connect(pki: PKI) -> None:
    """Was ``tls_handshake`` ("no TLS session"): the first session fails verification, the second one,
    to gather the chain, is greeted ``421`` (rate limited). The server does speak TLS: what stopped the
    audit is the dialogue, and the certificate's verdict is kept in the facts."""
    async with serve_tls(weak_context(pki, "modern"), "smtp", sessions=1) as port:
        facts, error = await audit(port, "smtp", None)
    assert error is not None and error.reason == "tls_connect"
    assert "421 4.7.0" in error.message and "unable to get local issuer certificate" in error.message
    assert facts is not None and (facts.verified, facts.verify_reason) == (False, "untrusted")


async def test_rate_limited_legacy_handshakes_stay_unknown(pki: PKI) -> None:
    async with serve_tls(weak_context(pki, "modern"), "smtp", sessions=1) as port:
        facts, error = await audit(port, "smtp", pki.ca_file)
    assert error is None and facts is not None and facts.verified
    assert facts.legacy == {"TLSv1": None, "TLSv1.1": None}


@pytest.mark.parametrize(("protocol", "step", "reply", "close", "outcome"), DIALOGUES)
async def test_dialogue_failures_before_tls(
    protocol: str, step: str, reply: bytes, close: bool, outcome: str
) -> None:
    async with serving(pretls_handler(protocol, step, reply, close=close)) as port:
        facts, error = await audit(port, protocol, None)
    assert error is not None and error.reason == outcome, error
    if outcome == "tls_handshake":  # the server spoke and offered STARTTLS: those facts are kept
        assert facts is not None and (facts.starttls_offered, facts.handshake_ok) == (True, False)
        assert facts.legacy == {"TLSv1": None, "TLSv1.1": None}  # no hello was ever answered: unknown


def test_outcomes_are_declared() -> None:
    """Every outcome is a series from the start: the new ones too, where a kind can end in them."""
    assert {"tls_params", "tls_revoked"} <= set(TLS_OUTCOMES)
    assert "tls_revoked" in OUTCOMES and "tls_params" not in OUTCOMES


# ---- the domain check judges the same facts -------------------------------------------------------------


@pytest.mark.parametrize("weakness", ["dhe1024", "rsa_kx"])
async def test_domain_mx_address_with_weak_parameters(pki: PKI, weakness: str) -> None:
    """Was the finding ``cert_other`` (and ``mailcanary_domain_mx_cert_verified 0``): now the certificate
    verifies and the finding is ``tls_params``; the report says what today's senders are refused."""
    async with serve_tls(weak_context(pki, weakness), "smtp") as port:
        settings = MXCheckSettings(port=port, timeout=5.0, check_legacy=False, ca_file=str(pki.ca_file))
        address = await check_address(NAME, "127.0.0.1", settings, Recorder())
    assert address.tls is not None and (address.tls.verified, address.tls.verify_reason) == (True, None)
    host = MXHost(NAME, 10, ("127.0.0.1",), "secure")
    resolution = MXResolution("example.test", (host,), implicit=False, null_mx=False, dnssec="secure")
    report = DomainReport("example.test", resolution, [MXAddressResult(address)])
    assert report.problems == [f"{NAME}/127.0.0.1: tls_params"]
    assert f"refused by a client with today's defaults: {address.tls.handshake_refused}" in render_report(
        report
    )
    address.tls.ocsp_staple_status = "revoked"
    assert report.problems[-1] == f"{NAME}/127.0.0.1: ocsp_staple_revoked"


def _ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    err = cls(1, f"[SSL: {reason}] test")
    err.reason = reason
    return err


def test_refusal_words() -> None:
    """The pure part: which handshake failures are the parameters', and the one line that says so."""
    dh = ProbeError("SMTP STARTTLS: TLS handshake failed: DH_KEY_TOO_SMALL", reason="smtp_tls")
    dh.__cause__ = _ssl_error("DH_KEY_TOO_SMALL")
    assert parameters_refused(dh)
    assert describe_refusal(dh, None, None) == "DH key too small"
    old = ProbeError("x", reason="tls_handshake")
    old.__cause__ = _ssl_error("UNSUPPORTED_PROTOCOL")
    assert describe_refusal(old, "TLSv1", "ECDHE-RSA-AES256-SHA") == (
        "no protocol version in common; the server chose ECDHE-RSA-AES256-SHA (TLSv1)"
    )
    odd = ProbeError("x", reason="tls_handshake")
    odd.__cause__ = _ssl_error("SOMETHING_NEW")
    assert describe_refusal(odd, "TLSv1.2", "AES128-SHA") == (
        "something new; the server chose AES128-SHA (TLSv1.2): RSA key exchange, no forward secrecy"
    )
    cert = ProbeError("x", reason="smtp_tls")
    cert.__cause__ = _ssl_error("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError)
    assert not parameters_refused(cert)
    assert not parameters_refused(ProbeError("SMTP STARTTLS answered 454", reason="smtp_tls", code=454))
    assert forward_secret("TLS_AES_128_GCM_SHA256") and forward_secret("DHE-RSA-AES256-GCM-SHA384")
    assert not forward_secret("AES256-GCM-SHA384") and not forward_secret("DES-CBC3-SHA")
