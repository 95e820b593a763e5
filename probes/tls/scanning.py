"""The scan (:mod:`probes.tls.scan`) as a step of every TLS audit: remembered per endpoint, bounded in time,
and folded into the audit's facts.

A scan costs a handful of connections (one hello each; a mail server counts them against its rate
limits), and what it finds changes when the server's TLS configuration changes, not between two runs
minutes apart. So, like the legacy answers (:mod:`probes.tls.legacy`), an endpoint is scanned again
when its scan is older than the recheck period (default a day) or its leaf certificate changed; a scan
that could not tell everything (a ``421``, a refused connection, a timeout) is tried again once after
:data:`UNKNOWN_RETRY`; if that one cannot either (a server that never answers some hello), the next is
after the recheck period again: at most two scans a period. Two runs that want the same endpoint at
once share one scan.

A new scan that learnt nothing at all (every fact unknown: the server refused every connection, or it
overran) does not wipe out what an earlier scan of the same certificate found: those facts stay, with
their own older ``checked_at`` (so their age shows, and the stale-scan alert fires if it goes on), and a
``421`` storm cannot make an "SSLv3 accepted" alert resolve.

Nothing here fails a run: a scan that raises or overruns its time is a scan whose facts are unknown, with
the reason in ``errors``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from probes.tls.chain import STAPLE_STATUSES, chain_facts, staple_status, trust_anchors
from probes.tls.flights import Flights
from probes.tls.scan import DEFAULT_RESCAN, INFO_CLASSES, PROTOCOLS, WEAK_CLASSES, ScanFacts
from probes.wire.certs import LEGACY_VERSIONS, TLSFacts

__all__ = [
    "DEFAULT_RESCAN",
    "SCAN_FACTS",
    "SCAN_STEPS",
    "STAPLE_STATUSES",
    "UNKNOWN_RETRY",
    "ScanCache",
    "apply_scan",
    "failed_scan",
    "learnt_nothing",
    "unknown_facts",
]

MAX_ENDPOINTS: Final = 4096
UNKNOWN_RETRY: Final = 3600.0  # seconds: an incomplete scan is not repeated sooner than this
# The scan's own time bound is this many step timeouts: about one per connection it may open.
SCAN_STEPS: Final = 15
# Every fact a scan reports, by the name ``mailcanary_tls_scan_unknown{fact}`` gives it.
SCAN_FACTS: Final = (
    *PROTOCOLS,
    *WEAK_CLASSES,
    *INFO_CLASSES,
    "forward_secrecy",
    "secure_renegotiation",
    "compression",
    "chain",
    "ocsp_stapling",
)


def unknown_facts(f: TLSFacts) -> list[str]:
    """The facts of :data:`SCAN_FACTS` that the endpoint's scan left unknown (all of them, unscanned)."""
    s = f.scan
    if s is None:
        return list(SCAN_FACTS)
    known: dict[str, bool] = {p: s.protocols.get(p) is not None for p in PROTOCOLS}
    known |= {c: s.classes.get(c) is not None for c in (*WEAK_CLASSES, *INFO_CLASSES)}
    known |= {
        "forward_secrecy": s.non_fs is not None,
        "secure_renegotiation": s.secure_renegotiation is not None,
        "compression": s.compression is not None,
        "chain": f.chain_complete is not None,
        "ocsp_stapling": s.stapled is not None,
    }
    return [name for name in SCAN_FACTS if not known[name]]


def failed_scan(why: str, clock: Callable[[], float] = time.time) -> ScanFacts:
    """A scan that gave no answer at all: tried now, every fact unknown, the reason kept."""
    return ScanFacts(checked_at=clock(), errors={"scan": " ".join(why.split())[:200]})


