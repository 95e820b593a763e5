"""A real OpenSMTPD 6.8 (Debian's package, unpacked by scripts/install-interop.sh) on 127.0.0.33.

OpenSMTPD conflicts with Postfix in apt, so it runs from $MAILCANARY_INTEROP_ROOT/opensmtpd. Its
paths are compiled in and cannot be moved by options: the queue (/var/spool/smtpd, must be 0711 root),
the control socket (/var/run/smtpd.sock, one per host: a second instance refuses to start) and the
privsep chroot (/var/lib/opensmtpd/empty). So each instance runs in a mount namespace of its own
(``unshare --mount``) in which directories of its root are bind-mounted over those paths; several
instances (one per pytest session) coexist, and nothing is written outside the root except the two
privsep accounts ``opensmtpd`` and ``opensmtpq`` that Debian's build expects (created if missing).
In that namespace /etc/resolv.conf names 127.0.0.1: OpenSMTPD's own resolver must never send a
query off the machine (client addresses are looked up in /etc/hosts first).

Listeners (each with the test CA's leaf for ``mail.example.test``): ``smtp`` (port 25 role:
STARTTLS offered, no AUTH, accepts mail for the test domain from anyone), ``submission`` (587 role:
``tls-require`` + AUTH against a static credentials table, bcrypt hashes) and ``submissions`` (465
role: implicit TLS + AUTH). Mail for the domain is relayed to ``deliver_to`` (``lmtp://host:port``
for Cyrus's LMTP; any OpenSMTPD relay URL works). Nothing else is accepted, so OpenSMTPD never
connects anywhere but there; a recipient refused there comes back as OpenSMTPD's own bounce.

Debian 12's build cannot complete a TLS handshake as a server under OpenSSL 3 (its privsep key engine
loses the key: ECDSA and RSA leaves alike end in a TLS internal_error alert; upstream issues #1171 and
#1239, fixed in 7.x). So the TLS listeners accept and fail every handshake, and AUTH, which OpenSMTPD
offers only after TLS, is unreachable: the tests show how mailcanary reports that.
"""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import bcrypt

from tests.mailstack._net import Endpoint, accepts, wait_ready
from tests.mailstack._system import StackError, ensure_account, pid_alive, pid_runs, read_pid, tail
from tests.mailstack.tls import SERVER_NAME, TLSFiles

from ._common import (
    DOMAIN,
    INTEROP_ROOT,
    OPENSMTPD_HOST,
    free_ports_on,
    mount_namespaces_work,
    wait_closed_on,
)

OPENSMTPD_DIR = INTEROP_ROOT / "opensmtpd"
SMTPD = OPENSMTPD_DIR / "usr" / "sbin" / "smtpd"
SMTPCTL = OPENSMTPD_DIR / "usr" / "sbin" / "smtpctl"
HOST = OPENSMTPD_HOST
PORT_NAMES = ("smtp", "submission", "submissions")
PRIVSEP_USERS = ("opensmtpd", "opensmtpq")  # Debian's build; upstream's are _smtpd/_smtpq
INSTALL_HINT = "run scripts/install-interop.sh as root (it unpacks Debian's opensmtpd)"

# $1 spool parent, $2 run dir, $3 /var/lib stand-in, $4 resolv.conf, $5 smtpd, $6.. its arguments.
_IN_NAMESPACE = (
    'mount --bind "$1" /var/spool && mount --bind "$2" /run && mount --bind "$3" /var/lib && '
    'mount --bind "$4" /etc/resolv.conf && shift 4 && exec "$@"'
)

_CONFIG = """# OpenSMTPD {version} for mailcanary's interoperability tests (tests/interop/opensmtpd.py)
pki {name} cert "{chain}"
pki {name} key "{key}"
table creds file:{creds}
listen on {host} port {smtp} tls pki {name} hostname {name}
listen on {host} port {submission} tls-require pki {name} auth <creds> hostname {name}
listen on {host} port {submissions} smtps pki {name} auth <creds> hostname {name}
action "deliver" relay host "{deliver_to}"
match from any for domain "{domain}" action "deliver"
"""


