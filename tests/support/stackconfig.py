"""Build mailcanary YAML configs that point at the test MailStack (shared by the integration tests)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.config import load_config
from exporter.run.results import ResultStore
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from tests.mailstack import MailStack

SMTP_PORTS = {"starttls": "submission", "implicit": "submissions", "none": "smtp"}
RECEIVE_PORTS = {
    ("imap", "starttls"): "imap",
    ("imap", "implicit"): "imaps",
    ("pop3", "starttls"): "pop3",
    ("pop3", "implicit"): "pop3s",
}


def secret_file(tmp: Path, name: str, secret: str) -> str:
    path = tmp / f"{name}.pw"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


def roundtrip(
    stack: MailStack,
    tmp: Path,
    name: str,
    address: str,
    *,
    protocol: str = "imap",
    receive_tls: str = "implicit",
    smtp_tls: str = "starttls",
    smtp_password: str | None = None,
    receive_password: str | None = None,
    ca_file: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One round-trip probe: submit as ``address`` to ``address``, read it back over ``protocol``."""
    tls_config = {"ca_file": ca_file or str(stack.ca_file), "server_name": stack.server_name}
    password = stack.password(address)
    probe: dict[str, Any] = {
        "name": name,
        "sender": address,
        "recipient": address,
        "smtp": {
            "host": stack.host,
            "port": stack.ports[SMTP_PORTS[smtp_tls]],
            "tls": smtp_tls,
            "tls_config": dict(tls_config),
            "username": address,
            "password_file": secret_file(tmp, f"{name}-smtp", smtp_password or password),
        },
        "receive": {
            "protocol": protocol,
            "host": stack.host,
            "port": stack.ports[RECEIVE_PORTS[(protocol, receive_tls)]],
            "tls": receive_tls,
            "tls_config": dict(tls_config),
            "username": address,
            "password_file": secret_file(tmp, f"{name}-recv", receive_password or password),
        },
    }
    return apply_overrides(probe, extra)


def apply_overrides(probe: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``section__key=value`` sets ``probe[section][key]``; a plain ``key=value`` sets ``probe[key]``."""
    for key, value in extra.items():
        section, _, sub = key.partition("__")
        if sub:
            probe[section][sub] = value
        else:
            probe[key] = value
    return probe


def write_config(tmp: Path, probes: list[dict[str, Any]], **global_: Any) -> Path:
    data = {"global": {"state_dir": str(tmp / "state"), **global_}, "roundtrip": probes}
    path = tmp / "mailcanary.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def exporter_argv(config: Path, port: int, *extra: str) -> list[str]:
    """``mailcanary run`` as a subprocess on 127.0.0.1:port, JSON logs (the tests parse them)."""
    return [
        sys.executable,
        "-m",
        "exporter.cli",
        "run",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        *extra,
    ]


def make_runner(tmp: Path, probes: list[dict[str, Any]], key: bytes, **global_: Any) -> Runner:
    """An in-process Runner for ``probes`` with the canary key in a file (as the daemon reads it)."""
    key_file = tmp / "canary.key"
    key_file.write_bytes(key)
    loaded = load_config(str(write_config(tmp, probes, canary_key_file=str(key_file), **global_)))
    return Runner(
        loaded=loaded,
        key=key,
        ledger=Ledger(tmp / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )
