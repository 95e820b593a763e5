"""The pre-rendered /metrics body must be byte for byte what prometheus_client renders from the collector.

Two anchors: ``tests/data/scrape_golden.txt`` was written by the renderer of the day before the scrape
path changed (generate_latest over MailcanaryCollector, the only renderer then), and that same collector
is still rendered here beside the cached path for whatever state a test builds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.metrics.collector import ExporterState, MailcanaryCollector, SeriesCache, runtime_registry
from exporter.run.results import ResultStore, RunResult
from tests.support.tlsfacts import facts

GOLDEN = Path(__file__).parent / "data" / "scrape_golden.txt"


def result(probe: str, reason: str = "success", **kw: object) -> RunResult:
    base: dict[str, object] = {
        "probe": probe,
        "success": reason == "success",
        "reason": reason,
        "message": "ok",
        "started": 1_700_000_000.25,
        "duration": 1.5,
        "phases": {"smtp_connect": 0.0125, "receive_wait": 0.3, "queue": 0.0},
    }
    base.update(kw)
    return RunResult(**base)  # type: ignore[arg-type]


def build(vantage: str = "") -> tuple[ResultStore, ExporterState]:
    """A store with every kind of series: runs of each outcome, histogram, TLS facts, lag, skips."""
    store = ResultStore()
    names = [f"rt-{i:02d}" for i in range(5)] + ["tls-a", "tls-b", "fresh"]
    store.ensure(names)
    for i in range(5):
        name = f"rt-{i:02d}"
        store.record(result(name, delivery=0.05 * (i + 1), late=i, swept=1, lost=i % 2, outstanding=i))
        # From rt-03 on: a quota reading (storage in bytes, messages), then a failed read that keeps it.
        quota = {"quota": {"storage": (194560, 204800), "message": (19, 20)}} if i >= 3 else {}
        store.record(result(name, "timeout" if i % 2 else "receive_tls", message="x", outstanding=1, **quota))
        store.record(
            result(
                name,
                delivery=1e-7 * i + 123.456,
                tls={"127.0.0.1:587": facts("127.0.0.1:587", "smtp")},
                quota_error="timeout" if i >= 3 else None,
                sync_seconds=0.125 * i if i >= 3 else None,
                sync_arrival=0.25 * i if i >= 3 else None,
            )
        )
        store.note_lag(name, 0.001 * i)
        if i == 3:
            store.note_skipped(name)
    store.record(result("tls-a", phases={"tls_connect": 0.01}, tls={"[::1]:993": facts("[::1]:993", "imap")}))
    store.record(result("tls-b", "tls_verify", tls={"h:25": facts("h:25", "smtp", ok=False)}))
    store.record(result("tls-b", "queue_timeout", phases={"queue": 30.0}, queue=30.0))
    state = ExporterState(
        config_path="/etc/mailcanary/mailcanary.yml",
        config_digest="abc123",
        reload_ok=True,
        reload_success_time=1_700_000_000.0,
        probes={
            **{f"rt-{i:02d}": "roundtrip" for i in range(5)},
            "fresh": "roundtrip",
            "tls-a": "tls",
            "tls-b": "tls",
        },
        shard="0/1",
        vantage=vantage,
    )
    return store, state


def reference(store: ResultStore, state: ExporterState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    return generate_latest(registry).decode()


# Families added after the golden was written (each documented in docs/metrics.md).
ADDED_SINCE_GOLDEN = (
    "mailcanary_receive_login_delay_seconds",  # issue 19: POP3 LOGIN-DELAY
    'outcome="receive_login_delay"',  # issue 19: a reason added since
    "mailcanary_tls_legacy_protocol_checked_timestamp_seconds",
    "mailcanary_roundtrip_placement",  # also matches mailcanary_roundtrip_placements_total
    "mailcanary_roundtrip_bounces_total",
    'outcome="bounced"',  # a reason added since
    "mailcanary_roundtrip_hop",  # hops, hop_delay_seconds, hop_tls
    "mailcanary_roundtrip_path_seconds",
    "mailcanary_roundtrip_clock_offset_seconds",
    "mailcanary_roundtrip_auth_result",
    "mailcanary_roundtrip_spam_score",
    "mailcanary_roundtrip_sender_dnsbl_",  # sender_dnsbl: listed and status
    "mailcanary_domain_",  # issue 14: domain checks (their families render headers even with none)
    *(  # issue 14: certificate hygiene of round trips and TLS checks
        f"mailcanary_tls_cert_{n} "
        for n in ("key_bits", "weak_key", "signature_info", "weak_signature", "validity_seconds", "scts")
    ),
    "mailcanary_tls_cert_ocsp_status ",
    "mailcanary_tls_cert_crl_status ",
    "mailcanary_mailbox_quota_",
    "mailcanary_roundtrip_sync_",  # sync_seconds, sync_arrival_seconds, sync_skipped (issue 19)
    "mailcanary_roundtrip_junk_folder_found",  # issue 19
    'outcome="sync_timeout"',
    'outcome="tls_revoked"',  # issue 21: a revoked certificate fails round trips and TLS checks
    'outcome="tls_params"',  # issue 21: TLS checks refused for their parameters, the certificate apart
    # issue 22: the reports kind (its families render headers even with no entry)
    "mailcanary_reports_",
    "mailcanary_tlsrpt_",
    "mailcanary_dmarc_",
    'mailcanary_config_probes{kind="reports"}',
    "mailcanary_heartbeat_",  # issue 22: heartbeats (their families render headers even with none)
    'mailcanary_config_probes{kind="heartbeats"}',
    *(  # issue 21: the TLS scan (each documented in docs/metrics.md)
        f"mailcanary_tls_{n}"
        for n in (
            "protocol_accepted",
            "cipher_class_accepted",
            "forward_secrecy",
            "preferred_cipher_info",
            "dh_group_bits",
            "tls13_group_info",
            "secure_renegotiation",
            "compression",
            "chain_",  # complete, ordered, superfluous_certs
            "ocsp_stapled",
            "ocsp_staple_status",
            "scan_",  # checked_timestamp_seconds, connections, unknown
        )
    ),
)


def _unversioned(text: str) -> str:
    """mailcanary_build_info carries the version and Python (and its HELP text gained git revision and
    branch since), and newer families were not in the golden: none of that is part of what is compared."""
    return "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(("mailcanary_build_info{", "# HELP mailcanary_build_info "))
        and not any(name in line for name in ADDED_SINCE_GOLDEN)
    )


def test_golden_from_the_renderer_before_the_change() -> None:
    store, state = build(vantage="eu-1")
    if not GOLDEN.exists():  # pragma: no cover - written once, by the renderer of the day
        GOLDEN.write_text(reference(store, state))
    assert _unversioned(reference(store, state)) == _unversioned(GOLDEN.read_text())


def cached(store: ResultStore, state: ExporterState) -> str:
    return SeriesCache(store, state).text()


@pytest.mark.parametrize("vantage", ["", "eu-1"])
def test_cached_equals_the_reference(vantage: str) -> None:
    store, state = build(vantage)
    assert cached(store, state) == reference(store, state)


def test_cached_equals_the_golden() -> None:
    store, state = build(vantage="eu-1")
    assert _unversioned(cached(store, state)) == _unversioned(GOLDEN.read_text())


def test_cache_follows_every_change_without_rendering_at_scrape() -> None:
    """Runs, lag, skips, added and removed probes after the cache exists: still equal, and a scrape with
    nothing changed renders no probe again."""
    store, state = build()
    cache = SeriesCache(store, state)
    assert cache.text() == reference(store, state)
    store.record(result("rt-01", "smtp_auth", message="no"))
    store.note_lag("rt-02", 0.5)
    store.note_skipped("tls-a")
    store.ensure([*store.names(), "new-one"])
    state.probes["new-one"] = "roundtrip"
    assert cache.text() == reference(store, state)
    store.ensure([n for n in store.names() if n != "rt-00"])
    del state.probes["rt-00"]
    store.retain_tls({})
    assert cache.text() == reference(store, state)
    renders = cache.renders
    for _ in range(3):
        cache.text()
    assert cache.renders == renders


def test_reload_changing_vantage_and_kinds_renders_again() -> None:
    store, state = build()
    cache = SeriesCache(store, state)
    cache.text()
    state.vantage = "us-2"
    state.probes["fresh"] = "tls"
    assert cache.stale
    assert cache.text() == reference(store, state)
    assert not cache.stale


def test_body_has_the_runtime_collectors_after_ours() -> None:
    store, state = build()
    cache = SeriesCache(store, state, runtime_registry())
    body = asyncio.run(cache.body()).decode()
    assert body.startswith(reference(store, state))
    assert "\n# TYPE python_info gauge\n" in body


def test_a_later_render_wins_over_an_earlier_one_that_finishes_last() -> None:
    """A full re-render in a worker thread reads a probe's stats, then a run finishes on the loop and
    renders it anew before the thread writes: the thread's older text must not overwrite the newer."""
    store, state = build()
    cache = SeriesCache(store, state)
    real = store.stats_of
    raced = False

    def stats_then_a_newer_run(name: str):  # type: ignore[no-untyped-def]
        nonlocal raced
        old = real(name)
        if name == "rt-01" and not raced:
            raced = True
            store.record(result("rt-01", "smtp_auth", message="newer"))  # renders inside, and wins
        return old

    store.stats_of = stats_then_a_newer_run  # type: ignore[method-assign]
    cache.rerender_all()
    store.stats_of = real  # type: ignore[method-assign]
    assert raced
    assert cache.text() == reference(store, state)


