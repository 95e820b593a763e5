"""probes.imap against the in-process fake IMAP server: what the fault matrix does not cover."""

from __future__ import annotations

from probes._net import Credentials, Endpoint
from probes.imap import IMAPSession, IMAPSettings
from probes.recorder import Recorder
from tests.faultservers import NO_FAULT, Store, imap_handler, serving

PASSWORD = 'pässwörd "with" \\ specials'


async def test_non_ascii_password_goes_as_a_literal_and_never_into_the_transcript() -> None:
    store = Store()
    store.add(b"X-Mailcanary-Token: v2;probe=p;x\r\nSubject: s\r\n\r\nbody\r\n")
    async with serving(imap_handler(store, NO_FAULT)) as port:
        rec = Recorder(transcript=[])
        settings = IMAPSettings(
            Endpoint("127.0.0.1", port, "none"), Credentials("u", PASSWORD), allow_plaintext_auth=True
        )
        session = IMAPSession(settings, rec)
        await session.open()
        try:
            assert session.exists == 1
            assert {"IDLE", "UIDPLUS"} <= session.capabilities
            uids = await session.search_header("X-Mailcanary-Token", ";probe=p;")
            assert uids == [1]
            got = await session.fetch(uids, "BODY.PEEK[]")
            assert got.data == {1: store.messages[1]} and got.sizes == {1: len(store.messages[1])}
            # a cap below the message: dropped unread, listed as skipped, the session stays usable
            small = await session.fetch(uids, "BODY.PEEK[]", cap=10)
            assert small.data == {} and small.skipped == {1}
            assert await session.noop() is True  # an EXISTS came with the NOOP
        finally:
            await session.close()
    text = "\n".join(rec.transcript or [])
    assert "LOGIN u ********" in text
    assert PASSWORD not in text and "pässwörd" not in text
