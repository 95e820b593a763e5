"""The verdict parser (probes.receipt.verdict): Authentication-Results only from trusted authserv-ids (RFC
8601 §5), the nearest trusted field wins, a forged or unparsable one is ignored; spam scores of SpamAssassin,
rspamd and Microsoft. Headers in the formats the real tools write; fuzzed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from exporter.metrics.collector import ExporterState, build_registry
from probes import canary
from probes.receipt.verdict import spam_scores, verdict_of
from tests.mailstack import MailStack
from tests.support.procs import run_bounded
from tests.support.roundtrip import make_runner, run_one
from tests.support.stackconfig import roundtrip

TRUSTED = frozenset({"mx.example.test"})

# OpenDKIM / OpenDMARC / policyd-spf style, topmost = nearest the mailbox; the last one is forged by
# the sender (an authserv-id we do not trust claiming everything passed).
HEADERS = (
    b"Authentication-Results: mx.example.test; dmarc=fail (p=reject dis=none) header.from=example.test\r\n"
    b"Authentication-Results: mx.example.test;\r\n"
    b'\tdkim=fail reason="signature verification failed" (2048-bit key; unprotected)\r\n'
    b'\theader.d=example.test header.i=@example.test header.b="AbC";\r\n'
    b"\tspf=pass smtp.mailfrom=a@example.test\r\n"
    b"Authentication-Results: evil.example.net; dkim=pass header.d=example.test; dmarc=pass\r\n"
    b"Authentication-Results: this is not ; = a valid field\r\n"
    b"X-Spam-Status: Yes, score=7.3 required=5.0 tests=BAYES_99,\r\n\tDKIM_INVALID autolearn=no\r\n"
    b"X-Spamd-Result: default: False [3.40 / 15.00]; R_SPF_ALLOW(-0.20)[+ip4:192.0.2.0/24]\r\n"
    b"X-Forefront-Antispam-Report: CIP:192.0.2.1;CTRY:;LANG:en;SCL:6;SRV:;IPV:NLI;SFV:SPM\r\n"
    b"Subject: x\r\n\r\nbody\r\n"
)


def test_trusted_results_only_nearest_first() -> None:
    v = verdict_of(HEADERS, TRUSTED, True)
    assert v.auth == {"dmarc": "fail", "dkim": "fail", "spf": "pass"}
    assert v.authserv_id == "mx.example.test"
    assert v.ignored == 2  # the forged field and the broken one


def test_untrusted_ids_give_missing_not_pass() -> None:
    v = verdict_of(HEADERS, frozenset({"other.example.test"}), True)
    assert v.auth == {"spf": "missing", "dkim": "missing", "dmarc": "missing"}
    assert v.authserv_id is None and v.ignored == 4


def test_no_trusted_ids_no_auth_verdict() -> None:
    v = verdict_of(HEADERS, frozenset(), True)
    assert v.auth == {}


def test_authserv_id_case_and_two_signatures() -> None:
    raw = (
        b"Authentication-Results: MX.Example.Test;"
        b" dkim=pass header.d=a; dkim=fail header.d=b; arc=pass\r\n\r\n"
    )
    assert verdict_of(raw, TRUSTED, False).auth == {
        "dkim": "fail",  # one broken signature of two: not a clean pass
        "arc": "pass",
        "spf": "missing",
        "dmarc": "missing",
    }


def test_spam_scores_of_each_engine() -> None:
    assert spam_scores(HEADERS) == {"spamassassin": 7.3, "rspamd": 3.4, "microsoft": 6.0}
    assert spam_scores(b"X-Spam-Score: -1.2\r\nX-Rspamd-Score: 12.5\r\n\r\n") == {
        "spamassassin": -1.2,
        "rspamd": 12.5,
    }
    assert spam_scores(b"X-MS-Exchange-Organization-SCL: -1\r\n\r\n") == {"microsoft": -1.0}
    assert spam_scores(b"X-Spam-Status: No\r\n\r\n") == {}
    assert verdict_of(HEADERS, TRUSTED, False).scores == {}  # spam_headers: false


def test_real_spamassassin_header_is_read() -> None:
    """SpamAssassin 4 (Debian's, local tests only: no network) scores a canary; we read its header."""
    binary = shutil.which("spamassassin")
    if binary is None:
        pytest.fail("spamassassin not installed (scripts/install-deps.sh installs it)", pytrace=False)
    token = canary.new_token("sa")
    message = canary.build_message(token, b"k" * 32, "a@example.test", "b@example.test")
    out = run_bounded([binary, "-L", "-x"], 120, input=message, check=True, text=False)
    scored = out.stdout
    assert b"X-Spam-Status:" in scored
    status = canary.header_values(scored, "X-Spam-Status", spaced=True)[0]
    expected = float(status.split("score=")[1].split()[0])
    assert verdict_of(scored, TRUSTED, True).scores == {"spamassassin": expected}


@given(st.binary(max_size=1500))
def test_verdict_is_total_on_bytes(raw: bytes) -> None:
    verdict_of(raw, TRUSTED, True)


@given(st.text(max_size=300))
def test_verdict_is_total_on_authentication_results(value: str) -> None:
    line = "Authentication-Results: mx.example.test; " + value.replace("\r", " ").replace("\n", " ")
    v = verdict_of(line.encode("utf-8", "replace") + b"\r\n\r\n", TRUSTED, True)
    assert set(v.auth) >= {"spf", "dkim", "dmarc"}


def test_real_spamassassin_in_the_delivery_path(mailstack: MailStack, tmp_path: Path) -> None:
    """spam@ is delivered through SpamAssassin: the run exports its score; no trusted
    Authentication-Results on this path, so spf/dkim/dmarc are "missing", never a made-up pass."""
    address = mailstack.spam_address
    mailstack.clear(address)
    probe = roundtrip(mailstack, tmp_path, "sa", address, receive__trusted_authserv_ids=["mail.example.test"])
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner)
    assert result.success, result.message
    assert result.verdict is not None and "spamassassin" in result.verdict.scores
    text = generate_latest(build_registry(runner.store, ExporterState())).decode()
    score = result.verdict.scores["spamassassin"]
    assert f'mailcanary_roundtrip_spam_score{{engine="spamassassin",probe="sa"}} {score}' in text
    assert 'mailcanary_roundtrip_auth_result{method="dkim",probe="sa",result="missing"} 1.0' in text
