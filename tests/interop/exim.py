"""A real Exim 4.96 (Debian's exim4-daemon-heavy, unpacked) on 127.0.0.32, delivering into Cyrus by LMTP.

Exim runs from /opt/mailcanary-interop with a self-contained config (``exim4 -C <file>``, as root: the
daemon keeps root to switch to its user ``Debian-exim``, which the harness creates like the package's
postinst would), in the foreground (``-bdf``), as our child. Listeners on kernel-chosen ports of
127.0.0.32: ``smtp`` (MX, no AUTH), ``submission`` (STARTTLS then AUTH PLAIN/LOGIN) and ``submissions``
(implicit TLS). Every address of the test domain goes to Cyrus's LMTP listener (the smtp transport with
``protocol = lmtp``); an address Cyrus refuses bounces with Exim's own DSN to the sender.

Test hooks, real Exim behaviour all: ``lost@`` is accepted and dropped (``:blackhole:``); mail to
``late@`` is held in the queue (``control = queue``) while ``hold_late`` is set, until ``deliver_queue()``
runs it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from tests.mailstack._net import Endpoint
from tests.mailstack._system import StackError, chown, ensure_account, tail
from tests.mailstack.tls import SERVER_NAME, TLSFiles

from ._common import DOMAIN, EXIM_HOST, free_ports_on, package_dir, stop_group, wait_serving

EXIM_USER = "Debian-exim"  # compiled into Debian's exim4; looked up before any config is read
PORT_NAMES = ("smtp", "submission", "submissions")
LOST_LOCAL = "lost"
LATE_LOCAL = "late"

_CONF = """# Exim for mailcanary's interop tests (tests/interop/exim.py)
primary_hostname = {hostname}
# Exim re-executes itself for deliveries: the unpacked binary, not the compiled-in /usr/sbin/exim4.
exim_path = {binary}
qualify_domain = {domain}
domainlist local_domains = {domain}
spool_directory = {root}/spool
log_file_path = {root}/log/%slog
pid_file_path = {root}/exim.pid
local_interfaces = <; {host}.{smtp} ; {host}.{submission} ; {host}.{submissions}
tls_on_connect_ports = {submissions}
tls_certificate = {cert}
tls_privatekey = {key}
tls_advertise_hosts = *
keep_environment =
host_lookup =
rfc1413_hosts =
log_selector = +tls_cipher +tls_peerdn +smtp_protocol_error +smtp_syntax_error +received_recipients
acl_smtp_rcpt = acl_check_rcpt
ignore_bounce_errors_after = 0s
timeout_frozen_after = 1h
message_size_limit = 20M

begin acl

acl_check_rcpt:
  accept  hosts = :
  deny    message = relay not permitted
          !authenticated = *
          !domains = +local_domains
  warn    local_parts = {late}
          condition = ${{if exists{{{root}/hold-late}}}}
          control = queue
  accept  authenticated = *
  accept  domains = +local_domains

begin routers

lost:
  driver = redirect
  domains = +local_domains
  local_parts = {lost}
  data = :blackhole:

cyrus:
  driver = manualroute
  domains = +local_domains
  route_list = * {cyrus_host}
  self = send
  transport = cyrus_lmtp

begin transports

cyrus_lmtp:
  driver = smtp
  protocol = lmtp
  port = {lmtp_port}
  allow_localhost
  hosts_try_auth =

begin retry

*  *  F,1m,10s

begin authenticators

plain_server:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if eq{{$auth3}}{{${{lookup{{$auth2}}lsearch{{{passwd}}}{{$value}}{{*:*}}}}}}}}
  server_set_id = $auth2
  server_advertise_condition = ${{if def:tls_in_cipher}}

login_server:
  driver = plaintext
  public_name = LOGIN
  server_prompts = "Username:: : Password::"
  server_condition = ${{if eq{{$auth2}}{{${{lookup{{$auth1}}lsearch{{{passwd}}}{{$value}}{{*:*}}}}}}}}
  server_set_id = $auth1
  server_advertise_condition = ${{if def:tls_in_cipher}}
