"""Idle memory (issue 23): ``mailcanary run`` with one round trip loads what it uses, and the optional
parts (domain checks and dnspython, the report parsers, heartbeats, the TLS scan's tables, the status
page, the demo) only when they are configured or asked for. Behaviour, not RSS: which modules are
loaded, from a fresh interpreter. And the lazy package faces (probes/lazy.py) offer exactly the names
their ``if TYPE_CHECKING:`` imports show to mypy."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.mailstack import MailStack, free_ports
from tests.support.procs import run_bounded
from tests.support.stackconfig import roundtrip, write_config

ROOT = Path(__file__).resolve().parent.parent

# Loaded only when a feature needs them: none of them serves one round trip.
OPTIONAL = (
    "dns",  # dnspython: domain checks, DNSBL lookups, MTA-STS, DANE
    "defusedxml",  # DMARC reports
    "apscheduler.triggers.cron",  # cron heartbeats
    "probes.domain.probe",
    "probes.domain.mx",
    "probes.reports.mailbox",
    "probes.reports.dmarc",
    "probes.heartbeats.mailbox",
    "probes.heartbeats.window",
    "exporter.state.heartbeats",
    "exporter.web.status",  # the status page: with its first request
    "exporter.config.schema",
    "exporter.demo.sandbox",
    "pymap",
    "aiosmtpd",
    "aioimaplib",
)
# Not before a run, and not with `scan: false`: the TLS scan's ClientHello tables.
SCAN = ("probes.tls.hello",)

# The modules a process has really loaded (importlib.util.LazyLoader registers a module it has not run).
LOADED = "sorted(n for n, m in list(sys.modules.items()) if type(m).__name__ != '_LazyModule')"


def _loaded_optional(names: list[str], optional: tuple[str, ...]) -> list[str]:
    return [m for m in optional if m in names or any(n.startswith(m + ".") for n in names)]


def _config(tmp_path: Path) -> Path:
    """One IMAP round trip; nothing listens there (the test does not run it)."""
    secret = tmp_path / "password"
    secret.write_text("secret\n")
    side = {"host": "127.0.0.1", "username": "canary@example.test", "password_file": str(secret)}
    data = {
        "global": {"state_dir": str(tmp_path / "state")},
        "roundtrip": [
            {
                "name": "one",
                "sender": "canary@example.test",
                "recipient": "canary@example.test",
                "smtp": {**side, "port": 2525, "tls": "none", "allow_plaintext_auth": True},
                "receive": {**side, "protocol": "imap", "port": 1993},
            }
        ],
    }
    path = tmp_path / "mailcanary.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_run_path_leaves_optional_modules_out(tmp_path: Path) -> None:
    """What ``mailcanary run`` does before its first probe (the CLI, the daemon, the config with one round
    trip, the runner and the scheduled job, /metrics in both formats) loads none of the optional modules;
    asking for one of them (the status page) then loads it. Fails on the code before issue 23, which
    loaded every kind's modules with the first import of the daemon."""
    code = (
        "import asyncio, json, sys\n"
        "from exporter.cli import build_parser\n"
        "from exporter.daemon import Daemon\n"
        f"build_parser().parse_args(['run', '--config', {str(_config(tmp_path))!r}])\n"
        f"daemon = Daemon({str(tmp_path / 'mailcanary.yml')!r}, '127.0.0.1:0')\n"
        "daemon._apply(daemon._load())\n"
        "assert daemon.state.probes == {'one': 'roundtrip'}, daemon.state.probes\n"
        "body = asyncio.run(daemon.series.body()) + asyncio.run(daemon.series.body(openmetrics=True))\n"
        "assert b'mailcanary_domain_check_runs_total' in body and b'mailcanary_heartbeat' in body\n"
        f"before = {LOADED}\n"
        "page = daemon.http.status_page()\n"
        f"print(json.dumps([before, {LOADED}]))\n"
    )
    proc = run_bounded([sys.executable, "-c", code], 120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout)
    assert _loaded_optional(before, OPTIONAL + SCAN) == []
    assert "exporter.config" in before and "exporter.kinds.domain" in before  # every kind is registered
    assert _loaded_optional(after, ("exporter.web.status",)) == ["exporter.web.status"]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def test_daemon_after_a_round_trip_has_loaded_no_optional_module(
    mailstack: MailStack, tmp_path: Path
) -> None:
    """The real daemon, one IMAP round trip through Postfix and Dovecot (its TLS scan off), then stopped:
    the modules it loaded include the protocol clients and none of the optional ones (dnspython, the
    report and heartbeat modules, the domain checks, the scan tables, the status page)."""
    address = mailstack.test_addresses[-1]
    probe = roundtrip(
        mailstack,
        tmp_path,
        "idle_imports",
        address,
        protocol="imap",
        receive_tls="implicit",
        smtp__scan=False,
        receive__scan=False,
    )
    config = write_config(tmp_path, [probe], interval="1h", timeout="20s")
    modules = tmp_path / "modules.json"
    wrapper = (
        "import atexit, json, os, sys\n"
        "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write(json.dumps("
        f"{LOADED})))\n"
        "from exporter.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    port = free_ports(1)[0]
    argv = [sys.executable, "-c", wrapper, "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "MODULES_OUT": str(modules)},
        )
    try:
        deadline = time.monotonic() + 120  # a loaded machine
        want = b'outcome="success",probe="idle_imports"} 1.0'
        while True:
            try:
                if want in _get(f"http://127.0.0.1:{port}/metrics"):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no successful run; the daemon's log:\n{log.read_text()}")
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    loaded = json.loads(modules.read_text())
    assert "probes.clients.imap.session" in loaded and "aiosmtplib" in loaded  # it did run
    assert _loaded_optional(loaded, OPTIONAL + SCAN) == []


def _faces() -> list[Path]:
    found = []
    for tree in ("probes", "exporter"):
        for init in sorted((ROOT / tree).rglob("__init__.py")):
            if "face(" in init.read_text(encoding="utf-8"):
                found.append(init)
    return found


def _type_checking_imports(init: Path) -> dict[str, tuple[str, str]]:
    """name in the face -> (module, name in the module), from the ``if TYPE_CHECKING:`` block."""
    out: dict[str, tuple[str, str]] = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.dump(stmt)
                for alias in stmt.names:
                    out[alias.asname or alias.name] = (stmt.module, alias.name)
    return out


def test_lazy_faces_offer_what_mypy_sees() -> None:
    """Every lazy face: the names its ``__getattr__`` serves are its ``__all__`` and its TYPE_CHECKING
    imports, from the same modules, and each resolves to that module's object."""
    faces = _faces()
    assert len(faces) >= 10, faces  # the probes packages, exporter.metrics, .run, .web
    for init in faces:
        package = ".".join(init.relative_to(ROOT).parent.parts)
        mod = importlib.import_module(package)
        exports = mod.__getattr__.exports
        assert exports == _type_checking_imports(init), package
        assert sorted(mod.__all__) == sorted(exports), package
        for name, (module, own) in exports.items():
            assert getattr(mod, name) is getattr(importlib.import_module(module), own), (package, name)
        assert set(exports) <= set(dir(mod))
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            mod.nope  # noqa: B018
