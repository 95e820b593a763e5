"""Prometheus metrics rendered from stored outcomes at scrape time (a custom collector).

Nothing here is a global gauge mutated by probe code: a probe removed from the config disappears from
/metrics with its stats, and a scrape never sees half a result.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import registry
from exporter.buildinfo import build_info
from exporter.metrics.domain import hygiene_families
from exporter.metrics.tls import legacy_testable, tls_families
from exporter.run.results import ProbeStats, ResultStore


@dataclass
class ExporterState:
    """The exporter's own facts, updated by the daemon (config loads, scheduler)."""

    config_path: str = ""
    config_digest: str = ""
    reload_ok: bool = True
    reload_success_time: float | None = None
    probes: dict[str, str] = field(default_factory=dict)  # probe name -> its kind's name (exporter.registry)
    sandbox: bool = False
    shard: str = ""  # "i/N" when this instance runs a share of the probes
    vantage: str = ""  # where this instance probes from; a label on every mailcanary_* series when set


def kind_of(state: ExporterState, name: str) -> str:
    """A probe's kind; results recorded without a daemon (no state) are the primary kind's."""
    return state.probes.get(name) or registry.primary()


Families = Callable[[dict[str, ProbeStats], list[str]], list[Metric]]


def kind_families() -> list[tuple[str, Families]]:
    """(kind, result exporter) in registry order (:func:`exporter.registry.kinds`)."""
    return [(k.name, k.families) for k in registry.kinds()]


class MailcanaryCollector(Collector):
    """The reference renderer: every family from a fresh snapshot. /metrics serves :class:`SeriesCache`
    (the same bytes, pre-rendered per probe); this one serves OpenMetrics and is what tests compare."""

    def __init__(self, store: ResultStore, state: ExporterState) -> None:
        self.store = store
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snap = self.store.snapshot()
        st = self.state
        families = list(exporter_families(st))
        for kind, render in kind_families():
            families += render(snap, sorted(n for n in snap if kind_of(st, n) == kind))
        families += [*tls_fact_families(snap, sorted(snap)), legacy_testable()]
        vantage = st.vantage
        for fam in families:
            if vantage:
                with_vantage(fam, vantage)
            yield fam


def with_vantage(fam: Metric, vantage: str) -> Metric:
    fam.samples = [s._replace(labels={**s.labels, "vantage": vantage}) for s in fam.samples]
    return fam


def tls_fact_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """The ``mailcanary_tls_*`` facts of every endpoint these probes talked to."""
    rows = [
        ([name, facts.endpoint, facts.protocol], facts)
        for name in names
        for _, facts in sorted(snap[name].tls.items())
    ]
    labels = ["probe", "endpoint", "protocol"]
    hygiene = [
        ([name, facts.endpoint, facts.protocol], h.key, h.ocsp, h.crl)
        for name in names
        for endpoint, facts in sorted(snap[name].tls.items())
        if (h := snap[name].hygiene.get(endpoint)) is not None
    ]
    return [*tls_families(rows, labels), *hygiene_families(hygiene, labels, "mailcanary_tls_")]


