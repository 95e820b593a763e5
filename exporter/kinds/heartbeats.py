"""Heartbeats: mail that others send and that must keep coming (section ``heartbeats``), a dead-man's
switch read from the mailbox where the mail really lands.

A run reads the heartbeat's mailbox (one IMAP session serves every heartbeat on the same mailbox: the
group's runs share one scan at a time, and a scan younger than REUSE seconds is not repeated), counts
what matched into the heartbeats' windows (:mod:`probes.heartbeats`), keeps that in
``state_dir/heartbeats/`` (one file per mailbox, :mod:`exporter.state.heartbeats`) and judges the
heartbeat's state: ``ok`` is success; ``late``, ``missing`` and ``failed`` are the outcomes
``heartbeat_late``/``_missing``/``_failed``. A mailbox that cannot be read fails the run with the
reading's reason (``receive_*``, ``timeout``...) and the state stays what the last good read showed: a
read that failed never turns into ``missing``.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.config import LoadedConfig, load_endpoint_secrets
from exporter.config.heartbeats import HeartbeatConfig, MatchConfig
from exporter.metrics.family import FamilySpec, counter, counts, gauge, one_of, render, value
from exporter.metrics.run import run_families
from exporter.registry import Kind, RunEnv, Verdict
from exporter.run.results import HEARTBEAT_OUTCOMES, ProbeStats, RunResult
from exporter.run.settings import endpoint_of
from exporter.state.ledger import Ledger
from probes import heartbeats as lib  # a lazy face: the mailbox scan and window math load with an entry
from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSettings
from probes.context import ProbeContext
from probes.errors import ProbeError
from probes.wire.framing import ReadLimits
from probes.wire.net import Endpoint

if TYPE_CHECKING:
    from exporter.state.heartbeats import HeartbeatBook, MailboxState
    from probes.heartbeats import Cursor, MailboxSettings, Match, Rule, ScanStats, Schedule, Watched

REUSE = 1.0  # seconds: a scan of the mailbox this recent serves the group's other heartbeats
SIDE = "imap"

_BOOKS: weakref.WeakKeyDictionary[Ledger, HeartbeatBook] = weakref.WeakKeyDictionary()


def book_for(env: RunEnv) -> HeartbeatBook:
    """The daemon's heartbeat state (one per ledger, i.e. per daemon or ``mailcanary probe``)."""
    found = _BOOKS.get(env.ledger)
    if found is None:
        path = env.ledger.path.parent / "heartbeats" if env.ledger.path is not None else None
        from exporter.state.heartbeats import HeartbeatBook

        found = _BOOKS[env.ledger] = HeartbeatBook(path, env.ledger.health)
    return found


def mailbox_key(hb: HeartbeatConfig) -> str:
    """Heartbeats with the same key share one session (endpoint and login)."""
    ep = endpoint_of(hb.imap, "imap")
    return f"{hb.imap.username}@{ep.address}"


def schedule_of(hb: HeartbeatConfig) -> Schedule:
    return lib.Schedule(grace=hb.grace, every=hb.every, cron=hb.cron, timezone=hb.timezone)


def _rule(m: MatchConfig) -> Rule:
    return lib.Rule(
        sender=m.from_address,
        sender_domain=m.from_domain,
        subject=re.compile(m.subject) if m.subject is not None else None,
        headers=tuple((k, re.compile(v)) for k, v in m.headers.items()),
        body=m.body,
        body_regex=re.compile(m.body_regex) if m.body_regex is not None else None,
        attachment=m.attachment,
        min_size=m.min_size,
        max_size=m.max_size,
    )


def watched(hb: HeartbeatConfig) -> Watched:
    rules = lib.Rules(
        match=_rule(hb.match), fail_if=tuple(_rule(r) for r in hb.fail_if), body_bytes=hb.body_bytes
    )
    return lib.Watched(hb.name, tuple(hb.folders), rules, hb.mark_keyword, hb.move_to)


def _credentials(loaded: LoadedConfig, hb: HeartbeatConfig) -> Credentials:
    assert hb.imap.username is not None
    source = loaded.token_source(hb, SIDE)
    if source is not None:
        assert hb.imap.oauth is not None
        return Credentials(hb.imap.username, token_source=source, mechanism=hb.imap.oauth.mechanism)
    return Credentials(hb.imap.username, loaded.password(hb.name, SIDE))


