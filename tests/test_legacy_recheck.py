"""Legacy TLS answers are remembered per endpoint: re-tested after legacy_recheck or on a new certificate,
and the time of the answer is a fact of its own (so its age can be exported)."""

from __future__ import annotations

from dataclasses import replace

from probes.recorder import Recorder
from probes.tls.audit import TLSCheckSettings, probe_tls
from probes.tls.legacy import LegacyCache
from tests.mailstack.variants import VariantSet
from tests.support.tlsaudit import endpoint, expected_legacy


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_cache_rules() -> None:
    clock = Clock()
    cache = LegacyCache(clock=clock, max_entries=2)
    key = ("h:993", "imap", "implicit", "h")
    assert cache.fresh(key, "fp", 100) is None
    at = cache.put(key, {"TLSv1": True, "TLSv1.1": False}, "fp")
    assert at == clock.now
    clock.now += 99
    known = cache.fresh(key, "fp", 100)
    assert known is not None and known.results == {"TLSv1": True, "TLSv1.1": False} and known.checked_at == at
    assert cache.fresh(key, "other-cert", 100) is None  # a new certificate: ask again
    clock.now += 1
    assert cache.fresh(key, "fp", 100) is None  # too old
    cache.put(key, {"TLSv1": None, "TLSv1.1": False}, "fp")  # incomplete: not kept
    assert cache.fresh(key, "fp", 100) is None
    for i in range(3):
        cache.put((f"e{i}",), {"TLSv1": False}, "fp")
    assert cache.fresh(("e0",), "fp", 100) is None and cache.fresh(("e2",), "fp", 100) is not None


async def test_real_endpoint_is_tested_once_per_period(variants: VariantSet) -> None:
    """Against Dovecot accepting TLS 1.0/1.1: the first audit tests, the next reuses (no tls_legacy
    phase, same answer, same time), and after the period the endpoint is tested again."""
    v = variants["legacy"]
    ep = endpoint(v.host, v.ports["imaps"], "implicit", ca_file=variants.ca_file)
    clock = Clock()
    cache = LegacyCache(clock=clock)
    settings = TLSCheckSettings(ep, "imap", timeout=5.0, legacy_cache=cache, legacy_recheck=3600)

    first_rec = Recorder()
    first = await probe_tls(settings, first_rec)
    assert first.legacy == expected_legacy(True)
    assert first.legacy_checked_at == clock.now and "tls_legacy" in first_rec.phases

    clock.now += 60
    again_rec = Recorder()
    again = await probe_tls(settings, again_rec)
    assert again.legacy == first.legacy and again.legacy_checked_at == first.legacy_checked_at
    assert "tls_legacy" not in again_rec.phases

    clock.now += 3600
    later_rec = Recorder()
    later = await probe_tls(replace(settings), later_rec)
    assert later.legacy == first.legacy and later.legacy_checked_at == clock.now
    assert "tls_legacy" in later_rec.phases
