"""exporter.metrics.collector: what /metrics shows, rendered and parsed back as Prometheus would; and
PollSchedule."""

from __future__ import annotations

import itertools
import re

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from exporter.metrics.collector import ExporterState, build_registry
from exporter.run.results import DELIVERY_BUCKETS, OUTCOMES, ResultStore, RunResult
from probes import canary
from probes.roundtrip import PollSchedule

KEY = b"k" * 32


def run(
    probe: str,
    reason: str = "success",
    *,
    delivery: float | None = None,
    started: float = 1_700_000_000.0,
    duration: float = 1.5,
    phases: dict[str, float] | None = None,
    late: int = 0,
    swept: int = 0,
    message: str = "ok",
    transcript: list[str] | None = None,
) -> RunResult:
    return RunResult(
        probe=probe,
        success=reason == "success",
        reason=reason,
        message=message,
        started=started,
        duration=duration,
        phases=phases or {},
        delivery=delivery,
        late=late,
        swept=swept,
        transcript=transcript,
    )


def scrape(store: ResultStore, probes: list[str]) -> dict[str, list[Sample]]:
    state = ExporterState(probes=dict.fromkeys(probes, "roundtrip"))
    text = generate_latest(build_registry(store, state)).decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def values(samples: dict[str, list[Sample]], name: str, **labels: str) -> list[float]:
    return [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = values(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0]


def probes_of(samples: dict[str, list[Sample]], name: str) -> set[str]:
    return {s.labels["probe"] for s in samples.get(name, [])}


@pytest.fixture
def store() -> ResultStore:
    s = ResultStore()
    s.ensure(["alpha", "beta"])
    s.record(run("alpha", delivery=0.3, phases={"smtp_connect": 0.01, "receive_wait": 0.3}, late=2, swept=1))
    s.record(
        run(
            "alpha",
            delivery=60.0,
            started=1_700_000_100.0,
            duration=61.0,
            phases={"smtp_connect": 0.02, "receive_wait": 60.0},
        )
    )
    s.record(run("alpha", "timeout", started=1_700_000_200.0, duration=120.0, phases={"receive_wait": 119.9}))
    s.record(run("beta", "smtp_auth", started=1_700_000_050.0, duration=0.25, phases={"smtp_auth": 0.2}))
    return s


def test_success_gauge(store: ResultStore) -> None:
    m = scrape(store, ["alpha", "beta"])
    assert value(m, "mailcanary_roundtrip_success", probe="alpha") == 0  # last run timed out
    assert value(m, "mailcanary_roundtrip_success", probe="beta") == 0
    store.record(run("beta", delivery=1.0))
    m = scrape(store, ["alpha", "beta"])
    assert value(m, "mailcanary_roundtrip_success", probe="beta") == 1


def test_delivery_histogram(store: ResultStore) -> None:
    m = scrape(store, ["alpha", "beta"])
    buckets = [s for s in m["mailcanary_roundtrip_delivery_seconds_bucket"] if s.labels["probe"] == "alpha"]
    les = [s.labels["le"] for s in buckets]
    assert les[-1] == "+Inf"
    assert "60.0" in les
    assert len(les) == len(DELIVERY_BUCKETS) + 1
    bounds = [float(le) for le in les]
    assert bounds == sorted(bounds)
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)  # cumulative
    by_le = dict(zip(les, counts, strict=True))
    assert by_le["0.25"] == 0
    assert by_le["0.5"] == 1  # 0.3
    assert by_le["30.0"] == 1
    assert by_le["60.0"] == 2  # 60.0 exactly is within le="60.0"
    assert by_le["+Inf"] == 2
    assert value(m, "mailcanary_roundtrip_delivery_seconds_count", probe="alpha") == 2
    assert value(m, "mailcanary_roundtrip_delivery_seconds_sum", probe="alpha") == pytest.approx(60.3)
    # A probe without deliveries still has the whole (empty) histogram.
    assert value(m, "mailcanary_roundtrip_delivery_seconds_count", probe="beta") == 0
    assert values(m, "mailcanary_roundtrip_delivery_seconds_bucket", probe="beta", le="60.0") == [0]
    assert value(m, "mailcanary_roundtrip_last_delivery_seconds", probe="alpha") == 60.0
    assert "beta" not in probes_of(m, "mailcanary_roundtrip_last_delivery_seconds")