@dataclass(frozen=True)
class HeartbeatSettings:
    name: str
    key: str  # the mailbox
    mailbox: MailboxSettings  # every heartbeat on it
    specs: dict[str, tuple[Schedule, int]]  # the group's schedules and expected counts
    book: HeartbeatBook
    budget: float  # seconds the scan may take
    boxes: tuple[str, ...] = ()  # every configured mailbox (the rest is forgotten)


def heartbeat_settings(hb: HeartbeatConfig, env: RunEnv) -> HeartbeatSettings:
    loaded = env.loaded
    cfg = loaded.config
    everyone: list[HeartbeatConfig] = list(cfg.heartbeats)
    key = mailbox_key(hb)
    group = [h for h in everyone if mailbox_key(h) == key]
    limits = ReadLimits(
        hb.imap.max_line_bytes, hb.imap.max_header_bytes, max(h.body_bytes for h in group) + 1024
    )
    imap = IMAPSettings(
        endpoint=endpoint_of(hb.imap, "imap"),
        credentials=_credentials(loaded, hb),
        allow_plaintext_auth=hb.imap.allow_plaintext_auth,
        mailbox=hb.folders[0],
        timeout=hb.imap.timeout,
        use_idle=False,
        limits=limits,
        quota=False,
    )
    return HeartbeatSettings(
        name=hb.name,
        key=key,
        mailbox=lib.MailboxSettings(
            imap=imap,
            heartbeats=tuple(watched(h) for h in group),
            slots=env.slots,
            max_messages=max(h.max_messages for h in group),
        ),
        specs={h.name: (schedule_of(h), h.expect) for h in group},
        book=book_for(env),
        budget=max(cfg.timeout_of(hb) - 1.0, 1.0),
        boxes=tuple(dict.fromkeys(mailbox_key(h) for h in everyone)),
    )


@dataclass(frozen=True)
class HeartbeatReport:
    """A heartbeat as its run left it (what /metrics, the status page and ``mailcanary probe`` show)."""

    name: str
    state: str  # ok / late / missing / failed (as of ``evaluated_at``)
    evaluated_at: float | None  # the last good read of the mailbox (None: never read)
    window_start: float
    deadline: float
    grace: float
    count: int
    expect: int
    last_seen: float | None
    matched_total: int
    failed_total: int
    windows: dict[str, int] = field(default_factory=dict)
    last_closed: str | None = None
    scanned: bool = False  # this run read the mailbox (else a scan of the group's was fresh enough)
    read: int = 0
    foreign: int = 0
    backlog: int = 0
    body_bytes: int = 0
    idle: bool | None = None  # the server offers IDLE
    reused: bool = False  # the session kept in IDLE since the last read served this one (no login)
    quiet: bool = False  # ... and nothing was pushed: no search
    action_errors: tuple[str, ...] = ()
    error_reason: str | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        if self.error_reason is not None:
            return self.error_reason
        return "success" if self.state == "ok" else f"heartbeat_{self.state}"


