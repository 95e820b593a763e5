"""The example kind of docs/architecture.md ("Adding a probe kind"), taken from the document itself,
registered at run time and run end to end: a new kind is one module, with no edit to any other file.

Against loopback listeners (one that greets, one that greets with the wrong line, one that says nothing):
the daemon schedules it, /metrics exports its families (both renderers: the pre-rendered cache and the
reference collector), the status page shows its row, check-config and the loader accept its section, a
typo in it is a one-line error, the JSON Schema has it, and ``mailcanary probe`` reports it. The kind is
removed again afterwards, so the rest of the suite sees the built-in kinds only.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import registry
from exporter.cli import _probe as run_probe
from exporter.cli import build_parser, main
from exporter.config import ConfigError, parse_config
from exporter.config.schema import config_schema
from exporter.daemon import Daemon
from exporter.kinds import BUILTIN

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
BLOCK = re.compile(r"<!-- example-kind: begin -->\n```python\n(.*?)```\n<!-- example-kind: end -->", re.S)


def example_source() -> str:
    found = BLOCK.search(DOC.read_text(encoding="utf-8"))
    assert found is not None, "docs/architecture.md lost its example kind block"
    return found.group(1)


@pytest.fixture
def banner(tmp_path: Path) -> Iterator[ModuleType]:
    """The documented module, imported from a file of its own and registered; unregistered after."""
    path = tmp_path / "banner_kind.py"
    path.write_text(example_source(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("banner_kind", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["banner_kind"] = module  # pydantic resolves the model's annotations through it
    spec.loader.exec_module(module)
    registry.register(module.KIND)
    try:
        yield module
    finally:
        registry.unregister("banner")
        sys.modules.pop("banner_kind", None)
    assert registry.kinds() == BUILTIN


async def _greeter(line: bytes | None) -> asyncio.Server:
    """A loopback listener that sends ``line`` (None: nothing, it just holds the connection)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if line is not None:
            writer.write(line)
            await writer.drain()
        try:
            await reader.read()  # until the client hangs up
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    started = {
        "good": await _greeter(b"220 banner.test ESMTP ready\r\n"),
        "wrong": await _greeter(b"SSH-2.0-OpenSSH_9.2\r\n"),
        "silent": await _greeter(None),
    }
    try:
        yield {name: s.sockets[0].getsockname()[1] for name, s in started.items()}
    finally:
        for s in started.values():
            s.close()


