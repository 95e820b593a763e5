"""Fixtures of the interoperability matrix: real servers other than Postfix + Dovecot, each on its own
loopback address, started once per session like the mailstack. Missing packages skip these tests on a
developer's machine and fail them in CI (CI=true): a skip there would let CI pass while testing nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.interop import opensmtpd as smtpd_mod
from tests.interop.opensmtpd import OpenSMTPD
from tests.mailstack import MailStack, StackError, make_root, write_ca, write_leaf
from tests.mailstack.tls import SERVER_IDENTITIES


def _unavailable(what: str, problems: list[str]) -> None:
    message = f"{what} cannot run: " + "; ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def opensmtpd(mailstack: MailStack) -> Iterator[OpenSMTPD]:
    """A real OpenSMTPD 6.8 on 127.0.0.33 (ports ``smtp``/``submission``/``submissions``) relaying the
    test domain to the mailstack's Postfix (plain SMTP) and so to Dovecot."""
    problems = smtpd_mod.problems()
    if problems:
        _unavailable("OpenSMTPD", problems)
    root = make_root("mailcanary-opensmtpd-")
    ca = write_ca(root / "tls")
    tls = write_leaf(ca, root / "tls", identities=(*SERVER_IDENTITIES, smtpd_mod.HOST))
    server = OpenSMTPD(
        root / "smtpd",
        tls,
        f"smtp+notls://{mailstack.host}:{mailstack.smtp_port}",
        {a: mailstack.password(a) for a in mailstack.test_addresses},
    )
    try:
        server.start()
    except StackError as exc:
        _unavailable(f"OpenSMTPD (root {root})", [str(exc)])
    try:
        yield server
    finally:
        server.stop()
        if os.environ.get("MAILSTACK_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
