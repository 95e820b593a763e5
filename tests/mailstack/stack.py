"""A real Postfix + Dovecot pair on loopback with test mailboxes, for integration tests and demos."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme

from ._net import LOOPBACK_V4, Endpoint, free_ports, ipv6_available, wait_ready
from ._system import (
    DOVECOT_LDA,
    Account,
    StackError,
    check_traversable,
    chown,
    ensure_account,
    pid_alive,
    read_pid,
    requirement_problems,
    run,
    tail,
)
from .dovecot import DOVECOT_PORT_NAMES, DovecotInstance
from .postfix import POSTFIX_PORT_NAMES, PostfixInstance
from .tls import SERVER_NAME, TLSFiles, write_ca, write_leaf

DOMAIN = "example.test"
DEFAULT_USERS = ("canary", "alice", "bob", "carol", "dave", "erin")
PORT_NAMES = POSTFIX_PORT_NAMES + DOVECOT_PORT_NAMES
# Dovecot and Postfix put unix sockets below the root; sun_path holds 107 bytes.
MAX_ROOT_LENGTH = 64
ROOT_PREFIX = "mailcanary-stack-"
OWNER_FILE = "owner.pid"

_SLOW_SCRIPT = """#!/bin/sh
# Postfix pipe(8) transport of the slow test mailbox: wait, then deliver with dovecot-lda as vmail.
# argv: sender recipient. The delay is read at delivery time so tests can change it while running.
delay=$(cat '{delay_file}' 2>/dev/null) || delay=0
sleep "${{delay:-0}}" || true
rcpt_local=${{2%@*}}
rcpt_domain=${{2#*@}}
HOME='{mail_root}'/$rcpt_domain/$rcpt_local
USER=$2
export HOME USER
exec '{lda}' -c '{lda_conf}' -f "${{1:-MAILER-DAEMON}}"
"""

_LDA_CONF = """# dovecot-lda for the slow pipe transport. Runs as vmail without -d (no auth lookup): the user
# and home come from USER/HOME set by the script. No TLS settings: vmail could not read the key.
base_dir = {base_dir}
instance_name = {instance}-lda
log_path = {log}
info_log_path = {log}
protocols = none
ssl = no
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:~/Maildir
stats_writer_socket_path =
namespace inbox {{
  inbox = yes
  separator = /
}}
"""

# Bounce and deferral transports (Postfix pipe(8)): exit 67 (EX_NOUSER) makes Postfix bounce with a real
# DSN, 5.1.1; exit 75 (EX_TEMPFAIL) defers (4.3.0) as many times as the count file says, then delivers.
_NOUSER_SCRIPT = """#!/bin/sh
cat >/dev/null
exit 67
"""

_DEFER_SCRIPT = """#!/bin/sh
left=$(cat '{count_file}' 2>/dev/null) || left=0
if [ "${{left:-0}}" -gt 0 ]; then
  echo $((left - 1)) > '{count_file}'
  cat >/dev/null
  exit 75
fi
rcpt_local=${{2%@*}}
rcpt_domain=${{2#*@}}
HOME='{mail_root}'/$rcpt_domain/$rcpt_local
USER=$2
export HOME USER
exec '{lda}' -c '{lda_conf}' -f "${{1:-MAILER-DAEMON}}"
"""

# The spam@ transport: the message goes through a real SpamAssassin (local tests only, no network, no
# user preferences), which adds X-Spam-Status, then dovecot-lda delivers it.
_SPAM_SCRIPT = """#!/bin/sh
rcpt_local=${{2%@*}}
rcpt_domain=${{2#*@}}
HOME='{mail_root}'/$rcpt_domain/$rcpt_local
USER=$2
export HOME USER
'{spamassassin}' -L -x | '{lda}' -c '{lda_conf}' -f "${{1:-MAILER-DAEMON}}"
"""

# The junk mailbox's dovecot-lda: Pigeonhole runs a global script (precompiled as root by sievec, or
# dovecot-lda running as vmail could not write the binary) that files canaries into Junk (\Junk).
_JUNK_LDA_EXTRA = """mailbox_list_index = no
namespace inbox {{
  mailbox Junk {{
    special_use = \\Junk
  }}
}}
protocol lda {{
  mail_plugins = sieve
}}
plugin {{
  sieve_before = {script}
}}
"""

# "Mail matching a rule": ours carries X-Mailcanary-Token; anything else stays in INBOX.
_JUNK_SIEVE = """require ["fileinto", "mailbox"];
if exists "X-Mailcanary-Token" {
  fileinto :create "Junk";
  stop;
}
"""


def make_root(prefix: str = ROOT_PREFIX) -> Path:
    """A fresh 0755 directory under /tmp: pytest's tmp dirs are 0700, which the daemons cannot enter."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root


def reap_orphans(parent: Path = Path("/tmp"), prefix: str = ROOT_PREFIX) -> list[Path]:
    """Stop and delete stacks whose owner (see ``MailStack.claim``) died without stopping them.

    A pytest killed mid-session leaves its daemons on loopback; the next session cleans them up.
    Stacks without an owner file (``start --detach``) or with a live owner are left alone.
    """
    reaped: list[Path] = []
    for root in sorted(parent.glob(prefix + "*")):
        owner = read_pid(root / OWNER_FILE)
        if owner is None or pid_alive(owner):
            continue
        try:
            MailStack.load(root).stop()
        except (StackError, OSError, ValueError, KeyError):
            continue
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def _password(local: str) -> str:
    return f"{local}-{secrets.token_hex(6)}"


def numbered_users(count: int, prefix: str = "user") -> dict[str, str]:
    """``count`` mailboxes ``user0000@…`` … with fresh passwords: the scale benchmarks' users."""
    if not 0 < count <= 100_000:
        raise ValueError("need 1 <= count <= 100000 users")
    width = max(4, len(str(count - 1)))
    return {f"{prefix}{i:0{width}d}@{DOMAIN}": _password(f"{prefix}{i:0{width}d}") for i in range(count)}


class MailStack:
    """Postfix + Dovecot on 127.0.0.1 with free ports, a throwaway CA and mailboxes in example.test.

    Ports (``ports``, also ``smtp_port`` ...): ``smtp`` MX-style (STARTTLS optional, AUTH only after
    STARTTLS, unauthenticated mail only to our domain), ``submission`` (STARTTLS + AUTH required),
    ``submissions`` (implicit TLS + AUTH), ``imap``/``pop3`` (STARTTLS/STLS) and ``imaps``/``pop3s``
    (implicit TLS). ``smtp`` and the Dovecot ports also listen on ::1 when IPv6 works (``ipv6``).
    Everything else binds 127.0.0.1 only. The certificate is for ``server_name``,
    localhost, 127.0.0.1 and ::1, signed by the CA in ``ca_file``. Postfix never relays: any other
    domain goes to the ``error`` transport (a bounce to the sender, never a connection out).

    Dovecot treats a connection from 127.0.0.1 to 127.0.0.1 as secure and allows plaintext LOGIN
    there. Tests that check TLS enforcement must connect *from* another loopback address: bind the
    client socket to 127.0.0.2 (Linux routes all of 127.0.0.0/8 to lo). Failed logins are hardly slowed
    (``auth_failure_delay = 0``, anvil's per-IP penalty off unless ``auth_penalty=True``, Postfix's
    ``smtpd_error_sleep_time = 0``), but Dovecot still answers a failure on its 0.5 s timer tick; a
    distinct source address per negative test keeps them apart if the penalty is ever turned on.

    ``slow_address`` is delivered through a pipe that sleeps ``slow_delay`` seconds (settable while
    running) before dovecot-lda writes the Maildir: a canary that arrives after its timeout.
    ``test_addresses`` are the plain mailboxes for tests; ``users`` maps every address to its password.
    """

    host = LOOPBACK_V4
    server_name = SERVER_NAME
    domain = DOMAIN

    def __init__(
        self,
        root: Path,
        users: Mapping[str, str] | None = None,
        *,
        slow_delay: float = 5.0,
        ssl_min_protocol: str = "TLSv1.2",
        ipv6: bool | None = None,
        auth_penalty: bool = False,
        ports: Mapping[str, int] | None = None,
        dovecot_settings: Mapping[str, str | int | bool] | None = None,
        postfix_settings: Mapping[str, str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.root = Path(root).absolute()
        if len(str(self.root)) > MAX_ROOT_LENGTH:
            raise ValueError(
                f"stack root {self.root} is too long for unix socket paths (max {MAX_ROOT_LENGTH})"
            )
        regular = dict(users) if users is not None else {f"{u}@{DOMAIN}": _password(u) for u in DEFAULT_USERS}
        for address in regular:
            if "@" not in address:
                raise ValueError(f"user {address!r} is not an address")
        self.test_addresses: tuple[str, ...] = tuple(regular)
        self.slow_address = f"slow@{DOMAIN}"
        # Delivered by dovecot-lda + sieve: canaries are filed into Junk (\Junk), other mail into INBOX.
        self.junk_address = f"junk@{DOMAIN}"
        self.postmaster_address = f"postmaster@{DOMAIN}"
        # Mail to nouser@ bounces (a real Postfix DSN, 5.1.1); mail to defer@ is deferred (4.x.x)
        # defer_count times (file defer_count_file, read at each attempt), then delivered.
        self.nouser_address = f"nouser@{DOMAIN}"
        self.defer_address = f"defer@{DOMAIN}"
        # Mail to hop@ is relayed over SMTP (STARTTLS when offered) to a second Postfix on relay_port,
        # which delivers it: a two-hop chain. That Postfix is started by start_relay() when a test needs it.
        self.hop_address = f"hop@{DOMAIN}"
        self.spam_address = f"spam@{DOMAIN}"  # delivered through SpamAssassin (X-Spam-Status added)
        self.relay_port = free_ports(1)[0]
        self._relay: PostfixInstance | None = None
        self.users: dict[str, str] = dict(regular)
        specials = (
            self.slow_address,
            self.junk_address,
            self.postmaster_address,
            self.nouser_address,
            self.defer_address,
            self.hop_address,
            self.spam_address,
        )
        for special in specials:
            self.users.setdefault(special, _password(special.split("@")[0]))
        self.ipv6 = ipv6_available() if ipv6 is None else ipv6
        self._fixed_ports = ports is not None
        if ports is None:
            ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES), ipv6=self.ipv6), strict=True))
        missing = set(PORT_NAMES) - set(ports)
        if missing:
            raise ValueError(f"ports missing for {sorted(missing)}")
        self.ports: dict[str, int] = {name: ports[name] for name in PORT_NAMES}
        self.ssl_min_protocol = ssl_min_protocol
        self.auth_penalty = auth_penalty
        self.dovecot_settings = dict(dovecot_settings or {})
        self.postfix_settings = dict(postfix_settings or {})
        self.start_timeout = start_timeout
        self._slow_delay = float(slow_delay)
        self._ca: trustme.CA | None = None
        self._account: Account | None = None
        self._dovecot: DovecotInstance | None = None
        self._postfix: PostfixInstance | None = None
        self._set_up = False

    # ---- paths and endpoints -------------------------------------------------------------------

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca_file(self) -> Path:
        """The test CA certificate (PEM) that clients must trust."""
        return self.tls_dir / "ca.pem"

    @property
    def tls(self) -> TLSFiles:
        """The server chain/key both daemons present."""
        return TLSFiles(chain=self.tls_dir / "server.pem", key=self.tls_dir / "server.key", ca=self.ca_file)

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def users_file(self) -> Path:
        return self.root / "users.passwd"

    @property
    def json_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def slow_delay_file(self) -> Path:
        return self.root / "slow_delay"

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def submissions_port(self) -> int:
        return self.ports["submissions"]

    @property
    def imap_port(self) -> int:
        return self.ports["imap"]

    @property
    def imaps_port(self) -> int:
        return self.ports["imaps"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    @property
    def pop3s_port(self) -> int:
        return self.ports["pop3s"]

    def password(self, address: str) -> str:
        """The password of a mailbox (KeyError for an unknown address)."""
        return self.users[address]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA (use ``server_hostname=stack.server_name``)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def slow_delay(self) -> float:
        """Seconds the slow transport sleeps before delivering; read by the pipe at delivery time."""
        return self._slow_delay

    @slow_delay.setter
    def slow_delay(self, seconds: float) -> None:
        self._slow_delay = float(seconds)
        if self.root.exists():
            tmp = self.slow_delay_file.with_suffix(".tmp")
            tmp.write_text(f"{self._slow_delay:.3f}\n")
            tmp.chmod(0o644)
            tmp.replace(self.slow_delay_file)

    @property
    def account(self) -> Account:
        """The vmail account owning the Maildirs (created on first use)."""
        if self._account is None:
            self._account = ensure_account("vmail")
        return self._account

    @property
    def dovecot(self) -> DovecotInstance:
        if self._dovecot is None:
            self._dovecot = DovecotInstance(
                self.root / "dovecot",
                name=f"{self.root.name}-dovecot",
                tls=self.tls,
                ports={n: self.ports[n] for n in DOVECOT_PORT_NAMES},
                users_file=self.users_file,
                mail_root=self.mail_root,
                account=self.account,
                log_file=self.log_dir / "dovecot.log",
                ipv6=self.ipv6,
                ssl_min_protocol=self.ssl_min_protocol,
                auth_penalty=self.auth_penalty,
                auth_sockets=[self.root / "postfix" / "spool" / "private" / "auth"],
                settings=self.dovecot_settings,
            )
        return self._dovecot

    @property
    def postfix(self) -> PostfixInstance:
        if self._postfix is None:
            script = self.root / "bin" / "slow-deliver"
            junk_script = self.root / "bin" / "junk-deliver"
            self._postfix = PostfixInstance(
                self.root / "postfix",
                name=f"{self.root.name}-postfix",
                tls=self.tls,
                ports={n: self.ports[n] for n in POSTFIX_PORT_NAMES},
                mailboxes={a: self._mailbox_relpath(a) for a in self.users},
                aliases={f"{u}@{DOMAIN}": self.postmaster_address for u in ("abuse", "MAILER-DAEMON")},
                transports={
                    self.slow_address: "slowdeliver:",
                    self.junk_address: "junkdeliver:",
                    self.nouser_address: "nouserdeliver:",
                    self.defer_address: "deferdeliver:",
                    self.hop_address: f"hoprelay:[127.0.0.1]:{self.relay_port}",
                    self.spam_address: "spamdeliver:",
                },
                extra_master=(
                    "slowdeliver unix - n n - - pipe\n"
                    f"  flags=DO user={self.account.name} argv={script} ${{sender}} ${{recipient}}\n"
                    "junkdeliver unix - n n - - pipe\n"
                    f"  flags=DO user={self.account.name} argv={junk_script} ${{sender}} ${{recipient}}\n"
                    "nouserdeliver unix - n n - - pipe\n"
                    f"  flags=DO user={self.account.name} argv={self.root / 'bin' / 'nouser-deliver'}\n"
                    "spamdeliver unix - n n - - pipe\n"
                    f"  flags=DO user={self.account.name} argv={self.root / 'bin' / 'spam-deliver'}"
                    " ${sender} ${recipient}\n"
                    "hoprelay unix - - n - - smtp\n"
                    "  -o smtp_tls_security_level=may\n"
                    "deferdeliver unix - n n - - pipe\n"
                    f"  flags=DO user={self.account.name} argv={self.root / 'bin' / 'defer-deliver'}"
                    " ${sender} ${recipient}\n"
                ),
                mail_root=self.mail_root,
                account=self.account,
                log_file=self.log_dir / "postfix.log",
                ipv6=self.ipv6,
                settings={
                    "slowdeliver_destination_recipient_limit": "1",
                    "junkdeliver_destination_recipient_limit": "1",
                    "deferdeliver_destination_recipient_limit": "1",
                    "spamdeliver_destination_recipient_limit": "1",
                    **self.postfix_settings,
                },
            )
        return self._postfix

    def endpoints(self) -> list[Endpoint]:
        """Every listening socket of the stack."""
        return self.postfix.endpoints() + self.dovecot.endpoints()

    # ---- lifecycle -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the account, directories, certificates, password file and configs (idempotent)."""
        problems = requirement_problems()
        if problems:
            raise StackError("cannot run a real mail stack here: " + "; ".join(problems))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        check_traversable(self.root)
        acct = self.account
        for d in (self.tls_dir, self.log_dir, self.root / "bin", self.root / "lda"):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        self.tls_dir.chmod(0o711)
        self._ca = write_ca(self.tls_dir)
        write_leaf(self._ca, self.tls_dir, "server", ca_file=self.ca_file)
        self._write_users_file()
        self.mail_root.mkdir(exist_ok=True)
        chown(self.mail_root, acct, 0o755)
        for address in self.users:
            self._make_maildir(address)
        self._write_slow_transport()
        self.dovecot.render()
        self.dovecot.check()
        self.postfix.render()
        self._set_up = True
        self.write_json()

    def _write_users_file(self) -> None:
        # openssl passwd -6 == SHA512-CRYPT; one hash per stdin line, and no password on a command line.
        addresses = list(self.users)
        hashes = self._openssl_hashes([self.users[a] for a in addresses])
        text = "".join(f"{a}:{{SHA512-CRYPT}}{h}\n" for a, h in zip(addresses, hashes, strict=True))
        self.users_file.write_text(text)
        shutil.chown(self.users_file, "root", "dovecot")
        self.users_file.chmod(0o640)

    @staticmethod
    def _openssl_hashes(passwords: list[str]) -> list[str]:
        proc = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input="".join(p + "\n" for p in passwords),
            capture_output=True,
            text=True,
            check=False,
        )
        hashes = proc.stdout.split()
        if proc.returncode != 0 or len(hashes) != len(passwords):
            raise StackError(f"openssl passwd -6 failed: {proc.stderr}")
        return hashes

    def _write_slow_transport(self) -> None:
        acct = self.account
        self.slow_delay = self._slow_delay
        lda_log = self.log_dir / "lda.log"
        lda_log.touch()
        chown(lda_log, acct, 0o644)
        lda_run = self.root / "lda" / "run"
        lda_run.mkdir(exist_ok=True)
        chown(lda_run, acct, 0o755)
        lda_conf = self.root / "lda" / "dovecot-lda.conf"
        lda_conf.write_text(
            _LDA_CONF.format(base_dir=lda_run, instance=self.root.name, log=lda_log, uid=acct.uid)
        )
        lda_conf.chmod(0o644)
        script = self.root / "bin" / "slow-deliver"
        script.write_text(
            _SLOW_SCRIPT.format(
                delay_file=self.slow_delay_file, mail_root=self.mail_root, lda=DOVECOT_LDA, lda_conf=lda_conf
            )
        )
        script.chmod(0o755)
        self._write_junk_transport(lda_run, lda_log, lda_conf)
        nouser = self.root / "bin" / "nouser-deliver"
        nouser.write_text(_NOUSER_SCRIPT)
        nouser.chmod(0o755)
        defer = self.root / "bin" / "defer-deliver"
        defer.write_text(
            _DEFER_SCRIPT.format(
                count_file=self.defer_count_file, mail_root=self.mail_root, lda=DOVECOT_LDA, lda_conf=lda_conf
            )
        )
        defer.chmod(0o755)
        spam = self.root / "bin" / "spam-deliver"
        spam.write_text(
            _SPAM_SCRIPT.format(
                mail_root=self.mail_root,
                spamassassin=shutil.which("spamassassin") or "/usr/bin/spamassassin",
                lda=DOVECOT_LDA,
                lda_conf=lda_conf,
            )
        )
        spam.chmod(0o755)
        self.defer_count = 0

    @property
    def defer_count_file(self) -> Path:
        return self.root / "defer_count"

    @property
    def defer_count(self) -> int:
        """How many more delivery attempts to defer@ are deferred (4.3.0) before one is delivered."""
        try:
            return int(self.defer_count_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    @defer_count.setter
    def defer_count(self, value: int) -> None:
        self.defer_count_file.write_text(f"{int(value)}\n")
        chown(self.defer_count_file, self.account, 0o644)  # the pipe runs as the mail user

    def _write_junk_transport(self, lda_run: Path, lda_log: Path, slow_conf: Path) -> None:
        sieve = self.root / "lda" / "junk.sieve"
        sieve.write_text(_JUNK_SIEVE)
        sieve.chmod(0o644)
        conf = self.root / "lda" / "dovecot-lda-junk.conf"
        conf.write_text(slow_conf.read_text() + _JUNK_LDA_EXTRA.format(script=sieve))
        conf.chmod(0o644)
        run(["sievec", "-c", str(conf), str(sieve)])  # as root: vmail could not write junk.svbin
        script = self.root / "bin" / "junk-deliver"
        script.write_text(
            _SLOW_SCRIPT.format(
                delay_file=self.root / "junk_delay", mail_root=self.mail_root, lda=DOVECOT_LDA, lda_conf=conf
            )
        )
        script.chmod(0o755)

    def start(self) -> None:
        """Start Dovecot (it creates Postfix's SASL socket) then Postfix; wait until every port greets.

        If another process took one of our free ports in the meantime, new ports are chosen and the
        start is retried (twice at most), unless the ports were given to the constructor.
        """
        if not self._set_up:
            self.setup()
        for attempt in range(3):
            try:
                self._start_once()
                return
            except StackError as exc:
                if "Address already in use" not in str(exc) or self._fixed_ports or attempt == 2:
                    raise
            self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES), ipv6=self.ipv6), strict=True))
            self._dovecot = self._postfix = None
            self.dovecot.render()
            self.postfix.render()
            self.write_json()

    def _start_once(self) -> None:
        try:
            self.dovecot.start()
            self.postfix.start()
        except StackError:
            self._stop_quietly()
            raise
        pending = wait_ready(self.endpoints(), self.start_timeout)
        if pending:
            names = ", ".join(f"{e.name} ({e.address})" for e in pending)
            logs = self.log_tails()
            self._stop_quietly()
            raise StackError(f"not greeting after {self.start_timeout:.0f}s: {names}\n{logs}")

    def start_relay(self, settings: Mapping[str, str] | None = None) -> PostfixInstance:
        """Start the second Postfix that hop@ mail is relayed to (idempotent); stopped by stop().
        ``settings`` go into its main.cf (e.g. ``smtpd_milters``)."""
        if self._relay is None:
            relay = self._make_relay(settings)
            relay.render()
            relay.start()
            self._relay = relay
        return self._relay

    def _make_relay(self, settings: Mapping[str, str] | None = None) -> PostfixInstance:
        return self.make_postfix(
            "relay",
            tls=self.tls,
            ports={"smtp": self.relay_port},
            # Another name (the same one would be "mail loops back to myself"); no SASL: it only
            # receives, as an MX does.
            settings={"myhostname": "mx2.example.test", "smtpd_sasl_auth_enable": "no", **(settings or {})},
        )

    def stop(self) -> None:
        """Stop Postfix then Dovecot by their pid files and wait until every port is closed."""
        errors: list[str] = []
        if self._relay is None and (self.root / "relay").exists():  # a stack loaded by reap_orphans
            self._relay = self._make_relay()
        if self._relay is not None:
            try:
                self._relay.stop()
            except StackError as exc:
                errors.append(str(exc))
            self._relay = None
        instances = (self.postfix, self.dovecot) if self._set_up else (self._postfix, self._dovecot)
        for instance in instances:
            if instance is None:
                continue
            try:
                instance.stop()
            except StackError as exc:
                errors.append(str(exc))
        if errors:
            raise StackError("\n".join(errors))

    def _stop_quietly(self) -> None:
        with contextlib.suppress(StackError):
            self.stop()

    def claim(self, pid: int | None = None) -> None:
        """Record the process that will stop this stack: if it dies first, ``reap_orphans`` may stop it."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / OWNER_FILE).write_text(f"{pid or os.getpid()}\n")

    def pids(self) -> list[int]:
        """The running masters (Postfix, Dovecot, a relay): a test waiting on the stack watches them and
        their children for starvation (tests/support/procs.py)."""
        daemons = [self._postfix, self._dovecot, self._relay]
        return [pid for d in daemons if d is not None and (pid := d.pid) is not None]

    def stop_dovecot(self) -> None:
        """Stop only Dovecot: IMAP/POP3 refuse connections, SMTP AUTH fails ("receiving server down")."""
        self.dovecot.stop()

    def start_dovecot(self) -> None:
        """Bring Dovecot back after ``stop_dovecot`` and wait until its ports greet."""
        self.dovecot.start()
        self.dovecot.wait_ready(self.start_timeout)

    # ---- extra instances (other certificate chains, legacy TLS) ---------------------------------

    @property
    def ca(self) -> trustme.CA:
        """The test CA (reloaded from ``tls/ca.pem`` + ``ca.key`` for a stack rebuilt by ``load``)."""
        if self._ca is None:
            key = self.tls_dir / "ca.key"
            self._ca = trustme.CA.from_pem(self.ca_file.read_bytes(), key.read_bytes())
        return self._ca

    def issue_leaf(self, name: str, **kwargs: Any) -> TLSFiles:
        """Issue another server chain from the stack's CA (``write_leaf`` options: identities,
        common_name, not_before, not_after) into ``tls/<name>.pem`` / ``.key``.

        For chains the CA must not sign (self-signed, another CA) call ``write_ca``/``write_leaf``.
        """
        return write_leaf(self.ca, self.tls_dir, name, ca_file=self.ca_file, **kwargs)

    def make_dovecot(
        self,
        name: str,
        *,
        tls: TLSFiles,
        ports: Mapping[str, int] | None = None,
        ssl_min_protocol: str = "TLSv1.2",
        settings: Mapping[str, str | int | bool] | None = None,
        auth_sockets: Sequence[Path] = (),
        extra_passdbs: Sequence[str] = (),
        extra_config: Sequence[str] = (),
    ) -> DovecotInstance:
        """Another Dovecot over the same users and Maildirs, under ``root/<name>`` (imaps only by default).

        Not started: call ``render()``, ``start()``, ``wait_ready()``, and ``stop()`` when done (before
        ``MailStack.stop``). E.g. ``ssl_min_protocol="TLSv1", settings={"ssl_cipher_list":
        "ALL:@SECLEVEL=0"}`` for legacy TLS, or ``tls=stack.issue_leaf("expired", not_after=...)``.
        """
        return DovecotInstance(
            self.root / name,
            name=f"{self.root.name}-{name}",
            tls=tls,
            ports=dict(ports) if ports else {"imaps": free_ports(1)[0]},
            users_file=self.users_file,
            mail_root=self.mail_root,
            account=self.account,
            log_file=self.log_dir / f"{name}.log",
            ssl_min_protocol=ssl_min_protocol,
            auth_penalty=self.auth_penalty,
            auth_sockets=auth_sockets,
            settings=settings,
            extra_passdbs=extra_passdbs,
            extra_config=extra_config,
        )

    def make_postfix(
        self,
        name: str,
        *,
        tls: TLSFiles,
        ports: Mapping[str, int] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> PostfixInstance:
        """Another Postfix delivering to the same Maildirs, under ``root/<name>`` (default: submissions only).

        Not started. Its SASL socket (``.sasl_socket``) must be served by a Dovecot: pass it in
        ``make_dovecot(..., auth_sockets=[pf.sasl_socket])`` and render the Postfix first (that
        creates ``private/``), then start the Dovecot before the Postfix.
        """
        return PostfixInstance(
            self.root / name,
            name=f"{self.root.name}-{name}",
            tls=tls,
            ports=dict(ports) if ports else {"submissions": free_ports(1)[0]},
            mailboxes={a: self._mailbox_relpath(a) for a in self.users if a != self.slow_address},
            mail_root=self.mail_root,
            account=self.account,
            log_file=self.log_dir / f"{name}.log",
            settings=settings,
        )

    def __enter__(self) -> MailStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tails(self, lines: int = 30) -> str:
        """The end of every log of the stack, for failure messages."""
        logs = sorted(self.log_dir.glob("*.log")) if self.log_dir.exists() else []
        return "\n".join(f"--- {log}\n{tail(log, lines)}" for log in logs)

    # ---- mailboxes -------------------------------------------------------------------------------

    def _mailbox_relpath(self, address: str) -> str:
        local, domain = address.rsplit("@", 1)
        return f"{domain}/{local}/Maildir/"

    def maildir(self, address: str) -> Path:
        """The Maildir of a known address (Postfix virtual(8) and Dovecot both use it)."""
        if address not in self.users:
            raise KeyError(f"{address} is not a mailbox of this stack")
        return self.mail_root / self._mailbox_relpath(address)

    def _make_maildir(self, address: str) -> None:
        acct = self.account
        maildir = self.maildir(address)
        for d in (
            maildir.parent.parent,
            maildir.parent,
            maildir,
            *(maildir / s for s in ("cur", "new", "tmp")),
        ):
            d.mkdir(exist_ok=True)
            chown(d, acct, 0o755 if d == maildir.parent.parent else 0o700)

    def messages(self, address: str) -> list[Path]:
        """Message files in INBOX ``new/`` and ``cur/`` (Dovecot moves new->cur as soon as a session syncs).

        ``new`` is listed before ``cur`` and names are de-duplicated, so a message moved in between is
        still counted once.
        """
        maildir = self.maildir(address)
        found: dict[str, Path] = {}
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(maildir / sub))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.is_file():
                    found[entry.name.split(":", 1)[0]] = Path(entry.path)
        return sorted(found.values(), key=lambda p: p.name)

    def wait_for_messages(
        self, address: str, count: int = 1, timeout: float = 10.0, containing: bytes | None = None
    ) -> list[Path]:
        """Poll the Maildir until it holds at least ``count`` messages (only those ``containing`` a marker,
        if given: mail of an earlier test still on its way may land meanwhile); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address)
            if containing is not None:
                found = [p for p in found if _contains(p, containing)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address}: {len(found)} of {count} messages after {timeout}s")
            time.sleep(0.01)

    _inject_counter = 0

    def inject(self, address: str, raw: bytes) -> Path:
        """Write a message straight into ``Maildir/new`` (tmp/ then rename, owned by vmail).

        For seeding "foreign" mail that never went through SMTP. Returns the path in ``new/``.
        """
        maildir = self.maildir(address)
        MailStack._inject_counter += 1
        now = time.time()
        unique = (
            f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{MailStack._inject_counter}"
            f"R{secrets.token_hex(4)}.{socket.gethostname()},S={len(raw)}"
        )
        tmp = maildir / "tmp" / unique
        tmp.write_bytes(raw)
        chown(tmp, self.account, 0o600)
        final = maildir / "new" / unique
        tmp.rename(final)
        return final

    def clear(self, address: str) -> None:
        """Delete every message of the mailbox, in all folders (tests only), and make Dovecot see it.

        Dovecot expects a file to leave ``new/`` only by its own move to ``cur/``: when only ``new/``
        changed since its last look, it scans ``new/`` alone and keeps what vanished from there in its
        index (a SEARCH ALL still lists it). Messages only ever EXAMINEd stay in ``new/``, so deleting
        them left ghosts in the next test's mailbox. ``cur/`` gets a fresh mtime: a full resync.
        """
        maildir = self.maildir(address)
        folders = [maildir, *(p for p in maildir.glob(".*") if p.is_dir())]
        for folder in folders:
            for sub in ("new", "cur", "tmp"):
                for f in (folder / sub).glob("*"):
                    f.unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.utime(folder / "cur")

    # ---- description for the CLI, README and benchmarks -----------------------------------------

    def describe(self) -> dict[str, Any]:
        """What a client needs: host, ports, users/passwords, CA path, plus logs and special addresses."""
        return {
            "root": str(self.root),
            "host": self.host,
            "ipv6": self.ipv6,
            "server_name": self.server_name,
            "ca_file": str(self.ca_file),
            "ports": dict(self.ports),
            "users": dict(self.users),
            "test_addresses": list(self.test_addresses),
            "slow_address": self.slow_address,
            "slow_delay": self.slow_delay,
            "slow_delay_file": str(self.slow_delay_file),
            "postmaster_address": self.postmaster_address,
            "ssl_min_protocol": self.ssl_min_protocol,
            "logs": {
                p.stem: str(p) for p in (self.log_dir / f"{n}.log" for n in ("postfix", "dovecot", "lda"))
            },
            "pid_files": {"postfix": str(self.postfix.pid_file), "dovecot": str(self.dovecot.pid_file)},
        }

    def write_json(self) -> Path:
        """Write ``describe()`` to ``root/stack.json`` (0600: it holds passwords)."""
        self.json_file.touch(mode=0o600)
        self.json_file.write_text(json.dumps(self.describe(), indent=2) + "\n")
        return self.json_file

    @classmethod
    def load(cls, root: Path) -> MailStack:
        """Rebuild the stack object from ``root/stack.json`` (to stop a stack started elsewhere)."""
        data = json.loads((Path(root) / "stack.json").read_text())
        users = data["users"]
        stack = cls(
            Path(root),
            {a: users[a] for a in data["test_addresses"]},
            ports=data["ports"],
            ipv6=data["ipv6"],
            slow_delay=data["slow_delay"],
            ssl_min_protocol=data["ssl_min_protocol"],
        )
        stack.users = dict(users)
        stack._set_up = True
        return stack


def _contains(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except FileNotFoundError:  # moved from new/ to cur/ meanwhile: seen again at the next look
        return False
