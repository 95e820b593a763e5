"""Session limits with the real Postfix + Dovecot: never more sessions than allowed, every run served, the
wait is the queue phase and never eats the run's deadline; a reload rebuilds the TLS contexts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import generate_latest

from exporter.config import load_config
from exporter.metrics.collector import ExporterState, build_registry
from exporter.run.results import RunResult
from exporter.run.runner import Runner
from probes.recorder import Recorder
from probes.wire.net import Endpoint, TLSSettings, client_context
from probes.wire.slots import ServerSlots
from tests.mailstack import MailStack
from tests.support.stackconfig import make_runner, roundtrip, write_config

KEY = b"slots-e2e-key-0123456789abcdef!!"


def runner_for(tmp: Path, probes: list[dict[str, object]], **global_: object) -> Runner:
    return make_runner(tmp, probes, KEY, **global_)


def test_limit_holds_against_the_real_stack(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path: Path
) -> None:
    """Six round trips at once with max_sessions 2: at most two IMAP and two SMTP sessions at any moment,
    all six succeed, and the ones that waited show it as the queue phase."""
    boxes = [fresh_mailbox() for _ in range(len(mailstack.test_addresses))]
    probes = [roundtrip(mailstack, tmp_path, f"lim{i}", box) for i, box in enumerate(boxes)]
    runner = runner_for(tmp_path, probes, max_sessions=2, queue_timeout="60s", timeout="30s")

    async def main() -> list[object]:
        return list(await asyncio.gather(*(runner.run_entry(p) for p in runner.loaded.config.roundtrip)))

    results = asyncio.run(main())
    assert [r.reason for r in results] == ["success"] * len(boxes)  # type: ignore[attr-defined]
    imaps = f"{mailstack.host}:{mailstack.ports['imaps']}"
    submission = f"{mailstack.host}:{mailstack.ports['submission']}"
    assert runner.slots.high_water(imaps) == 2
    assert runner.slots.high_water(f"{mailstack.host}/imap") == 2
    assert 1 <= runner.slots.high_water(submission) <= 2
    assert all("queue" in r.phases for r in results)  # type: ignore[attr-defined]
    assert max(r.phases["queue"] for r in results) > 0  # type: ignore[attr-defined]


def test_queueing_does_not_count_against_the_deadline(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    """The only IMAP slot is held for longer than the run's whole timeout; once it frees, the run still
    succeeds: its deadline was moved on by the time it queued."""
    runner = runner_for(
        tmp_path, [roundtrip(mailstack, tmp_path, "late", mailbox)], timeout="2s", max_sessions=1
    )
    probe = runner.loaded.config.roundtrip[0]
    imaps = Endpoint(mailstack.host, mailstack.ports["imaps"], "implicit")

    async def main() -> object:
        held = asyncio.Event()

        async def hog() -> None:
            async with runner.slots.session(imaps, "imap", Recorder()):
                held.set()
                await asyncio.sleep(3)

        task = asyncio.create_task(hog())
        await held.wait()
        result = await runner.run_entry(probe)
        await task
        return result

    result = asyncio.run(main())
    assert result.reason == "success", result.message  # type: ignore[attr-defined]
    assert result.phases["queue"] > 2  # type: ignore[attr-defined]


def test_queue_time_is_measured_and_exported(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    """The only IMAP slot is held until the run has queued for at least HOLD seconds: the run's queue
    time is exported (mailcanary_roundtrip_queue_seconds) and logged, and its duration includes it."""
    hold = 0.5
    runner = runner_for(tmp_path, [roundtrip(mailstack, tmp_path, "queued", mailbox)], max_sessions=1)
    probe = runner.loaded.config.roundtrip[0]
    imaps = Endpoint(mailstack.host, mailstack.ports["imaps"], "implicit")

    async def main() -> RunResult:
        held = asyncio.Event()

        async def hog() -> None:
            async with runner.slots.session(imaps, "imap", Recorder()):
                held.set()
                # until the run queues behind us (the limiter has no event for a new waiter)
                while not runner.slots.waiting(imaps.address):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                await asyncio.sleep(hold)  # then keep the slot: the run waits at least this long

        task = asyncio.create_task(hog())
        await held.wait()
        result = await runner.run_entry(probe)
        await task
        return result

    with structlog.testing.capture_logs() as logs:
        result = asyncio.run(main())
    assert result.reason == "success", result.message
    assert result.queue >= hold
    assert result.duration > result.queue  # included: the run's wall time holds its wait
    assert result.queue <= result.phases["queue"] + 0.01  # one session waited: the queue phase
    text = generate_latest(build_registry(runner.store, ExporterState())).decode()
    exported = float(text.split('mailcanary_roundtrip_queue_seconds{probe="queued"} ')[1].split()[0])
    assert exported == result.queue
    (line,) = [e for e in logs if e["event"] == "probe_run"]
    assert line["queue_seconds"] == round(result.queue, 4)


def test_no_slot_in_time_is_queue_timeout(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    runner = runner_for(
        tmp_path, [roundtrip(mailstack, tmp_path, "starved", mailbox)], max_sessions=1, queue_timeout="300ms"
    )
    probe = runner.loaded.config.roundtrip[0]
    imaps = Endpoint(mailstack.host, mailstack.ports["imaps"], "implicit")

    async def main() -> object:
        release = asyncio.Event()

        async def hog() -> None:
            async with runner.slots.session(imaps, "imap", Recorder()):
                await release.wait()

        task = asyncio.create_task(hog())
        await asyncio.sleep(0)
        result = await runner.run_entry(probe)
        release.set()
        await task
        return result

    result = asyncio.run(main())
    assert (result.reason, result.failed_phase) == ("queue_timeout", "queue")  # type: ignore[attr-defined]
    assert "no session slot" in result.message  # type: ignore[attr-defined]


def test_reload_rebuilds_tls_contexts(mailstack: MailStack, tmp_path: Path) -> None:
    from exporter.daemon import Daemon

    config = write_config(tmp_path, [])
    daemon = Daemon(str(config), "127.0.0.1:0")
    settings = TLSSettings(ca_file=str(mailstack.ca_file))
    daemon._apply(daemon._prepare(load_config(str(config))))
    before = client_context(settings)
    assert client_context(settings) is before
    daemon._apply(daemon._prepare(load_config(str(config))))  # what a reload does once validated
    assert client_context(settings) is not before
    assert isinstance(daemon.slots, ServerSlots) and daemon.runner is not None
    assert daemon.runner.slots is daemon.slots  # one limiter across reloads
