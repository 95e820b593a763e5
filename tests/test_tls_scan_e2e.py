"""The TLS scan (issue 21) wired into the exporter, against the real Postfix + Dovecot of the session
stack: a TLS check and a round trip export the scan facts, scans are remembered (a second run opens no
scan connection: counted with the scanner's own ``connections``), ``/probe`` scans only with the module
key, and a full check stays within 15 connections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ModuleConfig, TLSConfig, load_config
from exporter.metrics.collector import ExporterState, MailcanaryCollector
from exporter.run.results import ResultStore, RunResult
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from exporter.web.multitarget import probe_handler
from probes.recorder import Masker, Recorder
from probes.tls import audit
from probes.tls.audit import TLSCheckSettings
from probes.tls.scan import ScanFacts
from probes.tls.scan import scan as real_scan
from probes.tls.scanning import ScanCache
from tests.mailstack import MailStack
from tests.support.roundtrip import make_runner as roundtrip_runner
from tests.support.roundtrip import run_one
from tests.support.stackconfig import roundtrip

MAX_CONNECTIONS = 15  # the target for one full check of one endpoint


class Counted:
    """The real scanner, counted: how many scans ran and the connections they opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scans: list[tuple[str, int]] = []

        async def scan(settings: TLSCheckSettings, recorder: Recorder) -> ScanFacts:
            facts = await real_scan(settings, recorder)
            self.scans.append((settings.endpoint.address, facts.connections))
            return facts

        monkeypatch.setattr(audit, "scan", scan)

    @property
    def connections(self) -> int:
        return sum(n for _, n in self.scans)


def samples(
    store: ResultStore, probes: dict[str, str]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, ExporterState(probes=probes)))
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(generate_latest(registry).decode())
        for s in fam.samples
    }