def problems() -> list[str]:
    """What stops a real OpenSMTPD here, as sentences for a failure or skip message."""
    found = []
    if not (OPENSMTPD_DIR / ".unpacked").exists() or not SMTPD.exists():
        found += [f"{SMTPD} not found", INSTALL_HINT]
    if os.geteuid() != 0:
        found.append("OpenSMTPD must be started as root (it drops privileges itself)")
    elif not mount_namespaces_work():
        found.append(
            "OpenSMTPD's compiled-in queue, control socket and chroot need a private mount namespace "
            "(unshare --mount), which this machine does not allow"
        )
    return found


def version() -> str:
    """``6.8.0p2`` as the binary says (``smtpd -h`` prints it with the usage)."""
    out = subprocess.run([str(SMTPD), "-h"], capture_output=True, text=True, timeout=10, check=False)
    for word in (out.stdout + out.stderr).split():
        if word[:1].isdigit() and "." in word:
            return word
    return "unknown"


def _is_our_smtpd(pid: int) -> bool:
    """True if ``pid`` runs OpenSMTPD's binary from the unpacked tree: Postfix's daemon is also called
    ``smtpd``, and a stale pid file must never name a stranger."""
    return pid_runs(pid, str(SMTPD))


class OpenSMTPD:
    """One OpenSMTPD instance below ``root`` (a 0755 directory, e.g. tests.mailstack.make_root())."""

    host = HOST
    server_name = SERVER_NAME
    domain = DOMAIN

    def __init__(
        self,
        root: Path,
        tls: TLSFiles,
        deliver_to: str,
        users: Mapping[str, str],
        *,
        start_timeout: float = 20.0,
    ) -> None:
        self.root = Path(root).absolute()
        self.tls = tls
        self.deliver_to = deliver_to
        self.users = dict(users)  # AUTH credentials of the submission ports: address -> password
        self.ports: dict[str, int] = dict(zip(PORT_NAMES, free_ports_on(HOST, len(PORT_NAMES)), strict=True))
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.tls.ca

    @property
    def config_file(self) -> Path:
        return self.root / "smtpd.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "smtpd.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "smtpd.pid"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(n, HOST, p, implicit_tls=n == "submissions") for n, p in self.ports.items()]

    def _write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        spool = self.root / "spool" / "smtpd"
        spool.mkdir(parents=True, exist_ok=True)
        spool.chmod(0o711)  # smtpd refuses any other mode
        (self.root / "run").mkdir(exist_ok=True)
        empty = self.root / "varlib" / "opensmtpd" / "empty"
        empty.mkdir(parents=True, exist_ok=True)
        (self.root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        creds = self.root / "creds"
        creds.touch(mode=0o600)
        creds.chmod(0o600)
        salt = bcrypt.gensalt(4)  # libxcrypt reads $2b$; cost 4: a test password
        creds.write_text(
            "".join(f"{u} {bcrypt.hashpw(p.encode(), salt).decode()}\n" for u, p in self.users.items())
        )
        self.config_file.write_text(
            _CONFIG.format(
                version=version(),
                name=self.server_name,
                chain=self.tls.chain,
                key=self.tls.key,
                creds=creds,
                host=HOST,
                deliver_to=self.deliver_to,
                domain=self.domain,
                **self.ports,
            )
        )

    def check_config(self) -> None:
        """``smtpd -n``: StackError with OpenSMTPD's own words if it rejects the configuration."""
        out = subprocess.run(
            [str(SMTPD), "-n", "-f", str(self.config_file)], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise StackError(f"smtpd -n rejected {self.config_file}:\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        """Write the configuration, check it, start smtpd in the foreground of its namespace, wait for
        every listener to greet. StackError with the log tail if it doesn't."""
        found = problems()
        if found:
            raise StackError("; ".join(found))
        for user in PRIVSEP_USERS:
            ensure_account(user)
        self._write()
        self.check_config()
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            _IN_NAMESPACE,
            "sh",
            str(self.root / "spool"),
            str(self.root / "run"),
            str(self.root / "varlib"),
            str(self.root / "resolv.conf"),
            str(SMTPD),
            "-d",
            "-f",
            str(self.config_file),
        ]
        with open(self.log_file, "ab") as log:
            # unshare and sh exec: the pid is smtpd's own parent process
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        # Ready when the plain listeners greet, the implicit-TLS one accepts (a TLS greeting can't be
        # awaited from this build: its handshakes fail, see the module docstring) and the control socket
        # accepts: smtpd binds it before it forks, but its control process listens later, and smtpctl
        # before that says "smtpd doesn't seem to be running" (seen at load 31 in a second instance).
        plain = [e for e in self.endpoints() if not e.implicit_tls]
        implicit = [e for e in self.endpoints() if e.implicit_tls]
        control = False
        pending: list[object] = [*plain, *implicit, "control socket"]
        while pending and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StackError(
                    f"smtpd exited {self._proc.returncode}\n--- {self.log_file}\n{tail(self.log_file)}"
                )
            plain = wait_ready(plain, min(1.0, max(0.1, deadline - time.monotonic())))
            implicit = [e for e in implicit if not accepts(e)]
            control = control or self._control_accepts()
            pending = [*plain, *implicit, *([] if control else ["control socket"])]
            if pending:
                time.sleep(0.02)
        if pending:
            self.stop()
            waiting = [e.address if isinstance(e, Endpoint) else e for e in pending]
            raise StackError(
                f"smtpd: not ready after {self.start_timeout:g}s: {waiting}\n"
                f"--- {self.log_file}\n{tail(self.log_file)}"
            )

    def _control_accepts(self) -> bool:
        """Whether smtpctl could reach smtpd now: its control socket (``/run/smtpd.sock`` in the
        namespace, ``run/`` here) accepts a connection. Reached through a directory descriptor, so a
        long root never exceeds a socket path's 107 bytes."""
        try:
            fd = os.open(self.root / "run", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(f"/proc/self/fd/{fd}/smtpd.sock")
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    @property
    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        return pid is not None and _is_our_smtpd(pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM smtpd's parent (it stops its privsep children), then wait until the ports close."""
        pid = read_pid(self.pid_file)
        if pid is not None and _is_our_smtpd(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    break
                time.sleep(0.02)
            if _is_our_smtpd(pid):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        still_open = wait_closed_on(self.endpoints(), timeout)
        if still_open:
            raise StackError(f"smtpd: still accepting on {[e.address for e in still_open]} after stop")

    def smtpctl(self, *args: str) -> str:
        """Run smtpctl(8) against this instance: in its mount namespace (the control socket is at the
        compiled-in path there), as root with the ``opensmtpq`` group it checks for (Debian installs it
        setgid; unpacked, it is not). StackError with its output if it fails."""
        pid = read_pid(self.pid_file)
        if pid is None or not _is_our_smtpd(pid):
            raise StackError("smtpctl: smtpd is not running")
        gid = grp.getgrnam(PRIVSEP_USERS[1]).gr_gid
        argv = ["nsenter", "--mount", f"--target={pid}", "--", "setpriv", f"--regid={gid}"]
        argv += ["--clear-groups", str(SMTPCTL), *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if out.returncode != 0:
            raise StackError(f"smtpctl {' '.join(args)} exited {out.returncode}: {out.stdout}{out.stderr}")
        return out.stdout

    def log(self) -> str:
        """What smtpd logged so far (deliveries: ``mta delivery ... result="Ok"``)."""
        return self.log_file.read_text(errors="replace")

    def queue_files(self) -> list[Path]:
        """Messages still in OpenSMTPD's queue (undelivered, not yet bounced)."""
        queue = self.root / "spool" / "smtpd" / "queue"
        return [p for p in queue.rglob("*") if p.is_file()] if queue.exists() else []