def test_histogram_le_spelling() -> None:
    s = ResultStore()
    s.record(run("p", delivery=0.01))
    m = scrape(s, ["p"])
    les = [x.labels["le"] for x in m["mailcanary_roundtrip_delivery_seconds_bucket"]]
    assert les[:6] == ["0.05", "0.1", "0.25", "0.5", "1.0", "2.5"]
    assert les[-4:] == ["120.0", "300.0", "600.0", "+Inf"]
    assert all(c == 1 for c in values(m, "mailcanary_roundtrip_delivery_seconds_bucket", probe="p"))


def test_runs_total_for_every_outcome(store: ResultStore) -> None:
    m = scrape(store, ["alpha", "beta"])
    for probe in ("alpha", "beta"):
        outcomes = {
            s.labels["outcome"] for s in m["mailcanary_roundtrip_runs_total"] if s.labels["probe"] == probe
        }
        assert outcomes == set(OUTCOMES)
    assert {"success", "timeout", "smtp_auth", "receive_auth", "canary_invalid", "internal"} <= set(OUTCOMES)
    assert value(m, "mailcanary_roundtrip_runs_total", probe="alpha", outcome="success") == 2
    assert value(m, "mailcanary_roundtrip_runs_total", probe="alpha", outcome="timeout") == 1
    assert value(m, "mailcanary_roundtrip_runs_total", probe="alpha", outcome="smtp_auth") == 0
    assert value(m, "mailcanary_roundtrip_runs_total", probe="beta", outcome="smtp_auth") == 1
    assert value(m, "mailcanary_roundtrip_runs_total", probe="beta", outcome="success") == 0


def test_new_probe_starts_at_zero() -> None:
    s = ResultStore()
    s.ensure(["fresh"])
    m = scrape(s, ["fresh"])
    assert [x.value for x in m["mailcanary_roundtrip_runs_total"]] == [0.0] * len(OUTCOMES)
    assert value(m, "mailcanary_roundtrip_late_total", probe="fresh") == 0
    assert value(m, "mailcanary_roundtrip_swept_total", probe="fresh") == 0
    assert "mailcanary_roundtrip_success" not in m  # no run yet: no verdict
    assert "mailcanary_roundtrip_last_success_timestamp_seconds" not in m


def test_late_and_swept(store: ResultStore) -> None:
    store.record(run("alpha", delivery=0.1, late=3))
    m = scrape(store, ["alpha", "beta"])
    assert value(m, "mailcanary_roundtrip_late_total", probe="alpha") == 5
    assert value(m, "mailcanary_roundtrip_swept_total", probe="alpha") == 1
    assert value(m, "mailcanary_roundtrip_late_total", probe="beta") == 0


def test_phase_seconds_of_the_last_run(store: ResultStore) -> None:
    m = scrape(store, ["alpha", "beta"])
    phases = {
        (s.labels["probe"], s.labels["phase"]): s.value for s in m["mailcanary_roundtrip_phase_seconds"]
    }
    assert phases == {("alpha", "receive_wait"): 119.9, ("beta", "smtp_auth"): 0.2}
    assert set(m["mailcanary_roundtrip_phase_seconds"][0].labels) == {"probe", "phase"}


def test_timestamps_and_duration(store: ResultStore) -> None:
    m = scrape(store, ["alpha", "beta"])
    assert value(m, "mailcanary_roundtrip_last_success_timestamp_seconds", probe="alpha") == 1_700_000_161.0
    assert "beta" not in probes_of(m, "mailcanary_roundtrip_last_success_timestamp_seconds")
    assert value(m, "mailcanary_roundtrip_last_run_timestamp_seconds", probe="alpha") == 1_700_000_320.0
    assert value(m, "mailcanary_roundtrip_duration_seconds", probe="beta") == 0.25


def test_removed_probe_disappears(store: ResultStore) -> None:
    assert "beta" in probes_of(scrape(store, ["alpha", "beta"]), "mailcanary_roundtrip_runs_total")
    store.ensure(["alpha"])
    m = scrape(store, ["alpha"])
    for name, samples in m.items():
        assert all(s.labels.get("probe") != "beta" for s in samples), name
    assert probes_of(m, "mailcanary_roundtrip_runs_total") == {"alpha"}
    assert value(m, "mailcanary_roundtrip_runs_total", probe="alpha", outcome="success") == 2  # kept


def test_ensure_adds_and_keeps() -> None:
    s = ResultStore()
    s.ensure(["a"])
    s.record(run("a", delivery=1.0))
    s.ensure(["a", "b"])
    snap = s.snapshot()
    assert set(snap) == {"a", "b"}
    assert snap["a"].runs["success"] == 1
    assert snap["b"].last is None


