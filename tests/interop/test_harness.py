"""The harness itself: every listener greets, the users and folders exist, LMTP delivers."""

from __future__ import annotations

import smtplib

from tests.interop.cyrus import CyrusServer


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
