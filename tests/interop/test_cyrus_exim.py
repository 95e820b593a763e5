"""The interop matrix, Exim 4.96 -> Cyrus IMAP 3.6: mailcanary round trips against the real servers.

Exim takes the canary on 587 (STARTTLS) or 465 (implicit TLS) with AUTH and delivers it by LMTP into
Cyrus; mailcanary reads it back over IMAP (143 STARTTLS, 993) or POP3 (110 STLS, 995).
"""

from __future__ import annotations

import asyncio
import re
import select
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics.collector import ExporterState, build_registry
from exporter.run.runner import Runner
from probes import canary
from probes.recorder import Recorder
from probes.tls.audit import TLSCheckSettings, probe_tls
from probes.wire.net import Endpoint, TLSSettings
from tests.interop.cyrus import JUNK_FOLDER, CyrusServer
from tests.interop.exim import LATE_LOCAL, LOST_LOCAL, EximServer
from tests.interop.probeconfig import KEY, make_runner, roundtrip, run_one
from tests.support.roundtrip import wait_past_lost_after

ROUND_TRIP_USERS = ("canary", "alice", "bob", "carol", "dave", "erin")


def _render(runner: Runner) -> str:
    return generate_latest(build_registry(runner.store, ExporterState())).decode()


@pytest.fixture(scope="module")
def next_user(cyrus: CyrusServer) -> Callable[[], str]:
    users = iter(ROUND_TRIP_USERS * 10)

    def take() -> str:
        local = next(users)
        cyrus.clear(local)
        return local

    return take


@pytest.fixture
def user(next_user: Callable[[], str]) -> str:
    """A Cyrus user (local part) whose INBOX and INBOX/Spam were just emptied."""
    return next_user()


# ---- round trips: every submission port x every read-back port -------------------------------------------


@pytest.mark.parametrize("smtp_tls", ["starttls", "implicit"])
@pytest.mark.parametrize(
    ("protocol", "receive_tls"),
    [("imap", "starttls"), ("imap", "implicit"), ("pop3", "starttls"), ("pop3", "implicit")],
)
def test_roundtrip_exim_to_cyrus(
    cyrus: CyrusServer,
    exim: EximServer,
    user: str,
    tmp_path: Path,
    smtp_tls: str,
    protocol: str,
    receive_tls: str,
) -> None:
    probe = roundtrip(
        cyrus, exim, tmp_path, "rt", user, protocol=protocol, receive_tls=receive_tls, smtp_tls=smtp_tls
    )
    result = run_one(make_runner(tmp_path, [probe]))
    assert (result.success, result.reason) == (True, "success"), (result.message, exim.log_tail())
    assert result.delivery is not None and result.delivery > 0
    assert {"smtp_auth", "smtp_send", "receive_login", "receive_wait", "receive_delete"} <= set(result.phases)
    # Exim's Received: says it took the message over TLS with AUTH (esmtpsa), then Cyrus's LMTP.
    assert result.path is not None
    assert cyrus.count(user) == 0  # the canary was deleted: nothing of ours left behind


