"""Session fixtures of the interop matrix: one Cyrus (127.0.0.31), one Exim (127.0.0.32) and one OpenSMTPD
(127.0.0.33) per session.

They fail, never skip, when a server cannot start. The one exception: the unpacked packages are absent
(scripts/install-interop.sh never ran) and we are not in CI; with CI=true that is a failure too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from tests.mailstack import StackError
from tests.mailstack.tls import TLSFiles, write_ca, write_leaf

from ._common import INSTALL_HINT, INTEROP_ROOT, make_interop_root, reap_interop_orphans
from .cyrus import CyrusServer, make_users
from .exim import EximServer
from .opensmtpd import OpenSMTPD
from .opensmtpd import problems as opensmtpd_problems

# Cyrus users: mailcanary's round trips each take one; `quota` has a 10 MiB STORAGE quota; `delay` is the
# only user of the popminpoll listeners (Cyrus keeps one last-login time per user for all of them).
# `osd` and `osdbounce` are OpenSMTPD's (tests/interop/test_opensmtpd.py).
CYRUS_USERS = (
    "canary",
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "quota",
    "delay",
    "sync",
    "late",
    "osd",
    "osdbounce",
)
QUOTA_KIB = {"quota": 10240}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this package ``interop``, so `-m "not interop"` deselects the matrix."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.interop)


def _require_packages() -> None:
    if INTEROP_ROOT.is_dir():
        return
    message = f"{INTEROP_ROOT} is missing: {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def interop_root() -> Iterator[Path]:
    """The session's temp root (configs, spools, logs of every interop server); INTEROP_KEEP=1 keeps it."""
    _require_packages()
    if os.geteuid() != 0:
        pytest.fail("the interop servers must be started as root (they drop privileges)", pytrace=False)
    reap_interop_orphans()
    root = make_interop_root()
    try:
        yield root
    finally:
        if os.environ.get("INTEROP_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def interop_tls(interop_root: Path) -> TLSFiles:
    """The test CA (trustme) and one leaf for mail.example.test, localhost and the loopback addresses."""
    ca = write_ca(interop_root / "tls")
    return write_leaf(
        ca,
        interop_root / "tls",
        identities=("localhost", "mail.example.test", "127.0.0.31", "127.0.0.32", "127.0.0.33"),
    )


class _Server(Protocol):
    root: Path

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _serving(name: str, server: S, *steps: Callable[[], None]) -> Iterator[S]:
    """Run ``steps`` (set up, start); a failure stops what started and fails the session with the log's
    tail; the server is stopped after the session."""
    try:
        for step in steps:
            step()
    except StackError as exc:
        server.stop()
        pytest.fail(f"{name} did not start (root {server.root}):\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cyrus(interop_root: Path, interop_tls: TLSFiles) -> Iterator[CyrusServer]:
    """One running Cyrus IMAP for the session (IMAP, POP3, LMTP; users CYRUS_USERS)."""
    server = CyrusServer(interop_root / "cyrus", interop_tls, make_users(CYRUS_USERS), quota_kib=QUOTA_KIB)
    yield from _serving("cyrus", server, server.setup, server.start)


@pytest.fixture(scope="session")
def exim(interop_root: Path, interop_tls: TLSFiles, cyrus: CyrusServer) -> Iterator[EximServer]:
    """One running Exim for the session: submission/submissions with AUTH, delivering into ``cyrus``."""
    users = {cyrus.address(local): pw for local, pw in cyrus.users.items()}
    server = EximServer(interop_root / "exim", interop_tls, users, lmtp=(cyrus.host, cyrus.ports["lmtp"]))
    yield from _serving("exim", server, server.setup, server.start)


@pytest.fixture(scope="session")
def opensmtpd(interop_root: Path, interop_tls: TLSFiles, cyrus: CyrusServer) -> Iterator[OpenSMTPD]:
    """One running OpenSMTPD 6.8 for the session: port-25 style (STARTTLS offered), submission and
    submissions with AUTH (TLS never completes with this build: see tests/interop/opensmtpd.py),
    relaying the test domain into ``cyrus`` by LMTP."""
    problems = opensmtpd_problems()
    if problems:
        message = "OpenSMTPD cannot run: " + "; ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    users = {cyrus.address(local): pw for local, pw in cyrus.users.items()}
    server = OpenSMTPD(
        interop_root / "opensmtpd", interop_tls, f"lmtp://{cyrus.host}:{cyrus.ports['lmtp']}", users
    )
    yield from _serving("opensmtpd", server, server.start)
