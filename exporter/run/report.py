"""What ``mailcanary probe`` says about a round trip beyond its delivery: placement, verdict, bounces,
hops, quota and sync, one line each, and the numeric ones as Nagios perfdata.

The one-shot report says what the daemon says (metrics, log line), from the same ``RunResult``. A check
that was not configured, not applicable, skipped or not reached says so in words: a missing fact never
reads as a passed check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from exporter.config import RoundTripConfig
from exporter.run.results import RunResult
from probes.receipt.verdict import REQUIRED_METHODS

# The daemon's MailcanaryMailboxQuotaNearlyFull threshold, given as the warn value of the ratio perfdata.
QUOTA_WARN_RATIO = 0.9


def is_roundtrip(r: RunResult, roundtrips: Mapping[str, RoundTripConfig]) -> bool:
    return r.probe in roundtrips or r.delivery is not None or r.placement is not None


def warning(r: RunResult) -> str | None:
    """Why a successful round trip is a WARNING: the canary was filed as junk. The daemon's
    MailcanaryCanariesInSpam (severity warning) fires on one such canary; the delivery itself worked,
    so it is not CRITICAL."""
    if r.success and r.placement == "junk":
        return f"{r.probe}: canary delivered into the junk folder{_folder(r.receiver.get('junk_folder'))}"
    return None


def _folder(name: object) -> str:
    return f" {str(name)!r}" if isinstance(name, str) else ""


def _not_reached(r: RunResult) -> str:
    return f"not read: the run ended {r.reason} before the canary was read"


def fact_lines(r: RunResult, probe: RoundTripConfig | None) -> list[str]:
    """One line each: placement, verdict, bounces, hops, quota, sync (indented like the report)."""
    return [
        f"  placement: {placement_text(r, probe)}",
        f"  verdict: {verdict_text(r, probe)}",
        f"  bounces: {bounces_text(r, probe)}",
        f"  hops: {hops_text(r)}",
        f"  quota: {quota_text(r, probe)}",
        f"  sync: {sync_text(r, probe)}",
    ]


def placement_text(r: RunResult, probe: RoundTripConfig | None) -> str:
    rc = probe.receive if probe is not None else None
    if r.placement is None:
        return "unknown: the canary was not found" if r.success else _not_reached(r)
    if r.placement == "junk":
        return f"junk (filed into the junk folder{_folder(r.receiver.get('junk_folder'))})"
    if r.placement == "other":
        return f"other (found in{_folder(r.receiver.get('found_folder'))} by the all-folders walk)"
    if rc is None:
        return "inbox"
    if rc.protocol == "pop3":
        return "inbox (POP3 sees only the inbox)"
    if not rc.junk:
        return "inbox (the junk folder is not watched: receive.junk is off)"
    if r.receiver.get("junk_folder") is None:
        return "inbox (receive.junk is on, but the server has no junk folder: junk not watched)"
    return f"inbox (junk folder{_folder(r.receiver.get('junk_folder'))} watched too)"


def verdict_text(r: RunResult, probe: RoundTripConfig | None) -> str:
    rc = probe.receive if probe is not None else None
    v = r.verdict
    if v is None:
        return _not_reached(r) if not r.success else "not read"
    trusted = bool(rc.trusted_authserv_ids) if rc is not None else bool(v.auth)
    if trusted:
        methods = [*REQUIRED_METHODS, *(m for m in sorted(v.auth) if m not in REQUIRED_METHODS)]
        auth = " ".join(f"{m}={v.auth.get(m, 'missing')}" for m in methods)
        auth += f" (from {v.authserv_id})" if v.authserv_id else " (no trusted Authentication-Results field)"
    elif rc is None:
        auth = "no trusted authentication results"
    else:
        auth = "authentication not read (receive.trusted_authserv_ids not set)"
    if v.ignored:
        auth += f", {v.ignored} untrusted or unreadable Authentication-Results ignored"
    if rc is not None and not rc.spam_headers:
        spam = "spam score not read (receive.spam_headers is off)"
    elif v.scores:
        spam = "spam score " + ", ".join(f"{e} {s:g}" for e, s in sorted(v.scores.items()))
    else:
        spam = "no spam score header"
    return f"{auth}; {spam}"


def bounces_text(r: RunResult, probe: RoundTripConfig | None) -> str:
    watched = probe is None or probe.watches_bounces_here or probe.bounce_receive is not None
    off = r.receiver.get("bounce_watch")
    if not watched:
        return "not watched (sender differs from recipient and no bounce_receive is set)"
    if isinstance(off, str):
        return f"not watched ({off})"
    if not r.bounces:
        return "none seen this run" if r.success else f"none seen before the run ended {r.reason}"
    return f"{len(r.bounces)} verified this run: {', '.join(r.bounces)}"


def hops_text(r: RunResult) -> str:
    path = r.path
    if path is None:
        return _not_reached(r) if not r.success else "not read"
    text = f"{path.count} Received field{'' if path.count == 1 else 's'}"
    text += " (more not read)" if path.truncated else ""
    if path.total is not None:
        text += f", {path.total:g}s from first to last stamp"
    delays = [(d, i + 2) for i, d in enumerate(path.delays()) if d is not None]
    if delays:
        slowest, hop = max(delays)
        text += f", slowest hop {hop} ({slowest:g}s after hop {hop - 1})"
    return text


def quota_text(r: RunResult, probe: RoundTripConfig | None) -> str:
    rc = probe.receive if probe is not None else None
    if rc is not None and rc.protocol == "pop3":
        return "not applicable (POP3 has no quota command)"
    if rc is not None and not rc.quota:
        return "off (receive.quota is off)"
    if r.quota_error is not None:
        return f"not read ({r.quota_error})"
    if r.quota is None:
        if r.success and rc is not None:
            return "not read: the server does not offer QUOTA"
        return "not read" if r.success else f"not read (the run ended {r.reason} first)"
    if not r.quota:
        return "no limit set"
    parts = []
    for resource, (used, limit) in sorted(r.quota.items()):
        share = f" ({100 * used / limit:.1f} %)" if limit > 0 else ""
        unit = " bytes" if resource == "storage" else ""
        parts.append(f"{resource} {used} of {limit}{unit}{share}")
    return ", ".join(parts)


def sync_text(r: RunResult, probe: RoundTripConfig | None) -> str:
    rc = probe.receive if probe is not None else None
    skipped = r.receiver.get("sync_skipped")
    if rc is not None and rc.protocol == "pop3":
        return "not applicable (POP3 has no flags)"
    if rc is not None and (rc.sync is None or not rc.sync.enabled):
        return "off (receive.sync not set)"
    if r.sync_seconds is not None:
        text = f"the second session saw the flag {r.sync_seconds:.3f}s after it was set"
        if r.sync_arrival is not None:
            text += f", the canary {r.sync_arrival:.3f}s after acceptance"
        return text
    if isinstance(skipped, str) and skipped:
        return f"skipped: the canary was found in {skipped}, not the inbox the second session watches"
    if r.reason == "sync_timeout":
        return "failed (sync_timeout): the second session did not show the flag in time"
    if not r.success:
        return f"not done (the run ended {r.reason} first)"
    return "not run"


def perfdata(r: RunResult, probe: RoundTripConfig | None) -> list[str]:
    """Numeric facts beyond delivery and sync (which the report's caller already gives); only facts
    read this run (a bounce count only where bounces are watched)."""
    p = r.probe
    out: list[str] = []
    if r.path is not None:
        out.append(f"'{p}_hops'={r.path.count};;;0")
        if r.path.total is not None:
            out.append(f"'{p}_path'={r.path.total:g}s")
    if r.verdict is not None:
        out += [f"'{p}_spam_{e}'={s:g}" for e, s in sorted(r.verdict.scores.items()) if math.isfinite(s)]
    watched = probe is not None and (probe.watches_bounces_here or probe.bounce_receive is not None)
    if r.bounces or (watched and r.success and not isinstance(r.receiver.get("bounce_watch"), str)):
        out.append(f"'{p}_bounces'={len(r.bounces)};;;0")
    for resource, (used, limit) in sorted((r.quota or {}).items()):
        unit = "B" if resource == "storage" else ""
        top = str(limit) if limit > 0 else ""
        out.append(f"'{p}_quota_{resource}'={used}{unit};;;0;{top}")
        if limit > 0:
            out.append(f"'{p}_quota_{resource}_ratio'={used / limit:.4f};{QUOTA_WARN_RATIO};;0;1")
    return out
