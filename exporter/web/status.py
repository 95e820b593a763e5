"""The status page at ``/``: server-rendered HTML, no JavaScript, where an operator looks first.

Every probe with its last outcome, reason and age, and its kind's result cell (a round trip's
delivery; each kind declares its own: :attr:`exporter.registry.Kind.status`); delivery latency of recent
runs as a small SVG sparkline; the last run's phases as one bar; certificate expiry per endpoint; what
each endpoint's TLS scan found (probes.tls.summary: unknown and unscanned said as such); the recent
failed runs with their masked dialogue (exporter.run.history); a form for ``/probe`` (with
``debug=true``). Everything shown comes from data the exporter already holds (ResultStore snapshot,
History, ExporterState); every value is HTML-escaped, and dialogues and messages were masked by the
runner before they got here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape

from exporter import registry
from exporter.buildinfo import build_info
from exporter.config import ModuleConfig
from exporter.metrics.collector import ExporterState
from exporter.run.history import FAILURES_KEPT, Failure, History, Point
from exporter.run.results import ProbeStats
from exporter.run.runner import revocations
from probes.tls import summary
from probes.tls.audit import TLSFacts
from probes.tls.scan import PROTOCOLS, WEAK_CLASSES

PHASE_COLOURS = ("#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #ddd;
vertical-align:middle}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.warn{color:#9a6700;font-weight:600}
.muted{color:#666}pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px;margin:.3em 0 1em}
.bar{display:flex;height:12px;width:240px;background:#eee}.bar span{display:block;height:12px}
nav a{margin-right:1em}details{margin:.3em 0}summary{cursor:pointer}
form{margin:.5em 0}input,select{font:inherit;padding:1px 4px}
"""


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def sparkline(points: Sequence[Point], width: int = 160, height: int = 28) -> str:
    """Delivery latency of recent runs as a polyline; failed runs as red marks on the baseline."""
    if not points:
        return '<span class="muted">no runs yet</span>'
    values = [p.delivery for p in points if p.delivery is not None]
    top = max(values, default=0.0) or 1.0
    step = width / max(len(points) - 1, 1)
    coords, marks = [], []
    for i, p in enumerate(points):
        x = i * step if len(points) > 1 else width / 2
        if p.delivery is not None:
            coords.append(f"{x:.1f},{height - 2 - (height - 4) * p.delivery / top:.1f}")
        elif not p.success:
            marks.append(
                f'<rect x="{max(x - 1.5, 0):.1f}" y="{height - 6}" width="3" height="6" fill="#cf222e"/>'
            )
    line = f'<polyline fill="none" stroke="#4e79a7" stroke-width="1.5" points="{" ".join(coords)}"/>'
    label = f"last {len(points)} runs; max delivery {top:.2f} s" if values else f"last {len(points)} runs"
    return (
        f'<svg class="spark" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{escape(label)}</title>{line if len(coords) > 1 else ''}{''.join(marks)}</svg>"
    )


def phase_bar(phases: Mapping[str, float]) -> str:
    total = sum(phases.values())
    if not phases or total <= 0:
        return '<span class="muted">-</span>'
    spans = []
    for i, (name, secs) in enumerate(phases.items()):
        colour = PHASE_COLOURS[i % len(PHASE_COLOURS)]
        spans.append(
            f'<span data-phase="{escape(name)}" title="{escape(name)} {secs:.3f} s" '
            f'style="width:{100 * secs / total:.2f}%;background:{colour}"></span>'
        )
    name, secs = max(phases.items(), key=lambda kv: kv[1])
    return (
        f'<div class="bar" title="total {total:.3f} s">{"".join(spans)}</div>'
        f'<span class="muted">longest: {escape(name)} {secs:.3f} s of {total:.3f} s</span>'
    )


def _outcome(success: bool, reason: str) -> str:
    return '<span class="ok">OK</span>' if success else f'<span class="fail">FAILED {escape(reason)}</span>'


def _probe_rows(snap: Mapping[str, ProbeStats], state: ExporterState, history: History, now: float) -> str:
    rows = []
    for name in sorted(snap):
        st = snap[name]
        kind = state.probes.get(name, "")
        declared = registry.get(kind) if kind in registry.names() else None
        last = st.last
        failure = history.last_failure(name)
        if last is None:
            cells = '<td colspan="4" class="muted">not run yet</td>'
            outcome_attr = "none"
        else:
            finished = last.started + last.duration
            # the kind's own cell (a round trip: its delivery; the default shows delivery or "-")
            result = (declared.status if declared is not None else registry.delivery_cell)(last)
            reason = "" if last.success else f'<br><span class="muted">{escape(last.message)}</span>'
            cells = (
                f'<td class="outcome">{_outcome(last.success, last.reason)}{reason}</td>'
                f'<td class="num age">{_age(max(now - finished, 0))}</td>'
                f'<td class="num">{escape(result)}</td><td>{phase_bar(last.phases)}</td>'
            )
            outcome_attr = "success" if last.success else last.reason
        link = (
            f'<a href="#failure-{escape(name)}">{_when(failure.finished)}</a>'
            if failure is not None
            else '<span class="muted">none kept</span>'
        )
        rows.append(
            f'<tr class="probe" data-probe="{escape(name)}" data-kind="{escape(kind)}" '
            f'data-outcome="{escape(outcome_attr)}"><td>{escape(name)}</td><td>{escape(kind)}</td>'
            f"{cells}<td>{sparkline(history.points(name))}</td><td>{link}</td></tr>"
        )
    if not rows:
        return '<tr><td colspan="8" class="muted">no probes configured</td></tr>'
    return "".join(rows)


