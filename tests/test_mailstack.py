"""Self-test of the real Postfix + Dovecot harness, with the standard library clients only."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from tests.mailstack import MailStack


def _message(sender: str, rcpt: str, token: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = f"mailstack self-test {token}"
    msg["Message-ID"] = f"<{token}@example.test>"
    msg.set_content(f"token {token}\n")
    return msg


def _submission(stack: MailStack, source: str = "127.0.0.1") -> smtplib.SMTP:
    """SMTP on the submission port whose STARTTLS verifies the name mail.example.test."""
    smtp = smtplib.SMTP(timeout=10, source_address=(source, 0))
    smtp.connect(stack.host, stack.submission_port)
    smtp._host = stack.server_name  # type: ignore[attr-defined]  # server_hostname used by starttls()
    return smtp


def _first_line(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    return sock.recv(1024)


def test_every_port_greets(mailstack: MailStack) -> None:
    ctx = mailstack.ssl_context()
    expected = {
        "smtp": b"220 ",
        "submission": b"220 ",
        "submissions": b"220 ",
        "imap": b"* OK",
        "imaps": b"* OK",
        "pop3": b"+OK",
        "pop3s": b"+OK",
    }
    assert set(mailstack.ports) == set(expected)
    assert len(set(mailstack.ports.values())) == len(expected)
    for name, port in mailstack.ports.items():
        with socket.create_connection((mailstack.host, port), timeout=5) as raw:
            if name in ("submissions", "imaps", "pop3s"):
                with ctx.wrap_socket(raw, server_hostname=mailstack.server_name) as tls:
                    line = _first_line(tls)
            else:
                line = _first_line(raw)
        assert line.startswith(expected[name]), (name, line)
    if mailstack.ipv6:
        for name in ("smtp", "imap", "pop3"):
            with socket.create_connection(("::1", mailstack.ports[name]), timeout=5) as raw:
                assert _first_line(raw).startswith(expected[name]), name


def test_submission_starttls_auth_delivers(mailstack: MailStack, mailbox: str) -> None:
    token = uuid.uuid4().hex
    with _submission(mailstack) as smtp:
        smtp.ehlo("client.example.test")
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth"), "AUTH must not be offered before STARTTLS"
        smtp.starttls(context=mailstack.ssl_context())
        smtp.ehlo("client.example.test")
        assert smtp.has_extn("auth")
        smtp.login(mailbox, mailstack.password(mailbox))
        smtp.send_message(_message(mailbox, mailbox, token))
    [path] = mailstack.wait_for_messages(mailbox, timeout=10)
    assert token.encode() in path.read_bytes()


def test_submission_refuses_unauthenticated_and_bad_password(mailstack: MailStack, mailbox: str) -> None:
    with _submission(mailstack) as smtp:
        smtp.starttls(context=mailstack.ssl_context())
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(mailbox, [mailbox], b"Subject: x\r\n\r\nx\r\n")
    # A failed login from its own source address: no penalty can reach other tests' logins.
    with _submission(mailstack, source="127.0.0.3") as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.starttls(context=mailstack.ssl_context())
        smtp.login(mailbox, "wrong-password")


def test_mx_port_accepts_local_mail_and_never_relays(mailstack: MailStack, mailbox: str) -> None:
    token = uuid.uuid4().hex
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        assert not smtp.has_extn("auth")
        refused = smtp.sendmail(
            "someone@example.org", [mailbox], _message("x@example.org", mailbox, token).as_bytes()
        )
        assert refused == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            smtp.sendmail("someone@example.org", ["victim@example.org"], b"Subject: relay\r\n\r\nx\r\n")
        code, _ = info.value.recipients["victim@example.org"]
        assert code == 554  # Relay access denied
    mailstack.wait_for_messages(mailbox, timeout=10)


def test_submissions_implicit_tls_login(mailstack: MailStack, mailbox: str) -> None:
    with smtplib.SMTP_SSL(
        mailstack.host, mailstack.submissions_port, context=mailstack.ssl_context()
    ) as smtp:
        smtp.login(mailbox, mailstack.password(mailbox))
        assert smtp.noop()[0] == 250


def test_imap_and_pop3_login_with_tls(mailstack: MailStack, mailbox: str) -> None:
    ctx = mailstack.ssl_context()
    password = mailstack.password(mailbox)
    imap = imaplib.IMAP4(mailstack.host, mailstack.imap_port, timeout=10)
    imap.starttls(ssl_context=ctx)
    imap.login(mailbox, password)
    imap.logout()
    imaps = imaplib.IMAP4_SSL(mailstack.host, mailstack.imaps_port, ssl_context=ctx, timeout=10)
    imaps.login(mailbox, password)
    imaps.logout()
    pop = poplib.POP3(mailstack.host, mailstack.pop3_port, timeout=10)
    pop.stls(context=ctx)
    pop.user(mailbox)
    pop.pass_(password)
    pop.quit()
    pops = poplib.POP3_SSL(mailstack.host, mailstack.pop3s_port, context=ctx, timeout=10)
    pops.user(mailbox)
    pops.pass_(password)
    pops.quit()


def test_plaintext_login_disabled_from_another_loopback_address(mailstack: MailStack) -> None:
    """127.0.0.1 -> 127.0.0.1 counts as secure for Dovecot; from 127.0.0.2 it is not."""
    with socket.create_connection((mailstack.host, mailstack.imap_port), 5, ("127.0.0.2", 0)) as sock:
        assert b"LOGINDISABLED" in _first_line(sock)
    with socket.create_connection((mailstack.host, mailstack.imap_port), 5) as sock:
        assert b"LOGINDISABLED" not in _first_line(sock)


def test_inject_is_visible_over_imap(mailstack: MailStack, mailbox: str) -> None:
    token = uuid.uuid4().hex
    raw = _message("foreign@example.org", mailbox, token).as_bytes()
    path = mailstack.inject(mailbox, raw)
    assert path.parent.name == "new"
    assert path.stat().st_uid == mailstack.account.uid
    imap = imaplib.IMAP4_SSL(
        mailstack.host, mailstack.imaps_port, ssl_context=mailstack.ssl_context(), timeout=10
    )
    imap.login(mailbox, mailstack.password(mailbox))
    imap.select("INBOX")
    _, data = imap.search(None, "ALL")
    assert data[0].split() == [b"1"]
    _, fetched = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert token.encode() in fetched[0][1]
    imap.logout()
    assert len(mailstack.messages(mailbox)) == 1  # still one, whether Dovecot moved it to cur/ or not


def test_messages_sees_new_and_cur_and_clear_empties(mailstack: MailStack, mailbox: str) -> None:
    first = mailstack.inject(mailbox, b"Subject: one\n\none\n")
    mailstack.inject(mailbox, b"Subject: two\n\ntwo\n")
    first.rename(first.parent.parent / "cur" / f"{first.name}:2,S")
    assert len(mailstack.messages(mailbox)) == 2
    mailstack.clear(mailbox)
    assert mailstack.messages(mailbox) == []


def test_clear_of_mail_only_ever_examined_empties_dovecots_view(mailstack: MailStack, mailbox: str) -> None:
    """Mail that was only EXAMINEd stays in new/; Dovecot, seeing only new/ changed after it is deleted,
    kept it in its index: the next test's mailbox listed 3 ghosts (a CI failure). clear() forces a
    full resync."""
    for i in range(3):
        mailstack.inject(mailbox, f"Subject: report {i}\r\n\r\nx\r\n".encode())
    maildir = mailstack.maildir(mailbox)
    old = time.time() - 10  # as if delivered a while ago: Dovecot re-checks a directory changed < 1 s ago
    for sub in ("new", "cur"):
        os.utime(maildir / sub, (old, old))
    ctx = mailstack.ssl_context()
    imap = imaplib.IMAP4_SSL(mailstack.host, mailstack.imaps_port, ssl_context=ctx, timeout=10)
    imap.login(mailbox, mailstack.password(mailbox))
    imap.select("INBOX", readonly=True)  # EXAMINE, as the reports reader: nothing moves to cur/
    _, data = imap.fetch("1:*", "(BODY.PEEK[])")
    assert len([d for d in data if isinstance(d, tuple)]) == 3
    imap.logout()
    mailstack.clear(mailbox)
    mailstack.inject(mailbox, b"Subject: the only one\r\n\r\nx\r\n")
    imap = imaplib.IMAP4_SSL(mailstack.host, mailstack.imaps_port, ssl_context=ctx, timeout=10)
    imap.login(mailbox, mailstack.password(mailbox))
    imap.select("INBOX")
    _, data = imap.search(None, "ALL")
    imap.logout()
    assert data[0].split() == [b"1"]


def test_slow_address_delays_delivery(mailstack: MailStack) -> None:
    slow = mailstack.slow_address
    mailstack.clear(slow)
    delay = 1.5
    mailstack.slow_delay = delay
    try:
        token = uuid.uuid4().hex
        with _submission(mailstack) as smtp:
            smtp.starttls(context=mailstack.ssl_context())
            smtp.login(slow, mailstack.password(slow))
            start = time.monotonic()
            smtp.send_message(_message(slow, slow, token))
        # Ours only: a slow canary of an earlier test file on this worker's stack may still be on its way.
        [path] = mailstack.wait_for_messages(slow, timeout=delay + 15, containing=token.encode())
        elapsed = time.monotonic() - start
    finally:
        mailstack.slow_delay = 0
    assert delay <= elapsed < delay + 10, elapsed
    assert token.encode() in path.read_bytes()


def test_stop_and_start_dovecot(mailstack: MailStack, mailbox: str) -> None:
    mailstack.stop_dovecot()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((mailstack.host, mailstack.imap_port), timeout=2).close()
    finally:
        mailstack.start_dovecot()
    imap = imaplib.IMAP4_SSL(
        mailstack.host, mailstack.imaps_port, ssl_context=mailstack.ssl_context(), timeout=10
    )
    imap.login(mailbox, mailstack.password(mailbox))
    imap.logout()


def test_users_have_distinct_passwords(mailstack: MailStack) -> None:
    assert mailstack.slow_address in mailstack.users
    assert set(mailstack.test_addresses) <= set(mailstack.users)
    assert len(set(mailstack.users.values())) == len(mailstack.users)
    with pytest.raises(KeyError):
        mailstack.password("nobody@example.test")


def test_certificate_names_and_ca(mailstack: MailStack) -> None:
    ctx = mailstack.ssl_context()
    for name in ("mail.example.test", "localhost", "127.0.0.1"):
        with (
            socket.create_connection((mailstack.host, mailstack.imaps_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name),
        ):
            pass
    with (
        socket.create_connection((mailstack.host, mailstack.imaps_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
        ssl.create_default_context().wrap_socket(raw, server_hostname=mailstack.server_name),
    ):
        pass


def test_second_dovecot_with_another_chain_runs_beside_the_first(mailstack: MailStack, mailbox: str) -> None:
    """The design hook for certificate-variant tests: an extra instance, its own base_dir and port."""
    now = datetime.now(UTC)
    expired = mailstack.issue_leaf(
        "expired", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    extra = mailstack.make_dovecot("dovecot-expired", tls=expired)
    extra.render()
    extra.start()
    try:
        extra.wait_ready()
        with (
            socket.create_connection((mailstack.host, extra.ports["imaps"]), timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="expired"),
        ):
            mailstack.ssl_context().wrap_socket(raw, server_hostname=mailstack.server_name)
        imap = imaplib.IMAP4_SSL(mailstack.host, mailstack.imaps_port, ssl_context=mailstack.ssl_context())
        imap.login(mailbox, mailstack.password(mailbox))
        imap.logout()
    finally:
        extra.stop()
    assert mailstack.dovecot.running
