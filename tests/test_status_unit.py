"""The status page's parts without a daemon: bounds of the history, escaping, the page for no probes."""

from __future__ import annotations

from exporter.metrics.collector import ExporterState
from exporter.run import history as hist
from exporter.run.history import BoundedTranscript, History
from exporter.run.results import ProbeStats, RunResult
from exporter.web.status import phase_bar, render_status, sparkline


def run(name: str, ok: bool, started: float = 1000.0, message: str = "boom") -> RunResult:
    return RunResult(
        probe=name,
        success=ok,
        reason="success" if ok else "smtp_auth",
        message="ok" if ok else message,
        started=started,
        duration=1.0,
        phases={"smtp_connect": 0.1, "smtp_auth": 0.4},
        delivery=0.5 if ok else None,
    )


def test_transcript_keeps_head_and_tail_and_counts_the_rest() -> None:
    t = BoundedTranscript()
    total = hist.HEAD_LINES + hist.TAIL_LINES + 500
    for i in range(total):
        t.append(f"line {i}" + ("x" * 1000 if i == 0 else ""))
    lines = t.lines()
    assert len(lines) == hist.HEAD_LINES + hist.TAIL_LINES + 1
    assert lines[0].startswith("line 0") and len(lines[0]) <= hist.MAX_LINE + 2
    assert lines[hist.HEAD_LINES] == "… 500 lines left out …"
    assert lines[-1] == f"line {total - 1}"


def test_history_is_bounded_per_probe_and_in_failures() -> None:
    h = History(runs_per_probe=5, failures=3)
    for i in range(50):
        h.record(run("a", ok=i % 2 == 0, started=float(i)), ["C: smtp QUIT"])
    assert len(h.points("a")) == 5
    failures = h.failures()
    assert len(failures) == 3 and failures[0].finished > failures[-1].finished  # newest first
    assert h.last_failure("a") == failures[0] and failures[0].dialogue == ("C: smtp QUIT",)
    h.retain(set())
    assert h.points("a") == [] and h.last_failure("a") is None


def test_a_flapping_probe_does_not_push_out_the_last_failure_of_another() -> None:
    h = History(failures=3)
    h.record(run("quiet", ok=False, started=1.0), ["S: imap NO"])
    for i in range(10):
        h.record(run("noisy", ok=False, started=10.0 + i), ["S: smtp 535"])
    names = [f.probe for f in h.failures()]
    assert names == ["noisy", "noisy", "noisy", "quiet"]  # the buffer's 3, then quiet's last
    last = h.last_failure("quiet")
    assert last is not None and last.dialogue == ("S: imap NO",)


def test_page_escapes_what_it_shows() -> None:
    h = History()
    nasty = '<script>alert("x")</script>'
    h.record(run("p", ok=False, message=nasty), [f"S: smtp 535 {nasty}"])
    snap = {"p": ProbeStats(last=run("p", ok=False, message=nasty))}
    page = render_status(snap, ExporterState(probes={"p": "roundtrip"}), h, {}, now=1010.0)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert 'data-outcome="smtp_auth"' in page and "9 s ago" in page


def test_empty_and_single_point_renderings() -> None:
    page = render_status({}, ExporterState(), History(), {}, now=0.0)
    assert "no probes configured" in page and "No failed run kept" in page
    assert "no runs yet" in sparkline([])
    assert "<svg" in sparkline(History().points("x") or [hist.Point(1.0, False, None)])
    assert "smtp_auth" in phase_bar({"smtp_connect": 0.1, "smtp_auth": 0.4})
    assert phase_bar({}) == '<span class="muted">-</span>'