def _cert_rows(snap: Mapping[str, ProbeStats], now: float) -> str:
    rows = []
    for name in sorted(snap):
        for endpoint, facts in sorted(snap[name].tls.items()):
            expiry = facts.earliest_not_after
            if expiry is None:
                days_cell = '<td class="num muted">unknown</td>'
            else:
                days = (expiry - now) / 86400
                cls = "fail" if days < 7 else "warn" if days < 21 else "ok"
                days_cell = f'<td class="num days {cls}" data-days="{days:.2f}">{days:.1f}</td>'
            verified = (
                '<span class="ok">yes</span>'
                if facts.verified
                else f'<span class="fail">no ({escape(facts.verify_reason or "unknown")})</span>'
            )
            hygiene = snap[name].hygiene.get(endpoint)
            revoked = revocations({endpoint: facts}, {endpoint: hygiene} if hygiene is not None else {})
            if revoked:  # red whatever verification said: a client that checks would refuse it
                verified = f'<span class="fail">REVOKED ({escape(revoked[0][1])})</span>'
            if facts.handshake_refused is not None:
                refused = escape(f"refused by a client with today's defaults: {facts.handshake_refused}")
                verified += f'<br><span class="fail">{refused}</span>'
            rows.append(
                f'<tr class="cert" data-probe="{escape(name)}" data-endpoint="{escape(endpoint)}">'
                f"<td>{escape(name)}</td><td>{escape(endpoint)}</td><td>{escape(facts.protocol)}</td>"
                f"{days_cell}<td>{_when(expiry) if expiry else '-'}</td><td>{verified}</td>"
                f"<td>{escape(facts.version or '-')}</td></tr>"
            )
    if not rows:
        return '<tr><td colspan="7" class="muted">no certificate seen yet</td></tr>'
    return "".join(rows)


def _listed(values: Mapping[str, bool | None], names: Sequence[str], bad: Sequence[str]) -> str:
    """The names answered yes (those in ``bad`` in red), then the unknown ones, muted."""
    yes = [
        f'<span class="{"fail" if n in bad else "ok"}">{escape(summary.CLASS_NAMES.get(n, n))}</span>'
        for n in names
        if values.get(n)
    ]
    unknown = [escape(summary.CLASS_NAMES.get(n, n)) for n in names if values.get(n) is None]
    text = " ".join(yes) or '<span class="ok">none</span>'
    return text + (f' <span class="muted">(unknown: {", ".join(unknown)})</span>' if unknown else "")


def _flag(v: bool | None, good: str, bad: str) -> str:
    if v is None:
        return '<span class="muted">unknown</span>'
    return f'<span class="ok">{good}</span>' if v else f'<span class="fail">{bad}</span>'


def _scan_cells(f: TLSFacts, now: float) -> str:
    s = f.scan
    if s is None or s.checked_at is None:
        why = "not checked (scan off)" if s is None else "not scanned yet"
        return f'<td colspan="7" class="muted">{why}</td>'
    chain = (
        '<span class="muted">unknown</span>'
        if f.chain_complete is None
        else _flag(f.chain_complete, "complete", "incomplete")
        + ("" if f.chain_ordered is not False else ' <span class="fail">misordered</span>')
    )
    staple = (
        '<span class="muted">unknown</span>'
        if s.stapled is None
        else "not stapled"
        if not s.stapled
        else f'<span class="{"fail" if f.ocsp_staple_status == "revoked" else "ok"}">'
        f"{escape(f.ocsp_staple_status or 'stapled')}</span>"
    )
    fs = _flag(None if s.non_fs is None else not s.non_fs, "yes", "no")
    return (
        f"<td>{_listed(s.protocols, PROTOCOLS, ('SSLv2', 'SSLv3', 'TLSv1', 'TLSv1.1'))}</td>"
        f"<td>{_listed(s.classes, WEAK_CLASSES, WEAK_CLASSES)}</td><td>{fs}</td><td>{chain}</td>"
        f"<td>{staple}</td>"
        f'<td class="num">{_age(max(now - s.checked_at, 0))}</td><td class="num">{s.connections}</td>'
    )