def exporter_families(st: ExporterState) -> Iterator[Metric]:
    """The exporter's own facts: build, config, probes by kind."""
    info = InfoMetricFamily("mailcanary_build", "mailcanary version, git revision and branch, Python.")
    b = build_info()
    labels = {"version": b.version, "revision": b.revision, "branch": b.branch}
    info.add_metric([], {**labels, "python_version": b.python_version})
    yield info
    cfg = InfoMetricFamily("mailcanary_config", "Digest of the loaded configuration file.")
    cfg.add_metric(
        [], {"digest": st.config_digest, "sandbox": "true" if st.sandbox else "false", "shard": st.shard}
    )
    yield cfg
    yield GaugeMetricFamily(
        "mailcanary_config_last_reload_successful",
        "1 if the last configuration load or reload succeeded, else 0 (the old config keeps running).",
        value=1 if st.reload_ok else 0,
    )
    if st.reload_success_time is not None:
        yield GaugeMetricFamily(
            "mailcanary_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            value=st.reload_success_time,
        )
    kinds = GaugeMetricFamily("mailcanary_config_probes", "Configured probes by kind.", labels=["kind"])
    counts: dict[str, int] = {registry.primary(): 0}  # the primary kind is there even with no entries
    for kind in st.probes.values():
        counts[kind] = counts.get(kind, 0) + 1
    for kind, n in sorted(counts.items()):
        kinds.add_metric([kind], n)
    yield kinds


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """``floatToGoString``, with the common cases first: an int or float below 1e6 (where Go's form and
    Python's ``repr`` agree) needs neither the float() nor the checks for infinities and NaN."""
    kind = value.__class__
    if kind is int and -(10**15) < value < 1_000_000:
        return f"{value}.0"
    if kind is float and -1e15 < value < 1e6:  # (False for NaN and the infinities)
        return repr(value)
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def sample_lines(fam: Metric) -> str:
    """A family's samples in the Prometheus text format, exactly as ``generate_latest`` writes them
    (labels sorted by name, values through ``floatToGoString``); our names never need escaping.
    Rendered for every probe after every run, so written for speed: label names sorted once per set
    of names, values escaped only when they hold a character that needs it."""
    out = []
    orders: dict[tuple[str, ...], list[str]] = {}
    for sample in fam.samples:
        labels = sample.labels
        if labels:
            names = tuple(labels)
            order = orders.get(names)
            if order is None:
                order = orders[names] = sorted(names)
            pairs = []
            for k in order:
                v = labels[k]
                if "\\" in v or "\n" in v or '"' in v:
                    v = _escape_value(v)
                pairs.append(f'{k}="{v}"')
            out.append(f"{sample.name}{{{','.join(pairs)}}} {_number(sample.value)}\n")
        else:
            out.append(f"{sample.name} {_number(sample.value)}\n")
    return "".join(out)