"""


class EximServer:
    """One Exim daemon on free ports of 127.0.0.32, routing the test domain to a Cyrus LMTP listener."""

    name = "exim"

    def __init__(
        self,
        root: Path,
        tls: TLSFiles,
        users: Mapping[str, str],
        *,
        lmtp: tuple[str, int],
        host: str = EXIM_HOST,
    ) -> None:
        self.root = root
        self.tls = tls
        self.host = host
        self.users = dict(users)  # full address -> password
        self.lmtp = lmtp
        self.ports = dict(zip(PORT_NAMES, free_ports_on(host, len(PORT_NAMES)), strict=True))
        self.binary = package_dir("exim4-daemon-heavy") / "usr/sbin/exim4"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / "exim.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "mainlog"

    @property
    def panic_log(self) -> Path:
        return self.root / "log" / "paniclog"

    @property
    def stderr_log(self) -> Path:
        return self.root / "log" / "stderr"

    @property
    def server_name(self) -> str:
        return SERVER_NAME

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(n, self.host, p, n == "submissions") for n, p in self.ports.items()]

    def setup(self) -> None:
        account = ensure_account(EXIM_USER)
        for sub in ("spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "tls.key"
        key.write_bytes(self.tls.key.read_bytes())
        passwd = self.root / "passwd"
        # lsearch: "key": value; the test passwords are hex, no quoting needed on the value side.
        passwd.write_text("".join(f'"{addr}": {pw}\n' for addr, pw in self.users.items()))
        self.config.write_text(
            _CONF.format(
                hostname=SERVER_NAME,
                binary=self.binary,
                domain=DOMAIN,
                root=self.root,
                host=self.host,
                cert=self.tls.chain,
                key=key,
                passwd=passwd,
                late=LATE_LOCAL,
                lost=LOST_LOCAL,
                cyrus_host=self.lmtp[0],
                lmtp_port=self.lmtp[1],
                **self.ports,
            )
        )
        for path in (self.root, *self.root.rglob("*")):
            chown(path, account, 0o750 if path.is_dir() else 0o640)
        self.root.chmod(0o755)
        key.chmod(0o600)
        passwd.chmod(0o600)
        self.config.chmod(0o644)
        os.chown(self.config, 0, 0)  # Exim refuses a config file that its user could write

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """``exim4 -C conf -bdf`` as our child; wait until every listener greets."""
        with open(self.stderr_log, "ab") as err:
            self.process = subprocess.Popen(
                [str(self.binary), "-C", str(self.config), "-bdf"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        pending = wait_serving(self.process, self.endpoints(), timeout)
        if pending or not self.running:
            self.stop()
            raise StackError(
                f"exim: not greeting after {timeout:g}s on {[e.address for e in pending]}\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our daemon (by pid), SIGKILL its process group if it lingers; wait for its ports."""
        proc, self.process = self.process, None
        if proc is None:
            return
        still = stop_group(proc, self.endpoints(), timeout)
        if still:
            raise StackError(f"exim: still listening on {[e.address for e in still]} after stop")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {path}\n{tail(path, lines)}" for path in (self.log_file, self.panic_log, self.stderr_log)
        )

    @property
    def hold_late(self) -> bool:
        return (self.root / "hold-late").exists()

    @hold_late.setter
    def hold_late(self, on: bool) -> None:
        """While on, mail to late@ waits in Exim's queue (read by the ACL at each RCPT)."""
        flag = self.root / "hold-late"
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def exim(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the unpacked exim4 with our config (queue runs, queue listings)."""
        return subprocess.run(
            [str(self.binary), "-C", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def queue(self) -> str:
        """``exim -bp``: the queue listing (empty when nothing waits)."""
        return self.exim("-bp").stdout

    def deliver_queue(self) -> None:
        """One forced queue run (``-qff``), in the foreground: every held or deferred message goes now."""
        done = self.exim("-qff")
        if done.returncode != 0:
            raise StackError(f"exim -qff exited {done.returncode}: {done.stderr}\n{self.log_tail()}")

    def wait_queue_empty(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.queue().strip():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True