def _scan_rows(snap: Mapping[str, ProbeStats], now: float) -> str:
    """One row per endpoint with its TLS scan: what it accepts; unknown and unchecked said as such."""
    rows = []
    for name in sorted(snap):
        for endpoint, facts in sorted(snap[name].tls.items()):
            found = summary.findings(facts)
            rows.append(
                f'<tr class="scan" data-probe="{escape(name)}" data-endpoint="{escape(endpoint)}" '
                f'data-findings="{len(found)}"><td>{escape(name)}</td><td>{escape(endpoint)}</td>'
                f"{_scan_cells(facts, now)}</tr>"
            )
    if not rows:
        return '<tr><td colspan="9" class="muted">no TLS endpoint seen yet</td></tr>'
    return "".join(rows)


def _failures(failures: Sequence[Failure]) -> str:
    if not failures:
        return f'<p class="muted">No failed run kept (the last {FAILURES_KEPT} are kept here).</p>'
    seen: set[str] = set()
    parts: list[str] = []
    for f in failures:
        anchor = "" if f.probe in seen else f' id="failure-{escape(f.probe)}"'
        seen.add(f.probe)
        phase = f" during {escape(f.failed_phase)}" if f.failed_phase else ""
        dialogue = "\n".join(f.dialogue) if f.dialogue else "(no dialogue recorded)"
        parts.append(
            f'<details class="failure" data-probe="{escape(f.probe)}"{anchor}{"" if parts else " open"}>'
            f"<summary><b>{escape(f.probe)}</b> {_when(f.finished)}: "
            f'<span class="fail">{escape(f.reason)}</span>{phase}: {escape(f.message)}</summary>'
            f'<pre class="dialogue">{escape(dialogue)}</pre></details>'
        )
    return "".join(parts)


def _probe_form(modules: Mapping[str, ModuleConfig]) -> str:
    options = "".join(f'<option value="{escape(m)}">{escape(m)}</option>' for m in sorted(modules))
    return (
        '<form action="probe" method="get">'
        f'<label>module <select name="module">{options}</select></label> '
        '<label>target <input name="target" placeholder="mx.example.com:25" required></label> '
        '<label><input type="checkbox" name="debug" value="true" checked> debug (dialogue as text)</label> '
        '<button type="submit">Probe</button></form>'
    )


def render_status(
    snap: Mapping[str, ProbeStats],
    state: ExporterState,
    history: History,
    modules: Mapping[str, ModuleConfig],
    now: float | None = None,
) -> str:
    now = time.time() if now is None else now
    history.retain(set(snap))
    b = build_info()
    where = []
    if state.vantage:
        where.append(f"vantage <b>{escape(state.vantage)}</b>")
    if state.shard:
        where.append(f"shard <b>{escape(state.shard)}</b>")
    if state.sandbox:
        where.append("<b>sandbox</b> (mailcanary demo)")
    config = (
        '<span class="ok">loaded</span>'
        if state.reload_ok
        else '<span class="fail">LAST RELOAD FAILED</span>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width"><title>mailcanary</title>'
        f"<style>{STYLE}</style></head><body>"
        "<h1>mailcanary</h1>"
        f'<p class="muted">version {escape(b.version)} (revision {escape(b.revision[:12])}, branch '
        f"{escape(b.branch)}), Python {escape(b.python_version)}; config {config}"
        f"{'; ' + ', '.join(where) if where else ''}; page rendered {_when(now)}</p>"
        '<nav><a href="metrics">/metrics</a><a href="-/healthy">/-/healthy</a><a href="-/ready">/-/ready</a>'
        '<a href="#probe">/probe</a></nav>'
        '<h2>Probes</h2><table id="probes"><thead><tr><th>probe</th><th>kind</th><th>last outcome</th>'
        "<th>last run</th><th>result</th><th>phases (last run)</th><th>recent runs</th>"
        f"<th>last failure</th></tr></thead><tbody>{_probe_rows(snap, state, history, now)}</tbody></table>"
        '<h2>Certificates</h2><table id="certificates"><thead><tr><th>probe</th><th>endpoint</th>'
        "<th>protocol</th><th>days left</th><th>earliest expiry</th><th>verified</th><th>TLS</th></tr>"
        f"</thead><tbody>{_cert_rows(snap, now)}</tbody></table>"
        '<h2>TLS scan</h2><table id="tls-scan"><thead><tr><th>probe</th><th>endpoint</th>'
        "<th>protocols accepted</th><th>weak classes accepted</th><th>forward secrecy</th><th>chain</th>"
        "<th>OCSP staple</th><th>scanned</th><th>connections</th></tr>"
        f"</thead><tbody>{_scan_rows(snap, now)}</tbody></table>"
        f'<h2>Recent failures</h2><div id="failures">{_failures(history.failures())}</div>'
        '<h2 id="probe">/probe</h2><p>One TLS check of any target, as Prometheus would scrape it; with '
        "debug the answer is the masked dialogue and the metrics as text.</p>"
        f"{_probe_form(modules)}</body></html>\n"
    )