def test_text_of_equals_generate_latest_for_probe_and_runtime_families() -> None:
    """/probe's families (blackbox names and the TLS facts) and the process/platform/GC collectors."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from exporter.metrics.collector import text_of
    from exporter.metrics.tls import blackbox_families, tls_families

    f = facts("127.0.0.1:993", "imap")
    probe_families = [*blackbox_families(f, True, 0.123), *tls_families([([], f)], [])]
    weird = GaugeMetricFamily("x_weird", 'doc with \\ and\nnewline and "quotes"', labels=["l"])
    weird.add_metric(['va"l\\ue\nx'], float("inf"))
    weird.add_metric(["n"], float("nan"))
    big = CounterMetricFamily("x_big", "big numbers", labels=["l"])
    big.add_metric(["a"], 1234567890123.0)
    big.add_metric(["b"], 1e-9)
    runtime = list(runtime_registry().collect())
    for families in (probe_families, [weird, big], runtime):

        class Fixed:
            def collect(self, fams: list = families):  # type: ignore[no-untyped-def,type-arg]
                return iter(fams)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Fixed())  # type: ignore[arg-type]
        assert text_of(families) == generate_latest(registry).decode()


# ---- OpenMetrics: what Prometheus asks for first (issue 23) ---------------------------------------------


def reference_openmetrics(store: ResultStore, state: ExporterState, *extra: object) -> str:
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    body: bytes = generate_openmetrics(registry)
    return body.decode()


@pytest.mark.parametrize("vantage", ["", "eu-1"])
def test_cached_openmetrics_equals_prometheus_client(vantage: str) -> None:
    store, state = build(vantage)
    cache = SeriesCache(store, state)
    assert cache.text(openmetrics=True) + "# EOF\n" == reference_openmetrics(store, state)
    # and after changes, without re-rendering at scrape
    store.record(result("rt-01", "smtp_auth", message="no"))
    store.note_skipped("tls-a")
    renders = cache.renders
    assert cache.text(openmetrics=True) + "# EOF\n" == reference_openmetrics(store, state)
    cache.text(openmetrics=True)
    assert cache.renders == renders


def test_openmetrics_body_has_the_runtime_collectors_and_one_eof() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    store, state = build()
    runtime = runtime_registry()
    body = asyncio.run(SeriesCache(store, state, runtime).body(openmetrics=True)).decode()
    full = CollectorRegistry(auto_describe=False)
    full.register(MailcanaryCollector(store, state))
    for collector in list(runtime._collector_to_names):  # the same collectors, in the same order
        full.register(collector)
    expected = generate_openmetrics(full).decode()

    def steady(text: str) -> list[str]:  # process and GC figures move between two renders
        return [line for line in text.splitlines() if not line.startswith(("process_", "python_gc_"))]

    assert steady(body) == steady(expected)
    assert body.count("# EOF\n") == 1 and body.endswith("# EOF\n")


def test_openmetrics_lines_fall_back_for_what_the_formats_write_differently() -> None:
    """A counter with ``_created`` (OpenMetrics only) goes through prometheus_client itself."""
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from exporter.metrics.collector import openmetrics_lines

    fam = CounterMetricFamily("x_runs", "runs", labels=["l"], created=None)
    fam.add_metric(["a"], 3.0, created=1_700_000_000.5)

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return iter([fam])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    whole = generate_openmetrics(registry).decode()
    assert whole.endswith(openmetrics_lines(fam) + "# EOF\n")
    assert "x_runs_created" in openmetrics_lines(fam)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        # Prometheus 2.5+ (and 2.42 here): OpenMetrics first
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/openmetrics-text; version=0.0.1", True),
        ("", False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        ("text/plain;q=1,application/openmetrics-text;q=0.5", False),  # the scraper prefers text
        ("application/openmetrics-text;q=0", False),  # explicitly not acceptable
        ("application/openmetrics-text;q=bogus,text/plain", False),
        ("APPLICATION/OpenMetrics-Text ; version=1.0.0", True),
    ],
)
def test_negotiation_honours_the_scrapers_preference(accept: str, openmetrics: bool) -> None:
    from exporter.web.server import wants_openmetrics

    assert wants_openmetrics(accept) is openmetrics


# ---- gzip (issue 23): what Prometheus asks for with Accept-Encoding ------------------------------------

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
FORMATS = {"openmetrics": PROMETHEUS_ACCEPT, "text": "text/plain;version=0.0.4"}


def fixed_runtime() -> CollectorRegistry:
    """A live part that renders the same bytes every time, so whole bodies can be compared."""
    from prometheus_client import Gauge

    registry = CollectorRegistry(auto_describe=False)
    Gauge("fixed_live", "A live series that does not move.", registry=registry).set(7)
    return registry


async def scrape(port: int, accept: str, encoding: str | None) -> tuple[dict[str, str], bytes]:
    """One GET /metrics over loopback; the body as sent (never decompressed by the client)."""
    import aiohttp

    headers = {"Accept": accept, **({"Accept-Encoding": encoding} if encoding is not None else {})}
    skip = () if encoding is not None else ("Accept-Encoding",)
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=skip) as session,
        session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        return dict(resp.headers), await resp.read()


def gunzip_one_member(data: bytes) -> bytes:
    """What a strict client reads: exactly one gzip member, nothing after it (Go's and curl's readers
    accept that whatever their multistream setting)."""
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data)
    assert inflater.eof and inflater.unused_data == b""
    return out


class Served:
    """HTTPServer on 127.0.0.1 (a kernel-chosen port) over a SeriesCache of :func:`build`."""

    def __init__(self, runtime: CollectorRegistry | None = None) -> None:
        from exporter.web.server import HTTPServer

        self.store, self.state = build()
        self.cache = SeriesCache(self.store, self.state, runtime if runtime is not None else fixed_runtime())
        self.http = HTTPServer(
            CollectorRegistry(auto_describe=False), ready=lambda: True, metrics_body=self.cache.parts
        )

    async def __aenter__(self) -> int:
        await self.http.start("127.0.0.1:0")
        return self.http.bound[0][1]

    async def __aexit__(self, *exc: object) -> None:
        await self.http.stop()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("piece", [None, 64], ids=["one-piece", "64-char-pieces"])
def test_gzip_body_is_the_same_bytes_compressed(
    fmt: str, piece: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prometheus' headers get one gzip member that inflates to exactly the uncompressed body, with
    Content-Encoding and Vary; a body encoded and deflated in many pieces is the same bytes as one
    joined whole."""
    from exporter.metrics import collector

    if piece is not None:
        monkeypatch.setattr(collector, "PIECE", piece)

    async def main() -> None:
        served = Served()
        async with served as port:
            plain_headers, plain = await scrape(port, FORMATS[fmt], "identity")
            headers, gz = await scrape(port, FORMATS[fmt], "gzip")  # what Prometheus 2.42 sends
        assert headers["Content-Encoding"] == "gzip"
        assert "Content-Encoding" not in plain_headers
        for h in (headers, plain_headers):
            assert "Accept-Encoding" in h["Vary"]
            assert h["Content-Type"].startswith(
                "application/openmetrics-text" if fmt == "openmetrics" else "text/plain"
            )
        assert gunzip_one_member(gz) == plain == await served.cache.body(fmt == "openmetrics")
        assert plain.startswith(served.cache.text(fmt == "openmetrics").encode())
        assert int(headers["Content-Length"]) == len(gz) < len(plain)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("encoding", "gzipped"),
    [
        (None, False),  # no header: never compressed
        ("", False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip;q=0, identity", False),
        ("*;q=0", False),
        ("gzip;q=0.5, identity", False),  # the client prefers identity
        ("deflate, br", False),
        ("gzip;q=bogus", False),
        ("gzip", True),  # Prometheus
        ("gzip, deflate", True),  # aiohttp, requests
        ("x-gzip", True),
        ("*", True),
        ("identity;q=0.5, gzip", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),  # browsers
        (" GZIP ; Q=1 ", True),
    ],
)
def test_gzip_only_when_asked(encoding: str | None, gzipped: bool) -> None:
    from exporter.web.gzipbody import accepts_gzip

    assert accepts_gzip(encoding or "") is gzipped

    async def main() -> None:
        served = Served()
        async with served as port:
            headers, body = await scrape(port, PROMETHEUS_ACCEPT, encoding)
        assert ("Content-Encoding" in headers) is gzipped
        assert (gunzip_one_member(body) if gzipped else body) == await served.cache.body(True)

    asyncio.run(main())


