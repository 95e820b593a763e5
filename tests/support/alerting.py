"""The alert path as a test runs it: the shipped rules with test-time timers, Debian's Prometheus and
Alertmanager on loopback, and a webhook receiver that records what Alertmanager sends.

The shipped files are rewritten structurally (parsed YAML, fields replaced), never copied by hand:
every alert's ``for:`` becomes a short fixed duration; the example Alertmanager config keeps its routes,
grouping and inhibition, with its timers shortened and every webhook URL pointed at the receiver.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mailstack._net import claim_ports
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_EXAMPLE = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
MAX_BODY = 1 << 20


def binary(*names: str, package: str) -> str:
    """The first of ``names`` on PATH (or /usr/bin); its absence fails, naming the Debian package."""
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    pytest.fail(f"{names[0]} not found: apt-get install {package} (scripts/install-deps.sh)", pytrace=False)


# ---- rewrites of the shipped files -------------------------------------------------------------------


def short_for_rules(paths: list[Path], for_: str) -> dict[str, Any]:
    """All groups of the rule files, every alert's ``for:`` set to ``for_`` (alerts without one keep
    none: they fire on the first evaluation, as shipped). Recording rules are unchanged."""
    groups: list[dict[str, Any]] = []
    for path in paths:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules = [{**r, "for": for_} if "alert" in r and "for" in r else r for r in group["rules"]]
            groups.append({**group, "rules": rules})
    return {"groups": groups}


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    out = [route]
    for child in route.get("routes", []):
        out += _routes(child)
    return out


def fast_alertmanager_config(
    example: dict[str, Any], webhook_base: str, timers: dict[str, str]
) -> dict[str, Any]:
    """The example config with ``timers`` (group_wait, group_interval, repeat_interval) set on every
    route that sets them (and the root), and every webhook URL replaced by ``webhook_base/<receiver>``.
    Receivers of another kind would send elsewhere: refused."""
    config = copy.deepcopy(example)
    for route in _routes(config["route"]):
        for key, value in timers.items():
            if key in route or route is config["route"]:
                route[key] = value
    for receiver in config["receivers"]:
        kinds = [k for k in receiver if k.endswith("_configs")]
        if kinds != ["webhook_configs"]:
            raise AssertionError(
                f"receiver {receiver['name']}: only webhook receivers can be tested ({kinds})"
            )
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook_base}/{receiver['name']}"
    return config


# ---- the webhook receiver ----------------------------------------------------------------------------


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POSTed notification (path, JSON body)."""

    def __init__(self) -> None:
        self.port = claim_ports(1)[0]
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notifications(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.received)

    def alerts(self, alertname: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(path, notification, alert) for every alert named ``alertname`` received so far, in order."""
        return [
            (path, body, alert)
            for path, body in self.notifications()
            for alert in body.get("alerts", [])
            if alert["labels"].get("alertname") == alertname
        ]

    def wait_for(
        self,
        what: str,
        check: Callable[[], Any],
        timeout: float,
        logs: Callable[[], str] = lambda: "",
        runnable: Callable[[], Iterable[int]] | None = None,
    ) -> Any:
        """``eventually``, failing with what was received and ``logs``; ``runnable``: the processes the
        alert path runs on (their time waiting for a CPU does not count)."""
        return eventually(
            check,
            timeout=timeout,
            interval=0.2,
            runnable=runnable,
            message=lambda: (
                f"{what}\nreceived: {json.dumps(self.notifications(), indent=1)[:4000]}\n{logs()}"
            ),
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---- processes ---------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
