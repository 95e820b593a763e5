"""The harness itself: every listener greets, the users and folders exist, LMTP delivers."""

from __future__ import annotations

import smtplib
import ssl

from tests.interop.cyrus import CyrusServer
from tests.interop.exim import EximServer


def test_cyrus_delivers_over_lmtp_into_inbox_and_plus_spam(cyrus: CyrusServer) -> None:
    cyrus.clear("frank")
    # One recipient per transaction: LMTP answers DATA once per recipient, which smtplib doesn't read.
    for rcpt in ("frank@example.test", "frank+Spam@example.test"):
        with smtplib.LMTP(cyrus.host, cyrus.ports["lmtp"]) as lmtp:
            assert lmtp.sendmail("x@example.test", [rcpt], b"Subject: t\r\n\r\nhi\r\n") == {}
    assert cyrus.wait_for("frank") == 1
    assert cyrus.wait_for("frank", folder="INBOX/Spam") == 1
    cyrus.clear("frank")
    assert cyrus.count("frank") == cyrus.count("frank", "INBOX/Spam") == 0


def test_exim_submission_with_auth_delivers_into_cyrus(cyrus: CyrusServer, exim: EximServer) -> None:
    cyrus.clear("frank")
    ctx = ssl.create_default_context(cafile=str(cyrus.ca_file))
    ctx.check_hostname = False
    with smtplib.SMTP(exim.host, exim.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=ctx)
        smtp.login("frank@example.test", cyrus.users["frank"])
        smtp.sendmail("frank@example.test", ["frank@example.test"], b"Subject: t\r\n\r\nhi\r\n")
    with smtplib.SMTP_SSL(exim.host, exim.ports["submissions"], timeout=10, context=ctx) as smtp:
        smtp.login("frank@example.test", cyrus.users["frank"])
        smtp.sendmail("frank@example.test", ["frank+Spam@example.test"], b"Subject: t\r\n\r\nhi\r\n")
    assert cyrus.wait_for("frank") == 1, exim.log_tail()
    assert cyrus.wait_for("frank", folder="INBOX/Spam") == 1, exim.log_tail()
    cyrus.clear("frank")


def test_cyrus_pop3_announces_login_delay_only_on_the_popminpoll_listeners(cyrus: CyrusServer) -> None:
    import poplib

    for port, delay in (("pop3", "0"), ("pop3delay", "60")):
        pop = poplib.POP3(cyrus.host, cyrus.ports[port], timeout=10)
        try:
            assert pop.capa()["LOGIN-DELAY"] == [delay]
        finally:
            pop.quit()


def test_exim_takes_auth_plain_and_login_only_inside_tls(cyrus: CyrusServer, exim: EximServer) -> None:
    ctx = ssl.create_default_context(cafile=str(cyrus.ca_file))
    ctx.check_hostname = False
    with smtplib.SMTP(exim.host, exim.ports["submission"], timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")  # never before STARTTLS
        smtp.starttls(context=ctx)
        smtp.ehlo()
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
    for mechanism in ("plain", "login"):
        with smtplib.SMTP_SSL(exim.host, exim.ports["submissions"], timeout=10, context=ctx) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = "frank@example.test", cyrus.users["frank"]
            code, _ = smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism}"))
            assert code == 235


def test_cyrus_namespace_and_special_use_as_stock_cyrus(cyrus: CyrusServer) -> None:
    """INBOX/ with "/" (standard namespace, UNIX separator); SPECIAL-USE advertised, INBOX/Spam unmarked."""
    conn = cyrus.imap("frank")
    try:
        assert "SPECIAL-USE" in conn.capabilities
        typ, data = conn.namespace()
        assert typ == "OK" and data[0] is not None
        assert data[0].startswith(b'(("INBOX/" "/"))')
        typ, listing = conn.list()
        assert typ == "OK"
        assert b'(\\HasNoChildren) "/" INBOX/Spam' in listing
        # RFC 6154 LIST (SPECIAL-USE): no folder of a stock account carries \Junk (or anything else).
        typ, _ = conn._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
        assert typ == "OK" and not conn.untagged_responses.get("LIST")
    finally:
        conn.logout()