def test_gzip_follows_a_new_render_and_keeps_one_copy_per_format() -> None:
    """A run recorded after a gzip scrape is in the next gzip body (no stale copy); with nothing changed
    the compressed pre-rendered part is reused, per format, and concurrent scrapes compress it once."""

    async def main() -> None:
        served = Served()
        gz = served.http.gzip
        async with served as port:
            first = gunzip_one_member((await scrape(port, PROMETHEUS_ACCEPT, "gzip"))[1])
            assert gz.deflated == 1
            again = gunzip_one_member((await scrape(port, PROMETHEUS_ACCEPT, "gzip"))[1])
            assert again == first and gz.deflated == 1  # reused
            text = gunzip_one_member((await scrape(port, FORMATS["text"], "gzip"))[1])
            assert text == await served.cache.body(False) and gz.deflated == 2
            assert gunzip_one_member((await scrape(port, PROMETHEUS_ACCEPT, "gzip"))[1]) == first
            assert gz.deflated == 2  # one copy per format, both kept

            served.store.record(result("rt-01", "smtp_auth", message="no"))  # a run finished
            after = gunzip_one_member((await scrape(port, PROMETHEUS_ACCEPT, "gzip"))[1])
            assert after != first and after == await served.cache.body(True)
            assert 'mailcanary_roundtrip_success{probe="rt-01"} 0.0' in after.decode()
            assert gz.deflated == 3

            served.state.reload_success_time = 1_800_000_000.0  # the exporter's own facts, rendered live
            reloaded = gunzip_one_member((await scrape(port, PROMETHEUS_ACCEPT, "gzip"))[1])
            assert reloaded == await served.cache.body(True) != after

            served.store.record(result("rt-02", "smtp_auth", message="no"))
            many = await asyncio.gather(*(scrape(port, PROMETHEUS_ACCEPT, "gzip") for _ in range(5)))
            assert gz.deflated == 5  # five scrapes of one new generation: compressed once
            assert {gunzip_one_member(body) for _, body in many} == {await served.cache.body(True)}

    asyncio.run(main())


