"""The reports kind: the domain's TLS-RPT (RFC 8460) and DMARC aggregate (RFC 7489 appendix C) reports,
read from the mailbox their ``rua`` points at (section ``reports``). Read-only (EXAMINE, BODY.PEEK) unless
``move_to`` is given; each report counted once across restarts in a state file of its own
(``<state_dir>/reports-<name>.json``); hostile attachments refused within bounds (see docs/inbound.md)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import Metric

from exporter.config import Config, LoadedConfig, ReportsConfig, load_endpoint_secrets, state_dir
from exporter.metrics.reports import REPORTS_OUTCOMES, reports_families
from exporter.registry import Kind, RunEnv, Verdict
from exporter.run.results import ProbeStats, RunResult
from exporter.run.settings import endpoint_of
from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSettings
from probes.context import ProbeContext
from probes.wire.framing import ReadLimits
from probes.wire.net import Endpoint

if TYPE_CHECKING:  # the report parsers (defusedxml, zip, gzip) load with the kind's first entry
    from probes.reports import ReportsResult, ReportsSettings

log = structlog.get_logger("mailcanary.reports")

# The detail of each entry's last run that read its state: a run that fails later (the mailbox is down)
# or is cut short keeps exporting the counters, which are true whatever the mailbox does now.
_LAST: dict[str, ReportsResult] = {}
STEPS = 60  # the deadline when no timeout is set: this many IMAP command timeouts


def _credentials(loaded: LoadedConfig, entry: ReportsConfig) -> Credentials:
    ep = entry.imap
    assert ep.username is not None
    source = loaded.token_source(entry, "imap")
    if source is not None:
        assert ep.oauth is not None
        return Credentials(ep.username, token_source=source, mechanism=ep.oauth.mechanism)
    return Credentials(ep.username, loaded.password(entry.name, "imap"))


def reports_settings(entry: ReportsConfig, env: RunEnv) -> ReportsSettings:
    """A ``reports`` entry as the probe library's settings."""
    from probes.reports import Limits, ReportsSettings, Rules

    ep = entry.imap
    senders = tuple(
        (name, tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))
        for name, cidrs in entry.senders.items()
    )
    return ReportsSettings(
        name=entry.name,
        imap=IMAPSettings(
            endpoint=endpoint_of(ep, "imap"),
            credentials=_credentials(env.loaded, entry),
            allow_plaintext_auth=ep.allow_plaintext_auth,
            mailbox=entry.folders[0],
            timeout=ep.timeout,
            use_idle=False,
            limits=ReadLimits(ep.max_line_bytes, ep.max_line_bytes, ep.max_message_bytes),
            quota=False,
        ),
        folders=tuple(entry.folders),
        kinds=frozenset(entry.kinds),
        rules=Rules(
            domains=tuple(entry.domains),
            senders=senders,
            mx_hosts=tuple(entry.mx_hosts),
            max_orgs=entry.max_orgs,
            window=entry.max_age,
        ),
        limits=Limits(
            max_attachment_bytes=entry.max_attachment_bytes,
            max_decompressed_bytes=entry.max_decompressed_bytes,
            max_ratio=entry.max_ratio,
            max_records=entry.max_records,
        ),
        state_path=state_dir(env.loaded.config) / f"reports-{entry.name}.json",
        max_message_bytes=ep.max_message_bytes,
        max_messages=entry.max_messages,
        move_to=entry.move_to,
        top_unknown=entry.top_unknown,
        unknown_threshold=entry.unknown_threshold,
        slots=env.slots,
    )


async def probe(settings: ReportsSettings, ctx: ProbeContext) -> ReportsResult:
    """The one probe signature over the library's reader; its events become one log line each."""
    from probes.reports import probe_reports

    result = await probe_reports(settings, ctx.recorder)
    _LAST[settings.name] = result
    for event in result.events:
        (log.warning if event.warning else log.info)(event.name, probe=settings.name, **event.fields)
    if result.top_unknown and any(c.unknown_messages for c in result.counted):
        log.warning(
            "dmarc_unknown_sources",
            probe=settings.name,
            top=[{"address": ip, "messages": n} for ip, n in result.top_unknown],
            distinct=len(result.state.unknown),
        )
    return result


