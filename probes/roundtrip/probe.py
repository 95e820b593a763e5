"""The round trip: send a signed canary over SMTP, detect its arrival over IMAP or POP3, verify, delete.

Detection looks once right after the SMTP server accepted DATA (a local delivery is often done by then),
then on a geometric schedule that starts dense and thins out, so a slow delivery costs few commands while
the timing error stays a bounded fraction of the latency; IMAP commands in flight stay within a budget
(``MAX_WAIT_RATE``). Over IMAP, once the gaps are long enough, a server that pushes is waited on in IDLE
without polling (ended by its EXISTS), with a safety look after ``idle_max`` for servers that never push;
those are remembered and polled. Canaries are found by their token, never by position or subject.
"""

from __future__ import annotations

from collections.abc import Collection

from probes import canary
from probes.clients.imap import IMAPSettings
from probes.clients.smtp import send_message
from probes.receipt.received import path_of
from probes.receipt.verdict import verdict_of
from probes.recorder import Recorder
from probes.roundtrip.imap import IMAPReceiver
from probes.roundtrip.pop3 import POP3Receiver
from probes.roundtrip.receiver import Receiver
from probes.roundtrip.settings import RoundTripResult, RoundTripSettings
from probes.wire.slots import maybe_session


async def probe_roundtrip(
    settings: RoundTripSettings, recorder: Recorder, late: Collection[str] = ()
) -> RoundTripResult:
    """Run one round trip. ``late`` holds nonces of earlier canaries that timed out: seen, they are
    deleted whatever their age (and reported in ``swept`` so the caller can count them late).

    ``recorder.facts.token`` is set before the canary is sent and ``recorder.facts.accepted`` once
    the SMTP server took it, so a caller whose deadline cancels the wait knows which canary is in flight.
    """
    receiver: Receiver
    if isinstance(settings.receiver, IMAPSettings):
        receiver = IMAPReceiver(settings, recorder)
    else:
        receiver = POP3Receiver(settings, recorder)
    service = "imap" if isinstance(settings.receiver, IMAPSettings) else "pop3"
    # With the sync check an IMAP run holds two sessions: both slots are taken at once (one by one, runs
    # could each hold one and wait for another forever).
    # So are the junk folder's and the all-folders walk's sessions, and a bounce mailbox on the same server.
    sessions = 1
    if service == "imap":
        sessions += settings.sync is not None
        sessions += settings.junk_folders is not None
        sessions += settings.other_folders > 0
        br = settings.bounce_receiver
        sessions += br is not None and br.endpoint == settings.receiver.endpoint
    with recorder.masked_errors():
        # The receiving side's slot is held for the whole run (its session, or POP3's looks, one at a
        # time); the SMTP slot only while sending (see _run).
        async with maybe_session(settings.slots, settings.receiver.endpoint, service, recorder, sessions):
            try:
                return await _run(settings, recorder, receiver, late)
            finally:
                await receiver.close()


async def _run(
    settings: RoundTripSettings, recorder: Recorder, receiver: Receiver, late: Collection[str]
) -> RoundTripResult:
    swept = await receiver.open_and_sweep(set(late))
    recorder.facts.swept = swept
    await receiver.open_device()
    token = canary.new_token(settings.name)
    message = canary.build_message(token, settings.key, settings.sender, settings.recipient)
    recorder.facts.token = token
    async with maybe_session(settings.slots, settings.smtp.endpoint, "smtp", recorder):
        await recorder.canary("sending", token)
        sent = await send_message(settings.smtp, settings.sender, [settings.recipient], message, recorder)
    recorder.facts.accepted = True  # from here on the canary is on its way: it may turn up late
    await recorder.canary("accepted", token)
    recorder.facts.smtp_tls_version = sent.tls_version
    commands_before = recorder.commands
    receiver.watch(token, sent.accepted_at)
    with recorder.phase("receive_wait"):
        seen_at = await receiver.wait(token, sent.accepted_at)
    recorder.facts.seen, recorder.facts.seen_at, recorder.facts.accepted_at = True, seen_at, sent.accepted_at
    delivery = seen_at - sent.accepted_at
    recorder.set_phase("receive_wait", delivery)
    recorder.facts.wait_commands = recorder.commands - commands_before
    await receiver.fetch_verify_delete(token)
    placement = receiver.placement
    recorder.facts.placement = placement
    raw = receiver.verified
    path = path_of(raw) if raw is not None else None
    if raw is not None and path is not None:
        recorder.facts.path = path
        if path.sender_ip is not None:
            recorder.facts.sender_ip = path.sender_ip  # for a blocklist check, and the log
        verdict = verdict_of(
            raw, settings.trusted_authserv_ids, settings.spam_headers, settings.verdict_preset
        )
        recorder.facts.verdict = verdict
        first = path.hops[0].timestamp if path.hops else None
        if first is not None:  # the first server's clock against ours (1 s resolution): skew shown
            recorder.facts.clock_offset = round(first - token.sent, 3)
    return RoundTripResult(
        token=token,
        delivery_seconds=delivery,
        swept=swept,
        placement=placement,
        bounces=list(recorder.facts.bounces or ()),
        path=path,
    )
