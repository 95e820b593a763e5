"""The process-per-check anchor: one round trip with the standard library only, as check_mail_loop /
check_email_delivery do it (a new interpreter per check, smtplib + imaplib, no state kept).

    python bench/_anchor_check.py HOST SMTP_PORT IMAPS_PORT ADDRESS PASSWORD CA_FILE|-

SMTP submission with STARTTLS and AUTH, then IMAPS: poll ``UID SEARCH HEADER`` every 50 ms for the
token, fetch it, delete it. ``-`` for CA_FILE: the system trust store. Exit 0 on success.
"""

import imaplib
import smtplib
import ssl
import sys
import time
import uuid
from email.message import EmailMessage


def main() -> int:
    host, smtp_port, imaps_port, address, password, ca = sys.argv[1:7]
    ctx = ssl.create_default_context(cafile=None if ca == "-" else ca)
    token = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"] = msg["To"] = address
    msg["Subject"] = "anchor check"
    msg["X-Anchor-Token"] = token
    msg.set_content("anchor\n")
    imap = imaplib.IMAP4_SSL(host, int(imaps_port), ssl_context=ctx)
    imap.login(address, password)
    imap.select("INBOX")
    with smtplib.SMTP(host, int(smtp_port), timeout=30) as smtp:
        smtp.starttls(context=ctx)
        smtp.login(address, password)
        smtp.send_message(msg)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        imap.noop()
        _, data = imap.uid("SEARCH", "HEADER", "X-Anchor-Token", token)
        uids = data[0].split() if data and data[0] else []
        if uids:
            uid = uids[0].decode()
            imap.uid("FETCH", uid, "(BODY.PEEK[])")
            imap.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
            imap.expunge()
            imap.logout()
            return 0
        time.sleep(0.05)
    imap.logout()
    return 1


if __name__ == "__main__":
    sys.exit(main())
