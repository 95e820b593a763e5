"""The per-run render's fast paths (issue 23) write what prometheus_client writes, for any value and
label: ints and floats of every size and sign, NaN, infinities, bools, label values needing escapes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.metrics.collector import text_of

NUMBERS = st.one_of(
    st.integers(min_value=-(10**17), max_value=10**17),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from([0, -0.0, 0.0, 999_999, 1_000_000, 999_999.9, 1e6, -(10**15), 10**15, 1e-300, 5e-324]),
)
LABELS = st.text(alphabet=st.sampled_from('ab"\\\n é{}=,'), max_size=8)


def reference(families: list[Metric]) -> str:
    class Fixed:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry).decode()


@given(st.lists(st.tuples(LABELS, LABELS, NUMBERS), max_size=6), NUMBERS)
def test_sample_lines_equal_generate_latest(rows: list[tuple[str, str, float]], plain: float) -> None:
    fam = GaugeMetricFamily("x_fast", "fast paths", labels=["zeta", "alpha"])
    for zeta, alpha, value in rows:
        fam.add_metric([zeta, alpha], value)
    single = GaugeMetricFamily("x_plain", "no labels", value=plain)
    assert text_of([fam, single]) == reference([fam, single])


async def test_changes_on_the_loop_are_rendered_once_and_never_read_stale() -> None:
    """A run's lag note (at its start) and its result (at its end) are one render on the event loop,
    not two; a read before the timer renders what is pending, so it is never older than the store."""
    from exporter.metrics.collector import ExporterState, MailcanaryCollector, SeriesCache
    from exporter.run.results import ResultStore, RunResult

    store, state = ResultStore(), ExporterState(probes={"p": "roundtrip"})
    store.ensure(["p"])
    cache = SeriesCache(store, state)
    cache.text()
    before = cache.renders
    store.note_lag("p", 0.25)
    ok = RunResult(
        probe="p", success=True, reason="success", message="ok", started=1.7e9, duration=0.5, phases={}
    )
    store.record(ok)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    assert cache.text() == generate_latest(registry).decode()  # read at once: current
    assert cache.renders == before + 1  # both changes in one render
    store.note_lag("p", 0.5)
    cache.flush()  # what the timer does within COALESCE_SECONDS
    assert cache.renders == before + 2
    cache.flush()
    assert cache.renders == before + 2  # nothing pending: nothing rendered
