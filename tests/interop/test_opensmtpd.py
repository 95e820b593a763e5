"""mailcanary against a real OpenSMTPD 6.8 (Debian 12's package) on 127.0.0.33.

What OpenSMTPD shows (see docs/servers.md): plain port-25 mail is relayed at once; its bounce is its own
format (multipart/mixed, not multipart/report); and Debian 12's build cannot finish any TLS handshake as a
server under OpenSSL 3 (its privilege-separated key engine loses the key: every STARTTLS or implicit-TLS
handshake ends in a TLS ``internal_error`` alert), so STARTTLS is offered but never works, and AUTH (only
offered after TLS) is unreachable. mailcanary must say exactly that: ``smtp_tls`` with the server's alert,
the same facts `openssl s_client` sees, never a success and never another reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import load_config
from exporter.run.results import ResultStore, RunResult
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from probes import canary
from probes.recorder import Recorder
from tests.interop.cyrus import CyrusServer
from tests.interop.opensmtpd import OpenSMTPD
from tests.support.stackconfig import RECEIVE_PORTS, secret_file

KEY = b"opensmtpd-interop-key-0123456789"
SMTP_PORTS = {"none": "smtp", "starttls": "smtp", "implicit": "submissions"}


def probe(
    server: OpenSMTPD,
    store: CyrusServer,
    tmp: Path,
    name: str,
    address: str,
    *,
    smtp_tls: str = "none",
    smtp_port: str | None = None,
    protocol: str = "imap",
    receive_tls: str = "implicit",
    **extra: Any,
) -> dict[str, Any]:
    """A round trip submitted to OpenSMTPD (port-25 style: no AUTH) and read back from Cyrus."""
    smtp: dict[str, Any] = {
        "host": server.host,
        "port": server.ports[smtp_port or SMTP_PORTS[smtp_tls]],
        "tls": smtp_tls,
        "timeout": "5s",
    }
    if smtp_tls != "none":
        smtp["tls_config"] = {"ca_file": str(server.ca_file), "server_name": server.server_name}
    config: dict[str, Any] = {
        "name": name,
        "sender": address,
        "recipient": address,
        "timeout": "15s",
        "smtp": smtp,
        "receive": {
            "protocol": protocol,
            "host": store.host,
            "port": store.ports[RECEIVE_PORTS[(protocol, receive_tls)]],
            "tls": receive_tls,
            "tls_config": {"ca_file": str(store.ca_file), "server_name": store.server_name},
            "username": address,
            "password_file": secret_file(tmp, f"{name}-recv", store.password(address)),
        },
    }
    config.update(extra)
    return config


def runner_for(
    tmp: Path, *, roundtrip: Sequence[dict[str, Any]] = (), tls_checks: Sequence[dict[str, Any]] = ()
) -> Runner:
    key_file = tmp / "canary.key"
    key_file.write_bytes(KEY)
    data: dict[str, Any] = {
        "global": {"state_dir": str(tmp / "state"), "canary_key_file": str(key_file)},
        "roundtrip": list(roundtrip),
        "tls_checks": list(tls_checks),
    }
    path = tmp / "mailcanary.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load_config(str(path))
    return Runner(
        loaded=loaded,
        key=KEY,
        ledger=Ledger(tmp / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )


def run_roundtrip(runner: Runner, debug: bool = False) -> RunResult:
    return asyncio.run(runner.run_entry(runner.loaded.config.roundtrip[0], debug=debug))


@pytest.fixture
def osd_mailbox(cyrus: CyrusServer) -> str:
    """The emptied Cyrus mailbox of these tests (its INBOX and INBOX/Spam)."""
    cyrus.clear("osd")
    return cyrus.address("osd")


# ---- ground truth for the latency measurement --------------------------------------------------------


def spool_dir(cyrus: CyrusServer, local: str) -> Path:
    """The Cyrus spool directory of a user's INBOX (one ``<uid>.`` file per message). Cyrus 3.6 names
    them by mailbox UUID; each one's cyrus.header names its mailbox (``N example.test!user.osd``)."""
    want = f" N {cyrus.address(local).split('@')[1]}!user.{local} ".encode()
    for header in (cyrus.root / "spool").rglob("cyrus.header"):
        if want in header.read_bytes().replace(b"(", b" ").replace(b"\t", b" "):
            return header.parent
    raise AssertionError(f"no spool directory for {local} under {cyrus.root / 'spool'}")