def config_text(tmp_path: Path, ports: dict[str, int]) -> str:
    return f"""
global:
  state_dir: {tmp_path / "state"}
banner_checks:
  - {{name: good, host: 127.0.0.1, port: {ports["good"]}, interval: 60s, expect: "^220 .*ESMTP"}}
  - {{name: wrong, host: 127.0.0.1, port: {ports["wrong"]}, interval: 60s, expect: "^220 "}}
  - {{name: silent, host: 127.0.0.1, port: {ports["silent"]}, interval: 60s, timeout: 0.5s}}
"""


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_example_kind_runs_end_to_end_in_the_daemon(
    banner: ModuleType, servers: dict[str, int], tmp_path: Path
) -> None:
    path = tmp_path / "mailcanary.yml"
    path.write_text(config_text(tmp_path, servers), encoding="utf-8")
    daemon = Daemon(str(path), "127.0.0.1:0")
    done: dict[str, asyncio.Event] = {name: asyncio.Event() for name in ("good", "wrong", "silent")}
    loop = asyncio.get_running_loop()

    def changed(name: str) -> None:
        st = daemon.store.stats_of(name)
        if name in done and st is not None and st.last is not None:
            loop.call_soon_threadsafe(done[name].set)

    daemon.store.subscribe(changed)
    await daemon.start()
    try:
        assert daemon.state.probes == {"good": "banner", "wrong": "banner", "silent": "banner"}
        async with asyncio.timeout(60):  # scheduled: each runs once inside the start window
            await asyncio.gather(*(e.wait() for e in done.values()))
        host, port = daemon.http.bound[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/metrics") as resp:
                text = await resp.text()
            async with session.get(f"http://{host}:{port}/") as resp:
                page = await resp.text()
        got = samples(text)
        assert got[("mailcanary_config_probes", frozenset({"kind": "banner"}.items()))] == 3
        assert got[("mailcanary_banner_success", frozenset({"probe": "good"}.items()))] == 1
        assert got[("mailcanary_banner_success", frozenset({"probe": "wrong"}.items()))] == 0
        assert got[("mailcanary_banner_success", frozenset({"probe": "silent"}.items()))] == 0
        for probe, outcome in (("good", "success"), ("wrong", "banner_mismatch"), ("silent", "timeout")):
            for each in banner.OUTCOMES:  # every outcome of the kind's set, from the first run on
                key = ("mailcanary_banner_runs_total", frozenset({"probe": probe, "outcome": each}.items()))
                assert got[key] == (1 if each == outcome else 0), (probe, each)
        # the pre-rendered /metrics is byte for byte what the reference collector renders
        reference = generate_latest(daemon.registry).decode()
        ours = [
            line
            for line in text.splitlines()
            if line.startswith(("mailcanary_banner", "# HELP mailcanary_b"))
        ]
        assert ours and ours == [
            line
            for line in reference.splitlines()
            if line.startswith(("mailcanary_banner", "# HELP mailcanary_b"))
        ]
        # the status page: the kind's row with its own result cell
        row = re.search(
            r'<tr class="probe" data-probe="good" data-kind="banner" data-outcome="success">(.*?)</tr>', page
        )
        assert row is not None and "220 banner.test ESMTP ready" in row.group(1)
        assert 'data-probe="wrong" data-kind="banner" data-outcome="banner_mismatch"' in page
        assert 'data-probe="silent" data-kind="banner" data-outcome="timeout"' in page
        last = daemon.store.stats_of("silent")
        assert last is not None and last.last is not None and last.last.failed_phase == "banner"
    finally:
        await daemon.shutdown()


def test_example_kind_in_check_config_loader_and_schema(
    banner: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mailcanary.yml"
    path.write_text(config_text(tmp_path, {"good": 2525, "wrong": 2526, "silent": 2527}), encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == f"{path}: ok (0 round-trip probes, 0 TLS checks, 3 banner checks)"
    )
    cfg = parse_config(path.read_text(encoding="utf-8"), str(path)).config
    assert [(k.name, e.name) for k, e in registry.configured(cfg)] == [
        ("banner", "good"),
        ("banner", "wrong"),
        ("banner", "silent"),
    ]
    with pytest.raises(ConfigError) as bad:
        parse_config("banner_checks:\n  - {name: x, host: h, port: 25, expct: x}\n", "f.yml")
    assert bad.value.problems == ["f.yml: banner_checks[0].expct: unknown key"]
    with pytest.raises(ConfigError) as dup:
        parse_config(
            "tls_checks:\n  - {name: x, host: h, protocol: smtp}\n"
            "banner_checks:\n  - {name: x, host: h, port: 25}\n",
            "f.yml",
        )
    assert dup.value.problems == ["f.yml: banner_checks[0].name: duplicate probe name 'x'"]
    schema = config_schema()
    assert list(schema["properties"]) == [
        "global",
        "roundtrip",
        "tls_checks",
        "domain_checks",
        "heartbeats",
        "reports",
        "banner_checks",
        "modules",
        "probe_endpoint",
    ]
    assert schema["properties"]["banner_checks"]["items"] == {"$ref": "#/$defs/BannerCheckConfig"}
    assert set(schema["$defs"]["BannerCheckConfig"]["required"]) == {"name", "host", "port"}


async def test_example_kind_in_the_one_shot_probe(
    banner: ModuleType, servers: dict[str, int], tmp_path: Path
) -> None:
    """``mailcanary probe`` (its coroutine: the listeners live on this test's loop)."""
    path = tmp_path / "mailcanary.yml"
    path.write_text(config_text(tmp_path, servers), encoding="utf-8")
    args = build_parser().parse_args(["probe", "--config", str(path), "good"])
    buf = io.StringIO()
    assert await run_probe(args, buf) == 0
    out = buf.getvalue()
    assert out.splitlines()[0] == "MAILCANARY OK - 1 banners read"
    assert "good: OK" in out
