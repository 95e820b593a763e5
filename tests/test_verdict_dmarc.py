"""The DMARC verdict from real OpenDMARC: at the relay ("MX"), after the verifying OpenDKIM, OpenDMARC
reads OpenDKIM's trusted Authentication-Results, checks SPF itself (SPFSelfValidate) and looks up
``_dmarc.example.test``, both answered by a real NSD (see tests.support.milters.OpenDMARC: OpenDMARC can
only use the system resolver, so it runs in its own namespaces with a private resolv.conf). Aligned DKIM
and SPF pass: dmarc=pass exported; a broken DKIM key: dkim=fail beside dmarc=pass (SPF still aligned)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporter.metrics.collector import ExporterState, build_registry
from tests.mailstack import MailStack, make_root
from tests.support.milters import AUTHSERV_ID, DKIMPair, OpenDMARC
from tests.support.roundtrip import make_runner, run_one
from tests.support.stackconfig import roundtrip

DMARC = "v=DMARC1; p=reject; adkim=r; aspf=r"
SPF_PASS = "v=spf1 ip4:127.0.0.0/8 -all"


class Milters:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dkim = DKIMPair(directory / "dkim")
        try:
            self.dmarc = OpenDMARC(directory / "dmarc", DMARC, SPF_PASS)
        except BaseException:
            self.dkim.stop()
            raise

    def publish(self, *, broken: bool) -> None:
        """The right DKIM key in the verifier's DNS data, or another one (restarts the verifier)."""
        self.dkim.publish(broken=broken)

    def stop(self) -> None:
        self.dmarc.stop()
        self.dkim.stop()


@pytest.fixture(scope="module")
def dmarc_stack() -> Iterator[tuple[MailStack, Milters]]:
    for tool in ("opendkim", "opendmarc", "nsd", "unshare"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} not installed (scripts/install-deps.sh installs it)", pytrace=False)
    root = make_root()
    milters = Milters(root / "milters")
    stack = MailStack(
        root,
        postfix_settings={
            "smtpd_milters": milters.dkim.signer.milter,
            "milter_default_action": "tempfail",
        },
    )
    stack.claim()
    try:
        stack.start()
        stack.start_relay(
            {
                "smtpd_milters": f"{milters.dkim.verifier_milter}, {milters.dmarc.milter}",
                "milter_default_action": "tempfail",
            }
        )
        yield stack, milters
    finally:
        stack.stop()
        milters.stop()
        if os.environ.get("MAILSTACK_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def _run(stack: MailStack, tmp: Path, name: str) -> tuple[object, str]:
    stack.clear(stack.hop_address)
    probe = roundtrip(stack, tmp, name, stack.hop_address, receive__trusted_authserv_ids=[AUTHSERV_ID])
    runner = make_runner(tmp, [probe])
    result = run_one(runner, debug=True)
    assert result.success, result.message
    return result, generate_latest(build_registry(runner.store, ExporterState())).decode()


def _dmarc_series(text: str, probe: str) -> list[str]:
    """Every dmarc series of the probe (one per method: the result it had)."""
    head = f'mailcanary_roundtrip_auth_result{{method="dmarc",probe="{probe}",'
    return [line.removeprefix(head) for line in text.splitlines() if line.startswith(head)]


def test_dmarc_pass_from_real_opendmarc(dmarc_stack: tuple[MailStack, Milters], tmp_path: Path) -> None:
    stack, milters = dmarc_stack
    milters.publish(broken=False)
    result, text = _run(stack, tmp_path, "dmarcok")
    auth = result.verdict.auth  # type: ignore[attr-defined]
    assert auth["dmarc"] == "pass", result.verdict  # type: ignore[attr-defined]
    assert auth["dkim"] == "pass" and auth["spf"] == "pass", auth
    assert 'mailcanary_roundtrip_auth_result{method="dmarc",probe="dmarcok",result="pass"} 1.0' in text
    assert _dmarc_series(text, "dmarcok") == ['result="pass"} 1.0']


def test_broken_dkim_alone_is_no_dmarc_fail(dmarc_stack: tuple[MailStack, Milters], tmp_path: Path) -> None:
    """A failing DKIM signature with an aligned SPF pass is still dmarc=pass (RFC 7489 §3.1: either
    aligned identifier passing is enough), exported as such; dkim=fail is exported beside it.

    dmarc=fail itself cannot be produced on loopback: OpenDMARC's SPF check (libspf2) passes every
    127.0.0.0/8 client whatever the record says ("localhost is always allowed."), and the test never
    sends from a non-loopback address. The fail mapping is covered by tests/test_verdict.py's parser
    cases; here the real milter shows that the DKIM failure reaches us and DMARC is not misread."""
    stack, milters = dmarc_stack
    milters.publish(broken=True)
    try:
        result, text = _run(stack, tmp_path, "dmarcdkimbad")
    finally:
        milters.publish(broken=False)
    auth = result.verdict.auth  # type: ignore[attr-defined]
    assert auth == {"dkim": "fail", "spf": "pass", "dmarc": "pass"}, auth
    assert _dmarc_series(text, "dmarcdkimbad") == ['result="pass"} 1.0']
    assert 'mailcanary_roundtrip_auth_result{method="dkim",probe="dmarcdkimbad",result="fail"} 1.0' in text
