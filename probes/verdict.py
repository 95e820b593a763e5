"""What the receiving side thought of the canary: ``Authentication-Results`` (RFC 8601) and spam scores.

Pure functions over the canary's header block as received, no I/O, total (fuzzed).

Only trusted results count. Anyone on the path (or the sender) can add an ``Authentication-Results``
field naming any host; RFC 8601 §5 says a reader must only believe fields whose authserv-id is one it
knows its own border servers write, and §1.6 that those servers remove forged ones. So the config names
the trusted authserv-ids, and every other field is ignored (counted, for the log). With several trusted
fields, the topmost (the one added last, nearest the mailbox) wins per method.

Spam scores are read from SpamAssassin (``X-Spam-Status: Yes, score=5.2 required=5.0 ...``,
``X-Spam-Score``), rspamd (``X-Spamd-Result: default: False [3.40 / 15.00]; ...``, ``X-Rspamd-Score``)
and Microsoft (``X-MS-Exchange-Organization-SCL``, ``SCL:n`` in ``X-Forefront-Antispam-Report``). These
headers carry no authserv-id: they are believed only when the receiving side is known to strip them
from incoming mail, which is why reading them is the operator's choice (``receive.spam_headers``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

import authres

from . import canary

METHODS: Final[tuple[str, ...]] = ("spf", "dkim", "dmarc", "arc")
REQUIRED_METHODS: Final[tuple[str, ...]] = ("spf", "dkim", "dmarc")  # arc only where present
# RFC 8601 2.7 / RFC 8617 result values, plus "missing" for a method no trusted field reported.
RESULTS: Final[tuple[str, ...]] = (
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
    "policy",
)
ENGINES: Final[tuple[str, ...]] = ("spamassassin", "rspamd", "microsoft")
MAX_FIELDS: Final = 20  # Authentication-Results fields read at most
MAX_FIELD_CHARS: Final = 4000
Engine = Literal["spamassassin", "rspamd", "microsoft"]

_SA_SCORE_RE: Final = re.compile(r"\bscore=(-?\d{1,4}(?:\.\d{1,3})?)", re.IGNORECASE)
_NUMBER_RE: Final = re.compile(r"^\s*(-?\d{1,4}(?:\.\d{1,3})?)\s*$")
_RSPAMD_RE: Final = re.compile(r"\[\s*(-?\d{1,4}(?:\.\d{1,3})?)\s*/\s*-?\d{1,4}(?:\.\d{1,3})?\s*\]")
_SCL_RE: Final = re.compile(r"\bSCL:(-?\d{1,2})\b", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    auth: dict[str, str] = field(default_factory=dict)  # method -> result, trusted fields only
    authserv_id: str | None = None  # the trusted authserv-id the results came from (topmost)
    ignored: int = 0  # Authentication-Results fields from ids not trusted, or that did not parse
    scores: dict[str, float] = field(default_factory=dict)  # engine -> score


def authentication(head: bytes, trusted: frozenset[str]) -> tuple[dict[str, str], str | None, int]:
    """(method -> result, authserv-id used, fields ignored) from the trusted fields of ``head``.

    authserv-ids compare case-insensitively (they are domain names). A method reported several times in
    the chosen fields counts as ``pass`` only if every report is ``pass`` (two DKIM signatures, one
    broken, is not a clean pass: the worst result is kept)."""
    values = canary.header_values(head, "Authentication-Results", spaced=True)[:MAX_FIELDS]
    results: dict[str, str] = {}
    used: str | None = None
    ignored = 0
    for value in values:  # topmost first: the one nearest the mailbox
        parsed = _parse(value)
        if parsed is None:
            ignored += 1
            continue
        server, found = parsed
        if server.casefold() not in trusted:
            ignored += 1
            continue
        if used is None:
            used = server
        elif server.casefold() != used.casefold():
            continue  # another trusted hop further out: the nearest one has the say
        for method, result in found:
            if method not in METHODS or result not in RESULTS:
                continue
            old = results.get(method)
            results[method] = result if old is None or old == "pass" else old
    return results, used, ignored


def _parse(value: str) -> tuple[str, list[tuple[str, str]]] | None:
    if len(value) > MAX_FIELD_CHARS:
        return None
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except (authres.AuthResError, ValueError, TypeError, IndexError, AttributeError, KeyError):
        return None
    server = str(header.authserv_id or "")
    if not server:
        return None
    return server, [(str(r.method).lower(), str(r.result).lower()) for r in header.results]


def spam_scores(head: bytes) -> dict[str, float]:
    """Engine -> score from the first header of each engine that parses (topmost first)."""
    out: dict[str, float] = {}

    def first(name: str, pattern: re.Pattern[str]) -> float | None:
        for value in canary.header_values(head, name, spaced=True)[:MAX_FIELDS]:
            m = pattern.search(value[:MAX_FIELD_CHARS])
            if m is not None:
                return float(m.group(1))
        return None

    sa = first("X-Spam-Status", _SA_SCORE_RE)
    sa = sa if sa is not None else first("X-Spam-Score", _NUMBER_RE)
    if sa is not None:
        out["spamassassin"] = sa
    rs = first("X-Spamd-Result", _RSPAMD_RE)
    rs = rs if rs is not None else first("X-Rspamd-Score", _NUMBER_RE)
    if rs is not None:
        out["rspamd"] = rs
    ms = first("X-MS-Exchange-Organization-SCL", _NUMBER_RE)
    ms = ms if ms is not None else first("X-Forefront-Antispam-Report", _SCL_RE)
    if ms is not None:
        out["microsoft"] = ms
    return out


def verdict_of(raw: bytes, trusted: frozenset[str], spam_headers: bool) -> Verdict:
    """The verdict from a received message (or its header block)."""
    head = canary.split_message(raw)[0] + b"\r\n\r\n"
    auth, used, ignored = authentication(head, frozenset(t.casefold() for t in trusted))
    if trusted:  # asked for a verdict: a method nobody trusted reported is said to be missing
        for method in REQUIRED_METHODS:
            auth.setdefault(method, "missing")
    return Verdict(
        auth=auth, authserv_id=used, ignored=ignored, scores=spam_scores(head) if spam_headers else {}
    )