def judge(result: ReportsResult | None, reason: str, message: str) -> Verdict:
    """The run succeeds when the mailbox was read; bad reports are counted, never a failed run (one
    hostile attachment must not page anyone: mailcanary_reports_errors_total says it)."""
    if result is None:
        return Verdict(reason, message)
    if result.failure is not None:
        return Verdict(result.failure[0], result.failure[1], detail=result)
    return Verdict("success", summary(result), detail=result)


def summary(result: ReportsResult) -> str:
    kinds = Counter(c.kind for c in result.counted)
    text = f"{len(result.counted)} reports counted (tlsrpt {kinds['tlsrpt']}, dmarc {kinds['dmarc']})"
    skipped, errors = sum(result.skipped.values()), sum(result.errors.values())
    if skipped:
        text += f", {skipped} skipped"
    if errors:
        text += f", {errors} unreadable"
    if result.backlog:
        text += f", {result.backlog} left for the next run"
    return text


def _detail(run: RunResult) -> ReportsResult | None:
    from probes.reports import ReportsResult

    return run.detail if isinstance(run.detail, ReportsResult) else None


def status_cell(run: RunResult) -> str:
    """This run's counts and the top unknown DMARC sources (the page is where an address may appear)."""
    result = _detail(run)
    if result is None:
        return "-"
    cell = summary(result)
    if result.top_unknown:
        top = ", ".join(f"{ip} ({n})" for ip, n in result.top_unknown[:5])
        cell += f"; unknown senders: {top}"
    return cell


def report_detail(run: RunResult) -> list[str]:
    """``mailcanary probe``: what this run counted, one line per report, then what was skipped and why."""
    from probes.reports import shown

    result = _detail(run)
    if result is None:
        return []
    lines = [f"  {summary(result)}"]
    for c in result.counted[:50]:
        if c.kind == "tlsrpt":
            what = f"{c.sessions_ok} successful, {c.sessions_failed} failed sessions"
        else:
            what = (
                f"{c.messages} messages, {c.failing_messages} failing DMARC, "
                f"{c.unknown_messages} from unknown senders"
            )
        lines.append(f"  {c.kind} {c.org} {shown(c.report_id)}: {what}")
    if len(result.counted) > 50:
        lines.append(f"  ... and {len(result.counted) - 50} more reports")
    for (kind, reason), n in sorted(result.skipped.items()):
        lines.append(f"  skipped: {n} {kind} ({reason})")
    for (kind, reason), n in sorted(result.errors.items()):
        lines.append(f"  unreadable: {n} {kind} ({reason}; see the report_error log lines)")
    for ip, n in result.top_unknown:
        lines.append(f"  unknown sender: {ip} ({n} messages in the window)")
    return lines


def families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    for gone in set(_LAST) - set(snap):  # removed entries: no stale series, no unbounded dict
        _LAST.pop(gone, None)

    def last(name: str) -> ReportsResult | None:
        st = snap.get(name)
        found = _detail(st.last) if st is not None and st.last is not None else None
        return found or _LAST.get(name)

    return reports_families(snap, names, last)


def load(loaded: LoadedConfig, entry: ReportsConfig, where: str, environ: dict[str, str]) -> list[str]:
    """Read the mailbox's password or OAuth secrets now (a missing one is a config error, not a failed
    run later)."""
    return load_endpoint_secrets(loaded, entry.name, "imap", f"{where}.imap", entry.imap, environ)


def _deadline(entry: ReportsConfig, cfg: Config) -> float:
    return entry.timeout if entry.timeout is not None else entry.imap.timeout * STEPS


def _sessions(entry: ReportsConfig) -> list[tuple[Endpoint, str, int | None]]:
    return [(endpoint_of(entry.imap, "imap"), "imap", entry.imap.max_sessions)]


KIND = Kind(
    name="reports",
    section="reports",
    model=ReportsConfig,
    settings=reports_settings,
    probe=probe,
    deadline=_deadline,
    outcomes=REPORTS_OUTCOMES,
    families=families,
    noun="reports mailbox",
    plural="reports mailboxes",
    judge=judge,
    status=status_cell,
    sessions=_sessions,
    load=load,
    secret_sides=("imap",),
    done="report mailboxes read",
    claims=lambda run: _detail(run) is not None,
    report_detail=report_detail,
)
