"""The session stack's Postfix queue: tests that send to the slow mailbox wait for it to empty, so that
no canary of theirs lands there while another test (in any order) uses that mailbox; a test mailbox is
handed out only when nothing is on its way to it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from tests.mailstack import MailStack
from tests.support.wait import eventually

QUEUES = ("maildrop", "incoming", "active", "deferred")


def queued(stack: MailStack, queues: tuple[str, ...] = QUEUES) -> list[str]:
    """The queue files Postfix holds now (relative paths), in the given queues."""
    root = stack.postfix.queue_dir
    return sorted(str(f.relative_to(root)) for sub in queues for f in (root / sub).rglob("*") if f.is_file())


def queued_for(stack: MailStack, address: str) -> list[str]:
    """The queue files that name ``address`` (as recipient, sender or in the text: any of them may still
    deliver to it, or bounce to it). A file that cannot be read counts: it may."""
    root, needle = stack.postfix.queue_dir, address.lower().encode()
    found = []
    for name in queued(stack):
        try:
            data = (root / name).read_bytes()
        except FileNotFoundError:  # delivered (or moved) meanwhile
            continue
        except OSError:
            found.append(name)
            continue
        if needle in data.lower():
            found.append(name)
    return found


def _postfix(stack: MailStack) -> list[int]:
    pid = stack.postfix.pid
    return [pid] if pid is not None else []


def _until_none_then_clear(
    stack: MailStack, address: str, files: Callable[[], list[str]], what: str, interval: float, timeout: float
) -> None:
    """Wait until ``files()`` is empty, then empty ``address``'s mailbox. A queue that does not empty
    within ``timeout`` s (of Postfix not waiting for a CPU: a message another test left deferred) does
    not fail the caller: the mailbox is emptied all the same."""
    with contextlib.suppress(AssertionError):
        eventually(
            files,
            until=lambda found: not found,
            timeout=timeout,
            interval=interval,
            message=what,
            runnable=lambda: _postfix(stack),
        )
    stack.clear(address)


def settle(stack: MailStack, address: str, timeout: float = 60) -> None:
    """Wait until Postfix holds nothing naming ``address``, then empty its mailbox: mail an earlier test
    sent there (slow on a loaded machine) must not land in the next test's fresh mailbox."""
    _until_none_then_clear(
        stack, address, lambda: queued_for(stack, address), f"nothing queued for {address}", 0.05, timeout
    )


def drain(stack: MailStack, address: str, timeout: float = 60) -> None:
    """Wait until Postfix holds nothing more (slow deliveries done), then empty ``address``'s mailbox."""
    _until_none_then_clear(stack, address, lambda: queued(stack), "the Postfix queue to empty", 0.2, timeout)
