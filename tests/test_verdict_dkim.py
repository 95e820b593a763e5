"""The verdict from real OpenDKIM: the submission Postfix signs (milter in sign mode), the relay ("MX")
verifies (milter in verify mode, public key from TestDNSData) and stamps Authentication-Results with its
authserv-id mx2.example.test. Trusted: dkim=pass exported; a broken DNS key: dkim=fail exported and the
alert's condition holds; the same stamp from an id not trusted: ignored ("missing")."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporter.metrics.collector import ExporterState, build_registry
from tests.mailstack import MailStack, make_root
from tests.support.milters import AUTHSERV_ID, DKIMPair
from tests.support.roundtrip import make_runner, run_one
from tests.support.stackconfig import roundtrip


@pytest.fixture(scope="module")
def dkim_stack() -> Iterator[tuple[MailStack, DKIMPair]]:
    if shutil.which("opendkim") is None:
        pytest.fail("opendkim not installed (scripts/install-deps.sh installs it)", pytrace=False)
    root = make_root()
    pair = DKIMPair(root / "dkim")
    stack = MailStack(
        root, postfix_settings={"smtpd_milters": pair.signer.milter, "milter_default_action": "tempfail"}
    )
    stack.claim()
    try:
        stack.start()
        stack.start_relay({"smtpd_milters": pair.verifier_milter, "milter_default_action": "tempfail"})
        yield stack, pair
    finally:
        stack.stop()
        pair.stop()
        if os.environ.get("MAILSTACK_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def _run(stack: MailStack, tmp: Path, name: str, trusted: list[str]) -> tuple[object, str]:
    stack.clear(stack.hop_address)
    probe = roundtrip(stack, tmp, name, stack.hop_address, receive__trusted_authserv_ids=trusted)
    runner = make_runner(tmp, [probe])
    result = run_one(runner, debug=True)
    assert result.success, result.message
    return result, generate_latest(build_registry(runner.store, ExporterState())).decode()


def test_dkim_pass_from_the_trusted_verifier(dkim_stack: tuple[MailStack, DKIMPair], tmp_path: Path) -> None:
    stack, pair = dkim_stack
    pair.publish(broken=False)
    result, text = _run(stack, tmp_path, "dkimok", [AUTHSERV_ID])
    assert result.verdict.auth["dkim"] == "pass", result.verdict  # type: ignore[attr-defined]
    assert result.verdict.authserv_id == AUTHSERV_ID  # type: ignore[attr-defined]
    assert 'mailcanary_roundtrip_auth_result{method="dkim",probe="dkimok",result="pass"} 1.0' in text


def test_broken_dns_key_gives_dkim_fail(dkim_stack: tuple[MailStack, DKIMPair], tmp_path: Path) -> None:
    stack, pair = dkim_stack
    pair.publish(broken=True)
    try:
        result, text = _run(stack, tmp_path, "dkimbad", [AUTHSERV_ID])
    finally:
        pair.publish(broken=False)
    assert result.verdict.auth["dkim"] == "fail", result.verdict  # type: ignore[attr-defined]
    assert 'mailcanary_roundtrip_auth_result{method="dkim",probe="dkimbad",result="fail"} 1.0' in text


def test_results_of_an_untrusted_id_are_ignored(
    dkim_stack: tuple[MailStack, DKIMPair], tmp_path: Path
) -> None:
    stack, pair = dkim_stack
    pair.publish(broken=False)
    result, text = _run(stack, tmp_path, "dkimuntrusted", ["mail.example.test"])
    assert result.verdict.auth["dkim"] == "missing"  # type: ignore[attr-defined]
    assert result.verdict.ignored >= 1  # type: ignore[attr-defined]
    assert (
        'mailcanary_roundtrip_auth_result{method="dkim",probe="dkimuntrusted",result="missing"} 1.0' in text
    )
