"""Command line: run a MailStack outside pytest (README demo, benchmarks).

    python -m tests.mailstack start [--root DIR] [--json] [--detach] [--slow-delay S] [--users N]
    python -m tests.mailstack stop --root DIR [--remove]

``start`` writes DIR/stack.json (ports, users, passwords, CA path) and, unless ``--detach``, stays in
the foreground until SIGINT/SIGTERM, stopping both daemons on the way out. ``stop`` stops a stack
started earlier (the foreground process first, if any, then the daemons by their pid files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from ._system import StackError, pid_alive, read_pid
from .stack import MailStack, make_root, numbered_users

_DESCRIPTIONS = {
    "smtp": "SMTP, MX-style: STARTTLS optional, AUTH only after STARTTLS",
    "submission": "SMTP submission: STARTTLS + AUTH required",
    "submissions": "SMTP submissions: implicit TLS + AUTH required",
    "imap": "IMAP: STARTTLS (plaintext LOGIN refused from other than 127.0.0.1)",
    "imaps": "IMAP: implicit TLS",
    "pop3": "POP3: STLS",
    "pop3s": "POP3: implicit TLS",
}


def _cli_pid_file(root: Path) -> Path:
    return root / "mailstack.pid"


def _summary(stack: MailStack) -> str:
    lines = [f"mail stack running, root {stack.root}"]
    lines += [
        f"  {name:<12} {stack.host}:{port:<6} {_DESCRIPTIONS[name]}" for name, port in stack.ports.items()
    ]
    lines += [
        f"  server name  {stack.server_name} (certificate also for localhost, 127.0.0.1, ::1)",
        f"  CA file      {stack.ca_file}",
        f"  users ({len(stack.users)}, passwords in {stack.json_file}):",
        *(f"    {address:<28} {password}" for address, password in list(stack.users.items())[:8]),
        f"  slow address {stack.slow_address} ({stack.slow_delay:g}s late, see {stack.slow_delay_file})",
        f"  logs         {stack.log_dir}",
        f"  details      {stack.json_file}",
    ]
    return "\n".join(lines)


def _start(args: argparse.Namespace) -> int:
    if args.root:
        root = Path(args.root).absolute()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = make_root()
    users = numbered_users(args.users) if args.users else None
    stack = MailStack(root, users=users, slow_delay=args.slow_delay)
    try:
        stack.start()
    except StackError as exc:
        print(f"mailstack: {exc}", file=sys.stderr)
        return 1
    stack.write_json()
    print(json.dumps(stack.describe(), indent=2) if args.json else _summary(stack), flush=True)
    if args.mailcanary_config:
        config = _write_mailcanary_config(stack, Path(args.mailcanary_config).absolute())
        print(
            f"mailcanary config for this stack: {config}\n  run it: mailcanary run --config {config}",
            file=sys.stderr,
            flush=True,
        )
    if args.detach:
        print(f"detached; stop with: python -m tests.mailstack stop --root {root}", file=sys.stderr)
        return 0

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pid_file = _cli_pid_file(root)
    pid_file.write_text(f"{os.getpid()}\n")
    stack.claim()
    if not args.json:
        print(f"Ctrl-C (or: python -m tests.mailstack stop --root {root}) stops it.", flush=True)
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        try:
            stack.stop()
        finally:
            pid_file.unlink(missing_ok=True)
    print("mail stack stopped", file=sys.stderr)
    return 0


def _write_mailcanary_config(stack: MailStack, path: Path) -> Path:
    """A working mailcanary config for this stack: IMAP and POP3 round trips, TLS checks of each port."""
    from tests.support.stackconfig import (  # the same builder the integration tests use
        roundtrip,
        write_config,
    )

    secrets = path.parent / "secrets"
    secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    imap_box, pop_box = stack.test_addresses[0], stack.test_addresses[1]
    probes = [
        roundtrip(stack, secrets, "stack-imap", imap_box, protocol="imap", receive_tls="implicit"),
        roundtrip(
            stack,
            secrets,
            "stack-pop3",
            pop_box,
            protocol="pop3",
            receive_tls="starttls",
            smtp_tls="implicit",
        ),
    ]
    tls = {"ca_file": str(stack.ca_file), "server_name": stack.server_name}
    kinds = {
        "submission": ("smtp", "starttls"),
        "submissions": ("smtp", "implicit"),
        "imap": ("imap", "starttls"),
        "imaps": ("imap", "implicit"),
        "pop3": ("pop3", "starttls"),
        "pop3s": ("pop3", "implicit"),
    }
    checks = [
        {
            "name": f"stack-tls-{port}",
            "host": stack.host,
            "port": stack.ports[port],
            "protocol": proto,
            "tls": mode,
            "tls_config": dict(tls),
        }
        for port, (proto, mode) in kinds.items()
    ]
    written = write_config(path.parent, probes, interval="15s", timeout="15s")
    import yaml

    data = yaml.safe_load(written.read_text())
    data["tls_checks"] = checks
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if written != path:
        written.unlink()
    return path


def _stop(args: argparse.Namespace) -> int:
    root = Path(args.root).absolute()
    if not (root / "stack.json").exists():
        print(f"mailstack: no stack.json in {root}", file=sys.stderr)
        return 1
    cli_pid = read_pid(_cli_pid_file(root))
    if cli_pid is not None and cli_pid != os.getpid() and _is_our_cli(cli_pid):
        os.kill(cli_pid, signal.SIGTERM)  # it stops the daemons itself on the way out
        deadline = time.monotonic() + 30
        while pid_alive(cli_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        MailStack.load(root).stop()  # idempotent: covers --detach and a killed foreground process
    except StackError as exc:
        print(f"mailstack: {exc}", file=sys.stderr)
        return 1
    if args.remove:
        shutil.rmtree(root, ignore_errors=True)
    print(f"mail stack in {root} stopped", file=sys.stderr)
    return 0


def _is_our_cli(pid: int) -> bool:
    """A stale pid file must not make us signal an unrelated process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and b"tests.mailstack" in cmdline and b"start" in cmdline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mailstack", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="set up and start a stack")
    start.add_argument("--root", help="directory for configs, Maildirs, logs (default: a new /tmp dir)")
    start.add_argument("--json", action="store_true", help="print the stack description as JSON")
    start.add_argument("--detach", action="store_true", help="return once running (stop it with `stop`)")
    start.add_argument(
        "--mailcanary-config",
        metavar="FILE",
        help="also write a mailcanary config for this stack (round trips + TLS checks) to FILE",
    )
    start.add_argument("--slow-delay", type=float, default=5.0, help="seconds before slow@ mail arrives")
    start.add_argument(
        "--users",
        type=int,
        metavar="N",
        help="N numbered mailboxes user0000@… instead of the default test users (scale benchmarks)",
    )
    stop = sub.add_parser("stop", help="stop a stack started earlier")
    stop.add_argument("--root", required=True)
    stop.add_argument("--remove", action="store_true", help="also delete the root directory")
    args = parser.parse_args(argv)
    if args.command == "start":
        return _start(args)
    return _stop(args)


if __name__ == "__main__":
    sys.exit(main())
