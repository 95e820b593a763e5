"""Shared fixtures. Mailstack: one real Postfix + Dovecot per session (tests/mailstack); TLS audit
variants beside it; a password file for config tests. Shared helpers live in tests/support."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.mailstack import MailStack, StackError, make_root, reap_orphans, requirement_problems
from tests.mailstack.variants import VariantSet
from tests.support.postfix import drain, settle
from tests.support.schedule import make_scheduler
from tests.support.tlsaudit import Certs, audit_variants, make_certs

# Property tests check what a function does, never how fast: Hypothesis's per-example deadline (200 ms)
# is a timing assertion that fails on a busy machine (seen: a framing round trip at load 8). No deadline;
# each test's own bounds (sizes, the reader's deadlines) stay what they assert.
settings.register_profile("mailcanary", deadline=None)
settings.load_profile("mailcanary")

# ---- xdist ----------------------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile``: the most expensive files first, the fault matrix in parts
    (tests/support/schedule.py); any other mode is xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    return make_scheduler(config, log)


# ---- mailstack ------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the real stack, so `-m "not mailstack"` deselects them."""
    for item in items:
        if "mailstack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mailstack)


@pytest.fixture(scope="session")
def mailstack() -> Iterator[MailStack]:
    """One running MailStack for the whole session, stopped (and its root removed) at the end.

    Missing daemons are a failure, not a skip: a skip would let CI pass while testing nothing.
    Set MAILSTACK_KEEP=1 to keep the root (configs, logs, Maildirs) for a post-mortem.
    """
    problems = requirement_problems()
    if problems:
        pytest.fail("the real mail stack cannot run: " + "; ".join(problems), pytrace=False)
    reap_orphans()  # daemons of an earlier session that was killed before its teardown
    stack = MailStack(make_root())
    stack.claim()
    try:
        stack.start()
    except StackError as exc:
        pytest.fail(f"mail stack did not start (root {stack.root}):\n{exc}", pytrace=False)
    try:
        yield stack
    finally:
        stack.stop()
        if os.environ.get("MAILSTACK_KEEP") != "1":
            shutil.rmtree(stack.root, ignore_errors=True)


@pytest.fixture(scope="session")
def fresh_mailbox(mailstack: MailStack) -> Callable[[], str]:
    """Call it for another emptied mailbox address (cycles through ``mailstack.test_addresses``), with
    nothing queued in Postfix for it: an earlier test's mail to it cannot land after it is handed out."""
    addresses = itertools.cycle(mailstack.test_addresses)

    def take() -> str:
        address = next(addresses)
        settle(mailstack, address)
        return address

    return take


@pytest.fixture
def mailbox(fresh_mailbox: Callable[[], str]) -> str:
    """A fresh, emptied mailbox address of the session stack; its password is ``mailstack.password(...)``."""
    return fresh_mailbox()


@pytest.fixture
def slow_mailbox(mailstack: MailStack) -> Iterator[str]:
    """The stack's slow address (delivered ``mailstack.slow_delay`` s late), empty and with nothing on its
    way to it; afterwards the delay is reset and Postfix is waited for again: a canary of this test never
    lands there while another test, in whatever order, uses it."""
    address = mailstack.slow_address
    drain(mailstack, address)
    try:
        yield address
    finally:
        mailstack.slow_delay = 0
        drain(mailstack, address)


# ---- TLS audit variants ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Certs:
    """The test PKI of the TLS audit variants (tests/support/tlsaudit.py)."""
    return make_certs()


@pytest.fixture(scope="module")
def variants(mailstack: MailStack, certs: Certs) -> Iterator[VariantSet]:
    """One Dovecot per TLS case (two with a Postfix smtpd), started together, stopped at the module's end."""
    with audit_variants(mailstack, certs) as vs:
        yield vs


# ---- config files ----------------------------------------------------------------------------------


@pytest.fixture
def pw_file(tmp_path: Path) -> Path:
    """The SMTP password file of tests.support.configs.full_config."""
    path = tmp_path / "smtp.pw"
    path.write_text("file-secret\n", encoding="utf-8")
    return path
