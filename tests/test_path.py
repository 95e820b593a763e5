"""The path from the Received chain, through two real Postfix instances: the submission Postfix relays
hop@ mail over SMTP (STARTTLS) to a second Postfix, which delivers it. The run sees three Received
fields (submission, relay, nothing else: virtual(8) adds none), TLS on each, per-hop delays >= 0 on one
machine's clock, and the IP the relay saw."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from exporter.metrics.collector import ExporterState, build_registry
from tests.mailstack import MailStack
from tests.support.roundtrip import make_runner, run_one
from tests.support.stackconfig import roundtrip


def test_two_postfix_hop_chain(mailstack: MailStack, tmp_path: Path) -> None:
    mailstack.start_relay()
    address = mailstack.hop_address
    mailstack.clear(address)
    runner = make_runner(tmp_path, [roundtrip(mailstack, tmp_path, "hops", address)])
    result = run_one(runner, debug=True)
    assert result.success, result.message
    path = result.path
    assert path is not None and path.count >= 2
    assert all(d is not None and d >= 0 for d in path.delays())  # one clock: no skew
    assert path.total is not None and path.total >= 0
    assert [h.tls for h in path.hops][:2] == [True, True]  # submission (ESMTPSA) and relay (ESMTPS)
    assert path.hops[0].protocol == "ESMTPSA" and path.hops[1].protocol == "ESMTPS"
    assert result.receiver["sender_ip"] == "127.0.0.1"
    assert abs(result.receiver["clock_offset"]) < 5
    text = generate_latest(build_registry(runner.store, ExporterState())).decode()
    assert f'mailcanary_roundtrip_hops{{probe="hops"}} {float(path.count)}' in text
    assert 'mailcanary_roundtrip_hop_tls{hop="2",probe="hops"} 1.0' in text
    assert 'mailcanary_roundtrip_hop_delay_seconds{hop="2",probe="hops"}' in text
    assert "mailcanary_roundtrip_path_seconds{" in text