def test_wrong_passwords_are_auth_failures(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    for protocol in ("imap", "pop3"):
        probe = roundtrip(cyrus, exim, tmp_path, f"bad-{protocol}", user, protocol=protocol)
        probe["receive"]["password_file"] = str(_secret(tmp_path, f"bad-{protocol}", "wrong-password"))
        result = run_one(make_runner(tmp_path, [probe]))
        assert (result.success, result.reason) == (False, "receive_auth"), result.message
        assert "wrong-password" not in result.message
    probe = roundtrip(cyrus, exim, tmp_path, "bad-smtp", user)
    probe["smtp"]["password_file"] = str(_secret(tmp_path, "bad-smtp", "not-the-password"))
    result = run_one(make_runner(tmp_path, [probe]))
    assert (result.success, result.reason) == (False, "smtp_auth"), result.message
    assert "535" in result.message


def _secret(tmp: Path, name: str, secret: str) -> Path:
    path = tmp / f"{name}.override.pw"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


# ---- TLS facts against openssl s_client ------------------------------------------------------------------

TLS_PORTS = [
    ("exim", "submission", "smtp", "starttls"),
    ("exim", "submissions", "smtp", "implicit"),
    ("cyrus", "imap", "imap", "starttls"),
    ("cyrus", "imaps", "imap", "implicit"),
    ("cyrus", "pop3", "pop3", "starttls"),
    ("cyrus", "pop3s", "pop3", "implicit"),
]


def _openssl(
    host: str, port: int, protocol: str, mode: str, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    argv = ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "mail.example.test", *extra]
    if mode == "starttls":
        argv += ["-starttls", protocol]
    return subprocess.run(argv, input=b"", capture_output=True, timeout=20, check=False)


def _s_client(host: str, port: int, protocol: str, mode: str, ca: Path) -> tuple[str, str, str]:
    """(protocol version, cipher, leaf SHA-256 fingerprint) as `openssl s_client` sees them."""
    done = _openssl(host, port, protocol, mode, "-CAfile", str(ca))
    out = done.stdout.decode(errors="replace")
    # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384": with TLS 1.3 the session block may not come.
    new = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert new and pem, out + done.stderr.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out
    leaf = x509.load_pem_x509_certificate(pem.group(0).encode())
    return new.group(1), new.group(2), leaf.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize(("server", "port_name", "protocol", "mode"), TLS_PORTS)
def test_tls_facts_match_openssl_s_client(
    cyrus: CyrusServer, exim: EximServer, server: str, port_name: str, protocol: str, mode: str
) -> None:
    host, port = (
        (exim.host, exim.ports[port_name]) if server == "exim" else (cyrus.host, cyrus.ports[port_name])
    )
    ep = Endpoint(
        host=host,
        port=port,
        tls_mode=mode,  # type: ignore[arg-type]
        tls=TLSSettings(ca_file=str(cyrus.ca_file), server_name="mail.example.test"),
    )
    rec = Recorder()
    facts = asyncio.run(probe_tls(TLSCheckSettings(ep, protocol, timeout=10.0, check_legacy=True), rec))
    version, cipher, fingerprint = _s_client(host, port, protocol, mode, cyrus.ca_file)
    assert (facts.handshake_ok, facts.verified, facts.hostname_match) == (True, True, True)
    assert (facts.version, facts.cipher) == (version, cipher)
    assert facts.chain[0].fingerprint_sha256 == fingerprint
    if mode == "starttls":
        # Exim advertises AUTH only inside TLS (server_advertise_condition); Cyrus offers its plaintext
        # mechanisms before STARTTLS (allowplaintext: yes, as Debian ships it): a true finding.
        assert facts.starttls_offered is True
        assert facts.auth_before_tls is (server == "cyrus")
    # Legacy versions: what a handshake of `openssl s_client -tls1/-tls1_1` at SECLEVEL=0 gives.
    for name, flag in (("TLSv1", "-tls1"), ("TLSv1.1", "-tls1_1")):
        if facts.legacy[name] is None:
            continue  # this machine's OpenSSL cannot offer it: never a false answer
        done = _openssl(host, port, protocol, mode, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert facts.legacy[name] is (done.returncode == 0), (name, done.stdout[-400:])
    print(f"{server} {port_name}: {facts.version} {facts.cipher} legacy={facts.legacy}")


# ---- quota, sync -----------------------------------------------------------------------------------------

FILLER_BYTES = 10 * 1024


def _filler(n: int) -> bytes:
    head = f"From: someone@example.org\r\nTo: quota@example.test\r\nSubject: filler {n}\r\n\r\n".encode()
    body = b"".join(b"%077d\r\n" % i for i in range(FILLER_BYTES // 79 + 1))
    raw = (head + body)[: FILLER_BYTES - 2] + b"\r\n"
    assert len(raw) == FILLER_BYTES
    return raw


def _getquotaroot(cyrus: CyrusServer, local: str) -> dict[str, tuple[int, int]]:
    """Cyrus's own answer, resource -> (used, limit) in bytes (STORAGE is in KiB on the wire)."""
    conn = cyrus.imap(local)
    try:
        typ, data = conn.getquotaroot("INBOX")
    finally:
        conn.logout()
    assert typ == "OK", data
    quota_lines = [q for q in data[1] if q]
    (line,) = quota_lines
    found = re.search(rb"\((.*)\)", line)
    assert found is not None, line
    words = found.group(1).split()
    out: dict[str, tuple[int, int]] = {}
    for i in range(0, len(words), 3):
        unit = 1024 if words[i].upper() == b"STORAGE" else 1
        out[words[i].decode().lower()] = (int(words[i + 1]) * unit, int(words[i + 2]) * unit)
    return out


def test_quota_is_exactly_what_cyrus_getquotaroot_says(
    cyrus: CyrusServer, exim: EximServer, tmp_path: Path
) -> None:
    cyrus.clear("quota")
    for n in range(10):
        cyrus.append("quota", _filler(n))
    expected = _getquotaroot(cyrus, "quota")
    assert expected == {"storage": (10 * FILLER_BYTES, 10240 * 1024)}  # 100 KiB of a 10 MiB quota
    runner = make_runner(tmp_path, [roundtrip(cyrus, exim, tmp_path, "qt", "quota")])
    result = run_one(runner, debug=True)
    assert result.success, (result.reason, result.message)
    assert result.quota == expected and result.quota_error is None
    samples = {
        s.name: s.value
        for fam in text_string_to_metric_families(_render(runner))
        for s in fam.samples
        if s.labels.get("probe") == "qt" and s.labels.get("resource") == "storage"
    }
    assert samples == {
        "mailcanary_mailbox_quota_used": 10 * FILLER_BYTES,
        "mailcanary_mailbox_quota_limit": 10240 * 1024,
    }
    assert cyrus.count("quota") == 10  # the canary came and went; the fillers stay
    cyrus.clear("quota")


@pytest.mark.parametrize("flag", ["$MailcanarySynced", "\\Seen"])
def test_sync_check_on_cyrus(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path, flag: str
) -> None:
    cyrus.append(user, b"From: a@example.org\r\nSubject: user mail\r\n\r\nhello\r\n")
    before = cyrus.snapshot(user)
    probe = roundtrip(cyrus, exim, tmp_path, "sy", user, receive__sync={"flag": flag, "timeout": "10s"})
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner, debug=True)
    assert result.success, (result.reason, result.message)
    assert result.sync_seconds is not None and result.sync_arrival is not None
    assert {"sync_connect", "sync_login", "sync_flag", "sync_wait"} <= set(result.phases)
    assert "mailcanary_roundtrip_sync_seconds" in _render(runner)
    assert cyrus.snapshot(user) == before  # the user's message untouched, the canary gone


def test_sync_check_with_a_canary_that_never_arrives_is_timeout(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    probe = roundtrip(
        cyrus,
        exim,
        tmp_path,
        "synclost",
        user,
        recipient=f"{LOST_LOCAL}@example.test",  # accepted by Exim, dropped (:blackhole:)
        timeout="3s",
        receive__sync={"flag": "$MailcanarySynced", "timeout": "2s"},
    )
    result = run_one(make_runner(tmp_path, [probe]))
    assert (result.success, result.reason) == (False, "timeout"), result.message


# ---- bounce, late, lost ----------------------------------------------------------------------------------


def test_exim_dsn_is_read_as_a_bounce(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    foreign = b"From: alice@example.test\r\nSubject: the sender's own mail\r\n\r\nkeep me\r\n"
    cyrus.append(user, foreign)
    probe = roundtrip(
        cyrus,
        exim,
        tmp_path,
        "bnc",
        user,
        recipient="nobody@example.test",
        bounce_receive=True,
        timeout="20s",
    )
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner, debug=True)
    assert result.reason == "bounced", (result.message, exim.log_tail())
    # Exim's DSN says "Status: 5.0.0" and carries Cyrus's "550 5.1.1 User unknown" only in its
    # Diagnostic-Code: the status class is the DSN's own, the 5.1.1 is in the message (docs/servers.md).
    assert "5.1.1" in result.message
    assert result.bounces == ("5.0.x",)
    assert result.receiver["bounces"][0]["kind"] == "dsn"
    text = _render(runner)
    assert 'mailcanary_roundtrip_bounces_total{class="5.0.x",probe="bnc"} 1.0' in text
    assert 'mailcanary_roundtrip_canaries_outstanding{probe="bnc"} 0.0' in text
    left = cyrus.snapshot(user)
    assert [raw for _, _, raw in left] == [foreign]  # the DSN deleted, the sender's own mail kept


def test_late_canary_is_counted_when_exim_delivers_it_later(
    cyrus: CyrusServer, exim: EximServer, tmp_path: Path
) -> None:
    cyrus.clear(LATE_LOCAL)
    runner = make_runner(tmp_path, [roundtrip(cyrus, exim, tmp_path, "late", LATE_LOCAL, timeout="2s")])
    exim.hold_late = True
    try:
        first = run_one(runner)
    finally:
        exim.hold_late = False
    assert (first.success, first.reason) == (False, "timeout"), first.message
    assert (first.outstanding, first.lost) == (1, 0)
    assert exim.queue().strip(), "the canary should wait in Exim's queue"
    exim.deliver_queue()
    assert cyrus.wait_for(LATE_LOCAL, 1) == 1, exim.log_tail()
    second = run_one(runner)
    assert second.success, second.message
    assert (second.late, second.swept, second.outstanding, second.lost) == (1, 0, 0, 0)
    assert runner.ledger.nonces("late") == frozenset()
    assert cyrus.count(LATE_LOCAL) == 0


def test_canary_unseen_past_lost_after_is_lost(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    probe = roundtrip(
        cyrus,
        exim,
        tmp_path,
        "lost",
        user,
        recipient=f"{LOST_LOCAL}@example.test",
        timeout="1s",
        lost_after="2s",
    )
    runner = make_runner(tmp_path, [probe])
    first = run_one(runner)
    assert (first.reason, first.outstanding, first.lost) == ("timeout", 1, 0)
    wait_past_lost_after(runner, "lost", 2.0)  # lost_after is wall time since the ledger's send time
    second = run_one(runner)
    assert (second.reason, second.lost, second.outstanding) == ("timeout", 1, 1)
    assert runner.store.snapshot()["lost"].lost_total == 1


# ---- foreign mail is never touched -----------------------------------------------------------------------


def _foreign_mails(name: str) -> list[tuple[bytes, str]]:
    """(message, APPEND flags): a user's mail, flagged ones, another probe's canary, a forged token."""
    return [
        (b"From: bob@example.org\r\nSubject: unread\r\n\r\nhello\r\n", ""),
        (b"From: bob@example.org\r\nSubject: read and flagged\r\n\r\nbody\r\n", "(\\Seen \\Flagged $Work)"),
        (b"From: carol@example.org\r\nSubject: answered\r\n\r\nbody\r\n", "(\\Answered)"),
        (
            canary.build_message(
                canary.new_token("another-probe", now=time.time() - 7200),
                KEY,
                "x@example.test",
                "y@example.test",
            ),
            "",
        ),
        (
            b"X-Mailcanary-Token: v1;probe="
            + name.encode()
            + b";sent=1;nonce=zz;mac=00\r\nSubject: j\r\n\r\nb\r\n",
            "",
        ),
    ]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_foreign_mail_is_byte_and_flag_identical_and_stale_canaries_are_swept(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path, protocol: str
) -> None:
    name = f"sweep-{protocol}"
    for raw, flags in _foreign_mails(name):
        cyrus.append(user, raw, flags=flags)
    foreign = cyrus.snapshot(user)
    stale = [canary.new_token(name, now=time.time() - 7200 - i) for i in range(2)]
    for tok in stale:
        cyrus.append(user, canary.build_message(tok, KEY, cyrus.address(user), cyrus.address(user)))
    young = canary.new_token(name, now=time.time() - 60)  # maybe another instance's canary in flight
    cyrus.append(user, canary.build_message(young, KEY, cyrus.address(user), cyrus.address(user)))
    with_young = cyrus.snapshot(user)
    young_entry = [e for e in with_young if young.nonce.encode() in e[2]]
    probe = roundtrip(cyrus, exim, tmp_path, name, user, protocol=protocol, sweep_after="1h")
    result = run_one(make_runner(tmp_path, [probe]))
    assert result.success, result.message
    assert (result.swept, result.late) == (2, 0)
    # UID, FLAGS and every byte of each foreign message as before; the young canary also left alone.
    assert cyrus.snapshot(user) == foreign + young_entry


# ---- junk placement --------------------------------------------------------------------------------------


def _junk_probe(cyrus: CyrusServer, exim: EximServer, tmp: Path, local: str, **extra: Any) -> dict[str, Any]:
    # Cyrus's LMTP files user+Spam@ into INBOX/Spam (plus-addressing; the folder grants `p` to anyone).
    return roundtrip(
        cyrus,
        exim,
        tmp,
        "junkrt",
        local,
        recipient=f"{local}+{JUNK_FOLDER}@example.test",
        receive__junk=True,
        **extra,
    )


def test_canary_filed_into_inbox_spam_is_found_with_the_full_name(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    probe = _junk_probe(cyrus, exim, tmp_path, user, receive__junk_folders=[f"INBOX/{JUNK_FOLDER}"])
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner)
    assert result.success, result.message
    assert result.placement == "junk"
    assert cyrus.count(user, f"INBOX/{JUNK_FOLDER}") == 0  # deleted there
    assert 'mailcanary_roundtrip_placement{folder="junk",probe="junkrt"} 1.0' in _render(runner)


def test_canary_filed_into_inbox_spam_is_found_with_the_default_junk_folders(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    result = run_one(make_runner(tmp_path, [_junk_probe(cyrus, exim, tmp_path, user, timeout="3s")]))
    try:
        assert result.success, result.message
        assert result.placement == "junk"
        assert cyrus.count(user, f"INBOX/{JUNK_FOLDER}") == 0  # never a canary left behind
    finally:
        cyrus.clear(user)


# ---- POP3 LOGIN-DELAY (popminpoll) -----------------------------------------------------------------------


def _login_delay_refusals(cyrus: CyrusServer) -> int:
    return cyrus.log_file.read_text(errors="replace").count("Logins must be at least")


def test_pop3_honours_login_delay(cyrus: CyrusServer, exim: EximServer, tmp_path: Path) -> None:
    """Cyrus with popminpoll: 1 says LOGIN-DELAY 60 in CAPA and refuses a second login within 60 s.

    mailcanary must never provoke that refusal (today: a new session per look, `receive_auth`).
    """
    cyrus.clear("delay")
    refused_before = _login_delay_refusals(cyrus)
    probe = roundtrip(
        cyrus,
        exim,
        tmp_path,
        "delay",
        "delay",
        protocol="pop3",
        receive_tls="implicit",
        receive_port="pop3sdelay",
        timeout="5s",
    )
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner)
    assert result.reason != "receive_auth", result.message
    assert _login_delay_refusals(cyrus) == refused_before, cyrus.log_tail()
    # A second run within the delay: not a wrong password either, whatever it does (wait or refuse).
    again = run_one(runner)
    assert again.reason != "receive_auth", again.message


# ---- IDLE without push -----------------------------------------------------------------------------------


def test_measure_idle_without_idled(
    cyrus: CyrusServer,
    exim: EximServer,
    user: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Does Cyrus (no idled) push EXISTS during IDLE? And what does a round trip's detection cost then?

    Measured, not asserted: the answer is printed and recorded as test properties (see docs/servers.md).
    """
    conn = cyrus.imap(user)
    try:
        conn.select("INBOX")
        tag = conn._new_tag().decode()
        conn.send(f"{tag} IDLE\r\n".encode())
        assert conn.readline().startswith(b"+")
        started = time.monotonic()
        with smtplib.LMTP(cyrus.host, cyrus.ports["lmtp"]) as lmtp:
            lmtp.sendmail("x@example.test", [cyrus.address(user)], b"Subject: idle\r\n\r\nidle\r\n")
        pushed: float | None = None
        # select() on the socket: a read timeout would leave imaplib's file unusable for DONE.
        if select.select([conn.sock], [], [], 3.0)[0] and b"EXISTS" in conn.readline():
            pushed = time.monotonic() - started
        conn.send(b"DONE\r\n")
        while not conn.readline().startswith(tag.encode()):
            pass
    finally:
        conn.logout()
    cyrus.clear(user)
    # The canary waits in Exim's queue and is released into Cyrus 1.5 s into the run: it arrives while
    # mailcanary is waiting (IDLE gaps + NOOP), so the wait shows what detection costs without a push.
    cyrus.clear(LATE_LOCAL)
    runner = make_runner(tmp_path, [roundtrip(cyrus, exim, tmp_path, "idle", LATE_LOCAL, timeout="20s")])
    released: list[float] = []

    def release() -> None:
        exim.deliver_queue()
        released.append(time.time())

    exim.hold_late = True
    timer = threading.Timer(1.5, release)
    try:
        timer.start()
        result = run_one(runner, debug=True)
    finally:
        timer.join()
        exim.hold_late = False
    assert result.success, (result.message, exim.log_tail())
    assert result.delivery is not None
    commands = [line.split()[-1] for line in result.transcript or [] if line.startswith("C: imap ")]
    looks, idles = commands.count("NOOP"), commands.count("IDLE")
    # Upper bound of the detection lag: from Cyrus holding it (the queue run's end) to the run's end.
    lag = result.started + result.duration - released[0]
    record_property("cyrus_idle_exists_pushed_after", pushed)
    record_property("cyrus_held_canary_lag_upper_bound", lag)
    record_property("cyrus_wait_noops_idles", (looks, idles))
    print(
        f"\ncyrus IDLE pushed EXISTS within 3 s: {pushed is not None} ({pushed}); a canary arriving mid-wait "
        f"was seen at most {lag:.3f} s after Cyrus stored it, with {looks} NOOPs and {idles} IDLEs "
        f"in a {result.phases.get('receive_wait', 0):.2f} s wait"
    )


def test_roundtrip_through_exim_port_25_without_auth(
    cyrus: CyrusServer, exim: EximServer, user: str, tmp_path: Path
) -> None:
    """Exim as the MX (its smtp listener, STARTTLS, no AUTH): the canary for a local domain is accepted."""
    probe = roundtrip(cyrus, exim, tmp_path, "mx", user)
    probe["smtp"]["port"] = exim.ports["smtp"]
    del probe["smtp"]["username"], probe["smtp"]["password_file"]
    result = run_one(make_runner(tmp_path, [probe]))
    assert (result.success, result.reason) == (True, "success"), (result.message, exim.log_tail())
    assert "smtp_auth" not in result.phases
    assert cyrus.count(user) == 0