def test_gzip_without_a_pre_rendered_body() -> None:
    """The registry path (no SeriesCache) compresses too, the same bytes as prometheus_client renders."""
    from exporter.web.server import render

    store, state = build()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    resp = render(registry, "text/plain", "gzip")
    assert resp.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in resp.headers["Vary"]
    assert isinstance(resp.body, bytes)
    assert gunzip_one_member(resp.body).decode() == reference(store, state)
    assert "Content-Encoding" not in render(registry, "text/plain", "identity").headers


def test_gzip_an_older_generation_never_replaces_the_kept_newer_copy() -> None:
    """A scrape that started on an older render (it finished last) is served its own bytes, and the copy
    kept for the next scrapes stays the newer one."""
    from exporter.metrics.collector import BodyParts
    from exporter.web.gzipbody import GzipBodies

    def parts(generation: int, text: bytes) -> BodyParts:
        return BodyParts((True, generation, "head"), lambda: [text], b"# EOF\n")

    async def main() -> None:
        gz = GzipBodies()
        assert gunzip_one_member(await gz.body(parts(5, b"new\n"))) == b"new\n# EOF\n"
        assert gunzip_one_member(await gz.body(parts(3, b"old\n"))) == b"old\n# EOF\n"
        assert gunzip_one_member(await gz.body(parts(5, b"new\n"))) == b"new\n# EOF\n"
        assert gz.deflated == 2  # generation 5 was still kept
        other_head = BodyParts((True, 5, "reloaded"), lambda: [b"other\n"], b"# EOF\n")
        assert gunzip_one_member(await gz.body(other_head)) == b"other\n# EOF\n"

    asyncio.run(main())


def test_pieces_split_between_texts_never_inside_one() -> None:
    """Each piece ends on a text's end (a multi-byte character is never cut) and the pieces join to the
    whole; a text longer than a piece is a piece of its own."""
    from exporter.metrics.collector import encoded

    texts = ["a" * 5, "é" * 7, "b" * 40, "ü", "c" * 3]
    pieces = list(encoded(texts, piece=10))
    assert b"".join(pieces) == "".join(texts).encode()
    assert [p.decode() for p in pieces] == ["a" * 5 + "é" * 7, "b" * 40, "ü" + "c" * 3]
    assert list(encoded([], piece=10)) == []
