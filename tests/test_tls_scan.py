"""The TLS scan (probes.tls.scan) against real servers, with ground truth from OpenSSL itself.

Real Postfix and Dovecot (the session ``mailstack``) over every port: SMTP STARTTLS, submission,
submissions (465), IMAP STARTTLS/993, POP3 STLS/995. What the scan reports is compared with what
Python's ``ssl`` (OpenSSL 3) sees on the same port: the versions it can negotiate, the suite it
negotiates when it offers the scan's own order, and the chain it is served. In-process fakes
(tests/support/fakehello.py) only for what no server here can offer (SSLv2, SSLv3, EXPORT) and for
faults (a suite never offered, garbage, truncated or oversize records, 421 after N connections, silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator

import pytest

from probes.recorder import Recorder
from probes.tls import hello as h
from probes.tls.audit import TLSCheckSettings, openssl_offers
from probes.tls.scan import INFO_CLASSES, WEAK_CLASSES, ScanCache, ScanFacts, scan, scan_key
from probes.wire.certs import presented_chain
from probes.wire.net import Endpoint, TLSSettings
from probes.wire.slots import ServerSlots
from tests.mailstack import SERVER_NAME, MailStack
from tests.support.tlsaudit import SOURCE

PORTS = {
    "smtp": ("smtp", "starttls"),
    "submission": ("smtp", "starttls"),
    "submissions": ("smtp", "implicit"),
    "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
}


def settings_for(host: str, port: int, protocol: str, mode: str, **kw: object) -> TLSCheckSettings:
    ep = Endpoint(
        host,
        port,
        tls_mode=mode,  # type: ignore[arg-type]
        tls=TLSSettings(server_name=SERVER_NAME),
        source_address=SOURCE,
    )
    return TLSCheckSettings(ep, protocol, timeout=10.0, **kw)  # type: ignore[arg-type]


def openssl_names() -> dict[int, str]:
    """IANA code -> OpenSSL name of every suite this OpenSSL knows (TLS 1.2 and below)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {c["id"] & 0xFFFF: c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}


@contextlib.contextmanager
def reference(
    settings: TLSCheckSettings, version: ssl.TLSVersion, ciphers: str | None = None
) -> Iterator[ssl.SSLSocket]:
    """Python's ssl on the same port (STARTTLS done by hand), pinned to ``version``."""
    ep = settings.endpoint
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    raw = socket.create_connection((ep.host, ep.port), timeout=10, source_address=(SOURCE, 0))
    with raw:
        if ep.tls_mode == "starttls":
            starttls_by_hand(raw, settings.protocol)
        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            yield tls


def starttls_by_hand(sock: socket.socket, protocol: str) -> None:
    f = sock.makefile("rb")

    def smtp_reply() -> bytes:
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line

    if protocol == "smtp":
        smtp_reply()
        sock.sendall(b"EHLO scan.test\r\n")
        smtp_reply()
        sock.sendall(b"STARTTLS\r\n")
        assert smtp_reply().startswith(b"220")
    elif protocol == "imap":
        f.readline()
        sock.sendall(b"a STARTTLS\r\n")
        while not (line := f.readline()).startswith(b"a "):
            pass
        assert line.startswith(b"a OK")
    else:
        f.readline()
        sock.sendall(b"STLS\r\n")
        assert f.readline().startswith(b"+OK")
    f.detach() if hasattr(f, "detach") else None


def reference_accepts(settings: TLSCheckSettings, version: ssl.TLSVersion) -> bool:
    try:
        with reference(settings, version, "ALL:@SECLEVEL=0" if version < ssl.TLSVersion.TLSv1_2 else None):
            return True
    except ssl.SSLError:
        return False


def reference_takes(settings: TLSCheckSettings, pred: Callable[[h.Suite], bool]) -> bool:
    """OpenSSL, offering (TLS 1.2) exactly the table's suites that ``pred`` selects, gets a session."""
    names = openssl_names()
    chosen = [names[c] for c in h.suites_where(pred) if c in names]
    if not chosen:
        return False
    try:
        with reference(settings, ssl.TLSVersion.TLSv1_2, ":".join(chosen) + ":@SECLEVEL=0"):
            return True
    except ssl.SSLError:
        return False


