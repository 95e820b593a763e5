"""The TLS audit against real Dovecot and Postfix servers, each configured to show one property.

Variant servers (tests/mailstack/variants.py) run beside the session stack with certificates made here,
so every expected value is known exactly: each test asserts the facts probes.tls.audit reports (timestamps
against the generated certificates, reasons, legacy flags, STARTTLS/AUTH before TLS), and one test runs
Debian's prometheus-blackbox-exporter on the same endpoints to show that our earliest expiry is its
``probe_ssl_earliest_cert_expiry``. Clients connect from 127.0.0.2: Dovecot treats 127.0.0.1 -> 127.0.0.1
as a secure connection and would offer plaintext LOGIN there whatever its settings.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from prometheus_client.parser import text_string_to_metric_families

from exporter.web.multitarget import SCRAPE_TIMEOUT_OFFSET
from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSession, IMAPSettings
from probes.clients.pop3 import POP3Client
from probes.clients.smtp import SMTPSettings, open_session
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.tls.audit import LEGACY_VERSIONS, TLSCheckSettings, TLSFacts, openssl_offers, probe_tls
from tests.mailstack import SERVER_NAME, MailStack, free_ports
from tests.mailstack.variants import (
    BlackboxExporter,
    Issued,
    Variant,
    VariantSet,
    blackbox_available,
    blackbox_starttls_modules,
)
from tests.support.procs import run_bounded, wait_exit
from tests.support.stackconfig import exporter_argv
from tests.support.tlsaudit import NAMES, SOURCE, Certs, endpoint, expected_legacy
from tests.support.wait import eventually

IMPLICIT_PORTS = {"imaps", "pop3s", "submissions"}
PROTOCOL_OF = {"imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3", "smtp": "smtp"}


@dataclass
class Audit:
    facts: TLSFacts | None  # what recorder.tls holds for the endpoint, raise or not
    recorder: Recorder
    error: ProbeError | None
    returned: TLSFacts | None


async def audit(
    v: Variant,
    port_name: str,
    ca_file: Path | None,
    *,
    protocol: str | None = None,
    check_legacy: bool = True,
) -> Audit:
    """probe_tls on one port of a variant, from 127.0.0.2, verifying against ``ca_file``."""
    mode = "implicit" if port_name in IMPLICIT_PORTS else "starttls"
    ep = endpoint(v.host, v.ports[port_name], mode, ca_file=ca_file)
    rec = Recorder(transcript=[])
    settings = TLSCheckSettings(
        ep, protocol or PROTOCOL_OF[port_name], timeout=5.0, check_legacy=check_legacy
    )
    try:
        facts = await probe_tls(settings, rec)
    except ProbeError as exc:
        return Audit(rec.tls.get(ep.address), rec, exc, None)
    assert rec.tls[ep.address] is facts
    return Audit(facts, rec, None, facts)


def assert_chain(facts: TLSFacts, chain: tuple[Issued, ...]) -> None:
    assert [c.fingerprint_sha256 for c in facts.chain] == [
        c.cert.fingerprint(hashes.SHA256()).hex() for c in chain
    ]
    assert facts.leaf_not_before == pytest.approx(chain[0].not_before, abs=1)
    assert facts.leaf_not_after == pytest.approx(chain[0].not_after, abs=1)
    assert facts.earliest_not_after == pytest.approx(min(c.not_after for c in chain), abs=1)


def stdlib_negotiates(v: Variant, port: int, ca_file: Path) -> tuple[str | None, str]:
    """Version and cipher a plain stdlib client negotiates with an implicit-TLS port (our reference)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((v.host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version(), cipher[0]


# ---- a good chain, every protocol and mode ---------------------------------------------------------


@pytest.mark.parametrize(
    ("port_name", "protocol"),
    [("imap", None), ("imaps", None), ("pop3", None), ("pop3s", None), ("imaps", "tcp")],
)
async def test_valid_chain(variants: VariantSet, port_name: str, protocol: str | None) -> None:
    v = variants["valid"]
    a = await audit(v, port_name, variants.ca_file, protocol=protocol)
    f = a.returned
    assert a.error is None and f is not None
    assert f.protocol == (protocol or PROTOCOL_OF[port_name])
    assert f.endpoint == f"127.0.0.1:{v.ports[port_name]}"
    assert (f.handshake_ok, f.verified, f.verify_reason, f.hostname_match, f.error) == (
        True,
        True,
        None,
        True,
        None,
    )
    version, cipher = stdlib_negotiates(v, v.ports["imaps"], variants.ca_file)
    assert (f.version, f.cipher) == (version, cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    assert_chain(f, v.chain)
    assert f.chain[0].sans == NAMES and f.chain[0].subject == f"CN={SERVER_NAME},O=mailcanary tls audit"
    assert f.chain[1].is_ca and not f.chain[1].self_signed
    assert f.legacy == expected_legacy(False)  # Dovecot's default ssl_min_protocol TLSv1.2
    if port_name in IMPLICIT_PORTS:
        assert (f.mode, f.starttls_offered, f.auth_before_tls) == ("implicit", None, None)
    else:
        # Dovecot: disable_plaintext_auth=yes, and 127.0.0.2 is not "secure" localhost to it.
        assert (f.mode, f.starttls_offered, f.auth_before_tls) == ("starttls", True, False)
    assert set(a.recorder.phases) == {"tls_connect", "tls_handshake", "tls_legacy"}
    assert a.recorder.phases["tls_handshake"] > 0


async def test_untrusted_chain_is_reported_with_its_dates(variants: VariantSet, mailstack: MailStack) -> None:
    v = variants["valid"]
    for ca in (None, mailstack.ca_file):  # the system store, and another CA
        a = await audit(v, "imaps", ca)
        f = a.returned
        assert a.error is None and f is not None
        assert (f.handshake_ok, f.verified, f.verify_reason, f.hostname_match) == (
            True,
            False,
            "untrusted",
            True,
        )
        assert f.error == "certificate verification failed: unable to get local issuer certificate"
        assert_chain(f, v.chain)


# ---- certificate problems: the facts still come, from the unverified second look ------------------------


@pytest.mark.parametrize("port_name", ["imaps", "pop3"])
async def test_expired_leaf(variants: VariantSet, certs: Certs, port_name: str) -> None:
    v = variants["expired"]
    a = await audit(v, port_name, variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.handshake_ok, f.verified, f.verify_reason, f.hostname_match) == (True, False, "expired", True)
    assert f.error == "certificate verification failed: certificate has expired"
    assert_chain(f, v.chain)
    assert f.leaf_not_after == certs.pki.days(-2).timestamp()
    assert f.earliest_not_after == f.leaf_not_after < time.time()
    assert f.version == "TLSv1.3"
    assert f.legacy == expected_legacy(False)
    if port_name == "pop3":
        assert (f.starttls_offered, f.auth_before_tls) == (True, False)


async def test_leaf_expiring_in_five_days(variants: VariantSet, certs: Certs) -> None:
    v = variants["expiring"]
    a = await audit(v, "imaps", variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.verified, f.verify_reason) == (True, None)
    assert_chain(f, v.chain)
    assert f.leaf_not_after == f.earliest_not_after == certs.pki.days(5).timestamp()
    assert (f.earliest_not_after - time.time()) / 86400 == pytest.approx(5, abs=0.01)


async def test_wrong_hostname(variants: VariantSet) -> None:
    v = variants["wronghost"]
    a = await audit(v, "imaps", variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.handshake_ok, f.verified, f.verify_reason, f.hostname_match) == (
        True,
        False,
        "hostname_mismatch",
        False,
    )
    assert f.error == (
        "certificate verification failed: Hostname mismatch, certificate is not valid for "
        "'mail.example.test'."
    )
    assert f.chain[0].sans == ("other.example.test",)
    assert_chain(f, v.chain)


async def test_self_signed_leaf(variants: VariantSet) -> None:
    v = variants["selfsigned"]
    a = await audit(v, "imaps", variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.verified, f.verify_reason, f.hostname_match) == (False, "self_signed", True)
    assert len(f.chain) == 1 and f.chain[0].self_signed and f.chain[0].subject == f.chain[0].issuer
    assert_chain(f, v.chain)


async def test_leaf_not_yet_valid(variants: VariantSet, certs: Certs) -> None:
    v = variants["notyet"]
    a = await audit(v, "imaps", variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.verified, f.verify_reason) == (False, "not_yet_valid")
    assert f.leaf_not_before == certs.pki.days(2).timestamp() > time.time()
    assert_chain(f, v.chain)


@pytest.mark.parametrize("port_name", ["imap", "imaps", "smtp"])
async def test_intermediate_expiring_before_the_leaf_is_the_earliest(
    variants: VariantSet, certs: Certs, port_name: str
) -> None:
    v = variants["earlyinter"]
    a = await audit(v, port_name, variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.verified, f.verify_reason) == (True, None)
    assert_chain(f, v.chain)
    assert f.leaf_not_after == certs.pki.days(60).timestamp()
    assert f.earliest_not_after == certs.early.not_after == certs.pki.days(20).timestamp()
    if port_name == "smtp":
        # Postfix, smtpd_tls_auth_only=yes (the stack's default) and smtpd_tls_protocols = >=TLSv1.2.
        assert (f.starttls_offered, f.auth_before_tls) == (True, False)
        assert f.legacy == expected_legacy(False)


# ---- legacy protocol versions -----------------------------------------------------------------------


@pytest.mark.parametrize("port_name", ["imaps", "imap", "pop3"])
async def test_legacy_versions_accepted(variants: VariantSet, port_name: str) -> None:
    """Dovecot with ssl_min_protocol=TLSv1 and ALL:@SECLEVEL=0, through implicit TLS and both STARTTLS
    dialogues; the main handshake is still the best version both sides have."""
    assert openssl_offers(LEGACY_VERSIONS["TLSv1"]), "DESIGN.md: this machine's OpenSSL can offer TLS 1.0"
    v = variants["legacy"]
    a = await audit(v, port_name, variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert f.legacy == expected_legacy(True) == {"TLSv1": True, "TLSv1.1": True}
    assert (f.verified, f.version) == (True, "TLSv1.3")
    assert a.recorder.phases["tls_legacy"] > 0


async def test_legacy_not_checked_stays_unknown(variants: VariantSet) -> None:
    a = await audit(variants["legacy"], "imaps", variants.ca_file, check_legacy=False)
    assert a.returned is not None
    assert a.returned.legacy == {"TLSv1": None, "TLSv1.1": None}
    assert "tls_legacy" not in a.recorder.phases


# ---- what plain ports offer before TLS -----------------------------------------------------------------


@pytest.mark.parametrize("port_name", ["smtp", "imap", "pop3"])
async def test_auth_offered_before_starttls(variants: VariantSet, port_name: str) -> None:
    """Postfix with smtpd_tls_auth_only=no; Dovecot with ssl=yes and disable_plaintext_auth=no."""
    a = await audit(variants["plainauth"], port_name, variants.ca_file)
    f = a.returned
    assert a.error is None and f is not None
    assert (f.starttls_offered, f.auth_before_tls, f.verified) == (True, True, True)
    if port_name == "smtp":
        assert f.legacy == expected_legacy(True)  # smtpd_tls_protocols = >=TLSv1


@pytest.mark.parametrize("port_name", ["smtp", "imap", "pop3"])
async def test_session_stack_offers_no_auth_before_tls(mailstack: MailStack, port_name: str) -> None:
    """The stack's stock settings: Postfix smtpd_tls_auth_only=yes, Dovecot disable_plaintext_auth=yes."""
    ep = endpoint(mailstack.host, mailstack.ports[port_name], "starttls", ca_file=mailstack.ca_file)
    f = await probe_tls(TLSCheckSettings(ep, PROTOCOL_OF[port_name], check_legacy=False), Recorder())
    assert (f.starttls_offered, f.auth_before_tls, f.verified) == (True, False, True)


async def test_dovecot_offers_login_to_localhost_itself(mailstack: MailStack) -> None:
    """Why the audit must come from another address: 127.0.0.1 -> 127.0.0.1 counts as secure to Dovecot."""
    ep = endpoint(
        mailstack.host, mailstack.imap_port, "starttls", ca_file=mailstack.ca_file, source="127.0.0.1"
    )
    f = await probe_tls(TLSCheckSettings(ep, "imap", check_legacy=False), Recorder())
    assert f.auth_before_tls is True


@pytest.mark.parametrize("port_name", ["imap", "pop3"])
async def test_no_starttls_offered(variants: VariantSet, port_name: str) -> None:
    """No TLS session at all is the one case probe_tls raises; the facts are in the recorder anyway."""
    v = variants["notls"]
    a = await audit(v, port_name, variants.ca_file)
    assert a.error is not None and a.error.reason == "tls_handshake"
    f = a.facts
    assert f is not None
    assert (f.starttls_offered, f.auth_before_tls, f.handshake_ok, f.verified) == (False, True, False, False)
    assert f.verify_reason == "other" and f.chain == [] and f.earliest_not_after is None
    assert f.error in ("IMAP server does not offer STARTTLS", "server does not offer STLS")
    assert f.legacy == {"TLSv1": None, "TLSv1.1": None}  # not asked: there is no TLS to ask about
    assert a.recorder.facts.current_phase == "tls_handshake"


async def test_a_server_that_never_completes_a_handshake() -> None:
    """Every handshake fails (a listener that answers in plain text): tls_handshake is raised, and the
    facts say so, legacy included (a handshake was attempted and not completed: False, not unknown)."""

    async def plaintext(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK this is no TLS server\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plaintext, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        ep = endpoint("127.0.0.1", port, "implicit", ca_file=None, source=None)
        rec = Recorder()
        with pytest.raises(ProbeError) as info:
            await probe_tls(TLSCheckSettings(ep, "tcp", timeout=3), rec)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.reason == "tls_handshake"
    f = rec.tls[ep.address]
    assert (f.handshake_ok, f.verified, f.verify_reason, f.chain, f.version) == (
        False,
        False,
        "other",
        [],
        None,
    )
    assert f.error is not None and "TLS handshake failed" in f.error
    assert f.legacy == expected_legacy(False)
    assert rec.facts.current_phase == "tls_handshake"


async def test_nothing_listening_is_tls_connect(variants: VariantSet) -> None:
    port = free_ports(1)[0]
    ep = endpoint("127.0.0.1", port, "implicit", ca_file=variants.ca_file)
    rec = Recorder()
    with pytest.raises(ProbeError) as info:
        await probe_tls(TLSCheckSettings(ep, "imap", timeout=3), rec)
    assert info.value.reason == "tls_connect"
    assert rec.tls == {}


async def test_bad_settings_are_config_errors(variants: VariantSet) -> None:
    v = variants["valid"]
    plain = endpoint(v.host, v.ports["imap"], "none", ca_file=None)
    for settings in (
        TLSCheckSettings(plain, "imap"),
        TLSCheckSettings(endpoint(v.host, v.ports["imap"], "starttls", ca_file=None), "tcp"),
        TLSCheckSettings(endpoint(v.host, v.ports["imaps"], "implicit", ca_file=None), "ftp"),
    ):
        with pytest.raises(ProbeError) as info:
            await probe_tls(settings, Recorder())
        assert info.value.reason == "config"


# ---- the round trip's own connections record their facts (no extra connection) -------------------------


async def test_clients_record_tls_facts_of_their_own_connection(
    variants: VariantSet, certs: Certs, mailstack: MailStack, mailbox: str
) -> None:
    """The SMTP, IMAP and POP3 clients of the round trip leave recorder.tls[endpoint] behind."""
    v = variants["earlyinter"]
    rec = Recorder()
    smtp_ep = endpoint(v.host, v.ports["smtp"], "starttls", ca_file=variants.ca_file)
    smtp = await open_session(SMTPSettings(smtp_ep), rec)
    smtp.close()
    creds = Credentials(mailbox, mailstack.password(mailbox))
    imap_ep = endpoint(v.host, v.ports["imap"], "starttls", ca_file=variants.ca_file)
    session = IMAPSession(IMAPSettings(imap_ep, creds), rec)
    try:
        await session.open()  # a full login: the variant shares the stack's users and Maildirs
    finally:
        await session.close()
    pop_ep = endpoint(mailstack.host, mailstack.pop3s_port, "implicit", ca_file=mailstack.ca_file)
    client = await POP3Client.connect(pop_ep, rec)
    await client.close()
    for ep, protocol in ((smtp_ep, "smtp"), (imap_ep, "imap"), (pop_ep, "pop3")):
        f = rec.tls[ep.address]
        assert (f.protocol, f.mode, f.handshake_ok, f.verified, f.hostname_match) == (
            protocol,
            ep.tls_mode,
            True,
            True,
            True,
        )
        assert f.legacy == {"TLSv1": None, "TLSv1.1": None}  # never measured on the round trip's connection
    assert rec.tls[smtp_ep.address].earliest_not_after == certs.early.not_after
    assert rec.tls[imap_ep.address].earliest_not_after == certs.early.not_after
    assert rec.tls[pop_ep.address].starttls_offered is None


# ---- the same expiry as prometheus-blackbox-exporter ---------------------------------------------------


BLACKBOX_CASES = [
    # (variant, port, blackbox module, verified by blackbox with our CA too)
    ("valid", "imaps", "implicit", True),
    ("valid", "pop3", "pop3_starttls", True),
    ("expired", "imaps", "implicit", False),
    ("expiring", "imaps", "implicit", True),
    ("wronghost", "imaps", "implicit", False),
    ("selfsigned", "imaps", "implicit", False),
    ("earlyinter", "imap", "imap_starttls", True),
    ("earlyinter", "smtp", "smtp_starttls", True),
    ("legacy", "pop3", "pop3_starttls", True),
]


@pytest.fixture(scope="module")
def blackbox(variants: VariantSet) -> Iterator[BlackboxExporter]:
    if not blackbox_available():
        pytest.fail(
            "prometheus-blackbox-exporter is not installed (Debian package of that name)", pytrace=False
        )
    modules = blackbox_starttls_modules(SERVER_NAME, None)
    modules |= {f"{k}_verify": m for k, m in blackbox_starttls_modules(SERVER_NAME, variants.ca_file).items()}
    with BlackboxExporter(variants.root / "blackbox", modules) as bb:
        yield bb


@pytest.mark.parametrize(("name", "port_name", "module", "verifies"), BLACKBOX_CASES)
async def test_earliest_expiry_equals_blackbox_exporter(
    variants: VariantSet, blackbox: BlackboxExporter, name: str, port_name: str, module: str, verifies: bool
) -> None:
    v = variants[name]
    a = await audit(v, port_name, variants.ca_file, check_legacy=False)
    f = a.returned
    assert f is not None and f.earliest_not_after is not None
    assert f.earliest_not_after == v.earliest_not_after
    target = v.address(port_name)
    bb = blackbox.probe(module, target)
    assert bb["probe_success"] == 1, blackbox.probe_text(module, target)
    assert bb["probe_ssl_earliest_cert_expiry"] == f.earliest_not_after
    assert bb[f'probe_tls_version_info{{version="{f.version.replace("v", " ")}"}}'] == 1  # type: ignore[union-attr]
    verified = blackbox.probe(f"{module}_verify", target)
    assert verified["probe_success"] == (1 if verifies else 0)
    assert f.verified is verifies
    if verifies:
        # The verified chain ends at our root, which outlives everything else here.
        assert verified["probe_ssl_last_chain_expiry_timestamp_seconds"] == f.earliest_not_after


# ---- the daemon's side: /metrics, /probe, the one-shot report ------------------------------------------

MODULE_OF = {
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "imap": ("imap", "starttls"),
    "smtp": ("smtp", "starttls"),
    "pop3s": ("pop3", "implicit"),
}


@dataclass
class Daemon:
    port: int
    proc: subprocess.Popen[str]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


DAEMON_CHECKS = [  # (check name, variant, port)
    ("valid-imaps", "valid", "imaps"),
    ("expired-imaps", "expired", "imaps"),
    ("expiring-imaps", "expiring", "imaps"),
    ("wronghost-imaps", "wronghost", "imaps"),
    ("selfsigned-imaps", "selfsigned", "imaps"),
    ("early-smtp", "earlyinter", "smtp"),
    ("legacy-pop3", "legacy", "pop3"),
    ("plainauth-imap", "plainauth", "imap"),
]


@pytest.fixture(scope="module")
def daemon(variants: VariantSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("tlsdaemon")
    checks = []
    for name, variant, port_name in DAEMON_CHECKS:
        protocol, mode = MODULE_OF[port_name]
        checks.append(
            {
                "name": name,
                "host": "127.0.0.1",
                "port": variants[variant].ports[port_name],
                "protocol": protocol,
                "tls": mode,
                "source_address": SOURCE,
                "interval": "1h",
                "tls_config": {"ca_file": str(variants.ca_file), "server_name": SERVER_NAME},
            }
        )
    modules = {
        f"{p}_{m}_test": {
            "protocol": p,
            "tls": m,
            "check_legacy": False,
            "tls_config": {"ca_file": str(variants.ca_file), "server_name": SERVER_NAME},
        }
        for p, m in set(MODULE_OF.values())
    }
    config = tmp / "mc.yml"
    config.write_text(
        yaml.safe_dump(
            {"global": {"state_dir": str(tmp / "state")}, "tls_checks": checks, "modules": modules}
        )
    )
    port = free_ports(1)[0]
    log = tmp / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(exporter_argv(config, port), stdout=out, stderr=subprocess.STDOUT, text=True)
    d = Daemon(port, proc)

    def listening() -> bool:
        assert proc.poll() is None, log.read_text()
        return '"event": "started"' in log.read_text()

    # Starting is a process start and imports: seconds on a loaded 2-core machine, not bounded by the
    # checks' 30 s below (which start counting once the daemon serves).
    eventually(
        listening,
        timeout=120,
        interval=0.2,
        message=lambda: f"the daemon started (its log: {log.read_text()[-3000:]!r})",
        runnable=lambda: [proc.pid],
    )

    def checked() -> set[str | None]:
        assert proc.poll() is None, log.read_text()
        status, text = d.get("/metrics")
        assert status == 200, text
        return {dict(k[1]).get("probe") for k in _samples(text) if k[0] == "mailcanary_tls_check_success"}

    eventually(
        checked,
        until=lambda done: done >= {c[0] for c in DAEMON_CHECKS},
        ignoring=(OSError,),
        timeout=30,
        interval=0.2,
        message=lambda: f"the TLS checks all completed (daemon log: {log.read_text()[-3000:]!r})",
        runnable=lambda: [proc.pid],
    )
    try:
        yield d
    finally:
        proc.terminate()
        # A hang guard: the daemon's own bound on a stop is STOP_BOUND (9 s), then exit 1, `stop_overdue`.
        assert wait_exit(proc, 20) == 0, log.read_text()[-3000:]


def test_daemon_exports_every_tls_fact(daemon: Daemon, variants: VariantSet) -> None:
    m = _samples(daemon.get("/metrics")[1])

    def val(metric: str, check: str, **extra: str) -> float | None:
        for (name, labels), value in m.items():
            lab = dict(labels)
            if (
                name == metric
                and lab.get("probe") == check
                and all(lab.get(k) == v for k, v in extra.items())
            ):
                return value
        return None

    for check, variant, port_name in DAEMON_CHECKS:
        v = variants[variant]
        endpoint = f"127.0.0.1:{v.ports[port_name]}"
        protocol = MODULE_OF[port_name][0]
        where = {"endpoint": endpoint, "protocol": protocol}
        assert (
            val("mailcanary_tls_earliest_cert_expiry_timestamp_seconds", check, **where)
            == v.earliest_not_after
        )
        assert val("mailcanary_tls_cert_not_after_timestamp_seconds", check, **where) == v.leaf.not_after
        assert val("mailcanary_tls_cert_not_before_timestamp_seconds", check, **where) == v.leaf.not_before
    expectations = {
        "valid-imaps": (1, None, 1),
        "expired-imaps": (0, "expired", 1),
        "expiring-imaps": (1, None, 1),
        "wronghost-imaps": (0, "hostname_mismatch", 0),
        "selfsigned-imaps": (0, "self_signed", 1),
        "early-smtp": (1, None, 1),
        "legacy-pop3": (1, None, 1),
        "plainauth-imap": (1, None, 1),
    }
    for check, (verified, reason, hostname) in expectations.items():
        assert val("mailcanary_tls_cert_verified", check) == verified, check
        assert val("mailcanary_tls_check_success", check) == verified, check
        assert val("mailcanary_tls_hostname_match", check) == hostname, check
        if reason is None:
            assert not any(
                n == "mailcanary_tls_cert_verify_error_info" and dict(k).get("probe") == check for n, k in m
            ), check
        else:
            assert val("mailcanary_tls_cert_verify_error_info", check, reason=reason) == 1, check
        outcome = "success" if verified else "tls_verify"
        assert val("mailcanary_tls_check_runs_total", check, outcome=outcome) == 1, check
    assert val("mailcanary_tls_legacy_protocol_accepted", "legacy-pop3", version="TLSv1") == 1
    assert val("mailcanary_tls_legacy_protocol_accepted", "legacy-pop3", version="TLSv1.1") == 1
    assert val("mailcanary_tls_legacy_protocol_accepted", "valid-imaps", version="TLSv1") == 0
    assert val("mailcanary_tls_auth_before_tls", "plainauth-imap") == 1
    assert val("mailcanary_tls_starttls_offered", "plainauth-imap") == 1
    assert val("mailcanary_tls_auth_before_tls", "legacy-pop3") == 0
    assert val("mailcanary_tls_starttls_offered", "valid-imaps") is None  # implicit TLS: no plain dialogue
    assert val("mailcanary_tls_version_info", "valid-imaps", version="TLSv1.3") == 1
    assert ("mailcanary_tls_legacy_protocol_testable", frozenset({("version", "TLSv1")})) in m


@pytest.mark.parametrize(("name", "port_name", "module", "verifies"), BLACKBOX_CASES)
def test_probe_endpoint_matches_blackbox_exporter(
    daemon: Daemon,
    variants: VariantSet,
    blackbox: BlackboxExporter,
    name: str,
    port_name: str,
    module: str,
    verifies: bool,
) -> None:
    """The same endpoint through blackbox_exporter and through our /probe: same expiry, same verdict."""
    v = variants[name]
    target = v.address(port_name)
    protocol, mode = MODULE_OF[port_name]
    status, text = daemon.get(
        f"/probe?module={protocol}_{mode}_test&target={target}", {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
    )
    assert status == 200, text
    ours = {name_: value for (name_, labels), value in _samples(text).items() if not labels}
    bb = blackbox.probe(f"{module}_verify", target)
    assert (
        ours["probe_ssl_earliest_cert_expiry"]
        == blackbox.probe(module, target)["probe_ssl_earliest_cert_expiry"]
    )
    assert ours["probe_ssl_earliest_cert_expiry"] == v.earliest_not_after
    assert ours["probe_success"] == bb["probe_success"] == (1 if verifies else 0)
    if verifies:
        assert (
            ours["probe_ssl_last_chain_expiry_timestamp_seconds"]
            == bb["probe_ssl_last_chain_expiry_timestamp_seconds"]
        )
    version = [
        dict(lab)["version"] for (n, lab), _ in _samples(text).items() if n == "probe_tls_version_info"
    ]
    unverified = blackbox.probe(module, target)  # blackbox reports no version when its handshake fails
    assert version and unverified[f'probe_tls_version_info{{version="{version[0]}"}}'] == 1
    assert ours["mailcanary_tls_cert_verified"] == (1 if verifies else 0)


def test_probe_endpoint_remembers_legacy_answers(daemon: Daemon, variants: VariantSet) -> None:
    """The daemon's /probe with a built-in module (legacy on, ``legacy_recheck`` 1d): the second request
    reuses the first one's legacy answers (same time in the answer), the certificate is audited again."""
    target = variants["legacy"].address("imaps")
    answers = []
    for _ in range(2):
        status, text = daemon.get(f"/probe?module=imap_implicit&target={target}")
        assert status == 200, text
        answers.append(_samples(text))
    checked = ("mailcanary_tls_legacy_protocol_checked_timestamp_seconds", frozenset())
    assert answers[0][checked] == answers[1][checked]
    legacy = [k for k in answers[0] if k[0] == "mailcanary_tls_legacy_protocol_accepted"]
    assert legacy and all(answers[0][k] == answers[1][k] == 1 for k in legacy)
    # the system store does not know the test CA: unverified, at every request
    assert answers[1][("probe_success", frozenset())] == 0
    assert ("probe_ssl_earliest_cert_expiry", frozenset()) in answers[1]


def test_probe_endpoint_rejects_bad_requests(daemon: Daemon) -> None:
    status, text = daemon.get("/probe?module=nope&target=127.0.0.1:1")
    assert status == 400 and text.startswith("unknown module 'nope' (have: ")
    status, text = daemon.get("/probe?module=smtp_starttls&target=http://x/")
    assert status == 400 and text == "target 'http://x/' is not host:port\n"
    status, text = daemon.get("/probe?module=smtp_starttls&target=h:99999")
    assert status == 400 and "port out of range" in text


def test_probe_endpoint_answers_within_the_scrape_timeout(daemon: Daemon) -> None:
    """A target that never answers: /probe must answer (probe_success 0) before Prometheus gives up: the
    run is cut at the scrape timeout less SCRAPE_TIMEOUT_OFFSET (kept for the answer), not at the module's
    10 s step timeout. Asserted on the daemon's own clock: the client's wall clock also counts the time a
    loaded machine leaves the daemon waiting for a CPU (seen: 2.11 s at load 25), which no code bounds."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        status, text = daemon.get(
            f"/probe?module=smtp_starttls&target=127.0.0.1:{port}",
            {"X-Prometheus-Scrape-Timeout-Seconds": "2"},
        )
        elapsed = time.monotonic() - t0
    assert status == 200
    samples = _samples(text)
    assert samples[("probe_success", frozenset())] == 0
    deadline = 2 - SCRAPE_TIMEOUT_OFFSET
    # Cut at the header's deadline (never before it), long before the module's 10 s would have been up.
    assert deadline <= samples[("probe_duration_seconds", frozenset())] < 10
    assert elapsed < 10


def test_one_shot_report_and_expiry_exit_codes(variants: VariantSet, tmp_path: Path) -> None:
    v = variants["expiring"]
    config = tmp_path / "mc.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"state_dir": str(tmp_path / "state")},
                "tls_checks": [
                    {
                        "name": "expiring",
                        "host": "127.0.0.1",
                        "port": v.ports["imaps"],
                        "protocol": "imap",
                        "tls": "implicit",
                        "tls_config": {"ca_file": str(variants.ca_file), "server_name": SERVER_NAME},
                    }
                ],
            }
        )
    )
    cmd = [sys.executable, "-m", "exporter.cli", "probe", "--config", str(config)]
    ok = run_bounded(cmd, 60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("MAILCANARY OK - 1 TLS checks verified")
    for line in (
        "subject    CN=mail.example.test",
        "days left  5.0 (earliest expiry in the chain)",
        "legacy TLS accepted: TLSv1 no, TLSv1.1 no",
        "verified   yes",
    ):
        assert line in ok.stdout, ok.stdout
    warn = run_bounded([*cmd, "--warn-days", "7", "--crit-days", "1"], 60)
    assert warn.returncode == 1 and warn.stdout.startswith("MAILCANARY WARNING - expiring ")
    crit = run_bounded([*cmd, "--warn-days", "30", "--crit-days", "7"], 60)
    assert crit.returncode == 2 and crit.stdout.startswith("MAILCANARY CRITICAL - expiring ")