def test_scheduler_metrics() -> None:
    s = ResultStore()
    s.ensure(["p"])
    s.note_lag("p", 0.75)
    s.note_skipped("p")
    s.note_skipped("p")
    s.note_lag("gone", 1.0)  # unknown probes are ignored
    m = scrape(s, ["p"])
    assert value(m, "mailcanary_scheduler_lag_seconds", probe="p") == 0.75
    assert value(m, "mailcanary_scheduler_skipped_runs_total", probe="p") == 2
    assert "gone" not in s.snapshot()


def test_snapshot_is_a_copy() -> None:
    s = ResultStore()
    s.record(run("p", delivery=0.1))
    snap = s.snapshot()
    s.record(run("p", delivery=0.2))
    assert snap["p"].runs["success"] == 1
    assert snap["p"].delivery_count == 1
    assert s.snapshot()["p"].delivery_count == 2


def test_no_token_nonce_or_message_id_in_any_label() -> None:
    token = canary.new_token("secretive")
    raw = canary.build_message(token, KEY, "canary@example.com", "inbox@example.net")
    message_id = re.search(rb"^Message-ID: <([^>]+)>", raw, re.MULTILINE)
    assert message_id is not None
    mid = message_id.group(1).decode()
    header = token.header_value(KEY)
    s = ResultStore()
    s.record(
        run(
            "secretive",
            "canary_invalid",
            message=f"canary {token.nonce} <{mid}> did not verify: {header}",
            transcript=[f"S: imap * 1 FETCH (UID 3 BODY[] {{1}} {header}", f"Message-ID: <{mid}>"],
            phases={"receive_fetch": 0.1},
        )
    )
    s.record(run("secretive", delivery=0.2, message=f"ok {token.nonce}"))
    m = scrape(s, ["secretive"])
    label_values = {v for samples in m.values() for x in samples for v in x.labels.values()}
    assert "secretive" in label_values
    for needle in (token.nonce, token.nonce[:12], mid, header, token.mac(KEY), str(token.sent_ms)):
        assert not any(needle in v for v in label_values), needle
    # The label values are from closed sets: probe names, outcomes, phases, le bounds, build info.
    outcomes = {x.labels["outcome"] for x in m["mailcanary_roundtrip_runs_total"]}
    assert outcomes == set(OUTCOMES)


def test_exporter_metrics() -> None:
    state = ExporterState(
        config_digest="abc123def456",
        reload_ok=False,
        reload_success_time=1_700_000_000.0,
        probes={"a": "roundtrip", "b": "roundtrip"},
    )
    text = generate_latest(build_registry(ResultStore(), state)).decode()
    m: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            m.setdefault(sample.name, []).append(sample)
    assert value(m, "mailcanary_config_last_reload_successful") == 0
    assert value(m, "mailcanary_config_last_reload_success_timestamp_seconds") == 1_700_000_000.0
    assert value(m, "mailcanary_config_probes", kind="roundtrip") == 2
    (info,) = m["mailcanary_config_info"]
    assert info.labels["digest"] == "abc123def456"
    assert info.labels["sandbox"] == "false"
    (build,) = m["mailcanary_build_info"]
    assert set(build.labels) == {"version", "revision", "branch", "python_version"}
    assert build.labels["revision"] and build.labels["branch"]


# ---- PollSchedule ---------------------------------------------------------------------------------------


def test_poll_schedule_grows_geometrically_and_caps() -> None:
    gaps = list(itertools.islice(PollSchedule(initial=0.1, factor=2.0, maximum=1.0).gaps(), 8))
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_poll_schedule_defaults() -> None:
    cap = 0.25  # the IMAP default: one NOOP per 250 ms at most when polling (no IDLE, or IDLE silent)
    gaps = list(itertools.islice(PollSchedule().gaps(), 30))
    assert gaps[0] == 0.005  # after the first look, which comes right after DATA was accepted
    assert gaps[1] == pytest.approx(0.01)
    for a, b in itertools.pairwise(gaps):
        assert b == pytest.approx(min(a * 2.0, cap))
    assert max(gaps) == cap
    assert gaps[-1] == cap
    first_capped = gaps.index(cap)
    assert all(g < cap for g in gaps[:first_capped])
    assert all(g == cap for g in gaps[first_capped:])


def test_poll_schedule_factor_one_is_constant() -> None:
    gaps = list(itertools.islice(PollSchedule(initial=0.3, factor=1.0, maximum=1.0).gaps(), 5))
    assert gaps == [0.3] * 5


def test_poll_schedule_is_endless() -> None:
    it = PollSchedule(initial=0.5, factor=3.0, maximum=2.0).gaps()
    assert [next(it) for _ in range(1000)][-1] == 2.0
