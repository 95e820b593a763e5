"""Heartbeat tests over the session MailStack: a config with ``heartbeats`` entries, a Runner on it, a
scheduled sender (SMTP on the stack's port 25) and a look at a mailbox with imaplib (flags, folders)."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml

from exporter.config import load_config
from exporter.kinds.heartbeats import HeartbeatReport
from exporter.run.results import ResultStore, RunResult
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from tests.mailstack import MailStack
from tests.support.stackconfig import secret_file

SENDER = "backup@jobs.example.org"


def heartbeat(stack: MailStack, tmp: Path, name: str, address: str, **extra: Any) -> dict[str, Any]:
    """A heartbeat on ``address``'s INBOX matching mail from SENDER; ``extra`` keys override."""
    entry: dict[str, Any] = {
        "name": name,
        "imap": {
            "host": stack.host,
            "port": stack.ports["imaps"],
            "tls": "implicit",
            "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
            "username": address,
            "password_file": secret_file(tmp, f"{name}-imap", stack.password(address)),
        },
        "match": {"from_address": SENDER},
        "every": "60s",
        "grace": "30s",
    }
    entry.update(extra)
    return entry


def write_config(tmp: Path, entries: list[dict[str, Any]], **global_: Any) -> Path:
    data = {"global": {"state_dir": str(tmp / "state"), **global_}, "heartbeats": entries}
    path = tmp / "mailcanary.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_runner(tmp: Path, entries: list[dict[str, Any]]) -> Runner:
    """A fresh Runner (its own Ledger, so its own heartbeat state read from the state dir): a second one
    on the same ``tmp`` is a restarted daemon."""
    loaded = load_config(str(write_config(tmp, entries)))
    (tmp / "state").mkdir(exist_ok=True)
    return Runner(
        loaded=loaded,
        key=b"heartbeat-test-key-0123456789",
        ledger=Ledger(tmp / "state" / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )


def run(runner: Runner, name: str) -> tuple[RunResult, HeartbeatReport]:
    entry = next(h for h in runner.loaded.config.heartbeats if h.name == name)
    result = asyncio.run(runner.run_entry(entry))
    assert isinstance(result.detail, HeartbeatReport), (result.reason, result.message)
    return result, result.detail


def send(
    stack: MailStack,
    to: str,
    subject: str = "Nightly backup: OK",
    *,
    sender: str = SENDER,
    body: str = "All 12 volumes backed up.\n",
    attachment: tuple[str, bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Deliver one mail through the stack's Postfix (port 25); returns its Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    mid = f"<hb-{time.time_ns()}@jobs.example.org>"
    msg["Message-ID"] = mid
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(
            attachment[1], maintype="application", subtype="octet-stream", filename=attachment[0]
        )
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=30) as s:
        s.send_message(msg)
    return mid


def imap(stack: MailStack, address: str) -> imaplib.IMAP4_SSL:
    ctx = stack.ssl_context()
    ctx.check_hostname = False  # imaplib names the host by its address; the test CA alone is trusted
    conn = imaplib.IMAP4_SSL(stack.host, stack.ports["imaps"], ssl_context=ctx)
    conn.login(address, stack.password(address))
    return conn


def flags_in(stack: MailStack, address: str, folder: str = "INBOX") -> dict[str, str]:
    """Message-ID -> FLAGS of every message in ``folder`` (read with EXAMINE and PEEK: changes nothing)."""
    conn = imap(stack, address)
    try:
        conn.select(folder, readonly=True)
        _, data = conn.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out: dict[str, str] = {}
        for item in data:
            if isinstance(item, tuple):
                meta, header = item
                mid = header.decode().partition(":")[2].strip()
                flags = meta.decode().partition("FLAGS (")[2].partition(")")[0]
                out[mid] = flags
        return out
    finally:
        conn.logout()