def apply_scan(
    facts: TLSFacts, scan: ScanFacts, *, legacy: bool, ca_file: str | None, now: float | None = None
) -> None:
    """Fold a scan into the audit's facts: the scan itself, TLS 1.0/1.1 answers when ``legacy`` (they
    replace the two OpenSSL legacy handshakes), and the facts of the chain the scan was served (judged
    against ``ca_file``, else the system store, without AIA fetching: probes.tls.chain) and of its
    stapled OCSP response (None when nothing was stapled, or the leaf's issuer is not known)."""
    facts.scan = scan
    if legacy:
        for name in LEGACY_VERSIONS:
            facts.legacy[name] = scan.protocols.get(name)
        facts.legacy_checked_at = scan.checked_at
    chain = chain_facts(scan.served_chain, trust_anchors(ca_file)) if scan.served_chain else None
    facts.chain_complete = chain.complete if chain else None
    facts.chain_ordered = chain.ordered if chain else None
    facts.chain_superfluous = chain.superfluous if chain else None
    facts.chain_anchor_sent = chain.anchor_sent if chain else None
    if scan.stapled and scan.ocsp_staple is not None and chain is not None and chain.issuer is not None:
        when = time.time() if now is None else now
        facts.ocsp_staple_status = staple_status(scan.ocsp_staple, scan.served_chain[0], chain.issuer, when)


def learnt_nothing(scan: ScanFacts) -> bool:
    """Every fact unknown: the scan could not tell anything."""
    return (
        all(v is None for v in scan.protocols.values())
        and all(v is None for v in scan.classes.values())
        and scan.non_fs is None
        and scan.stapled is None
        and not scan.served_chain
    )


@dataclass(frozen=True)
class ScanAnswer:
    facts: ScanFacts
    fingerprint: str | None  # leaf certificate (sha256) when it was scanned
    tried_at: float  # the last attempt (a scan that learnt nothing keeps the earlier facts)
    retry_soon: bool  # that attempt could not tell everything, and was not itself the early retry


class ScanCache:
    """Scans per endpoint (bounded, LRU); keys identify one endpoint as the audit dials it."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = MAX_ENDPOINTS) -> None:
        self._answers: OrderedDict[tuple[str, ...], ScanAnswer] = OrderedDict()
        self._flights: Flights[tuple[str, ...], ScanFacts] = Flights()
        self.clock = clock
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._answers)

    def fresh(self, key: tuple[str, ...], fingerprint: str | None, every: float) -> ScanFacts | None:
        """The remembered scan if it may be reused now, else None (scan again)."""
        answer = self._answers.get(key)
        if answer is None:
            return None
        age = self.clock() - answer.tried_at
        limit = min(every, UNKNOWN_RETRY) if answer.retry_soon else every
        if age >= limit or (fingerprint is not None and answer.fingerprint != fingerprint):
            return None
        self._answers.move_to_end(key)
        return answer.facts

    def put(self, key: tuple[str, ...], facts: ScanFacts, fingerprint: str | None) -> ScanFacts:
        """Remember an attempt; returns the facts to show (an earlier scan's, if this one learnt
        nothing and the certificate is the same)."""
        if facts.checked_at is None:
            return facts
        tried, earlier = self.clock(), self._answers.get(key)
        retry_soon = bool(facts.errors) and not (earlier is not None and earlier.retry_soon)
        if (
            learnt_nothing(facts)
            and earlier is not None
            and earlier.fingerprint == fingerprint
            and not learnt_nothing(earlier.facts)
        ):
            facts = earlier.facts
        self._answers[key] = ScanAnswer(facts, fingerprint, tried, retry_soon)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
        return facts

    async def get(
        self,
        key: tuple[str, ...],
        fingerprint: str | None,
        every: float,
        run: Callable[[], Awaitable[ScanFacts]],
    ) -> tuple[ScanFacts, bool]:
        """(the scan, whether it was made now): the remembered one if fresh, the one another run is
        making now, else ``run()``'s, remembered."""
        known = self.fresh(key, fingerprint, every)
        if known is not None:
            return known, False
        running = self._flights.running(key)
        if running is not None:  # another run is scanning it now: its answer is ours too
            await asyncio.wait([running])
            if running.cancelled() or running.exception() is not None:
                return failed_scan("the scan this run waited for did not finish", self.clock), False
            return running.result(), False

        async def scan() -> ScanFacts:
            return self.put(key, await run(), fingerprint)

        def cut_short() -> None:
            # Cut short by the run's deadline (a /probe scrape timeout): remembered as unknown, so the
            # next runs do not start it again at once (a dozen connections each) but after UNKNOWN_RETRY.
            self.put(key, failed_scan("cut short by the run's deadline", self.clock), fingerprint)

        facts = await self._flights.lead(key, scan, cut_short)
        return facts, True
