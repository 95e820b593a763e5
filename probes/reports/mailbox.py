"""Reading the mailbox where ``rua`` reports arrive: one IMAP session, each folder EXAMINEd (read-only:
no flag, not even \\Seen, can change; BODY.PEEK besides), new UIDs since the folder's cursor and within the
age window, one bounded FETCH per message, each report counted once into the state file.

A bad mail or report is counted, described in one event, and skipped; it never stops the others. Only an
explicit ``move_to`` changes the mailbox: reports read (counted or already counted) are moved there with
UID MOVE, where the server offers MOVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from probes.clients.imap import IMAPSession, IMAPSettings
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.reports.dmarc import DMARCReport, parse_dmarc
from probes.reports.state import Counted, ReportState, Rules, digest, load_state, save_state
from probes.reports.tlsrpt import TLSReport, parse_tlsrpt
from probes.reports.unpack import Attachment, Limits, ReportError, ReportKind, attachments
from probes.wire.slots import ServerSlots, maybe_session

_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SKIP_REASONS: Final[tuple[str, ...]] = (
    "duplicate",  # counted before (same kind, org and report id, same contents)
    "changed_duplicate",  # counted before, now with other contents (the first is kept; logged)
    "too_old",  # the report's date range ended before the age window
    "kind_disabled",  # a report of a kind the entry does not read
    "not_a_report",  # a mail with no report attachment
)
LOCK_POLL: Final = 0.05
SEARCH_RANGE: Final = 4000  # UIDs per SEARCH: at most 44 KB of reply, under the 64 KiB line cap


@dataclass(frozen=True)
class ReportsSettings:
    name: str
    imap: IMAPSettings
    folders: tuple[str, ...]
    kinds: frozenset[str]
    rules: Rules
    limits: Limits
    state_path: Path
    max_message_bytes: int = 10 * 1024 * 1024
    max_messages: int = 500  # read per run; the rest wait for the next run (backlog)
    move_to: str | None = None
    top_unknown: int = 10
    unknown_threshold: int = 100  # only carried to the metrics (the alert compares with it)
    slots: ServerSlots | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Event:
    """One log line for the daemon to write: an event name and its fields (no report content beyond
    ids, org names, counts and fixed words; never a secret)."""

    name: str
    fields: dict[str, Any]
    warning: bool = True


@dataclass
class ReportsResult:
    """One run: the state after it (the counters' totals), what this run counted and skipped."""

    state: ReportState
    counted: list[Counted] = field(default_factory=list)
    skipped: Counter[tuple[str, ...]] = field(default_factory=Counter)  # this run: (kind, reason)
    errors: Counter[tuple[str, ...]] = field(default_factory=Counter)  # this run: (kind, reason)
    messages: int = 0  # mails read this run
    backlog: int = 0  # mails left for a later run (max_messages)
    moved: int = 0
    events: list[Event] = field(default_factory=list)
    top_unknown: list[tuple[str, int]] = field(default_factory=list)
    state_problem: str | None = None
    unknown_threshold: int = 100
    failure: tuple[str, str] | None = None  # (reason, message) of a run that could not read the mailbox


def imap_day(when: float) -> str:
    """An RFC 3501 date (``7-Dec-2026``) in UTC, locale-independent."""
    t = time.gmtime(when)
    return f"{t.tm_mday}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year}"


def shown(text: str, limit: int = 128) -> str:
    """Text from a report (an org name, an id, an MX name) as a log value: printable characters only,
    bounded, so a hostile report cannot forge log lines or flood them."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def sniff(att: Attachment) -> ReportKind | None:
    """The kind the decompressed content says (JSON object: TLS-RPT, XML: DMARC), else the media type's."""
    head = att.data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"{"):
        return "tlsrpt"
    if head.startswith(b"<"):
        return "dmarc"
    return att.hint


