"""mailcanary round-trip configs for the interop servers (as tests/support/stackconfig.py for the
mailstack)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from exporter.run.results import RunResult
from exporter.run.runner import Runner
from tests.support.stackconfig import apply_overrides, secret_file
from tests.support.stackconfig import make_runner as stack_runner

from .cyrus import CyrusServer
from .exim import EximServer

KEY = b"interop-test-key-0123456789abcdef"
SMTP_PORTS = {"starttls": "submission", "implicit": "submissions", "none": "smtp"}
RECEIVE_PORTS = {
    ("imap", "starttls"): "imap",
    ("imap", "implicit"): "imaps",
    ("pop3", "starttls"): "pop3",
    ("pop3", "implicit"): "pop3s",
}


def roundtrip(
    cyrus: CyrusServer,
    exim: EximServer,
    tmp: Path,
    name: str,
    local: str,
    *,
    recipient: str | None = None,
    protocol: str = "imap",
    receive_tls: str = "implicit",
    smtp_tls: str = "starttls",
    receive_port: str | None = None,
    bounce_receive: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """Submit to Exim as ``local`` (to ``recipient``, default the same address); read its Cyrus mailbox."""
    address = cyrus.address(local)
    password = cyrus.users[local]
    tls_config = {"ca_file": str(cyrus.ca_file), "server_name": cyrus.server_name}
    probe: dict[str, Any] = {
        "name": name,
        "sender": address,
        "recipient": recipient or address,
        "smtp": {
            "host": exim.host,
            "port": exim.ports[SMTP_PORTS[smtp_tls]],
            "tls": smtp_tls,
            "tls_config": dict(tls_config),
            "username": address,
            "password_file": secret_file(tmp, f"{name}-smtp", password),
        },
        "receive": {
            "protocol": protocol,
            "host": cyrus.host,
            "port": cyrus.ports[receive_port or RECEIVE_PORTS[(protocol, receive_tls)]],
            "tls": receive_tls,
            "tls_config": dict(tls_config),
            "username": address,
            "password_file": secret_file(tmp, f"{name}-recv", password),
        },
    }
    if bounce_receive:
        probe["bounce_receive"] = copy.deepcopy(probe["receive"])
    return apply_overrides(probe, extra)


def make_runner(tmp: Path, probes: list[dict[str, Any]], **global_: Any) -> Runner:
    return stack_runner(tmp, probes, KEY, **global_)


def run_one(runner: Runner, debug: bool = False) -> RunResult:
    return asyncio.run(runner.run_entry(runner.loaded.config.roundtrip[0], debug=debug))
