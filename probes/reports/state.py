"""What the reports kind remembers across runs and restarts, in one small JSON file of its own: the
reports already counted (kind + org + report id, never merged across orgs), the counters' totals (so a
report is counted exactly once and the counters go on after a restart), the org labels admitted, the
latest date range per org, the unknown DMARC sources and the IMAP cursor per folder.

Bounded: seen reports and unknown sources are pruned by the age window, orgs are capped (the rest are
``other``), every other key is a fixed label set. Written atomically (temporary file, fsync, rename,
directory fsync): a crash leaves the old file or the new one, never half of either, so a report and the
counts it added are committed together.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from probes.reports.dmarc import UNKNOWN, DMARCReport, Networks, classify
from probes.reports.tlsrpt import RESULT_LABELS, TLSReport

VERSION: Final = 1
MAX_SEEN: Final = 200_000  # report keys kept at most (oldest dropped first), whatever the window
MAX_UNKNOWN: Final = 1_000  # unknown source addresses kept (fewest messages dropped first)
MAX_STATE_BYTES: Final = 64 * 1024 * 1024
OTHER: Final = "other"
_LABEL_BAD = re.compile(r"[^a-z0-9._@+-]+")


def org_label(org: str) -> str:
    """A reporting organisation as a label value: lower case, runs of anything but letters, digits and
    ``. _ @ + -`` as one ``_``, at most 64 characters (``Google Inc.`` -> ``google_inc.``)."""
    return _LABEL_BAD.sub("_", org.strip().lower()).strip("_")[:64] or "unnamed"


def domain_label(domain: str, ours: tuple[str, ...]) -> str:
    """The configured domain ``domain`` is (or is a subdomain of), else ``other``."""
    d = domain.lower().rstrip(".")
    for o in ours:
        if d == o or d.endswith("." + o):
            return o
    return OTHER


@dataclass(frozen=True)
class Rules:
    """How a report becomes labels: our domains, known senders, listed MX hosts, the org cap and the age
    window (seconds)."""

    domains: tuple[str, ...]
    senders: Networks = ()
    mx_hosts: tuple[str, ...] = ()
    max_orgs: int = 50
    window: float = 14 * 86400


@dataclass
class Counted:
    """What one report added (for the log line and the one-shot report)."""

    kind: str
    org: str
    report_id: str
    begin: float
    end: float
    sessions_ok: int = 0
    sessions_failed: int = 0
    messages: int = 0
    failing_messages: int = 0  # DMARC: neither DKIM nor SPF aligned
    unknown_messages: int = 0
    mismatches: list[tuple[str, int, int]] = field(default_factory=list)  # (domain, summary, detail sum)
    unlisted_mx: set[str] = field(default_factory=set)  # receiving MX names no label was made for


def _key(kind: str, org: str, report_id: str) -> str:
    return f"{kind}\0{org}\0{report_id}"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass
class ReportState:
    seen: dict[str, tuple[float, str]] = field(default_factory=dict)  # key -> (end, digest)
    tls_sessions: Counter[tuple[str, ...]] = field(default_factory=Counter)  # domain, policy, org, result
    tls_failures: Counter[tuple[str, ...]] = field(default_factory=Counter)  # domain, policy, org, type
    tls_mx: Counter[tuple[str, ...]] = field(default_factory=Counter)  # domain, mx
    tls_mismatches: Counter[tuple[str, ...]] = field(default_factory=Counter)  # org
    dmarc_messages: Counter[tuple[str, ...]] = field(
        default_factory=Counter
    )  # domain, org, disp, dkim, spf, src
    ingested: Counter[tuple[str, ...]] = field(default_factory=Counter)  # kind
    skipped: Counter[tuple[str, ...]] = field(default_factory=Counter)  # kind, reason
    errors: Counter[tuple[str, ...]] = field(default_factory=Counter)  # kind, reason
    orgs: dict[str, list[str]] = field(default_factory=dict)  # kind -> org labels admitted, in order
    last: dict[tuple[str, str], tuple[float, float, float]] = field(
        default_factory=dict
    )  # (kind, org) -> (at, begin, end)
    policy: dict[str, tuple[str, str, int, float]] = field(
        default_factory=dict
    )  # domain -> (p, sp, pct, end)
    unknown: dict[str, tuple[int, float]] = field(default_factory=dict)  # ip -> (messages, last end)
    cursor: dict[str, tuple[int, int]] = field(default_factory=dict)  # folder -> (uidvalidity, last uid)

    # --- labels ----------------------------------------------------------------------------------------

    def org(self, kind: str, name: str, cap: int) -> str:
        """The org's label, admitted while fewer than ``cap`` are; ``other`` beyond."""
        label = org_label(name)
        admitted = self.orgs.setdefault(kind, [])
        if label in admitted:
            return label
        if len(admitted) < cap:
            admitted.append(label)
            return label
        return OTHER

    # --- once only -------------------------------------------------------------------------------------

    def check(
        self, kind: str, org: str, report_id: str, end: float, body: str, now: float, window: float
    ) -> str | None:
        """None if the report is to be counted; else the skip reason: ``too_old`` (ended before the
        window), ``duplicate`` (counted before), ``changed_duplicate`` (the same id and org, other
        contents: counted once, the first time)."""
        if end < now - window:
            return "too_old"
        found = self.seen.get(_key(kind, org, report_id))
        if found is None:
            return None
        return "duplicate" if found[1] == body else "changed_duplicate"

    def remember(self, kind: str, org: str, report_id: str, end: float, body: str) -> None:
        self.seen[_key(kind, org, report_id)] = (float(end), body)

    # --- counting --------------------------------------------------------------------------------------

    def add_tls(self, report: TLSReport, rules: Rules, now: float) -> Counted:
        org = self.org("tlsrpt", report.org, rules.max_orgs)
        done = Counted("tlsrpt", org, report.report_id, report.begin, report.end)
        for pol in report.policies:
            domain = domain_label(pol.domain, rules.domains)
            base = (domain, pol.policy_type, org)
            self.tls_sessions[(*base, "successful")] += pol.successful
            self.tls_sessions[(*base, "failed")] += pol.failed
            for rt in RESULT_LABELS:  # every type from the first report on, so rate() sees the first failure
                self.tls_failures[(*base, rt)] += 0
            for f in pol.failures:
                self.tls_failures[(*base, f.result_type)] += f.count
                if f.mx and f.mx in rules.mx_hosts:
                    self.tls_mx[(domain, f.mx)] += f.count
                else:
                    self.tls_mx[(domain, OTHER)] += f.count
                    if f.mx:
                        done.unlisted_mx.add(f.mx[:253])
            if pol.failures and pol.detail_sum != pol.failed:
                self.tls_mismatches[(org,)] += 1
                done.mismatches.append((pol.domain[:253], pol.failed, pol.detail_sum))
            done.sessions_ok += pol.successful
            done.sessions_failed += pol.failed
        self._finish("tlsrpt", org, report.report_id, report.begin, report.end, now)
        return done

    def add_dmarc(self, report: DMARCReport, rules: Rules, now: float) -> Counted:
        org = self.org("dmarc", report.org, rules.max_orgs)
        done = Counted("dmarc", org, report.report_id, report.begin, report.end)
        pub = report.policy
        pub_domain = domain_label(pub.domain, rules.domains)
        if pub_domain != OTHER and pub.domain == pub_domain:
            old = self.policy.get(pub_domain)
            if old is None or old[3] <= report.end:
                self.policy[pub_domain] = (pub.p, pub.sp, pub.pct, float(report.end))
        for r in report.records:
            source = classify(r.source_ip, rules.senders)
            domain = domain_label(r.header_from, rules.domains)
            self.dmarc_messages[(domain, org, r.disposition, r.dkim, r.spf, source)] += r.count
            done.messages += r.count
            if r.dkim == "fail" and r.spf == "fail":
                done.failing_messages += r.count
            if source == UNKNOWN and domain != OTHER:
                done.unknown_messages += r.count
                n, end = self.unknown.get(r.source_ip, (0, 0.0))
                self.unknown[r.source_ip] = (n + r.count, float(max(end, report.end)))
        self._finish("dmarc", org, report.report_id, report.begin, report.end, now)
        return done

    def _finish(self, kind: str, org: str, report_id: str, begin: float, end: float, now: float) -> None:
        self.ingested[(kind,)] += 1
        now, begin, end = float(now), float(begin), float(end)
        old = self.last.get((kind, org))
        if old is None or old[2] <= end:
            self.last[(kind, org)] = (now, begin, end)
        else:
            self.last[(kind, org)] = (now, old[1], old[2])

    def top_unknown(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` unknown sources with the most messages in the window (address, messages)."""
        return sorted(((ip, c) for ip, (c, _) in self.unknown.items()), key=lambda x: (-x[1], x[0]))[:n]

    def prune(self, now: float, window: float) -> None:
        """Forget what the window no longer admits (a report that old is skipped before its key is
        looked up, so forgetting it can never count it twice), and keep the maps under their caps."""
        floor = now - window
        self.seen = {k: v for k, v in self.seen.items() if v[0] >= floor}
        if len(self.seen) > MAX_SEEN:
            keep = sorted(self.seen.items(), key=lambda kv: kv[1][0])[-MAX_SEEN:]
            self.seen = dict(keep)
        self.unknown = {ip: v for ip, v in self.unknown.items() if v[1] >= floor}
        if len(self.unknown) > MAX_UNKNOWN:
            keep_ips = sorted(self.unknown.items(), key=lambda kv: (-kv[1][0], kv[0]))[:MAX_UNKNOWN]
            self.unknown = dict(keep_ips)

    # --- the file --------------------------------------------------------------------------------------

    def to_json(self) -> bytes:
        def rows(c: Counter[tuple[str, ...]]) -> list[list[Any]]:
            return [[*k, v] for k, v in sorted(c.items())]

        doc = {
            "version": VERSION,
            "seen": {k: list(v) for k, v in self.seen.items()},
            "tls_sessions": rows(self.tls_sessions),
            "tls_failures": rows(self.tls_failures),
            "tls_mx": rows(self.tls_mx),
            "tls_mismatches": rows(self.tls_mismatches),
            "dmarc_messages": rows(self.dmarc_messages),
            "ingested": rows(self.ingested),
            "skipped": rows(self.skipped),
            "errors": rows(self.errors),
            "orgs": self.orgs,
            "last": [[k, o, *v] for (k, o), v in sorted(self.last.items())],
            "policy": {d: list(v) for d, v in self.policy.items()},
            "unknown": {ip: list(v) for ip, v in self.unknown.items()},
            "cursor": {f: list(v) for f, v in self.cursor.items()},
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ReportState:
        """Raises ValueError (with a short reason) for a file that is not ours or not whole."""
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError("not a reports state file of this version")

        def counter(key: str, width: int) -> Counter[tuple[str, ...]]:
            out: Counter[tuple[str, ...]] = Counter()
            for row in doc.get(key, []):
                if len(row) != width + 1 or not all(isinstance(x, str) for x in row[:-1]):
                    raise ValueError(f"{key}: malformed row")
                if not isinstance(row[-1], int) or row[-1] < 0:
                    raise ValueError(f"{key}: not a count")
                out[tuple(row[:-1])] = row[-1]
            return out

        st = cls(
            tls_sessions=counter("tls_sessions", 4),
            tls_failures=counter("tls_failures", 4),
            tls_mx=counter("tls_mx", 2),
            tls_mismatches=counter("tls_mismatches", 1),
            dmarc_messages=counter("dmarc_messages", 6),
            ingested=counter("ingested", 1),
            skipped=counter("skipped", 2),
            errors=counter("errors", 2),
        )
        st.seen = {str(k): (float(v[0]), str(v[1])) for k, v in doc.get("seen", {}).items()}
        st.orgs = {str(k): [str(x) for x in v] for k, v in doc.get("orgs", {}).items()}
        st.last = {
            (str(r[0]), str(r[1])): (float(r[2]), float(r[3]), float(r[4])) for r in doc.get("last", [])
        }
        st.policy = {
            str(d): (str(v[0]), str(v[1]), int(v[2]), float(v[3])) for d, v in doc.get("policy", {}).items()
        }
        st.unknown = {str(ip): (int(v[0]), float(v[1])) for ip, v in doc.get("unknown", {}).items()}
        st.cursor = {str(f): (int(v[0]), int(v[1])) for f, v in doc.get("cursor", {}).items()}
        return st


def load_state(path: Path) -> tuple[ReportState, str | None]:
    """The state in ``path`` (a new one if there is none); a file that cannot be read is set aside as
    ``<name>.corrupt`` and a fresh state returned with the problem, for the log."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ReportState(), None
    try:
        if size > MAX_STATE_BYTES:
            raise ValueError(f"{size} bytes, over {MAX_STATE_BYTES}")
        return ReportState.from_json(path.read_bytes()), None
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".corrupt"))
        return ReportState(), problem


def save_state(path: Path, state: ReportState) -> None:
    """Atomically replace ``path``: a temporary file beside it, fsynced, renamed, the directory fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(state.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