class ArrivalWatch:
    """Polls a Cyrus spool directory every 2 ms and notes, on our clock, when each new message file
    appears: the arrival instant, even after mailcanary has expunged the canary. (Not the file's mtime:
    under gVisor file times come from another clock, off by up to ~0.1 s.)"""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.first_seen: dict[str, float] = {}
        self._before = {e.name for e in os.scandir(directory)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.directory):
                    name = entry.name
                    if name in self._before or name in self.first_seen or not name[:1].isdigit():
                        continue
                    self.first_seen[name] = time.time()
            self._stop.wait(0.002)

    def __enter__(self) -> ArrivalWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextlib.contextmanager
def phase_exits(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, float]]:
    """Wall-clock instants at which each phase of a run ended (``smtp_send``: the server accepted)."""
    seen: dict[str, float] = {}
    original = Recorder.phase

    @contextlib.contextmanager
    def timed(self: Recorder, name: str) -> Iterator[None]:
        with original(self, name):
            yield
        seen[name] = time.time()

    monkeypatch.setattr(Recorder, "phase", timed)
    yield seen


# ---- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "receive_tls"),
    [("imap", "implicit"), ("imap", "starttls"), ("pop3", "implicit"), ("pop3", "starttls")],
)
def test_roundtrip_through_opensmtpd_port25(
    opensmtpd: OpenSMTPD,
    cyrus: CyrusServer,
    osd_mailbox: str,
    tmp_path: Path,
    protocol: str,
    receive_tls: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    """Port 25 without TLS (the only way into this build, see the module docstring) -> LMTP -> Cyrus: a
    success, nothing left behind, and OpenSMTPD logged the LMTP delivery. The detection latency over
    ground truth (when the message file appeared in Cyrus's spool) is measured, never asserted."""
    runner = runner_for(
        tmp_path,
        roundtrip=[
            probe(opensmtpd, cyrus, tmp_path, "osd", osd_mailbox, protocol=protocol, receive_tls=receive_tls)
        ],
    )
    with phase_exits(monkeypatch) as exits, ArrivalWatch(spool_dir(cyrus, "osd")) as watch:
        result = run_roundtrip(runner)
    assert result.success, result.message
    assert result.reason == "success"
    assert cyrus.count("osd") == 0
    assert 'result="Ok" stat="250' in opensmtpd.log()
    if len(watch.first_seen) == 1 and "smtp_send" in exits and result.delivery is not None:
        (arrived,) = watch.first_seen.values()
        # the server's 250 to DATA ended smtp_send; mailcanary saw the canary `delivery` seconds later
        latency = exits["smtp_send"] + result.delivery - arrived
        record_property("detection_latency_s", round(latency, 4))
        print(
            f"\nOpenSMTPD -> Cyrus, {protocol}/{receive_tls}: delivery {result.delivery:.3f}s, "
            f"detected {latency * 1000:+.0f} ms after it was in Cyrus's spool"
        )


def test_late_canary_is_counted_when_opensmtpd_delivers_it_later(
    opensmtpd: OpenSMTPD, cyrus: CyrusServer, osd_mailbox: str, tmp_path: Path
) -> None:
    """OpenSMTPD's deliveries paused (``smtpctl pause mta``, as an operator would): the canary waits in
    its queue, the run ends ``timeout`` with the canary outstanding; resumed, it arrives, and the next run
    counts it late, removes it and succeeds."""
    config = probe(opensmtpd, cyrus, tmp_path, "osdlate", osd_mailbox, timeout="2s")
    runner = runner_for(tmp_path, roundtrip=[config])
    opensmtpd.smtpctl("pause", "mta")
    try:
        first = run_roundtrip(runner)
        queued = opensmtpd.smtpctl("show", "queue")
    finally:
        opensmtpd.smtpctl("resume", "mta")
    assert (first.success, first.reason) == (False, "timeout"), first.message
    assert (first.outstanding, first.lost) == (1, 0)
    assert osd_mailbox in queued, queued  # it was waiting in OpenSMTPD's queue
    opensmtpd.smtpctl("schedule", "all")
    assert cyrus.wait_for("osd", 1) == 1, opensmtpd.log()[-2000:]
    second = run_roundtrip(runner)
    assert second.success, second.message
    assert (second.late, second.swept, second.outstanding, second.lost) == (1, 0, 0, 0)
    assert runner.ledger.nonces("osdlate") == frozenset()
    assert cyrus.count("osd") == 0


def _deliver(server: OpenSMTPD, sender: str, recipient: str, raw: bytes) -> None:
    with smtplib.SMTP(server.host, server.ports["smtp"], timeout=10) as s:
        s.sendmail(sender, [recipient], raw)


def test_foreign_mail_through_opensmtpd_is_untouched(
    opensmtpd: OpenSMTPD, cyrus: CyrusServer, osd_mailbox: str, tmp_path: Path
) -> None:
    """A user's mail (one of them flagged by the user), a canary of ours signed with another key and an
    old canary of another probe, all relayed by OpenSMTPD into Cyrus: byte- and flag-identical (UIDs
    too) after a successful run."""
    forged = canary.build_message(
        canary.new_token("osdf", now=time.time() - 7200), b"other-key" * 4, osd_mailbox, osd_mailbox
    )
    other = canary.build_message(
        canary.new_token("elsewhere", now=time.time() - 7200), KEY, osd_mailbox, osd_mailbox
    )
    for raw in (b"From: alice@example.test\r\nSubject: hello\r\n\r\nA real user's mail.\r\n", forged, other):
        _deliver(opensmtpd, "alice@example.test", osd_mailbox, raw)
    assert cyrus.wait_for("osd", 3) == 3
    conn = cyrus.imap("osd")
    try:
        conn.select("INBOX")
        conn.store("1", "+FLAGS", "(\\Flagged $Important)")
    finally:
        conn.logout()
    before = cyrus.snapshot("osd")
    runner = runner_for(tmp_path, roundtrip=[probe(opensmtpd, cyrus, tmp_path, "osdf", osd_mailbox)])
    result = run_roundtrip(runner)
    assert result.success, result.message
    assert cyrus.snapshot("osd") == before


# ---- TLS: offered, never completed ---------------------------------------------------------------------


def s_client(server: OpenSMTPD, port_name: str) -> str:
    """What `openssl s_client` sees on a listener (STARTTLS for the plain ones): the reference."""
    argv = ["openssl", "s_client", "-connect", f"{server.host}:{server.ports[port_name]}"]
    argv += ["-servername", server.server_name, "-CAfile", str(server.ca_file), "-verify_return_error"]
    if port_name != "submissions":
        argv += ["-starttls", "smtp"]
    out = subprocess.run(argv, input="QUIT\n", capture_output=True, text=True, timeout=20, check=False)
    return out.stdout + out.stderr


@pytest.mark.parametrize(
    ("port_name", "smtp_tls"), [("smtp", "starttls"), ("submission", "starttls"), ("submissions", "implicit")]
)
def test_broken_tls_is_smtp_tls_with_the_servers_alert(
    opensmtpd: OpenSMTPD, cyrus: CyrusServer, osd_mailbox: str, tmp_path: Path, port_name: str, smtp_tls: str
) -> None:
    """This OpenSMTPD build answers every handshake with a TLS internal_error alert (as s_client sees
    it): the run is ``smtp_tls`` quoting that alert, in the TLS phase, and no canary was sent."""
    reference = s_client(opensmtpd, port_name)
    assert "alert internal error" in reference, reference
    runner = runner_for(
        tmp_path,
        roundtrip=[
            probe(opensmtpd, cyrus, tmp_path, "osdtls", osd_mailbox, smtp_tls=smtp_tls, smtp_port=port_name)
        ],
    )
    result = run_roundtrip(runner)
    assert (result.success, result.reason) == (False, "smtp_tls"), result.message
    assert result.failed_phase == "smtp_tls"
    assert "INTERNAL_ERROR" in result.message.upper().replace(" ", "_")  # the server's alert, named
    assert (result.outstanding, result.lost) == (0, 0)
    assert runner.ledger.nonces("osdtls") == frozenset()


@pytest.mark.parametrize(
    ("port_name", "mode"), [("smtp", "starttls"), ("submission", "starttls"), ("submissions", "implicit")]
)
def test_tls_check_matches_openssl_s_client(
    opensmtpd: OpenSMTPD, tmp_path: Path, port_name: str, mode: str
) -> None:
    """A ``tls_checks`` audit of each TLS listener: no TLS session, as s_client sees it (the same
    internal_error alert), reason ``tls_handshake``; on the plain ports STARTTLS offered (as the EHLO
    says) and no AUTH before TLS."""
    reference = s_client(opensmtpd, port_name)
    assert "alert internal error" in reference and "alert number 80" in reference, reference
    check = {
        "name": "osdtlscheck",
        "host": opensmtpd.host,
        "port": opensmtpd.ports[port_name],
        "protocol": "smtp",
        "tls": mode,
        "timeout": "5s",
        "tls_config": {"ca_file": str(opensmtpd.ca_file), "server_name": opensmtpd.server_name},
    }
    runner = runner_for(tmp_path, tls_checks=[check])
    result = asyncio.run(runner.run_entry(runner.loaded.config.tls_checks[0]))
    assert (result.success, result.reason) == (False, "tls_handshake"), result.message
    assert "INTERNAL_ERROR" in result.message.upper().replace(" ", "_")
    facts = result.tls[f"{opensmtpd.host}:{opensmtpd.ports[port_name]}"]
    if mode == "starttls":
        assert facts.starttls_offered is True
        assert facts.auth_before_tls is False  # OpenSMTPD offers AUTH only after TLS
    assert facts.handshake_ok is False
    assert facts.version is None and facts.cipher is None
    # s_client prints the certificate the server sent before failing; mailcanary keeps no chain of a
    # handshake that never completed, so no certificate series are exported (absent, never "invalid")
    assert facts.chain == []


# ---- OpenSMTPD's own bounce ------------------------------------------------------------------------------


def test_opensmtpd_bounce_is_read_as_bounced(
    opensmtpd: OpenSMTPD, cyrus: CyrusServer, tmp_path: Path
) -> None:
    """A recipient Cyrus's LMTP refuses (a three-line ``550``, ``5.1.1`` on the last line only): OpenSMTPD
    writes its own bounce (multipart/mixed, not multipart/report; the reply's lines joined without their
    codes in the text part; ``Status: 5.0.0`` and no Diagnostic-Code in the report part; the returned
    message as text/rfc822-headers). mailcanary reads it as ``bounced`` with the report's status and the
    reply OpenSMTPD quoted as the diagnostic, and deletes it: nothing of ours stays."""
    cyrus.clear("osdbounce")
    sender = cyrus.address("osdbounce")
    nobody = cyrus.address(f"nobody{os.getpid()}")
    config = probe(opensmtpd, cyrus, tmp_path, "osdbnc", sender)
    config["recipient"] = nobody
    config["bounce_receive"] = dict(config["receive"])
    runner = runner_for(tmp_path, roundtrip=[config])
    result = run_roundtrip(runner, debug=True)
    assert result.reason == "bounced", result.message
    assert "(5.0.0)" in result.message and "550-Mailbox unknown" in result.message, result.message
    assert result.bounces == ("5.0.x",)
    (event,) = result.receiver["bounces"]
    assert (event["action"], event["this_run"], event["kind"]) == ("failed", True, "dsn")
    assert cyrus.count("osdbounce") == 0  # the bounce, verified as about our canary, was deleted


# ---- the harness ------------------------------------------------------------------------------------------


def test_a_second_instance_coexists(opensmtpd: OpenSMTPD, cyrus: CyrusServer, tmp_path: Path) -> None:
    """Each instance has its own queue, control socket and chroot (its mount namespace): a second one
    starts beside the session's (as another pytest session's would), and each smtpctl reaches its own."""
    root = tmp_path / "second"
    root.mkdir()
    second = OpenSMTPD(root, opensmtpd.tls, f"lmtp://{cyrus.host}:{cyrus.ports['lmtp']}", {})
    second.start()
    try:
        assert set(second.ports.values()).isdisjoint(opensmtpd.ports.values())
        assert "MTA running" in second.smtpctl("show", "status")
        second.smtpctl("pause", "mta")
        assert "MTA paused" in second.smtpctl("show", "status")
        assert "MTA running" in opensmtpd.smtpctl("show", "status")
    finally:
        second.stop()
    assert not second.running