async def probe(s: HeartbeatSettings, ctx: ProbeContext) -> HeartbeatReport:
    """Read the group's mailbox (unless this process read it less than REUSE ago), count, judge."""
    book = s.book
    if s.boxes:
        book.prune(s.boxes)
    box = book.box(s.key)
    error: tuple[str, str] | None = None
    stats: ScanStats | None = None
    async with book.lock(s.key):
        try:
            async with asyncio.timeout(s.budget), box.locked():
                now = time.time()
                for name, (schedule, expect) in s.specs.items():
                    box.ensure(name, schedule, expect, now)
                box.prune(s.specs)
                if box.read_here is None or time.time() - box.read_here >= REUSE:
                    since = min(box.entries[n].heartbeat.window.start for n in s.specs)

                    async def commit(folder: str, cursor: Cursor, matches: list[Match]) -> list[Match]:
                        new = box.record(matches, s.specs)  # counted and saved before anything is done
                        await box.save()
                        return new

                    # IDLE is trusted only while no window of the group is due (see scan_mailbox)
                    due = any(now >= box.entries[n].heartbeat.window.deadline for n in s.specs)
                    stats = await lib.scan_mailbox(
                        s.mailbox,
                        box.cursors,
                        ctx.recorder,
                        commit,
                        since,
                        keeper=box.keeper,
                        trust_idle=not due,
                    )
                    box.last_read = box.read_here = time.time()
                await _judge_save(box, s)
        except TimeoutError:
            error = ("timeout", f"the mailbox was not read within {s.budget:g}s")
        except ProbeError as exc:
            error = (exc.reason, exc.message)
        if error is not None:
            now = time.time()
            for name, (schedule, expect) in s.specs.items():  # a first run that failed still has a window
                box.ensure(name, schedule, expect, now)
    entry = box.entries[s.name]
    schedule, expect = s.specs[s.name]
    hb = entry.heartbeat
    at = box.last_read
    state = hb.state(schedule, expect, at if at is not None else hb.window.start)
    w = hb.window
    return HeartbeatReport(
        name=s.name,
        state=state,
        evaluated_at=at,
        window_start=w.start,
        deadline=w.deadline,
        grace=schedule.grace,
        count=w.count,
        expect=expect,
        last_seen=hb.last_seen,
        matched_total=hb.matched_total,
        failed_total=hb.failed_total,
        windows=dict(hb.windows),
        last_closed=hb.last_closed,
        scanned=stats is not None,
        read=stats.read if stats else 0,
        foreign=stats.foreign if stats else 0,
        backlog=stats.backlog if stats else 0,
        body_bytes=stats.body_bytes if stats else 0,
        idle=stats.idle if stats else None,
        reused=stats.reused if stats else False,
        quiet=stats.quiet if stats else False,
        action_errors=tuple(stats.action_errors) if stats else (),
        error_reason=error[0] if error else None,
        error=error[1] if error else None,
    )


async def _judge_save(box: MailboxState, s: HeartbeatSettings) -> None:
    """Close the group's windows that are over as of the last good read, and save (under the lock)."""
    at = box.last_read
    if at is not None:
        for name, (schedule, expect) in s.specs.items():
            box.entries[name].heartbeat.advance(schedule, expect, at)
    await box.save()


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def judge(report: HeartbeatReport | None, reason: str, message: str) -> Verdict:
    if report is None:
        return Verdict(reason, message)
    outcome = report.outcome
    if report.error is not None:
        message = (
            f"mailbox not read: {report.error} (state {report.state} as of {_when(report.evaluated_at)})"
        )
    elif outcome == "success":
        message = "ok"
    elif report.state == "late":
        message = f"late: {report.count} of {report.expect} mails, due {_when(report.deadline)}"
    elif report.state == "missing":
        message = f"missing: a window closed with too few mails; last seen {_when(report.last_seen)}"
    else:
        message = f"failed: a failure report arrived (last seen {_when(report.last_seen)})"
    return Verdict(outcome, message, detail=report)


# --- metrics ---------------------------------------------------------------------------------------------


def _report(st: ProbeStats) -> HeartbeatReport | None:
    detail = st.last.detail if st.last is not None else None
    return detail if isinstance(detail, HeartbeatReport) else None


SPECS: list[FamilySpec[HeartbeatReport]] = [
    gauge(
        "mailcanary_heartbeat_state",
        "1 for the heartbeat's state (ok, late, missing, failed) as of the last good read, 0 for the others.",
        lambda r: one_of(r.state, lib.STATES),
        "state",
    ),
    gauge(
        "mailcanary_heartbeat_last_seen_timestamp_seconds",
        "Arrival (INTERNALDATE) of the last matching mail; absent until one was seen.",
        lambda r: value(r.last_seen),
    ),
    gauge(
        "mailcanary_heartbeat_deadline_timestamp_seconds",
        "When the open window's expected mail is due (late after it, missing after it plus grace).",
        lambda r: value(r.deadline),
    ),
    gauge(
        "mailcanary_heartbeat_grace_seconds",
        "Grace after each deadline before a short window counts as missing.",
        lambda r: value(r.grace),
    ),
    gauge("mailcanary_heartbeat_window_count", "Mails counted in the open window.", lambda r: value(r.count)),
    gauge("mailcanary_heartbeat_expected", "Mails a window expects.", lambda r: value(r.expect)),
    gauge(
        "mailcanary_heartbeat_read_timestamp_seconds",
        "When the mailbox was last read completely (the state is as of then).",
        lambda r: value(r.evaluated_at),
    ),
    counter(
        "mailcanary_heartbeat_matched",
        "Matching mails counted (each once, across restarts), failure reports included.",
        lambda r: value(r.matched_total),
    ),
    counter(
        "mailcanary_heartbeat_failed",
        "Matching mails that were failure reports (a fail_if rule matched).",
        lambda r: value(r.failed_total),
    ),
    counter(
        "mailcanary_heartbeat_windows",
        "Closed windows by result (ok, late: its mail came in the grace time, missing, failed).",
        lambda r: counts(r.windows, lib.RESULTS),
        "result",
    ),
]


