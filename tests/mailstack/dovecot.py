"""One Dovecot master on loopback, self-contained (no /etc/dovecot), runnable beside others."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._daemon import Daemon
from ._net import LOOPBACK_V4, LOOPBACK_V6, Endpoint
from ._system import Account, StackError, run, tail
from .tls import TLSFiles

DOVECOT_PORT_NAMES = ("imap", "imaps", "pop3", "pop3s")
_DH_FILE = Path("/usr/share/dovecot/dh.pem")


def _value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class DovecotInstance(Daemon):
    """A Dovecot master with its own ``base_dir``, ``instance_name``, config, log and pid file.

    ``ports`` maps any of imap/imaps/pop3/pop3s to a port; the missing ones are disabled, so a variant
    instance (another certificate chain, ``ssl_min_protocol = TLSv1``...) can serve just, say, imaps.
    ``settings`` overrides or adds top-level settings, e.g. ``{"ssl_cipher_list": "ALL:@SECLEVEL=0"}``.
    ``auth_sockets`` are SASL sockets for Postfix smtpd, created by this Dovecot (so it starts first).
    ``extra_passdbs`` are config lines placed before the password file's passdb (e.g. an ``oauth2`` one).
    ``extra_config`` are config lines placed at the end (``plugin {…}``, ``protocol imap {…}`` blocks).
    ``auth_penalty=False`` (default) removes anvil's per-IP penalty after a failed login (2..15 s on
    *every* later login from that IP, Postfix's SASL included), which would leak from a negative test
    into the next ones; set it True to test against Dovecot's stock behaviour.
    """

    executable = "dovecot"

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        tls: TLSFiles,
        ports: Mapping[str, int],
        users_file: Path,
        mail_root: Path,
        account: Account,
        log_file: Path,
        ipv6: bool = False,
        ssl_min_protocol: str = "TLSv1.2",
        auth_sockets: Sequence[Path] = (),
        auth_penalty: bool = False,
        settings: Mapping[str, str | int | bool] | None = None,
        extra_passdbs: Sequence[str] = (),
        extra_config: Sequence[str] = (),
    ) -> None:
        unknown = set(ports) - set(DOVECOT_PORT_NAMES)
        if unknown:
            raise ValueError(f"unknown Dovecot port names {sorted(unknown)}")
        self.root = root
        self.name = name
        self.tls = tls
        self.ports = dict(ports)
        self.users_file = users_file
        self.mail_root = mail_root
        self.account = account
        self.log_file = log_file
        self.ipv6 = ipv6
        self.ssl_min_protocol = ssl_min_protocol
        self.auth_sockets = list(auth_sockets)
        self.auth_penalty = auth_penalty
        self.settings = dict(settings or {})
        self.extra_passdbs = list(extra_passdbs)  # config lines put before the passwd-file passdb
        self.extra_config = list(extra_config)  # config lines put at the end

    @property
    def config_file(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def base_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        return self.root / "lib"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "master.pid"

    @property
    def hosts(self) -> list[str]:
        return [LOOPBACK_V4, LOOPBACK_V6] if self.ipv6 else [LOOPBACK_V4]

    def endpoints(self) -> list[Endpoint]:
        """Every listening socket, for readiness and shutdown checks."""
        return [
            Endpoint(f"dovecot {self.name} {port_name}", host, port, implicit_tls=port_name.endswith("s"))
            for port_name, port in self.ports.items()
            for host in self.hosts
        ]

    def top_settings(self) -> dict[str, str]:
        """Top-level settings after applying ``self.settings``."""
        acct = self.account
        protocols = [p for p in ("imap", "pop3") if p in self.ports or f"{p}s" in self.ports]
        values: dict[str, str | int | bool] = {
            "base_dir": str(self.base_dir),
            "state_dir": str(self.state_dir),
            "instance_name": self.name,
            "log_path": str(self.log_file),
            "info_log_path": str(self.log_file),
            "protocols": " ".join(protocols) or "none",
            "listen": ", ".join(self.hosts),
            "shutdown_clients": True,
            "ssl": "required",
            "ssl_cert": f"<{self.tls.chain}",
            "ssl_key": f"<{self.tls.key}",
            "ssl_min_protocol": self.ssl_min_protocol,
            "disable_plaintext_auth": True,
            "auth_mechanisms": "plain login",
            # The default 2 s (plus anvil's per-IP penalty) would make every negative-auth test slow.
            "auth_failure_delay": 0,
            "first_valid_uid": acct.uid,
            "last_valid_uid": acct.uid,
            "mail_uid": acct.uid,
            "mail_gid": acct.gid,
            "mail_location": f"maildir:{self.mail_root}/%d/%n/Maildir",
            # Tests and benchmarks open many sessions per user from one address.
            "mail_max_userip_connections": 500,
            "pop3_uidl_format": "%08Xu%08Xv",
            # No stats: a login process spawned just before shutdown otherwise waits 5 s for the
            # stats-writer handshake and holds the master (and stop_dovecot) that long.
            "stats_writer_socket_path": "",
        }
        if _DH_FILE.exists():
            values["ssl_dh"] = f"<{_DH_FILE}"
        values.update(self.settings)
        return {k: _value(v) for k, v in values.items()}

    def render(self) -> None:
        """Write the config file and create the directories Dovecot expects."""
        for d in (self.root, self.base_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        acct = self.account
        lines = [
            f"# Dovecot test instance {self.name!r}: loopback only, rendered by tests/mailstack.",
            *(f"{k} = {v}" for k, v in self.top_settings().items()),
            "",
            *self.extra_passdbs,
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=SHA512-CRYPT username_format=%u {self.users_file}",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={acct.uid} gid={acct.gid} home={self.mail_root}/%d/%n",
            "}",
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
            # Shown as SPECIAL-USE \\Junk where it exists (the junk test mailbox's sieve creates it).
            "  mailbox Junk {",
            "    special_use = \\Junk",
            "  }",
            "}",
        ]
        for proto in ("imap", "pop3"):
            lines += [f"service {proto}-login {{"]
            for listener in (proto, f"{proto}s"):
                lines += [
                    f"  inet_listener {listener} {{",
                    f"    port = {self.ports.get(listener, 0)}",
                    *(["    ssl = yes"] if listener.endswith("s") else []),
                    "  }",
                ]
            lines += ["}"]
        if not self.auth_penalty:
            # Without this socket auth silently skips the penalty (Dovecot's documented switch).
            lines += ["service anvil {", "  unix_listener anvil-auth-penalty {", "    mode = 0", "  }", "}"]
        if self.auth_sockets:
            lines += ["service auth {"]
            for sock in self.auth_sockets:
                lines += [
                    f"  unix_listener {sock} {{",
                    "    mode = 0660",
                    "    user = postfix",
                    "    group = postfix",
                    "  }",
                ]
            lines += ["}"]
        lines += self.extra_config
        self.config_file.write_text("\n".join(lines) + "\n")
        self.config_file.chmod(0o644)

    def check(self) -> None:
        """Let doveconf parse the config, so mistakes surface with Dovecot's own message."""
        run(["doveconf", "-c", str(self.config_file), "-n"])

    def start(self) -> None:
        """Start the master (it daemonizes) and wait for its pid file; callers check the ports."""
        if self.running:
            return
        proc = run(["dovecot", "-c", str(self.config_file)], check=False)
        if proc.returncode != 0:
            raise StackError(
                f"dovecot {self.name} failed to start (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}"
                f"--- {self.log_file}\n{tail(self.log_file)}"
            )
        deadline = time.monotonic() + 10
        while not self.running:
            if time.monotonic() > deadline:
                raise StackError(
                    f"dovecot {self.name} wrote no live pid to {self.pid_file}\n{tail(self.log_file)}"
                )
            time.sleep(0.01)