_TYPES = {"counter": "counter", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_OM_ONLY = ("_created", "_gsum", "_gcount")


def family_header(fam: Metric) -> str:
    """``# HELP`` / ``# TYPE`` lines exactly as ``generate_latest`` writes them."""
    name = fam.name + ("_total" if fam.type == "counter" else "_info" if fam.type == "info" else "")
    kind = _TYPES.get(fam.type, "untyped" if fam.type == "unknown" else fam.type)
    doc = fam.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def text_of(families: Iterable[Metric]) -> str:
    """The Prometheus text format of ``families``, as ``generate_latest`` renders it, ~5x faster; what it
    does not handle the same way (OpenMetrics-only samples, timestamps, exemplars) goes through
    prometheus_client itself."""
    fams = list(families)
    for fam in fams:
        for sample in fam.samples:
            extras = (sample.timestamp, sample.exemplar, sample.native_histogram)
            if any(x is not None for x in extras) or sample.name.endswith(_OM_ONLY):
                return _render(fams)
    return "".join(family_header(fam) + sample_lines(fam) for fam in fams)


def _render(families: Iterable[Metric]) -> str:
    class _Once(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once())
    return generate_latest(registry).decode()


def _render_openmetrics(families: Iterable[Metric]) -> str:
    """OpenMetrics as prometheus_client writes it, without the closing ``# EOF`` (parts are joined)."""

    class _Once(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once())
    return openmetrics_of(registry)


def openmetrics_of(registry: CollectorRegistry) -> str:
    """A registry in OpenMetrics 1.0.0 (prometheus_client's renderer), without the closing ``# EOF``."""
    body: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return body.decode()[: -len(EOF)]


EOF = "# EOF\n"


def _headers(families: list[Metric]) -> list[str]:
    """``# HELP`` and ``# TYPE`` of each (empty) family, as generate_latest writes them."""
    return [_render([fam]) for fam in families]


def _openmetrics_headers(families: list[Metric]) -> list[str]:
    """The same in OpenMetrics (counters and infos are named without their suffix there, ``# UNIT``)."""
    return [_render_openmetrics([fam]) for fam in families]


def _plain(fam: Metric) -> bool:
    """Samples the two formats write the same way (no timestamp, exemplar, ``_created``, native histogram)."""
    return not any(
        s.timestamp is not None
        or s.exemplar is not None
        or s.native_histogram is not None
        or s.name.endswith(_OM_ONLY)
        for s in fam.samples
    )


def openmetrics_lines(fam: Metric) -> str:
    """A family's samples in OpenMetrics: the text format's lines for plain families (the formats agree
    on sample lines and differ only in headers and ``# EOF``), prometheus_client for anything else."""
    if _plain(fam):
        return sample_lines(fam)
    head = _render_openmetrics([Metric(fam.name, fam.documentation, fam.type, fam.unit)])
    return _render_openmetrics([fam])[len(head) :]


_EMPTY: dict[str, ProbeStats] = {}
COALESCE_SECONDS = 1.0  # changes of a probe on the event loop within this are rendered once
FACT_HEADERS = _headers(tls_fact_families(_EMPTY, []))
FACT_HEADERS_OM = _openmetrics_headers(tls_fact_families(_EMPTY, []))


@dataclass
class _Fragment:
    kind: str
    own: list[str]  # one text per family of its kind's headers
    facts: list[str]  # one text per family of FACT_HEADERS
    own_om: list[str]  # the same in OpenMetrics (the same strings when every family is plain)
    facts_om: list[str]


class SeriesCache:
    """/metrics that costs (almost) nothing at scrape time.

    A probe's series are rendered to text when its stats change (a run finished, the scheduler noted lag
    or a skip, a reload added or pruned it; changes on the event loop within COALESCE_SECONDS are
    rendered once): that costs about 0.5 ms per run, spread over the interval. A
    scrape then writes each family's header and concatenates the probes' pre-rendered lines, sorted by
    name, which gives byte for byte what prometheus_client renders from :class:`MailcanaryCollector`
    (tests/test_scrape_equal.py). A reload that changes probe kinds or the vantage (or a kind registered
    at run time) re-renders every probe once, in a worker thread, so the event loop keeps answering.
    """

    def __init__(
        self, store: ResultStore, state: ExporterState, runtime: CollectorRegistry | None = None
    ) -> None:
        self.store = store
        self.state = state
        self.runtime = runtime  # process, platform and GC collectors: a handful of series, rendered live
        self._lock = threading.Lock()
        # Bumped under _lock with every change of what the pre-rendered part is made of: the same
        # generation (and exporter facts) means the same bytes, so a compressed copy can be kept (BodyParts).
        self.generation = 0
        self._frags: dict[str, _Fragment] = {}
        self._want: dict[str, int] = {}  # probe -> sequence number of the newest render in progress
        self._seq = 0
        self._legacy = ""
        self._legacy_om = ""
        self._signature: tuple[tuple[tuple[str, str], ...], str, int] | None = None
        self._kinds_at = -1
        self._kinds: list[tuple[str, Families]] = []
        self._headers: dict[str, list[str]] = {}
        self._headers_om: dict[str, list[str]] = {}
        self._pending: set[str] = set()  # probes changed on the loop, rendered by the timer (or a read)
        self._timer: asyncio.TimerHandle | None = None
        self._load_kinds()
        self.renders = 0  # probe renders so far (tests and benchmarks read it)
        store.subscribe(self._changed)

    def _load_kinds(self) -> None:
        """Each kind's families and their headers, as the registry has them now."""
        self._kinds_at = registry.version()
        self._kinds = kind_families()
        self._headers = {kind: _headers(render(_EMPTY, [])) for kind, render in self._kinds}
        self._headers_om = {kind: _openmetrics_headers(render(_EMPTY, [])) for kind, render in self._kinds}

    def _current_signature(self) -> tuple[tuple[tuple[str, str], ...], str, int]:
        return tuple(sorted(self.state.probes.items())), self.state.vantage, registry.version()

    def _fragment(self, name: str, st: ProbeStats) -> _Fragment:
        kind = kind_of(self.state, name)
        snap = {name: st}
        vantage = self.state.vantage

        def labelled(families: list[Metric]) -> list[Metric]:
            return [with_vantage(f, vantage) for f in families] if vantage else families

        render = dict(self._kinds).get(kind)
        own = labelled(render(snap, [name])) if render is not None else []
        facts = labelled(tls_fact_families(snap, [name]))
        own_text, facts_text = [sample_lines(f) for f in own], [sample_lines(f) for f in facts]
        # Plain families (all of ours today) share the text lines: the second format costs nothing.
        own_om = own_text if all(map(_plain, own)) else [openmetrics_lines(f) for f in own]
        facts_om = facts_text if all(map(_plain, facts)) else [openmetrics_lines(f) for f in facts]
        return _Fragment(kind, own_text, facts_text, own_om, facts_om)

    def _changed(self, name: str) -> None:
        """A probe's stats changed. Off the event loop (a worker thread, a test): rendered now. On the
        loop: rendered within COALESCE_SECONDS, once for every change meanwhile (the scheduler's lag
        note at a run's start and the run's result at its end are one render, not two); :meth:`text`
        renders whatever is still pending first, so a scrape never sees an older state."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._render(name)
            return
        with self._lock:
            self._pending.add(name)
            if self._timer is None:
                self._timer = loop.call_later(COALESCE_SECONDS, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()

    def flush(self) -> None:
        """Render every probe whose stats changed since its last render (none: nothing to do)."""
        with self._lock:
            if not self._pending:
                return
            names = sorted(self._pending)
            self._pending.clear()
        for name in names:
            self._render(name)

    def _render(self, name: str) -> None:
        with self._lock:  # a render that started later wins, whichever thread finishes first
            self._seq += 1
            mine = self._want[name] = self._seq
        st = self.store.stats_of(name)
        frag = None if st is None else self._fragment(name, st)
        with self._lock:
            if self._want.get(name) != mine:
                return
            del self._want[name]
            self.generation += 1
            if frag is None:
                self._frags.pop(name, None)
            else:
                self._frags[name] = frag
                self.renders += 1

    def rerender_all(self) -> None:
        """Every probe again (the probe kinds or the vantage changed); safe to run in a worker thread."""
        signature = self._current_signature()
        if self._kinds_at != registry.version():  # a kind was registered or removed
            with self._lock:
                self._load_kinds()
                self.generation += 1
        vantage = self.state.vantage
        testable = legacy_testable()
        legacy = with_vantage(testable, vantage) if vantage else testable
        legacy_text = _render([legacy]), _render_openmetrics([legacy])
        names = set(self.store.names())
        with self._lock:
            self._legacy, self._legacy_om = legacy_text
            self.generation += 1
            for gone in set(self._frags) - names:
                del self._frags[gone]
            self._pending -= names
        for name in names:
            self._render(name)
        self._signature = signature

    @property
    def stale(self) -> bool:
        return self._signature != self._current_signature()

    def text(self, openmetrics: bool = False) -> str:
        """The whole mailcanary part of /metrics (call :meth:`rerender_all` first when :attr:`stale`), in
        the Prometheus text format or in OpenMetrics (without its closing ``# EOF``: :meth:`body` adds it
        after the runtime collectors)."""
        if self.stale:
            self.rerender_all()
        self.flush()
        return "".join(self._view(openmetrics)[1]())

    def _view(self, openmetrics: bool) -> tuple[tuple[int, str], Callable[[], Iterator[str]]]:
        """(key, texts): the key names what ``texts`` yields in order (generation, exporter facts), both
        taken at the same moment under the lock, so one key never stands for two different bodies. The
        snapshot is of immutable strings and of containers replaced, never changed, by later renders:
        ``texts`` may run in a worker thread while the loop renders on."""
        vantage = self.state.vantage
        exporter = [with_vantage(f, vantage) if vantage else f for f in exporter_families(self.state)]
        head = _render_openmetrics(exporter) if openmetrics else _render(exporter)
        with self._lock:
            generation = self.generation
            frags = sorted(self._frags.items())
            kinds = self._kinds
            headers = self._headers_om if openmetrics else self._headers
            legacy = self._legacy_om if openmetrics else self._legacy

        def texts() -> Iterator[str]:
            yield head
            for kind, _ in kinds:
                mine = [f for _, f in frags if f.kind == kind]
                for i, header in enumerate(headers[kind]):
                    yield header
                    yield from ((f.own_om if openmetrics else f.own)[i] for f in mine)
            for i, header in enumerate(FACT_HEADERS_OM if openmetrics else FACT_HEADERS):
                yield header
                yield from ((f.facts_om if openmetrics else f.facts)[i] for _, f in frags)
            yield legacy

        return (generation, head), texts

    async def parts(self, openmetrics: bool = False) -> BodyParts:
        """The /metrics body in the parts a compressing server caches by (exporter.web.gzipbody); a full
        re-render after a reload runs in a thread, never on the loop."""
        if self.stale:
            await asyncio.to_thread(self.rerender_all)
        self.flush()  # changes still waiting for the coalescing timer: a scrape never sees an older state
        key, texts = self._view(openmetrics)
        if openmetrics:
            runtime = openmetrics_of(self.runtime).encode() if self.runtime is not None else b""
            live = runtime + EOF.encode()
        else:
            live = generate_latest(self.runtime) if self.runtime is not None else b""
        return BodyParts((openmetrics, *key), lambda: encoded(texts()), live)

    async def body(self, openmetrics: bool = False) -> bytes:
        """The /metrics body; a full re-render after a reload runs in a thread, never on the loop. Both
        formats come from the same pre-rendered lines; only the few runtime series render live."""
        return (await self.parts(openmetrics)).body()


PIECE = 256 * 1024  # characters per encoded piece of a body: its bytes are never all in one buffer


def encoded(texts: Iterable[str], piece: int | None = None) -> Iterator[bytes]:
    """``texts`` as UTF-8, in pieces of about ``piece`` characters: the 17 MB body of 1,000 probes never
    exists as one string and one bytes copy of it (each freed block that size is kept by malloc, a
    peak that stays in the RSS)."""
    piece = PIECE if piece is None else piece
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= piece:
            yield "".join(batch).encode()
            batch.clear()
            size = 0
    if batch:
        yield "".join(batch).encode()


@dataclass(frozen=True)
class BodyParts:
    """A /metrics body as two parts: ``stable()``, the pre-rendered part in pieces (what ``key`` names:
    the same key, the same bytes; safe to iterate in a worker thread), and ``live``, the runtime series
    (and OpenMetrics' ``# EOF``) rendered now."""

    key: tuple[bool, int, str]  # format, SeriesCache.generation, the exporter's own facts as rendered
    stable: Callable[[], Iterable[bytes]]
    live: bytes

    def body(self) -> bytes:
        return b"".join((*self.stable(), self.live))

    def small(self) -> tuple[bytes | None, Iterator[bytes]]:
        """(the whole pre-rendered part, if it is one piece; else None), and the pieces. A small body is
        made on the loop (a thread hop costs more than it, and on a starved machine a hop waits for a
        CPU); only a big one goes to a worker thread, which then takes the pieces from the first on."""
        pieces = iter(self.stable())
        first = next(pieces, b"")
        second = next(pieces, None)
        if second is None:
            return first, iter((first,))
        return None, itertools.chain((first, second), pieces)


def runtime_registry() -> CollectorRegistry:
    """The process, platform and GC collectors alone (rendered live on every scrape: ~20 series)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def build_registry(store: ResultStore, state: ExporterState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