def heartbeat_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """Per heartbeat: the run families (success is state ok and a good read), then its state."""
    families = run_families(
        snap,
        names,
        "heartbeat",
        "heartbeat run",
        "1 if the last run read the mailbox and the heartbeat is ok, else 0.",
        "Heartbeat runs by outcome (success, heartbeat_late/_missing/_failed, or why the mailbox "
        "was not read).",
        HEARTBEAT_OUTCOMES,
    )
    rows = [([name], r) for name in names if (r := _report(snap[name])) is not None]
    return [*families, *render(SPECS, rows, ["probe"])]


# --- the status page and mailcanary probe -------------------------------------------------------------


def status_cell(run: RunResult) -> str:
    r = run.detail
    if not isinstance(r, HeartbeatReport):
        return "-"
    return (
        f"{r.state}: {r.count} of {r.expect} in this window, due {_when(r.deadline)}; "
        f"last seen {_when(r.last_seen)}"
    )


def report_lines(run: RunResult) -> list[str]:
    r = run.detail
    if not isinstance(r, HeartbeatReport):
        return []
    lines = [
        f"  state: {r.state} (as of the read at {_when(r.evaluated_at)})",
        f"  window: {r.count} of {r.expect} mails since {_when(r.window_start)}, due {_when(r.deadline)}"
        f" (+{r.grace:g}s grace)",
        f"  last seen: {_when(r.last_seen)}; counted {r.matched_total}, failure reports {r.failed_total}",
        "  closed windows: " + ", ".join(f"{k} {r.windows.get(k, 0)}" for k in lib.RESULTS),
    ]
    if r.quiet:
        lines.append("  read: the session kept in IDLE since the last read; the server pushed nothing new")
    elif r.scanned:
        lines.append(
            f"  read: {r.read} new messages ({r.foreign} matching no heartbeat, left untouched)"
            + (f", {r.backlog} left for the next run" if r.backlog else "")
            + ("; the session kept in IDLE was used" if r.reused else "")
        )
    lines += [f"  action not done: {e}" for e in r.action_errors]
    return lines


def load(loaded: LoadedConfig, hb: HeartbeatConfig, where: str, environ: dict[str, str]) -> list[str]:
    """The mailbox's password or OAuth secrets now (a missing one is a config error, not a failed run)."""
    return load_endpoint_secrets(loaded, hb.name, SIDE, f"{where}.{SIDE}", hb.imap, environ)


def sessions(hb: HeartbeatConfig) -> list[tuple[Endpoint, str, int | None]]:
    return [(endpoint_of(hb.imap, "imap"), "imap", hb.imap.max_sessions)]


async def close(env: RunEnv) -> None:
    """The daemon stops (or ``mailcanary probe`` ends): drop the sessions kept in IDLE, free their slots."""
    book = _BOOKS.get(env.ledger)
    if book is not None:
        for box in book.boxes.values():
            await box.keeper.close()


KIND = Kind(
    name="heartbeat",
    section="heartbeats",
    model=HeartbeatConfig,
    settings=heartbeat_settings,
    probe=probe,
    deadline=lambda hb, cfg: cfg.timeout_of(hb),
    outcomes=HEARTBEAT_OUTCOMES,
    families=heartbeat_families,
    noun="heartbeat",
    plural="heartbeats",
    judge=judge,
    spec=lambda cfg, hb: (hb, cfg.timeout_of(hb)),
    status=status_cell,
    sessions=sessions,
    load=load,
    secret_sides=(SIDE,),
    done="heartbeats ok",
    claims=lambda run: isinstance(run.detail, HeartbeatReport),
    report_detail=report_lines,
    close=close,
)
