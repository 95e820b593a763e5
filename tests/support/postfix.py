"""The session stack's Postfix queue: tests that send to the slow mailbox wait for it to empty, so that
no canary of theirs lands there while another test (in any order) uses that mailbox."""

from __future__ import annotations

import contextlib

from tests.mailstack import MailStack
from tests.support.wait import eventually

QUEUES = ("maildrop", "incoming", "active", "deferred")


def queued(stack: MailStack, queues: tuple[str, ...] = QUEUES) -> list[str]:
    """The queue files Postfix holds now (relative paths), in the given queues."""
    root = stack.postfix.queue_dir
    return sorted(str(f.relative_to(root)) for sub in queues for f in (root / sub).rglob("*") if f.is_file())


def drain(stack: MailStack, address: str, timeout: float = 60) -> None:
    """Wait until Postfix holds nothing more (slow deliveries done), then empty ``address``'s mailbox.

    A queue that does not empty within ``timeout`` (a message another test left deferred) does not fail
    the caller: the mailbox is emptied all the same, as it always was."""
    with contextlib.suppress(AssertionError):
        eventually(
            lambda: queued(stack),
            until=lambda files: not files,
            timeout=timeout,
            interval=0.2,
            message="the Postfix queue to empty",
        )
    stack.clear(address)
