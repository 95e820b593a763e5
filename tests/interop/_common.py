"""What the interop servers share: the unpacked packages, per-brand loopback addresses, ports, logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.mailstack._net import Endpoint, claim_ports, greets
from tests.mailstack._system import StackError, pid_alive, pid_runs, read_pid

INTEROP_ROOT = Path(os.environ.get("MAILCANARY_INTEROP_ROOT", "/opt/mailcanary-interop"))
INSTALL_HINT = "run scripts/install-interop.sh as root (it unpacks Cyrus, Exim, ... there)"
DOMAIN = "example.test"
# One loopback address per brand, so that their logs, ports and leftovers never mix.
CYRUS_HOST = "127.0.0.31"
EXIM_HOST = "127.0.0.32"
OPENSMTPD_HOST = "127.0.0.33"


def package_dir(package: str) -> Path:
    """Where scripts/install-interop.sh unpacked ``package``; StackError if it did not."""
    path = INTEROP_ROOT / package
    if not (path / ".unpacked").exists():
        raise StackError(f"{path} is missing: {INSTALL_HINT}")
    return path


def free_ports_on(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host``, claimed for this process (never fixed numbers)."""
    return claim_ports(count, (host,))


def _listening(host: str) -> set[int] | None:
    """Ports in LISTEN state on the IPv4 ``host`` (from /proc/net/tcp); None if unreadable."""
    want = socket.inet_aton(host)[::-1].hex().upper()
    try:
        with open("/proc/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return None
    found: set[int] = set()
    for row in rows:
        fields = row.split()
        if len(fields) > 3 and fields[3] == "0A":
            addr, port = fields[1].split(":")
            if addr == want:
                found.add(int(port, 16))
    return found


def wait_closed_on(endpoints: Sequence[Endpoint], timeout: float) -> list[Endpoint]:
    """Wait until no endpoint listens any more (kernel socket table, not a connection)."""
    pending = list(endpoints)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [e for e in pending if e.port in (_listening(e.host) or set())]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return pending


class SyslogSink:
    """A unix datagram socket that appends syslog(3) lines to a log file, for daemons that only syslog.

    The machine may run no syslogd at all (containers), and a shared /dev/log would mix every test's
    lines; private_dev_log() makes this socket the daemon's /dev/log in a private mount namespace.
    """

    def __init__(self, path: Path, log_file: Path) -> None:
        self.path = path
        self.log_file = log_file
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        path.chmod(0o666)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, name=f"syslog {path}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with open(self.log_file, "ab", buffering=0) as out:
            while not self._closed.is_set():
                try:
                    data = self._sock.recv(8192)
                except OSError:
                    return
                if data:
                    out.write(data.rstrip(b"\0\n") + b"\n")

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2)
        self.path.unlink(missing_ok=True)


def mount_namespaces_work() -> bool:
    """True if we may make a private mount namespace (not in every container, even as root)."""
    try:
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs mc-probe /mnt"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def private_dev_log(work: Path, socket_path: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run in a private mount namespace whose /dev holds the usual nodes and /dev/log -> socket.

    Nothing outside changes: the tmpfs over /dev and the bind mounts exist only in that namespace and
    vanish with its last process. The command is exec'ed, so the returned argv's pid is the daemon's.
    """
    realdev = work / "realdev"
    realdev.mkdir(parents=True, exist_ok=True)
    nodes = " ".join(("null", "zero", "random", "urandom", "tty"))
    script = (
        "set -e; mount --make-rprivate /; "
        f"mount --rbind /dev '{realdev}'; mount -t tmpfs -o mode=755 mc-dev /dev; "
        f"for d in {nodes}; do touch /dev/$d; mount --bind '{realdev}'/$d /dev/$d; done; "
        f"touch /dev/log; mount --bind '{socket_path}' /dev/log; umount -l '{realdev}'; "
        'exec "$@"'
    )
    return ["unshare", "--mount", "sh", "-c", script, "sh", *argv]


ROOT_PREFIX = "mailcanary-interop-"
OWNER_FILE = "owner.pid"
# Daemons a root may hold: (pid file below the root, executable name). A pid is only signalled if it
# still runs that executable: a stale pid file must never kill a stranger.
# An absolute path names the binary itself: Postfix's daemon is also called "smtpd".
PID_FILES = (
    ("cyrus/run/master.pid", "master"),
    ("exim/exim.pid", "exim4"),
    ("opensmtpd/smtpd.pid", str(INTEROP_ROOT / "opensmtpd/usr/sbin/smtpd")),
)


def make_interop_root() -> Path:
    """A fresh root in /tmp, searchable by the daemons' users, marked with our pid for later reaping."""
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir="/tmp"))
    root.chmod(0o755)
    (root / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return root


def reap_interop_orphans(parent: Path = Path("/tmp")) -> list[Path]:
    """Stop the daemons of roots whose owning pytest died before its teardown, and remove those roots."""
    reaped: list[Path] = []
    for root in parent.glob(ROOT_PREFIX + "*"):
        owner = read_pid(root / OWNER_FILE)
        if owner is not None and pid_alive(owner):
            continue
        for rel, executable in PID_FILES:
            pid = read_pid(root / rel)
            if pid is not None and pid_runs(pid, executable):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def wait_serving(
    process: subprocess.Popen[bytes], endpoints: Sequence[Endpoint], timeout: float
) -> list[Endpoint]:
    """Wait until every endpoint greets; stop at once if the daemon exits (a config error, say)."""
    pending = list(endpoints)
    deadline = time.monotonic() + timeout
    while pending and process.poll() is None:
        pending = [e for e in pending if not greets(e, timeout=2.0)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return pending


def stop_group(
    proc: subprocess.Popen[bytes] | None, endpoints: Sequence[Endpoint], timeout: float
) -> list[Endpoint]:
    """SIGTERM a daemon we started (by its pid, never by name), SIGKILL its process group if it lingers
    (children run in it: none may outlive it); the endpoints still open ``timeout`` s later."""
    if proc is not None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return wait_closed_on(endpoints, timeout)