# ---- the real stack ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port_name", list(PORTS))
async def test_real_stack_port(mailstack: MailStack, port_name: str) -> None:
    protocol, mode = PORTS[port_name]
    settings = settings_for(mailstack.host, mailstack.ports[port_name], protocol, mode)
    rec = Recorder(transcript=[])
    facts = await scan(settings, rec)
    print("\n".join(rec.transcript))

    assert facts.errors == {}
    assert facts.checked_at is not None
    assert facts.protocols["SSLv2"] is False
    assert facts.protocols["SSLv3"] is False
    assert facts.protocols["TLSv1.2"] is True
    assert facts.protocols["TLSv1.3"] is True
    for name, version in (("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1)):
        if openssl_offers(version):
            assert facts.protocols[name] is reference_accepts(settings, version), name
    # Every class, forward secrecy and DHE as OpenSSL sees them offering exactly that class's suites
    # (RC4, 3DES and EXPORT: this OpenSSL knows none, nor do the servers built on it).
    for cls in WEAK_CLASSES + INFO_CLASSES:
        assert facts.classes[cls] is reference_takes(settings, lambda s, c=cls: c in s.classes), cls
    assert facts.non_fs is reference_takes(settings, lambda s: not s.forward_secret)
    assert facts.dhe is reference_takes(settings, lambda s: s.ffdhe)
    assert facts.secure_renegotiation is True
    assert facts.compression is False
    assert facts.stapled is False  # nothing configured to staple
    assert facts.tls13_group == "x25519"
    assert facts.complete
    assert facts.connections <= 11, facts.connections

    # The preferred suites are what OpenSSL negotiates when it offers the scan's own order.
    names = openssl_names()
    order = ":".join(names[c] for c in h.ALL_TLS12 if c in names)
    with reference(settings, ssl.TLSVersion.TLSv1_2, order + ":@SECLEVEL=0") as tls:
        cipher = tls.cipher()
        assert cipher is not None and facts.preferred["TLSv1.2"] == h.suite_name(
            next(c for c, n in names.items() if n == cipher[0])
        )
        assert facts.served_chain == presented_chain(tls)
    with reference(settings, ssl.TLSVersion.TLSv1_3) as tls:
        cipher = tls.cipher()
        assert cipher is not None and facts.preferred["TLSv1.3"] == cipher[0]


async def test_one_slot_for_the_whole_scan(mailstack: MailStack) -> None:
    slots = ServerSlots(default_limit=5)
    settings = settings_for(mailstack.host, mailstack.imaps_port, "imap", "implicit", slots=slots)
    rec = Recorder()
    facts = await scan(settings, rec)
    assert facts.connections >= 10
    for key in ServerSlots.keys(settings.endpoint, "imap"):
        assert slots.high_water(key) == 1
        assert slots.in_use(key) == 0
    assert "tls_scan" in rec.phases and "queue" in rec.phases


# ---- the cache -----------------------------------------------------------------------------------------


def test_cache_keeps_complete_scans_only() -> None:
    now = [1000.0]
    cache = ScanCache(clock=lambda: now[0], max_entries=2)
    settings = settings_for("127.0.0.1", 1, "smtp", "starttls")
    key = scan_key(settings)
    done = ScanFacts(checked_at=now[0], protocols=dict.fromkeys(h.VERSION_NAMES.values(), False))
    done.classes = dict.fromkeys(WEAK_CLASSES + INFO_CLASSES, False)
    done.non_fs = False
    assert done.complete
    assert cache.put(key, done, "fp1")
    assert cache.fresh(key, "fp1", 100) is done
    assert cache.fresh(key, "fp2", 100) is None  # the certificate changed
    now[0] += 100
    assert cache.fresh(key, "fp1", 100) is None  # too old
    partial = ScanFacts(checked_at=now[0])
    assert not cache.put(key, partial, "fp1")
    assert cache.fresh(key, "fp1", 1e9) is None  # the old one is forgotten too
    for i in range(3):
        cache.put(("k", str(i)), done, None)
    assert len(cache) == 2
