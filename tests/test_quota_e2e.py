"""Quota read from the real Dovecot (quota plugin, ``count`` backend, a small limit): the canary mailbox
at 95 % of its storage and message limits gives exact metric values, and the round trip still succeeds."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import load_config
from exporter.metrics.collector import ExporterState, SeriesCache
from exporter.run.results import ResultStore
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from tests.mailstack import MailStack
from tests.mailstack._net import free_ports, wait_ready
from tests.support.procs import run_bounded
from tests.support.stackconfig import roundtrip, write_config

KEY = b"quota-test-key-0123456789abcdef!"
ROOT = Path(__file__).resolve().parent.parent
LIMIT_KIB = 200
LIMIT_MESSAGES = 20
FILLER_BYTES = 10 * 1024  # each filler message, CRLF line ends: its virtual size is its file size


@pytest.fixture(scope="module")
def quota_imaps(mailstack: MailStack) -> Iterator[int]:
    """Port of a Dovecot over the same Maildirs with the quota plugin and a small per-user limit."""
    (imaps,) = free_ports(1)
    dv = mailstack.make_dovecot(
        "quota-dovecot",
        tls=mailstack.tls,
        ports={"imaps": imaps},
        settings={"mail_plugins": "quota"},
        extra_config=[
            "protocol imap {",
            "  mail_plugins = $mail_plugins imap_quota",
            "}",
            "plugin {",
            "  quota = count:User quota",
            f"  quota_rule = *:storage={LIMIT_KIB}K:messages={LIMIT_MESSAGES}",
            "  quota_vsizes = yes",
            "}",
        ],
    )
    try:
        dv.render()
        dv.check()
        dv.start()
        pending = wait_ready(dv.endpoints(), 20)
        assert not pending, mailstack.log_tails()
        yield imaps
    finally:
        dv.stop()


def _filler(n: int) -> bytes:
    head = f"From: someone@example.org\r\nTo: x@example.org\r\nSubject: filler {n}\r\n\r\n".encode()
    body = b"".join(b"%077d\r\n" % i for i in range(FILLER_BYTES // 79 + 1))
    raw = head + body
    raw = raw[: FILLER_BYTES - 2] + b"\r\n"
    assert len(raw) == FILLER_BYTES
    return raw


def _values(text: str, name: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[(s.labels["probe"], s.labels.get("resource", s.labels.get("reason", "")))] = s.value
    return out


def test_quota_at_95_percent_is_exported_exactly(
    mailstack: MailStack, quota_imaps: int, mailbox: str, tmp_path: Path
) -> None:
    filled = LIMIT_MESSAGES - 1  # 19 of 20 messages, 190 of 200 KiB: 95 % of both
    for n in range(filled):
        mailstack.inject(mailbox, _filler(n))
    probe = roundtrip(mailstack, tmp_path, "qt", mailbox, protocol="imap", receive_tls="implicit")
    probe["receive"]["port"] = quota_imaps
    key_file = tmp_path / "canary.key"
    key_file.write_bytes(KEY)
    loaded = load_config(str(write_config(tmp_path, [probe], canary_key_file=str(key_file))))
    store = ResultStore()
    state = ExporterState(probes={"qt": "roundtrip"})
    cache = SeriesCache(store, state)
    ledger = Ledger(tmp_path / "ledger.json")
    runner = Runner(loaded=loaded, key=KEY, ledger=ledger, store=store, masker=make_masker(loaded))
    store.ensure(["qt"])
    result = asyncio.run(runner.run_entry(loaded.config.roundtrip[0], debug=True))
    assert result.success, (result.reason, result.message, result.transcript)
    text = cache.text()
    assert _values(text, "mailcanary_mailbox_quota_used") == {
        ("qt", "storage"): filled * FILLER_BYTES,
        ("qt", "message"): filled,
    }
    assert _values(text, "mailcanary_mailbox_quota_limit") == {
        ("qt", "storage"): LIMIT_KIB * 1024,
        ("qt", "message"): LIMIT_MESSAGES,
    }
    assert _values(text, "mailcanary_mailbox_quota_read_errors_total") == {
        ("qt", "refused"): 0,
        ("qt", "protocol"): 0,
        ("qt", "timeout"): 0,
    }
    transcript = "\n".join(result.transcript or [])
    assert 'QUOTA "User quota" (STORAGE 190 200 MESSAGE 19 20)' in transcript
    assert len(mailstack.messages(mailbox)) == filled  # the canary came and went; the fillers stay


def test_quota_off_reads_nothing(
    mailstack: MailStack, quota_imaps: int, mailbox: str, tmp_path: Path
) -> None:
    probe = roundtrip(mailstack, tmp_path, "qo", mailbox, protocol="imap", receive_tls="implicit")
    probe["receive"]["port"] = quota_imaps
    probe["receive"]["quota"] = False
    key_file = tmp_path / "canary.key"
    key_file.write_bytes(KEY)
    loaded = load_config(str(write_config(tmp_path, [probe], canary_key_file=str(key_file))))
    runner = Runner(
        loaded=loaded,
        key=KEY,
        ledger=Ledger(tmp_path / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )
    result = asyncio.run(runner.run_entry(loaded.config.roundtrip[0], debug=True))
    assert result.success, (result.reason, result.message)
    assert result.quota is None and result.quota_error is None
    assert "GETQUOTAROOT" not in "\n".join(result.transcript or [])


def test_probe_command_reports_quota_and_sync(
    mailstack: MailStack, quota_imaps: int, mailbox: str, tmp_path: Path
) -> None:
    for n in range(3):
        mailstack.inject(mailbox, _filler(n))
    probe = roundtrip(mailstack, tmp_path, "qs", mailbox, protocol="imap", receive_tls="implicit")
    probe["receive"]["port"] = quota_imaps
    probe["receive"]["sync"] = {"timeout": "5s"}
    config = str(write_config(tmp_path, [probe]))
    cmd = [sys.executable, "-m", "exporter.cli", "probe", "--config", config, "qs"]
    out = run_bounded(cmd, 60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("MAILCANARY OK - 1 round trips delivered | 'qs_delivery'=")
    assert "'qs_sync'=" in first
    assert "'qs_quota_storage_ratio'=0.1500;0.9;;0;1" in first
    assert (
        f"  quota: message 3 of {LIMIT_MESSAGES} (15.0 %), "
        f"storage {3 * FILLER_BYTES} of {LIMIT_KIB * 1024} bytes (15.0 %)\n"
    ) in out.stdout
    assert "  sync: the second session saw the flag " in out.stdout