def value(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    for (n, lab), v in m.items():
        if n == name and set(labels.items()) <= lab:
            return v
    return None


def tls_runner(stack: MailStack, tmp: Path, checks: list[dict[str, Any]]) -> Runner:
    path = tmp / "mailcanary.yml"
    path.write_text(yaml.safe_dump({"global": {"state_dir": str(tmp / "state")}, "tls_checks": checks}))
    loaded = load_config(str(path))
    return Runner(
        loaded=loaded,
        key=b"k" * 32,
        ledger=Ledger(tmp / "l.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )


def check(stack: MailStack, name: str, port: str, protocol: str, tls: str) -> dict[str, Any]:
    return {
        "name": name,
        "host": stack.host,
        "port": stack.ports[port],
        "protocol": protocol,
        "tls": tls,
        "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
    }


def test_tls_checks_export_the_scan_and_reuse_it(
    mailstack: MailStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    checks = [
        check(mailstack, "sub", "submission", "smtp", "starttls"),
        check(mailstack, "imaps", "imaps", "imap", "implicit"),
        check(mailstack, "pop3", "pop3", "pop3", "starttls"),
    ]
    runner = tls_runner(mailstack, tmp_path, checks)

    async def run_all() -> list[RunResult]:
        return [await runner.run_entry(c) for c in runner.loaded.config.tls_checks]

    first = asyncio.run(run_all())
    assert [r.reason for r in first] == ["success"] * 3, [r.message for r in first]
    assert len(counted.scans) == 3 and all(n > 0 for _, n in counted.scans)
    for run in first:
        (facts,) = run.tls.values()
        scan = facts.scan
        assert scan is not None and scan.checked_at is not None
        assert scan.protocols["TLSv1.2"] is True and scan.protocols["TLSv1.3"] is True
        assert scan.protocols["SSLv3"] is False and facts.legacy == {"TLSv1": False, "TLSv1.1": False}
        assert facts.chain_complete is True and facts.chain_ordered is True  # the stack serves leaf + CA
        assert "tls_scan" in run.phases and "tls_legacy" not in run.phases  # legacy answered by the scan
        # the whole check: the verified handshake and the scan
        assert 1 + scan.connections <= MAX_CONNECTIONS, scan.connections
    m = samples(runner.store, {"sub": "tls", "imaps": "tls", "pop3": "tls"})
    sub = {"probe": "sub", "protocol": "smtp"}
    assert value(m, "mailcanary_tls_protocol_accepted", version="TLSv1.3", **sub) == 1
    assert value(m, "mailcanary_tls_protocol_accepted", version="SSLv3", **sub) == 0
    assert value(m, "mailcanary_tls_cipher_class_accepted", **{"class": "null"}, **sub) == 0
    assert value(m, "mailcanary_tls_chain_complete", **sub) == 1
    assert value(m, "mailcanary_tls_scan_connections", **sub) == counted.scans[0][1]
    sub_scan = next(iter(first[0].tls.values())).scan
    assert sub_scan is not None
    assert value(m, "mailcanary_tls_scan_checked_timestamp_seconds", **sub) == sub_scan.checked_at

    before = list(counted.scans)
    again = asyncio.run(run_all())
    assert counted.scans == before  # remembered: no scan connection at all
    for old, new in zip(first, again, strict=True):
        (f_old,), (f_new,) = old.tls.values(), new.tls.values()
        assert f_new.scan is f_old.scan and "tls_scan" not in new.phases
        assert f_new.legacy == f_old.legacy and "tls_legacy" not in new.phases


def test_roundtrip_sides_are_scanned_outside_the_run_and_once(
    mailstack: MailStack, mailbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    runner = roundtrip_runner(tmp_path, [roundtrip(mailstack, tmp_path, "rt-scan", mailbox)])
    first = run_one(runner)
    assert first.success, first.message
    assert len(counted.scans) == 2  # the SMTP side and the IMAP side
    assert {ep for ep, _ in counted.scans} == set(first.tls)
    for facts in first.tls.values():
        assert facts.scan is not None and facts.scan.protocols["TLSv1.3"] is True
        assert facts.legacy == {"TLSv1": None, "TLSv1.1": None}  # a round trip does not ask legacy
    assert "tls_scan" not in first.phases  # not part of the run's time or phases
    m = samples(runner.store, {"rt-scan": "roundtrip"})
    assert (
        value(m, "mailcanary_tls_protocol_accepted", probe="rt-scan", protocol="smtp", version="TLSv1.2") == 1
    )
    assert value(m, "mailcanary_tls_forward_secrecy", probe="rt-scan", protocol="imap") is not None

    second = run_one(runner)
    assert second.success, second.message
    assert len(counted.scans) == 2  # remembered for scan_recheck
    assert {ep: f.scan for ep, f in second.tls.items()} == {ep: f.scan for ep, f in first.tls.items()}


def test_roundtrip_side_with_scan_off_is_not_scanned(
    mailstack: MailStack, mailbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    probe = roundtrip(mailstack, tmp_path, "rt-noscan", mailbox, smtp__scan=False)
    run = run_one(roundtrip_runner(tmp_path, [probe]))
    assert run.success, run.message
    assert [ep for ep, _ in counted.scans] == [f"{mailstack.host}:{mailstack.ports['imaps']}"]
    smtp = run.tls[f"{mailstack.host}:{mailstack.ports['submission']}"]
    assert smtp.scan is None


async def test_probe_endpoint_scans_only_with_the_module_key_and_remembers_it(
    mailstack: MailStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    tls_config = TLSConfig(ca_file=str(mailstack.ca_file), server_name=mailstack.server_name)
    modules = {
        "plain": ModuleConfig(protocol="smtp", tls="starttls", tls_config=tls_config),
        "scan": ModuleConfig(protocol="smtp", tls="starttls", tls_config=tls_config, scan=True),
    }
    cache = ScanCache()
    app = web.Application()
    app.add_routes([web.get("/probe", probe_handler(lambda: modules, Masker, scans=lambda: cache))])
    target = f"127.0.0.1:{mailstack.ports['submission']}"
    async with TestClient(TestServer(app)) as client:

        async def ask(module: str) -> str:
            resp = await client.get(f"/probe?module={module}&target={target}")
            assert resp.status == 200
            return await resp.text()

        plain = await ask("plain")
        assert counted.scans == [] and "probe_success 1.0" in plain
        assert 'mailcanary_tls_protocol_accepted{version="TLSv1.3"}' not in plain
        scanned = await ask("scan")
        assert len(counted.scans) == 1 and "probe_success 1.0" in scanned
        assert 'mailcanary_tls_protocol_accepted{version="TLSv1.3"} 1.0' in scanned
        assert 'mailcanary_tls_protocol_accepted{version="SSLv3"} 0.0' in scanned
        again = await ask("scan")
        assert len(counted.scans) == 1  # remembered per target
        assert 'mailcanary_tls_protocol_accepted{version="TLSv1.3"} 1.0' in again
