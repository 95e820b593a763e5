"""A real Cyrus IMAP 3.6 (Debian, unpacked) on 127.0.0.31: IMAP, POP3, LMTP, quota, its own sasldb.

Run from /opt/mailcanary-interop (scripts/install-interop.sh) by its master process in the foreground, as
root; master drops to a dedicated system user. Everything (configs, spool, sasldb, sockets, log) lives
under one temp root. Two imapd.conf files share that spool: the main one, and ``imapd-delay.conf`` with
``popminpoll: 1`` served by its own POP3 listeners (``pop3delay``/``pop3sdelay``), for LOGIN-DELAY.

The namespace is Cyrus's standard one (``altnamespace: no``) with the UNIX separator
(``unixhierarchysep: yes``): personal folders are ``INBOX/Spam``, as the issue describes. Each user has
``INBOX/Spam`` (no SPECIAL-USE attribute, as stock Cyrus creates it) with the ``p`` right for anyone, so
that LMTP plus-addressing ``user+Spam@example.test`` files a message there for real.
"""

from __future__ import annotations

import imaplib
import os
import re
import secrets
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.mailstack._net import Endpoint
from tests.mailstack._system import Account, StackError, chown, ensure_account, tail
from tests.mailstack.tls import SERVER_NAME, TLSFiles

from ._common import (
    CYRUS_HOST,
    DOMAIN,
    SyslogSink,
    free_ports_on,
    mount_namespaces_work,
    package_dir,
    private_dev_log,
    stop_group,
    wait_serving,
)

CYRUS_USER = "mc-cyrus"
ADMIN = "cyrusadmin"
JUNK_FOLDER = "Spam"  # below INBOX: INBOX/Spam
# Listener names -> (imapd.conf, command, implicit TLS).
SERVICES = {
    "imap": ("imapd.conf", "imapd", False),
    "imaps": ("imapd.conf", "imapd -s", True),
    "pop3": ("imapd.conf", "pop3d", False),
    "pop3s": ("imapd.conf", "pop3d -s", True),
    # -a: the MTA on loopback is trusted, as on a local socket (Cyrus asks TCP clients for AUTH otherwise)
    "lmtp": ("imapd.conf", "lmtpd -a", False),
    "pop3delay": ("imapd-delay.conf", "pop3d", False),
    "pop3sdelay": ("imapd-delay.conf", "pop3d -s", True),
}

_IMAPD_CONF = """# Cyrus IMAP for mailcanary's interop tests (tests/interop/cyrus.py)
configdirectory: {root}/conf
defaultpartition: default
partition-default: {root}/spool
sievedir: {root}/sieve
proc_path: {root}/run/proc
mboxname_lockpath: {root}/run/lock
lmtpsocket: {root}/run/socket/lmtp
idlesocket: {root}/run/socket/idle
notifysocket: {root}/run/socket/notify
cyrus_user: {user}
servername: {servername}
admins: {admin}
altnamespace: no
unixhierarchysep: yes
virtdomains: userid
lmtp_downcase_rcpt: yes
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {root}/sasldb2
sasl_mech_list: PLAIN LOGIN
tls_server_cert: {cert}
tls_server_key: {key}
tls_client_ca_file: {ca}
tls_session_timeout: 0
hashimapspool: true
umask: 077
{extra}"""

_CYRUS_CONF = """# Cyrus master for mailcanary's interop tests
START {{
  recover cmd="{bin}/ctl_cyrusdb -C {root}/imapd.conf -r"
}}
SERVICES {{
{services}
}}
EVENTS {{
  checkpoint cmd="{bin}/ctl_cyrusdb -C {root}/imapd.conf -c" period=30
}}
DAEMON {{
}}
"""


def _password() -> str:
    return "pw-" + secrets.token_hex(8)


