"""The public POP3 client: the connection, its login and its commands in one session object."""

from __future__ import annotations

from probes.clients.pop3.auth import POP3Auth
from probes.clients.pop3.commands import POP3Commands


class POP3Client(POP3Auth, POP3Commands):
    """One POP3 session, one command at a time (no pipelining: a probe issues a handful of commands).

    ``await POP3Client.connect(...)`` opens and secures it (:mod:`.connection`), :meth:`login` logs in
    (:mod:`.auth`), the rest are the TRANSACTION commands (:mod:`.commands`). Not safe for concurrent use
    from several tasks. Any failure that may leave the dialogue out of step (timeout, garbage, lost
    connection) aborts the connection, so a later command fails fast instead of reading a stale reply.
    """
