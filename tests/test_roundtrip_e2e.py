"""Round trips against the real Postfix + Dovecot: every TLS mode, every failure a user meets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.metrics.collector import ExporterState
from exporter.run.history import History
from exporter.web.status import render_status
from probes import canary
from tests.mailstack import MailStack
from tests.support.roundtrip import KEY, make_runner, run_one, wait_past_lost_after
from tests.support.stackconfig import roundtrip


@pytest.mark.parametrize("smtp_tls", ["starttls", "implicit"])
@pytest.mark.parametrize(
    ("protocol", "receive_tls"),
    [("imap", "starttls"), ("imap", "implicit"), ("pop3", "starttls"), ("pop3", "implicit")],
)
def test_roundtrip_delivers_and_cleans_up(
    mailstack: MailStack, mailbox: str, tmp_path: Path, smtp_tls: str, protocol: str, receive_tls: str
) -> None:
    runner = make_runner(
        tmp_path,
        [
            roundtrip(
                mailstack,
                tmp_path,
                "rt",
                mailbox,
                protocol=protocol,
                receive_tls=receive_tls,
                smtp_tls=smtp_tls,
            )
        ],
    )
    result = run_one(runner)
    assert result.success, result.message
    assert result.reason == "success"
    assert result.delivery is not None and 0 < result.delivery < 5
    assert result.phases["receive_wait"] == pytest.approx(result.delivery)
    expected = {
        "smtp_connect",
        "smtp_tls",
        "smtp_ehlo",
        "smtp_auth",
        "smtp_send",
        "receive_connect",
        "receive_tls",
        "receive_banner",
        "receive_login",
        "receive_wait",
        "receive_fetch",
        "receive_delete",
    }
    assert expected <= set(result.phases)
    if smtp_tls == "starttls":
        assert "smtp_banner" in result.phases
    assert mailstack.messages(mailbox) == []  # the canary was deleted, nothing left behind


def test_wrong_receive_password_is_receive_auth(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    for protocol in ("imap", "pop3"):
        runner = make_runner(
            tmp_path,
            [
                roundtrip(
                    mailstack,
                    tmp_path,
                    f"bad-{protocol}",
                    mailbox,
                    protocol=protocol,
                    receive_password="wrong-password",
                )
            ],
        )
        result = run_one(runner)
        assert (result.success, result.reason) == (False, "receive_auth"), result.message
        assert "wrong-password" not in result.message


def test_wrong_smtp_password_is_smtp_auth(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    runner = make_runner(
        tmp_path, [roundtrip(mailstack, tmp_path, "bad-smtp", mailbox, smtp_password="not-the-password")]
    )
    result = run_one(runner)
    assert (result.success, result.reason) == (False, "smtp_auth"), result.message
    assert "535" in result.message  # the reply code is part of the reason text
    # never accepted, so never awaited: an SMTP outage must not turn into "lost" canaries
    assert (result.outstanding, result.lost) == (0, 0)
    assert runner.ledger.nonces("bad-smtp") == frozenset()
    assert mailstack.messages(mailbox) == []


def test_stopped_dovecot_is_receive_connect(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    runner = make_runner(tmp_path, [roundtrip(mailstack, tmp_path, "down", mailbox, protocol="imap")])
    mailstack.stop_dovecot()
    try:
        result = run_one(runner)
    finally:
        mailstack.start_dovecot()
    assert (result.success, result.reason) == (False, "receive_connect"), result.message
    assert result.failed_phase == "receive_connect"


def test_untrusted_ca_fails_tls(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    probe = roundtrip(mailstack, tmp_path, "untrusted", mailbox, ca_file=str(other_ca))
    result = run_one(make_runner(tmp_path, [probe]))
    assert (result.success, result.reason) == (False, "receive_tls"), result.message  # receiver opens first
    assert "certificate verify failed" in result.message or "verification failed" in result.message
    probe["receive"]["tls_config"]["ca_file"] = str(mailstack.ca_file)
    probe["smtp"]["tls_config"]["ca_file"] = str(other_ca)
    result = run_one(make_runner(tmp_path, [probe]))
    assert (result.success, result.reason) == (False, "smtp_tls"), result.message


def _foreign_mails(probe_name: str) -> list[bytes]:
    other_key = b"somebody-elses-key-0123456789"
    forged = canary.new_token(probe_name, now=time.time() - 7200)
    mails = [
        b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nA real user's mail.\r\n",
        # our header, our probe name, wrong key: must never be touched
        canary.build_message(forged, other_key, "x@example.test", "y@example.test"),
        # a valid token of ANOTHER probe, old: not this probe's to sweep
        canary.build_message(
            canary.new_token("another-probe", now=time.time() - 7200), KEY, "x@example.test", "y@example.test"
        ),
        # garbage in the header
        b"X-Mailcanary-Token: v1;probe=sweep;sent=1;nonce=zz;mac=00\r\nSubject: junk\r\n\r\nbody\r\n",
    ]
    return mails


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_sweep_keeps_foreign_mail_and_removes_stale_canaries(
    mailstack: MailStack, mailbox: str, tmp_path: Path, protocol: str
) -> None:
    name = f"sweep-{protocol}"
    foreign = {mailstack.inject(mailbox, raw): raw for raw in _foreign_mails(name)}
    stale = [canary.new_token(name, now=time.time() - 7200 - i) for i in range(2)]
    for tok in stale:
        mailstack.inject(mailbox, canary.build_message(tok, KEY, mailbox, mailbox))
    young = canary.new_token(name, now=time.time() - 60)  # maybe another instance's canary in flight
    mailstack.inject(mailbox, canary.build_message(young, KEY, mailbox, mailbox))

    runner = make_runner(
        tmp_path, [roundtrip(mailstack, tmp_path, name, mailbox, protocol=protocol, sweep_after="1h")]
    )
    result = run_one(runner)
    assert result.success, result.message
    assert (result.swept, result.late) == (2, 0)
    files = mailstack.messages(mailbox)
    left = {p.read_bytes() for p in files}
    for raw in foreign.values():
        assert raw in left or raw.replace(b"\r\n", b"\n") in left, "a foreign mail was touched"
    for path in files:  # no flag set on anything left: not \Deleted (T), not \Seen (S)
        flags = path.name.split(":2,", 1)[1] if ":2," in path.name else ""
        assert not set(flags) & set("TS"), path.name
    assert len(left) == len(foreign) + 1  # foreign ones plus the young canary
    assert any(young.nonce.encode() in raw for raw in left)


def test_late_canary_is_counted_when_seen_later(
    mailstack: MailStack, slow_mailbox: str, tmp_path: Path
) -> None:
    address = slow_mailbox
    mailstack.slow_delay = 2.5
    runner = make_runner(tmp_path, [roundtrip(mailstack, tmp_path, "late", address, timeout="1.5s")])
    try:
        first = run_one(runner)
        assert (first.success, first.reason) == (False, "timeout"), first.message
        assert len(runner.ledger.nonces("late")) == 1
        assert (first.outstanding, first.lost) == (1, 0)
        mailstack.wait_for_messages(address, 1, timeout=10)
        mailstack.slow_delay = 0
        second = run_one(runner)
    finally:
        mailstack.slow_delay = 0
    assert second.success, second.message
    assert (second.late, second.swept) == (1, 0)
    assert runner.ledger.nonces("late") == frozenset()
    assert (second.outstanding, second.lost) == (0, 0)
    stats = runner.store.snapshot()["late"]
    assert stats.late_total == 1 and stats.runs["timeout"] == 1 and stats.runs["success"] == 1
    assert mailstack.messages(address) == []


def test_canary_unseen_past_lost_after_is_lost(
    mailstack: MailStack, slow_mailbox: str, tmp_path: Path
) -> None:
    """The canaries land only after the test (slow_mailbox waits for them, whatever test comes next)."""
    address = slow_mailbox
    mailstack.slow_delay = 8
    runner = make_runner(
        tmp_path, [roundtrip(mailstack, tmp_path, "lost", address, timeout="1s", lost_after="2s")]
    )
    try:
        first = run_one(runner)
        assert (first.reason, first.outstanding, first.lost) == ("timeout", 1, 0)
        wait_past_lost_after(runner, "lost", 2.0)  # the ledger's own send time, no fixed sleep
        second = run_one(runner)
    finally:
        mailstack.slow_delay = 0
    assert (second.reason, second.lost, second.outstanding) == (
        "timeout",
        1,
        1,
    )  # first given up, second awaited
    assert runner.store.snapshot()["lost"].lost_total == 1


def test_secrets_never_in_logs_transcript_or_status_page(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter import logs

    a, b = fresh_mailbox(), fresh_mailbox()
    probes = [
        roundtrip(mailstack, tmp_path, "ok-imap", a, protocol="imap", receive_tls="starttls"),
        roundtrip(mailstack, tmp_path, "ok-pop3", b, protocol="pop3", receive_tls="starttls"),
        roundtrip(mailstack, tmp_path, "bad-pop3", b, protocol="pop3", receive_password="Wr0ng-s3cret!"),
        roundtrip(mailstack, tmp_path, "bad-smtp", a, smtp_password='Qu"ote\\d-s3cret'),
    ]
    runner = make_runner(tmp_path, probes)
    runner.history = History()  # as the daemon runs it: failed dialogues kept for the status page
    logs.configure("json", "debug")
    logs.set_masker(runner.masker)
    try:
        results = [run_one(runner, p["name"], debug=True) for p in probes]
        again = [run_one(runner, name) for name in ("bad-pop3", "bad-smtp")]  # bounded, non-debug dialogue
    finally:
        logs.configure("json", "info")
    out = capsys.readouterr()
    page = render_status(runner.store.snapshot(), ExporterState(), runner.history, {})
    text = out.out + out.err + "\n".join(line for r in results for line in (r.transcript or [])) + page
    assert [r.success for r in results] == [True, True, False, False], [
        (r.probe, r.reason, r.message, r.phases) for r in results
    ]
    assert not any(r.success for r in again)
    assert page.count('class="failure"') == 4 and "C: smtp AUTH PLAIN ********" in page
    assert "C: smtp AUTH PLAIN ********" in text and "C: imap" in text and "C: pop3" in text
    secrets = [mailstack.password(a), mailstack.password(b), "Wr0ng-s3cret!", 'Qu"ote\\d-s3cret']
    import base64

    for secret in secrets:
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text


def test_imap_without_uidplus_never_expunges(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    """A real Dovecot that does not announce UIDPLUS: our canary is flagged \\Deleted but nothing is
    expunged, so a message the user flagged \\Deleted (and has not expunged yet) stays exactly as it is."""
    from tests.mailstack import SERVER_NAME
    from tests.mailstack.variants import TestPKI, VariantSet

    pki = TestPKI("no-uidplus")
    leaf = pki.leaf((SERVER_NAME, "127.0.0.1"), issuer=pki.root, common_name=SERVER_NAME)
    users_deleted = mailstack.inject(mailbox, b"Subject: user's, flagged deleted\r\n\r\nkeep me\r\n")
    flagged = users_deleted.parent.parent / "cur" / (users_deleted.name + ":2,T")  # T = \Deleted
    users_deleted.rename(flagged)
    variants = VariantSet(mailstack, pki)
    v = variants.add(
        "nouidplus",
        [leaf],
        dovecot_ports=("imaps",),
        dovecot_settings={"imap_capability": "IMAP4rev1 IDLE LITERAL+ SASL-IR"},
    )
    probe = roundtrip(
        mailstack,
        tmp_path,
        "nouidplus",
        mailbox,
        protocol="imap",
        receive_tls="implicit",
        receive__port=v.ports["imaps"],
    )
    probe["receive"]["tls_config"]["ca_file"] = str(variants.ca_file)
    with variants:
        result = run_one(make_runner(tmp_path, [probe]), debug=True)
    assert result.success, result.message
    transcript = "\n".join(result.transcript or [])
    assert "UID STORE" in transcript and "EXPUNGE" not in transcript
    assert "UIDPLUS" not in transcript  # the server really did not announce it
    left = mailstack.messages(mailbox)
    assert any(
        p.name.split(":", 1)[0] == flagged.name.split(":", 1)[0] and p.name.endswith(",T") for p in left
    )
    ours = [p for p in left if b"X-Mailcanary-Token" in p.read_bytes()]
    assert len(ours) == 1 and "T" in ours[0].name.rsplit(",", 1)[-1]  # ours: flagged, not expunged
    assert len(left) == 2
