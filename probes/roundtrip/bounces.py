"""Bounces about our canaries in one IMAP mailbox: DSNs and plain bounces that return a verifying canary."""

from __future__ import annotations

from probes import canary
from probes.canary import Token
from probes.clients.imap import IMAPSession
from probes.errors import ProbeError
from probes.receipt.dsn import MAX_BOUNCE_BYTES, parse_bounce, returned_token
from probes.recorder import BounceEvent, Recorder
from probes.roundtrip.receiver import count_skipped
from probes.roundtrip.settings import RoundTripSettings


class BounceWatch:
    """Finds bounces about our canaries in one IMAP mailbox: ``UID SEARCH UID n:* TEXT`` for the probe's
    token key among mail that arrived since the run began (a DSN carries the token only inside), then
    each candidate fetched (at most MAX_BOUNCE_BYTES) and parsed. A message that carries our token at
    the top is a canary, never a bounce; a bounce counts only if the canary headers it returns verify
    (probes.receipt.dsn). Verified bounces are deleted (they are about our canary and nothing else); a
    permanent failure of this run's canary ends the run with reason ``bounced``."""

    MAX_LOOKED = 1000  # UIDs remembered as looked at (not bounces, or handled): bounded
    FETCH_AT_ONCE = 8
    LOOK_BACK = 50  # UIDs before the run's start looked at too

    def __init__(
        self, session: IMAPSession, recorder: Recorder, settings: RoundTripSettings, run: Recorder
    ) -> None:
        self.session, self.recorder, self.settings, self.run = session, recorder, settings, run
        # From a few UIDs back: a bounce that arrived between two runs is still seen (and deleted).
        self.since = None if session.uidnext is None else max(1, session.uidnext - self.LOOK_BACK)
        self.looked: set[int] = set()
        if self.since is None:  # pragma: no cover - RFC 3501 requires UIDNEXT in SELECT
            run.facts.bounce_watch = "off: the server sent no UIDNEXT"

    async def look(self, token: Token) -> None:
        if self.since is None:
            return
        name = self.settings.name
        uids = await self.session.search_text(canary.probe_search_key(name), self.since)
        fresh = [u for u in uids if u not in self.looked][: self.FETCH_AT_ONCE]
        if not fresh:
            return
        if len(self.looked) < self.MAX_LOOKED:
            self.looked.update(fresh)
        else:  # never grows past the bound: from here on, look only past the highest UID seen
            self.since = max(fresh) + 1
        # Sizes first (with a small header item): a big message that merely quotes our key is never
        # fetched whole, so it can neither pass a read cap nor cost memory.
        sized = await self.session.fetch(
            fresh, "BODY.PEEK[HEADER.FIELDS (Content-Type)]", cap=self.session.settings.limits.max_header
        )
        cap = min(MAX_BOUNCE_BYTES, self.session.settings.limits.max_message)
        small = [u for u in fresh if sized.sizes.get(u, cap + 1) <= cap]
        fetched = await self.session.fetch(small, "BODY.PEEK[]", cap=cap)
        ours: list[int] = []
        permanent: BounceEvent | None = None
        for uid, raw in sorted(fetched.data.items()):
            bounce = parse_bounce(raw)
            if bounce is None:
                continue  # our canary (a late one, or this run's), or mail that merely quotes the key
            tok = returned_token(bounce, self.settings.key, name)
            if tok is None:
                count_skipped(self.run, 1)
                continue
            ours.append(uid)
            event: BounceEvent = {
                "action": bounce.action,
                "status": bounce.status,
                "class": bounce.status_class,
                "kind": bounce.kind,
                "this_run": tok.nonce == token.nonce,
            }
            if bounce.diagnostic:
                event["diagnostic"] = bounce.diagnostic
            if self.run.facts.bounces is None:
                self.run.facts.bounces = []
            events = self.run.facts.bounces
            if len(events) < 20:
                events.append(event)
            if tok.nonce == token.nonce and bounce.permanent and permanent is None:
                permanent = event
        if ours:
            with self.recorder.phase("bounce_delete"):
                await self.session.delete(ours)
        if permanent is not None:
            self.run.facts.bounced = True
            status = permanent["status"] or "no status code"
            detail = f": {permanent['diagnostic']}" if permanent.get("diagnostic") else ""
            raise ProbeError(f"the canary bounced ({status}){detail}", reason="bounced")
