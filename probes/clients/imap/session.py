"""The public IMAP session: the connection, its login and its commands in one object."""

from __future__ import annotations

from probes.clients.imap.auth import IMAPAuth
from probes.clients.imap.commands import IMAPCommands
from probes.errors import ProbeError


class IMAPSession(IMAPAuth, IMAPCommands):
    """One logged-in IMAP session on a selected mailbox, with every failure mapped to a probe reason.

    :meth:`open` is :meth:`secure` (:mod:`.connection`), :meth:`login` (:mod:`.auth`) and SELECT
    (:mod:`.commands`); the TLS audit calls :meth:`secure` alone.
    """

    async def open(self) -> None:
        """Connect, secure, log in and select; phases connect, tls, banner, login."""
        st = self.settings
        if st.endpoint.tls_mode == "none" and not st.allow_plaintext_auth:
            raise ProbeError("refusing IMAP LOGIN over an unencrypted connection", reason="config")
        await self.secure()
        with self.recorder.phase(f"{self.prefix}_login"):
            await self.login()
            await self.select(st.mailbox)
