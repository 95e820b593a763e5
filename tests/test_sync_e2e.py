"""The sync check on the real Dovecot: two IMAP sessions on one mailbox; the second sees the keyword the
first set on the canary, and both times are exported."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import load_config
from exporter.metrics.collector import ExporterState, SeriesCache
from exporter.run.results import ResultStore
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from tests.mailstack import MailStack
from tests.support.stackconfig import roundtrip, write_config

KEY = b"sync-test-key-0123456789abcdef!!"
TIMEOUT = 10.0


def _runner(tmp: Path, probe: dict[str, object], store: ResultStore) -> Runner:
    key_file = tmp / "canary.key"
    key_file.write_bytes(KEY)
    loaded = load_config(str(write_config(tmp, [probe], canary_key_file=str(key_file))))
    ledger = Ledger(tmp / "ledger.json")
    return Runner(loaded=loaded, key=KEY, ledger=ledger, store=store, masker=make_masker(loaded))


@pytest.mark.parametrize("flag", ["$MailcanarySynced", "\\Seen"])
def test_second_session_sees_the_flag_and_both_times_are_exported(
    mailstack: MailStack, mailbox: str, tmp_path: Path, flag: str
) -> None:
    foreign = mailstack.inject(mailbox, b"From: a@example.org\r\nSubject: user mail\r\n\r\nhello\r\n")
    probe = roundtrip(mailstack, tmp_path, "sy", mailbox, protocol="imap", receive_tls="implicit")
    probe["receive"]["sync"] = {"flag": flag, "timeout": f"{TIMEOUT:g}s"}
    store = ResultStore()
    cache = SeriesCache(store, ExporterState(probes={"sy": "roundtrip"}))
    runner = _runner(tmp_path, probe, store)
    store.ensure(["sy"])
    result = asyncio.run(runner.run_entry(runner.loaded.config.roundtrip[0], debug=True))
    assert result.success, (result.reason, result.message, result.transcript)
    assert result.sync_seconds is not None and 0 < result.sync_seconds < TIMEOUT
    assert result.sync_arrival is not None and 0 < result.sync_arrival < TIMEOUT
    assert result.delivery is not None
    print(
        f"sync {flag}: delivery {result.delivery:.4f}s, second device {result.sync_arrival:.4f}s, "
        f"flag seen after {result.sync_seconds:.4f}s"
    )
    assert {"sync_connect", "sync_tls", "sync_login", "sync_flag", "sync_wait"} <= set(result.phases)
    text = "\n".join(result.transcript or [])
    assert f"+FLAGS.SILENT ({flag})" in text  # on the canary's UID only
    values = {
        s.name: s.value
        for fam in text_string_to_metric_families(cache.text())
        for s in fam.samples
        if s.name.startswith("mailcanary_roundtrip_sync")
    }
    assert values == {
        "mailcanary_roundtrip_sync_seconds": result.sync_seconds,
        "mailcanary_roundtrip_sync_arrival_seconds": result.sync_arrival,
        "mailcanary_roundtrip_sync_skipped": 0.0,  # the check ran: skipped for no reason (junk, other)
    }
    # The user's message is untouched (no flag, still there) and the canary is gone.
    remaining = mailstack.messages(mailbox)
    assert [p.name.split(":")[0] for p in remaining] == [foreign.name.split(":")[0]]
    assert all(":2," not in p.name or p.name.endswith(":2,") for p in remaining), remaining


async def test_a_second_session_that_stalls_on_the_real_dovecot_is_sync_timeout(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    """Both sessions go through a loopback relay to the real Dovecot (plain IMAP: Dovecot allows LOGIN
    from loopback); once the second session asks for the flag, the relay stops passing Dovecot's replies
    to it. The run is sync_timeout within its bounds, and the first session still deletes the canary."""
    sessions = 0
    relays: set[asyncio.Task[None]] = set()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, mine: int, up: bool) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                if up and mine == 2 and b"KEYWORD" in data:
                    stalled.add(mine)
                if not up and mine in stalled:
                    continue  # Dovecot answers; the second device never hears it
                dst.write(data)
                await dst.drain()

    stalled: set[int] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        mine = sessions
        task = asyncio.current_task()
        assert task is not None
        relays.add(task)
        up_r, up_w = await asyncio.open_connection(mailstack.host, mailstack.imap_port)
        try:
            await asyncio.gather(pipe(reader, up_w, mine, True), pipe(up_r, writer, mine, False))
        finally:
            up_w.transport.abort()
            writer.transport.abort()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        probe = roundtrip(mailstack, tmp_path, "ss", mailbox, protocol="imap", receive_tls="starttls")
        probe["receive"].update({"port": port, "tls": "none", "allow_plaintext_auth": True, "timeout": "5s"})
        probe["receive"]["sync"] = {"timeout": "2s"}
        store = ResultStore()
        runner = _runner(tmp_path, probe, store)
        started = time.monotonic()
        result = await runner.run_entry(runner.loaded.config.roundtrip[0], debug=True)
        elapsed = time.monotonic() - started
    finally:
        server.close()
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()
    assert (result.success, result.reason, result.failed_phase) == (False, "sync_timeout", "sync_wait"), (
        result.message
    )
    assert stalled == {2} and sessions == 2
    assert elapsed < 15
    assert not [p for p in mailstack.messages(mailbox)]  # the canary was deleted all the same


def test_a_canary_that_never_arrives_with_the_sync_check_is_a_timeout_not_internal(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path: Path
) -> None:
    """Issue 19: the run's deadline cut the wait while the second device's look was inside IDLE; closing
    that session then read from the stream the cancelled IDLE reader still waited on (``RuntimeError:
    readuntil() called while another coroutine is already waiting``), and the run ended ``internal``.
    The canary goes to another mailbox here, so it never arrives in the watched one; each run ends
    ``timeout``, whatever the second session was doing when the deadline fell."""
    watched, elsewhere = fresh_mailbox(), fresh_mailbox()
    probe = roundtrip(
        mailstack, tmp_path, "sn", watched, protocol="imap", receive_tls="implicit", timeout="1.2s"
    )
    probe["recipient"] = elsewhere
    probe["receive"]["sync"] = {"timeout": "5s"}
    store = ResultStore()
    runner = _runner(tmp_path, probe, store)
    outcomes = []
    for _ in range(6):  # the deadline falls at a different point of the second device's poll each time
        result = asyncio.run(runner.run_entry(runner.loaded.config.roundtrip[0]))
        outcomes.append((result.reason, result.message))
    assert all(reason == "timeout" for reason, _ in outcomes), outcomes
