"""Host-level helpers: commands, pid files, the vmail account, file tails, prerequisites."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "run scripts/install-deps.sh as root (it installs postfix, dovecot-imapd, dovecot-pop3d, ...)"
DOVECOT_LDA = Path("/usr/lib/dovecot/dovecot-lda")
REQUIRED_BINARIES = ("postfix", "postconf", "dovecot", "doveconf", "openssl")


class StackError(RuntimeError):
    """The stack could not be set up, started or stopped; the message carries the evidence."""


@dataclass(frozen=True)
class Account:
    """Numeric ids of the system account that owns every Maildir (Postfix virtual + Dovecot)."""

    name: str
    uid: int
    gid: int


def find_binary(name: str) -> str | None:
    """Locate a daemon binary, also in sbin dirs that a non-login PATH may lack."""
    extra = os.pathsep.join(("/usr/sbin", "/sbin", "/usr/local/sbin"))
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)


def requirement_problems() -> list[str]:
    """What stops a real stack here (missing packages, not root), as sentences for a failure message."""
    problems = [f"`{b}` not found" for b in REQUIRED_BINARIES if find_binary(b) is None]
    if not DOVECOT_LDA.exists():
        problems.append(f"{DOVECOT_LDA} not found")
    if problems:
        problems.append(INSTALL_HINT)
    if os.geteuid() != 0:
        problems.append("Postfix and Dovecot must be started as root (they drop privileges themselves)")
    return problems


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise StackError with what it printed.

    Output goes to temporary files, not pipes: ``dovecot`` and ``postfix start`` leave daemons that
    inherit the descriptors, and reading a pipe would then wait for the daemon to exit.
    """
    cmd = [find_binary(argv[0]) or argv[0], *argv[1:]]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout, check=False
        )
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if check and proc.returncode != 0:
        raise StackError(
            f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{stdout}--- stderr\n{stderr}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def ensure_account(name: str = "vmail") -> Account:
    """Create the mail-owner group and user if missing (idempotent, tolerant of a concurrent creator)."""
    try:
        grp.getgrnam(name)
    except KeyError:
        run(["groupadd", "--system", name], check=False)
    try:
        pwd.getpwnam(name)
    except KeyError:
        run(
            ["useradd", "--system", "-g", name, "-d", "/nonexistent", "-M", "-s", "/usr/sbin/nologin", name],
            check=False,
        )
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise StackError(f"could not create system user {name!r} (are we root?)") from exc
    return Account(name, entry.pw_uid, entry.pw_gid)


def check_traversable(path: Path) -> None:
    """Fail early if an ancestor of ``path`` is closed to other users.

    Postfix, Dovecot and vmail must all walk down to the stack's root; a 0700 parent (pytest's
    /tmp/pytest-of-root) gives confusing "Permission denied" errors from the daemons much later.
    """
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise StackError(
                f"{p} is mode {stat.S_IMODE(mode):04o}: every ancestor of the stack root {path} must be "
                "searchable by other users (0711/0755); use e.g. tempfile.mkdtemp(dir='/tmp') + chmod 0755"
            )


def read_pid(pid_file: Path) -> int | None:
    """The pid in a daemon's pid file, or None if there is no usable file."""
    try:
        text = pid_file.read_text().split()
    except OSError:
        return None
    if not text or not text[0].isdigit():
        return None
    return int(text[0])


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (zombies here can linger for seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in ("Z", "X")


def pid_runs(pid: int, executable: str) -> bool:
    """True if ``pid`` is a live process of ``executable`` (a name, or an absolute path: Postfix's and
    OpenSMTPD's daemons are both ``smtpd``): a stale pid file must not kill a stranger."""
    if not pid_alive(pid):
        return False
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)"))
    except OSError:
        return False
    return exe == Path(executable).resolve() if executable.startswith("/") else exe.name == executable


def terminate(pid_file: Path, executable: str, timeout: float) -> bool:
    """SIGTERM the daemon named by the pid file, SIGKILL it if it outlives the timeout.

    Returns False if no live ``executable`` was named there (then its ports are not ours to wait for).
    """
    pid = read_pid(pid_file)
    if pid is None or not pid_runs(pid, executable):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_runs(pid, executable):
        os.kill(pid, signal.SIGKILL)
    return True


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file (or a note that it is missing), for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def chown(path: Path, account: Account, mode: int) -> None:
    """Give a file or directory to ``account`` with ``mode``."""
    os.chown(path, account.uid, account.gid)
    path.chmod(mode)