class CyrusServer:
    """One Cyrus master with its listeners on free ports of 127.0.0.31 and a fixed set of users."""

    name = "cyrus"

    def __init__(
        self,
        root: Path,
        tls: TLSFiles,
        users: Mapping[str, str],
        *,
        quota_kib: Mapping[str, int] | None = None,
        host: str = CYRUS_HOST,
    ) -> None:
        self.root = root
        self.tls = tls
        self.host = host
        self.users = dict(users)  # local part -> password
        self.quota_kib = dict(quota_kib or {})
        self.admin_password = _password()
        self.ports = dict(zip(SERVICES, free_ports_on(host, len(SERVICES)), strict=True))
        common = package_dir("cyrus-common")
        self.bin_dir = common / "usr/lib/cyrus/bin"
        self.binaries = {
            "imapd": package_dir("cyrus-imapd") / "usr/lib/cyrus/bin/imapd",
            "pop3d": package_dir("cyrus-pop3d") / "usr/lib/cyrus/bin/pop3d",
        }
        self.lib_dir = common / "usr/lib/x86_64-linux-gnu"
        self.saslpasswd2 = package_dir("sasl2-bin") / "usr/sbin/saslpasswd2"
        self.process: subprocess.Popen[bytes] | None = None
        self.account: Account | None = None
        self.syslog: SyslogSink | None = None

    # ---- layout ---------------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.root / "log" / "master.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "master.pid"

    @property
    def server_name(self) -> str:
        return SERVER_NAME

    @property
    def ca_file(self) -> Path:
        return self.tls.ca

    def address(self, local: str) -> str:
        return f"{local}@{DOMAIN}"

    def password(self, address: str) -> str:
        return self.users[address.split("@")[0]]

    def endpoints(self) -> list[Endpoint]:
        # LMTP greets "220": readiness checks it like the others.
        return [Endpoint(n, self.host, p, SERVICES[n][2]) for n, p in self.ports.items()]

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(self.lib_dir)}

    def _command(self, conf: str, command: str) -> str:
        program, *args = command.split()
        path = self.binaries.get(program, self.bin_dir / program)
        return " ".join([str(path), "-C", str(self.root / conf), *args])

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        self.account = account = ensure_account(CYRUS_USER)
        subdirs = ("conf/db", "conf/sieve", "conf/socket", "conf/proc", "spool", "sieve", "run/proc")
        for sub in (*subdirs, "run/lock", "run/socket", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Cyrus reads the key as its own user; the test CA's leaf is copied so the original stays 0600 root.
        key = self.root / "tls.key"
        key.write_bytes(self.tls.key.read_bytes())
        values = {
            "root": self.root,
            "user": CYRUS_USER,
            "servername": SERVER_NAME,
            "admin": ADMIN,
            "cert": self.tls.chain,
            "key": key,
            "ca": self.tls.ca,
        }
        (self.root / "imapd.conf").write_text(_IMAPD_CONF.format(**values, extra=""))
        (self.root / "imapd-delay.conf").write_text(
            _IMAPD_CONF.format(**values, extra="# LOGIN-DELAY 60 in CAPA, enforced at login\npopminpoll: 1\n")
        )
        services = "\n".join(
            f'  {name} cmd="{self._command(conf, command)}" listen="{self.host}:{self.ports[name]}" prefork=0'
            for name, (conf, command, _) in SERVICES.items()
        )
        (self.root / "cyrus.conf").write_text(
            _CYRUS_CONF.format(bin=self.bin_dir, root=self.root, services=services)
        )
        sasldb = self.root / "sasldb2"
        entries = [(ADMIN, SERVER_NAME, self.admin_password)] + [
            (local, DOMAIN, pw) for local, pw in self.users.items()
        ]
        for user, realm, pw in entries:
            proc = subprocess.run(
                [str(self.saslpasswd2), "-p", "-c", "-f", str(sasldb), "-u", realm, user],
                input=pw.encode(),
                env=self.env(),
                capture_output=True,
                timeout=30,
                check=False,
            )
            if proc.returncode != 0:
                raise StackError(f"saslpasswd2 {user}@{realm} failed: {proc.stderr.decode(errors='replace')}")
        for path in (self.root, *self.root.rglob("*")):
            chown(path, account, 0o700 if path.is_dir() else 0o600)
        self.root.chmod(0o711)
        for path in (self.root / "imapd.conf", self.root / "imapd-delay.conf", self.root / "cyrus.conf"):
            path.chmod(0o644)

    # ---- run ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start master in the foreground (our child), wait until every listener greets, provision users."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.syslog = SyslogSink(self.root / "run" / "log.sock", self.log_file)
        master = [
            str(self.bin_dir / "master"),
            "-C",
            str(self.root / "imapd.conf"),
            "-M",
            str(self.root / "cyrus.conf"),
            "-p",
            str(self.pid_file),
            "-D",
        ]
        if mount_namespaces_work():
            argv = private_dev_log(self.root / "run", self.syslog.path, master)
        else:  # Cyrus only syslogs: without a namespace of our own its lines are lost, the rest works
            self.log_file.write_text("(no private mount namespace here: Cyrus's syslog lines not captured)\n")
            argv = master
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env(),
                start_new_session=True,
            )
        pending = wait_serving(self.process, self.endpoints(), timeout)
        if pending or not self.running:
            self.stop()
            raise StackError(
                f"cyrus: not greeting after {timeout:g}s on {[e.address for e in pending]}\n"
                f"--- {self.log_file}\n{tail(self.log_file)}"
            )
        self.provision()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our master (by its pid, never by name), SIGKILL its group if it lingers."""
        proc, self.process = self.process, None
        if proc is None:
            return
        still = stop_group(proc, self.endpoints(), timeout)  # imapd, pop3d: in master's group
        if self.syslog is not None:
            self.syslog.close()
        if still:
            raise StackError(f"cyrus: still listening on {[e.address for e in still]} after stop")

    def log_tail(self, lines: int = 30) -> str:
        return f"--- {self.log_file}\n{tail(self.log_file, lines)}"

    # ---- IMAP as admin / as user -----------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls.ca))

    def imap(self, user: str | None = None) -> imaplib.IMAP4_SSL:
        """A logged-in imaplib session over implicit TLS: as ``user`` (local part) or as the admin."""
        conn = imaplib.IMAP4_SSL(
            self.host, self.ports["imaps"], ssl_context=self._loose_context(), timeout=10
        )
        if user is None:
            conn.login(ADMIN, self.admin_password)
        else:
            conn.login(self.address(user), self.users[user])
        return conn

    def _loose_context(self) -> ssl.SSLContext:
        # The harness's own sessions: the certificate names mail.example.test, we connect to an address.
        ctx = self.ssl_context()
        ctx.check_hostname = False
        return ctx

    def provision(self) -> None:
        """Create every user's INBOX and INBOX/Spam (anyone may post: plus-addressing), set quotas."""
        conn = self.imap()
        try:
            for local in self.users:
                inbox = f"user/{local}@{DOMAIN}"
                spam = f"user/{local}/{JUNK_FOLDER}@{DOMAIN}"
                for mailbox in (inbox, spam):
                    typ, data = conn.create(mailbox)
                    if typ != "OK" and b"already exists" not in b" ".join(d or b"" for d in data).lower():
                        raise StackError(f"cyrus: CREATE {mailbox}: {typ} {data!r}")
                _check(conn.setacl(spam, "anyone", "p"), f"SETACL {spam}")
                if local in self.quota_kib:
                    _check(conn.setquota(inbox, f"(STORAGE {self.quota_kib[local]})"), f"SETQUOTA {inbox}")
        finally:
            conn.logout()

    def clear(self, local: str) -> None:
        """Empty the user's INBOX and INBOX/Spam (as the user: the admin has no delete right)."""
        conn = self.imap(local)
        try:
            for folder in ("INBOX", f"INBOX/{JUNK_FOLDER}"):
                _check(conn.select(folder), f"SELECT {folder}")
                _typ, data = conn.search(None, "ALL")
                if data and data[0]:
                    conn.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
                    conn.expunge()
                conn.close()
        finally:
            conn.logout()

    def append(self, local: str, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        """Put a (foreign) message into the user's folder over IMAP, as the user."""
        conn = self.imap(local)
        try:
            _check(conn.append(folder, flags or None, None, raw), f"APPEND {folder}")
        finally:
            conn.logout()

    def snapshot(self, local: str, folder: str = "INBOX") -> list[tuple[int, frozenset[str], bytes]]:
        """(UID, stored flags, every byte) of each message, read with PEEK: before/after comparisons.

        ``\\Recent`` is left out: it belongs to a session (RFC 3501), not to the message.
        """
        conn = self.imap(local)
        try:
            _check(conn.select(folder, readonly=True), f"EXAMINE {folder}")
            _typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            out: list[tuple[int, frozenset[str], bytes]] = []
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = re.search(r"UID (\d+)", head)
                flags = re.search(r"FLAGS \(([^)]*)\)", head)
                if uid is None or flags is None:
                    raise StackError(f"cyrus: unexpected FETCH answer {head!r}")
                stored = frozenset(f for f in flags.group(1).split() if f != "\\Recent")
                out.append((int(uid.group(1)), stored, item[1]))
            conn.close()
            return out
        finally:
            conn.logout()

    def count(self, local: str, folder: str = "INBOX") -> int:
        conn = self.imap(local)
        try:
            typ, data = conn.select(folder, readonly=True)
            _check((typ, data), f"EXAMINE {folder}")
            return int(data[0] or 0)
        finally:
            conn.logout()

    def wait_for(self, local: str, count: int = 1, folder: str = "INBOX", timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            n = self.count(local, folder)
            if n >= count or time.monotonic() >= deadline:
                return n
            time.sleep(0.1)


def _check(answer: tuple[str, Sequence[object]], what: str) -> None:
    typ, data = answer
    if typ != "OK":
        raise StackError(f"cyrus: {what}: {typ} {data!r}")


def make_users(names: tuple[str, ...]) -> dict[str, str]:
    return {name: _password() for name in names}