def ingest(
    raw: bytes, state: ReportState, st: ReportsSettings, res: ReportsResult, now: float, where: str
) -> bool:
    """Count the reports of one mail into ``state``; False if nothing in it was a readable report
    (counted as an error or a skip). ``where`` names the mail in events (folder and UID)."""

    def error(kind: str, reason: str, text: str) -> None:
        state.errors[(kind, reason)] += 1
        res.errors[(kind, reason)] += 1
        res.events.append(
            Event("report_error", {"mail": where, "kind": kind, "reason": reason, "error": text})
        )

    def skip(kind: str, reason: str, **extra: Any) -> None:
        state.skipped[(kind, reason)] += 1
        res.skipped[(kind, reason)] += 1
        if reason == "changed_duplicate":
            res.events.append(Event("report_resent_changed", {"mail": where, "kind": kind, **extra}))

    try:
        found = attachments(raw, st.limits)
    except ReportError as exc:
        error(exc.kind, exc.reason, str(exc))
        return False
    if not found:
        skip("unknown", "not_a_report")
        return False
    read = False
    for att in found:
        kind = sniff(att)
        if kind is None:
            error("unknown", "bad_report", f"{shown(att.media_type, 64)} attachment is neither JSON nor XML")
            continue
        if kind not in st.kinds:
            skip(kind, "kind_disabled")
            continue
        try:
            report: TLSReport | DMARCReport = (
                parse_tlsrpt(att.data, st.limits) if kind == "tlsrpt" else parse_dmarc(att.data, st.limits)
            )
        except ReportError as exc:
            error(kind, exc.reason, str(exc))
            continue
        body = digest(att.data)
        why = state.check(kind, report.org, report.report_id, report.end, body, now, st.rules.window)
        ids = {"org": shown(report.org), "report_id": shown(report.report_id)}
        if why is not None:
            skip(kind, why, **ids)
            read = read or why != "too_old"
            continue
        if isinstance(report, TLSReport):
            done = state.add_tls(report, st.rules, now)
        else:
            done = state.add_dmarc(report, st.rules, now)
        state.remember(kind, report.org, report.report_id, report.end, body)
        res.counted.append(done)
        read = True
        for domain, summary, details in done.mismatches:
            res.events.append(
                Event(
                    "tlsrpt_summary_mismatch",
                    {**ids, "domain": shown(domain), "summary_failed": summary, "details_failed": details},
                )
            )
        if done.unlisted_mx:
            res.events.append(
                Event(
                    "tlsrpt_unlisted_mx",
                    {**ids, "mx": [shown(m) for m in sorted(done.unlisted_mx)[:10]]},
                    warning=False,
                )
            )
    return read


