"""What Postfix and Dovecot instances share: pid-file liveness, readiness and shutdown by port."""

from __future__ import annotations

from pathlib import Path

from ._net import Endpoint, wait_closed, wait_ready
from ._system import StackError, pid_runs, read_pid, tail, terminate


class Daemon:
    """A daemonizing master process known by its pid file and its listening endpoints."""

    executable: str
    name: str
    log_file: Path

    @property
    def pid_file(self) -> Path:
        raise NotImplementedError

    def endpoints(self) -> list[Endpoint]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True if the pid file names a live process of our executable."""
        return self.pid is not None

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs (a test's waits watch it and its children for starvation)."""
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_runs(pid, self.executable) else None

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every endpoint greets; StackError naming the silent ones and the log tail."""
        pending = wait_ready(self.endpoints(), timeout)
        if pending:
            raise StackError(
                f"{self.name}: not greeting after {timeout:g}s on {[e.address for e in pending]}\n"
                f"--- {self.log_file}\n{tail(self.log_file)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master named in the pid file (never by name), then wait until its ports refuse.

        The port is the criterion: a stopped master can linger as a zombie, and children that
        inherited the listening socket may outlive it briefly.
        """
        if not terminate(self.pid_file, self.executable, timeout):
            return
        still_open = wait_closed(self.endpoints(), timeout)
        if still_open:
            raise StackError(f"{self.name}: still accepting on {[e.address for e in still_open]} after stop")
