"""One Postfix instance on loopback (own config, queue and data dirs) that never relays anywhere."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from ._daemon import Daemon
from ._net import LOOPBACK_V4, LOOPBACK_V6, Endpoint
from ._system import Account, StackError, run, tail
from .tls import TLSFiles

POSTFIX_PORT_NAMES = ("smtp", "submission", "submissions")
_NO_RELAY = "error:outbound mail disabled in the mailcanary test stack"


class PostfixInstance(Daemon):
    """Postfix run with ``-c <root>/etc``: an MX-style smtpd plus submission- and submissions-style ports.

    ``ports`` maps any of smtp/submission/submissions to a port (missing ones are not served).
    ``mailboxes`` maps address -> Maildir path relative to ``mail_root`` (Postfix virtual(8) delivers);
    ``transports`` routes chosen addresses elsewhere (e.g. a slow pipe), ``extra_master`` adds master.cf
    services for them. ``settings`` overrides main.cf, e.g. another ``smtpd_tls_chain_files``.
    SASL goes to Dovecot through ``<queue>/private/auth`` (see ``sasl_socket``), so Dovecot starts first.
    """

    executable = "master"

    def __init__(
        self,
        root: Path,
        *,
        name: str,
        tls: TLSFiles,
        ports: Mapping[str, int],
        mailboxes: Mapping[str, str],
        mail_root: Path,
        account: Account,
        log_file: Path,
        aliases: Mapping[str, str] | None = None,
        transports: Mapping[str, str] | None = None,
        extra_master: str = "",
        ipv6: bool = False,
        settings: Mapping[str, str] | None = None,
        smtp_host: str | None = None,
    ) -> None:
        unknown = set(ports) - set(POSTFIX_PORT_NAMES)
        if unknown:
            raise ValueError(f"unknown Postfix port names {sorted(unknown)}")
        self.root = root
        self.name = name
        self.tls = tls
        self.ports = dict(ports)
        self.mailboxes = dict(mailboxes)
        self.aliases = dict(aliases or {})
        self.transports = dict(transports or {})
        self.extra_master = extra_master
        self.mail_root = mail_root
        self.account = account
        self.log_file = log_file
        self.ipv6 = ipv6
        self.settings = dict(settings or {})
        self.smtp_host = smtp_host  # another loopback address for the MX-style port (e.g. 127.0.0.3)

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "spool"

    @property
    def data_dir(self) -> Path:
        return self.root / "lib"

    @property
    def pid_file(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"

    @property
    def sasl_socket(self) -> Path:
        """Where Dovecot must create the auth socket (``smtpd_sasl_path = private/auth``)."""
        return self.queue_dir / "private" / "auth"

    @property
    def hosts(self) -> list[str]:
        if self.smtp_host is not None:
            return [self.smtp_host]
        return [LOOPBACK_V4, LOOPBACK_V6] if self.ipv6 else [LOOPBACK_V4]

    def endpoints(self) -> list[Endpoint]:
        """Every listening socket (only the MX-style port also listens on ::1)."""
        return [
            Endpoint(f"postfix {self.name} {port_name}", host, port, implicit_tls=port_name == "submissions")
            for port_name, port in self.ports.items()
            for host in (self.hosts if port_name == "smtp" else [LOOPBACK_V4])
        ]

    def main_settings(self) -> dict[str, str]:
        """main.cf after applying ``self.settings``."""
        domains = sorted({addr.rsplit("@", 1)[1] for addr in self.mailboxes})
        log_dir = self.log_file.parent
        values = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            # No syslog on these machines: postlogd writes this file (needs the postlog service).
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": f"/var, /dev/stdout, {log_dir}",
            "myhostname": "mail.example.test",
            "mydomain": "example.test",
            "myorigin": "$mydomain",
            "mydestination": "",
            "local_recipient_maps": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "all" if self.ipv6 else "ipv4",
            "mynetworks": "127.0.0.0/8" + (" [::1]/128" if self.ipv6 else ""),
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "readme_directory": "no",
            "append_dot_mydomain": "no",
            # Nothing ever leaves the box: everything outside our virtual domains is an error.
            "relayhost": "",
            "default_transport": _NO_RELAY,
            "relay_transport": _NO_RELAY,
            "smtp_dns_support_level": "disabled",
            "virtual_mailbox_domains": " ".join(domains),
            "virtual_mailbox_base": str(self.mail_root),
            "virtual_mailbox_maps": f"texthash:{self.config_dir}/vmailbox",
            "virtual_alias_maps": f"texthash:{self.config_dir}/valias",
            "transport_maps": f"texthash:{self.config_dir}/transport",
            "virtual_uid_maps": f"static:{self.account.uid}",
            "virtual_gid_maps": f"static:{self.account.gid}",
            "virtual_minimum_uid": str(self.account.uid),
            "virtual_transport": "virtual",
            "smtpd_tls_chain_files": f"{self.tls.key}, {self.tls.chain}",
            "smtpd_tls_security_level": "may",
            # Debian's default (>=TLSv1) accepts TLS 1.0/1.1: a healthy stack should not.
            "smtpd_tls_protocols": ">=TLSv1.2",
            "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
            # Postfix accepts anonymous (aNULL) suites by default; the TLS scan reports that (alert
            # MailcanaryTLSWeakCipherClass): a healthy stack should not (issue 21).
            "smtpd_tls_exclude_ciphers": "aNULL",
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            # No 1 s nap after each error reply: negative tests stay fast (a real MX would keep it).
            "smtpd_error_sleep_time": "0",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": "private/auth",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_unlisted_recipient",
        }
        values.update(self.settings)
        return values

    def master_cf(self) -> str:
        """master.cf: the inet services for our ports plus the stock unix services, chroot off."""
        auth_only = [
            "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject",
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject",
        ]
        lines = ["# service type private unpriv chroot wakeup maxproc command"]
        for port_name, port in self.ports.items():
            for host in self.hosts if port_name == "smtp" else [LOOPBACK_V4]:
                listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                lines.append(f"{listen} inet n - n - - smtpd")
                if port_name == "submission":
                    lines += [
                        "  -o syslog_name=postfix/submission",
                        "  -o smtpd_tls_security_level=encrypt",
                        *auth_only,
                    ]
                elif port_name == "submissions":
                    lines += [
                        "  -o syslog_name=postfix/submissions",
                        "  -o smtpd_tls_wrappermode=yes",
                        *auth_only,
                    ]
        lines += [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        return "\n".join(lines) + "\n" + self.extra_master

    def render(self) -> None:
        """Write main.cf, master.cf and the lookup tables; let Postfix create and check its queue."""
        for d in (self.root, self.config_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "root")  # master.lock, tlsmgr's PRNG state
        self.data_dir.chmod(0o700)
        cfg = self.config_dir
        (cfg / "main.cf").write_text(
            f"# Postfix test instance {self.name!r}, rendered by tests/mailstack.\n"
            + "".join(f"{k} = {v}\n" for k, v in self.main_settings().items())
        )
        (cfg / "master.cf").write_text(self.master_cf())
        (cfg / "vmailbox").write_text("".join(f"{a} {p}\n" for a, p in self.mailboxes.items()))
        (cfg / "valias").write_text("".join(f"{a} {t}\n" for a, t in self.aliases.items()))
        (cfg / "transport").write_text("".join(f"{a} {t}\n" for a, t in self.transports.items()))
        # Postfix re-reads a config or table whose mtime is under ~2 s old until it looks stable
        # (0.3 s naps, seconds per command): date the freshly written files back.
        past = time.time() - 10
        for f in cfg.iterdir():
            f.chmod(0o644)
            os.utime(f, (past, past))
        # `postfix check` creates the missing queue subdirectories with their owners (private/ must exist
        # before Dovecot creates the SASL socket there). set-permissions (seconds: it walks the whole
        # install) is only the repair path for a reused root whose ownership went wrong.
        try:
            self.check()
        except StackError:
            run(["postfix", "-c", str(cfg), "set-permissions"], check=False)
            self.check()

    def check(self) -> None:
        """``postfix check``: configuration and queue ownership sanity, with Postfix's own words."""
        run(["postfix", "-c", str(self.config_dir), "check"])

    def start(self) -> None:
        """``postfix start`` (master daemonizes); port readiness is checked by callers."""
        if self.running:
            return
        proc = run(["postfix", "-c", str(self.config_dir), "start"], check=False)
        deadline = time.monotonic() + 5
        while proc.returncode == 0 and not self.running and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.returncode != 0 or not self.running:
            raise StackError(
                f"postfix {self.name} failed to start (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}"
                f"--- {self.log_file}\n{tail(self.log_file)}"
            )