async def _new_uids(
    session: IMAPSession, since: int, day: str, budget: int, res: ReportsResult
) -> tuple[list[int], bool]:
    """Up to ``budget`` UIDs from ``since`` within the window, searched in ranges of
    :data:`SEARCH_RANGE` UIDs up to UIDNEXT, so no SEARCH reply outgrows a line (a first run over a
    folder of years of mail); what is over the budget is counted as backlog. True with them when
    nothing was left over and every UID below UIDNEXT was looked at (the cursor may then move to
    UIDNEXT - 1: the rest arrived before the window)."""
    top = session.uidnext
    if top is None:  # no UIDNEXT (RFC 3501 requires it): one search to the end
        found = await session.search_since(since, day)
        res.backlog += max(len(found) - budget, 0)
        return found[:budget], False
    take: list[int] = []
    over = 0
    for start in range(since, top, SEARCH_RANGE):
        found = await session.search_since(start, day, min(start + SEARCH_RANGE, top) - 1)
        room = budget - len(take)
        take += found[:room]
        over += max(len(found) - room, 0)
    res.backlog += over
    return take, over == 0


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    """The state file's lock (flock on ``<state>.lock``): one reader of a state at a time (the daemon and
    a ``mailcanary probe`` of the same entry), waited for without blocking the event loop."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # closing drops the lock


async def probe_reports(st: ReportsSettings, recorder: Recorder) -> ReportsResult:
    """One run over every folder; the state is saved whatever happens after it was loaded (a failed or
    cut-short run keeps what it counted, with the cursor of the last mail it finished)."""
    async with _locked(st.state_path):
        state, problem = await asyncio.to_thread(load_state, st.state_path)
        res = ReportsResult(state=state, state_problem=problem, unknown_threshold=st.unknown_threshold)
        if problem is not None:
            res.events.append(
                Event("reports_state_unreadable", {"file": str(st.state_path), "problem": problem})
            )
        try:
            await _read(st, recorder, state, res)
        except ProbeError as exc:  # the counters are still worth exporting: the state is whole
            res.failure = (exc.reason, exc.message)
        finally:
            state.prune(time.time(), st.rules.window)
            try:
                await asyncio.shield(asyncio.to_thread(save_state, st.state_path, state))
            except OSError as exc:  # full disk, read-only: this run's counts are counted again next run
                why = exc.strerror or type(exc).__name__
                res.events.append(
                    Event("reports_state_not_saved", {"file": str(st.state_path), "error": why})
                )
                res.failure = ("internal", f"cannot save {st.state_path}: {why}")
        res.state = copy.deepcopy(state)  # what the families render: never changed by a later run
        res.top_unknown = state.top_unknown(st.top_unknown)
        return res


async def _read(st: ReportsSettings, recorder: Recorder, state: ReportState, res: ReportsResult) -> None:
    now = time.time()
    day = imap_day(now - st.rules.window)
    budget = st.max_messages
    session = IMAPSession(st.imap, recorder)
    async with maybe_session(st.slots, st.imap.endpoint, "imap", recorder):
        try:
            if st.imap.endpoint.tls_mode == "none" and not st.imap.allow_plaintext_auth:
                raise ProbeError("refusing IMAP LOGIN over an unencrypted connection", reason="config")
            await session.secure()
            with recorder.phase("receive_login"):
                await session.login()
            for folder in st.folders:
                with recorder.phase("reports_read"):
                    budget = await _folder(st, session, folder, day, budget, state, res, now)
        finally:
            await session.close()


async def _folder(
    st: ReportsSettings,
    session: IMAPSession,
    folder: str,
    day: str,
    budget: int,
    state: ReportState,
    res: ReportsResult,
    now: float,
) -> int:
    if st.move_to is not None:
        await session.select(folder)  # read-write: moving needs it (nothing else is changed)
        validity = session.uidvalidity
    else:
        validity = await session.examine(folder)
    cursor = state.cursor.get(folder)
    since = cursor[1] + 1 if cursor is not None and validity is not None and cursor[0] == validity else 1
    take, complete = await _new_uids(session, since, day, budget, res)
    moved: list[int] = []
    for uid in take:
        got = await session.fetch([uid], "BODY.PEEK[]", cap=st.max_message_bytes)
        where = f"{folder}:{uid}"
        if uid in got.skipped:
            state.errors[("unknown", "too_large")] += 1
            res.errors[("unknown", "too_large")] += 1
            res.events.append(
                Event(
                    "report_error",
                    {
                        "mail": where,
                        "kind": "unknown",
                        "reason": "too_large",
                        "error": f"mail over max_message_bytes ({st.max_message_bytes}), not read",
                    },
                )
            )
        elif uid in got.data:
            res.messages += 1
            if ingest(got.data[uid], state, st, res, now, where):
                moved.append(uid)
        if validity is not None:
            state.cursor[folder] = (validity, uid)
    top = session.uidnext
    if complete and validity is not None and top is not None and top - 1 >= since:
        state.cursor[folder] = (validity, top - 1)  # everything below UIDNEXT was looked at
    if st.move_to is not None and moved:
        if await session.move(moved, st.move_to):
            res.moved += len(moved)
        else:
            res.events.append(
                Event(
                    "reports_not_moved",
                    {"folder": folder, "reason": "the server offers neither MOVE nor UIDPLUS"},
                )
            )
    return budget - len(take)
