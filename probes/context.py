"""What a probe gets beyond its settings, in one object: the one probe signature of every kind is
``async probe(settings, ctx: ProbeContext)``. The daemon fills it per run (``exporter.run.runner``); a
library user makes one with a :class:`~probes.recorder.Recorder` and whatever caches it wants to keep.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probes.domain.dnsbl import ListingCache
    from probes.recorder import Recorder
    from probes.tls.hygiene import CRLCache, OCSPCache
    from probes.tls.legacy import LegacyCache
    from probes.tls.scanning import ScanCache
    from probes.wire.slots import ServerSlots


@dataclass
class ProbeContext:
    recorder: Recorder  # facts, phases, the dialogue: what was learnt survives a failure
    late: Collection[str] = ()  # nonces of earlier canaries that timed out (the late-canary registry)
    slots: ServerSlots | None = None  # sessions per server
    ocsp: OCSPCache | None = None  # OCSP answers until nextUpdate
    crl: CRLCache | None = None  # CRL verdicts until nextUpdate
    legacy: LegacyCache | None = None  # legacy TLS answers per endpoint
    scans: ScanCache | None = None  # TLS scans per endpoint (issue 21), for settings that bring none
    dnsbl: ListingCache | None = None  # DNSBL answers
    debug: bool = False  # the whole dialogue is wanted
