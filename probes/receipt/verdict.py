"""What the receiving side thought of the canary: ``Authentication-Results`` (RFC 8601) and spam scores.

Pure functions over the canary's header block as received, no I/O, total (fuzzed).

Only trusted results count. Anyone on the path (or the sender) can add an ``Authentication-Results``
field naming any host; RFC 8601 §5 says a reader must only believe fields whose authserv-id is one it
knows its own border servers write, and §1.6 that those servers remove forged ones. So the config names
the trusted authserv-ids, and every other field is ignored (counted, for the log). Per method, the
nearest trusted field that reports it (the topmost, added last) decides, with every field of the same
authserv-id read together: iCloud writes one field per checker, each with its own id.

Real providers bend the grammar. Harmless deviations are read: a ``;`` after the last result (Yahoo,
AOL), ``;`` straight before the next method (Microsoft). Microsoft 365 writes its field with no
authserv-id at all, which no trusted id can match: the ``microsoft365`` preset, set only by an operator
whose receive side is Microsoft 365, trusts the topmost id-less field when every field above it is
trusted (normally it is the topmost of all), and Microsoft's own ``ARC-Authentication-Results``
(``mx.microsoft.com``) added above it. Values outside RFC 8601/7489 are
mapped to the nearest honest RFC value (``bestguesspass``: no DMARC record, so ``none``), or ``other``.

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

from probes import canary

METHODS: Final[tuple[str, ...]] = ("spf", "dkim", "dmarc", "arc")
REQUIRED_METHODS: Final[tuple[str, ...]] = ("spf", "dkim", "dmarc")  # arc only where present
# RFC 8601 2.7 / RFC 7489 / RFC 8617 result values; the exported label is one of these, "other" (a value
# outside them that no mapping covers) or "missing" (no trusted field reported the method).
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
OTHER: Final = "other"
# Values real receivers write outside the RFCs, and what they mean in RFC terms.
ALIASES: Final[dict[str, str]] = {
    # Microsoft 365: the From domain publishes no DMARC record, one would have passed. DMARC's own word
    # for "no policy published" is none (RFC 7489 §11.2); it is not a DMARC pass.
    "bestguesspass": "none",
    "hardfail": "fail",  # SPF fail by its RFC 5451 name, since deprecated
}
ENGINES: Final[tuple[str, ...]] = ("spamassassin", "rspamd", "microsoft")
MAX_FIELDS: Final = 20  # Authentication-Results fields read at most (and as many ARC ones)
MAX_FIELD_CHARS: Final = 4000
Engine = Literal["spamassassin", "rspamd", "microsoft"]
Preset = Literal["none", "microsoft365"]
MICROSOFT_ARC_ID: Final = "mx.microsoft.com"
MICROSOFT365: Final = "microsoft365 (no authserv-id)"  # the authserv_id shown for Microsoft's id-less field

_SA_SCORE_RE: Final = re.compile(r"\bscore=(-?\d{1,4}(?:\.\d{1,3})?)", re.IGNORECASE)
_NUMBER_RE: Final = re.compile(r"^\s*(-?\d{1,4}(?:\.\d{1,3})?)\s*$")
_RSPAMD_RE: Final = re.compile(r"\[\s*(-?\d{1,4}(?:\.\d{1,3})?)\s*/\s*-?\d{1,4}(?:\.\d{1,3})?\s*\]")
_SCL_RE: Final = re.compile(r"\bSCL:(-?\d{1,2})\b", re.IGNORECASE)
# A field that opens with "method=" (after comments) has no authserv-id: "=" cannot be part of one.
_NO_ID_RE: Final = re.compile(r"^\s*(?:\([^()]{0,200}\)\s*)*[A-Za-z0-9_.-]{1,64}\s*=")
# One ";" after the last result, then only whitespace or comments (Yahoo: "header.from=example.com;").
_TRAILING_SEMICOLON_RE: Final = re.compile(r";(?:\s|\([^()]{0,200}\))*$")
_ARC_INSTANCE_RE: Final = re.compile(r"^\s*i\s*=\s*(\d{1,2})\s*;")
# Microsoft 365 (older stamps): the recipient's domain alone between results, "...; contoso.com; dkim=".
_BARE_DOMAIN_RE: Final = re.compile(r";\s*[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,10}\s*(?=;|$)")
_PLACEHOLDER_ID: Final = "no-authserv-id.invalid"  # parsed in place of a missing id, never shown or matched


@dataclass(frozen=True)
class Verdict:
    auth: dict[str, str] = field(default_factory=dict)  # method -> result, trusted fields only
    authserv_id: str | None = None  # the topmost trusted authserv-id any result came from
    ignored: int = 0  # Authentication-Results fields from ids not trusted, or that did not parse
    scores: dict[str, float] = field(default_factory=dict)  # engine -> score


@dataclass(frozen=True)
class _Field:
    source: str  # the authserv-id as written (MICROSOFT365 for Microsoft's id-less field)
    results: list[tuple[str, str]]


def authentication(
    head: bytes, trusted: frozenset[str], preset: Preset = "none"
) -> tuple[dict[str, str], str | None, int]:
    """(method -> result, authserv-id used, fields ignored) from the trusted fields of ``head``.

    authserv-ids compare case-insensitively (they are domain names); ``*.example.com`` trusts every id
    ending in ``.example.com``. Per method, the nearest trusted field reporting it decides, read
    together with every other field of its authserv-id; a method reported several times there counts
    as ``pass`` only if every report is ``pass`` (two DKIM signatures, one broken, is not a clean pass:
    the first result that is not a pass is kept)."""
    trusted = frozenset(t.casefold() for t in trusted)
    ordered = _ordered(head, ("authentication-results", "arc-authentication-results"))
    fields: list[_Field] = []  # trusted, nearest first
    ignored = 0
    seen_ar = 0
    # Microsoft's field: the first id-less one while every field above it is trusted (nothing we do
    # not trust came in between); the ARC results above it are read with it.
    microsoft = preset == "microsoft365"
    arc_above: list[str] = []
    for name, value in ordered:
        if name == "arc-authentication-results":
            if microsoft and len(arc_above) < MAX_FIELDS:
                arc_above.append(value)
            continue
        seen_ar += 1
        if seen_ar > MAX_FIELDS:
            break
        parsed = _parse(value, microsoft=microsoft)
        if parsed is None:
            ignored += 1
            microsoft = False
            continue
        server, found = parsed
        if server is None:
            if not microsoft:
                ignored += 1  # an id-less field is nobody's we can name: believed only as Microsoft's own
                continue
            microsoft = False  # one such field: Microsoft stamps once on receipt
            for arc in arc_above:
                sealed = _parse_arc(arc)
                if sealed is not None and sealed[0] == MICROSOFT_ARC_ID:
                    fields.append(_Field(MICROSOFT365, sealed[1]))
            fields.append(_Field(MICROSOFT365, found))
        elif is_trusted(server, trusted):
            fields.append(_Field(server, found))
        else:
            ignored += 1
            microsoft = False
    results: dict[str, str] = {}
    used: str | None = None
    used_at = len(fields)
    for method in METHODS:
        at = next((i for i, f in enumerate(fields) if any(m == method for m, _ in f.results)), None)
        if at is None:
            continue
        source = fields[at].source.casefold()
        if at < used_at:
            used, used_at = fields[at].source, at
        for f in fields:
            if f.source.casefold() != source:
                continue
            for m, result in f.results:
                if m != method:
                    continue
                old = results.get(method)
                results[method] = result if old is None or old == "pass" else old
    return results, used, ignored


def is_trusted(server: str, trusted: frozenset[str]) -> bool:
    """``server`` is a trusted id (casefolded set): named exactly, or under a ``*.domain`` entry (any
    name ending in ``.domain``: Yahoo and Fastmail stamp each MX host's own name)."""
    name = server.casefold()
    if name in trusted:
        return True
    labels = name.split(".")
    return any("*." + ".".join(labels[i:]) in trusted for i in range(1, len(labels) - 1))


def _ordered(head: bytes, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(lowercased name, unfolded value) of the fields named ``names``, in header order (topmost first)."""
    wanted = {n.encode() for n in names}
    out: list[tuple[str, str]] = []
    current: tuple[bytes, list[bytes]] | None = None

    def flush() -> None:
        if current is not None:
            text = b" ".join(b" ".join(current[1]).split()).decode("latin-1")
            out.append((current[0].decode(), text))

    for line in canary.split_message(head)[0].replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current[1].append(line)
            continue
        flush()
        current = None
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if colon and key in wanted:
            current = (key, [value])
    flush()
    return out


def _result(value: str) -> str:
    value = ALIASES.get(value, value)
    return value if value in RESULTS else OTHER


def _parse(value: str, microsoft: bool = False) -> tuple[str | None, list[tuple[str, str]]] | None:
    """(authserv-id or None when the field has none, [(method, result)]) of a field; None: unreadable.

    ``microsoft``: this field may be Microsoft's, whose stamps also carry the recipient's domain alone
    between results; that word is dropped (anywhere else it makes the field unreadable)."""
    if len(value) > MAX_FIELD_CHARS:
        return None
    text = _TRAILING_SEMICOLON_RE.sub("", value.strip())
    no_id = _NO_ID_RE.match(text) is not None
    if no_id:
        if microsoft:
            text = _BARE_DOMAIN_RE.sub("", text)
        text = f"{_PLACEHOLDER_ID}; {text}"
    try:
        header = authres.AuthenticationResultsHeader.parse_value(text)
    except (authres.AuthResError, ValueError, TypeError, IndexError, AttributeError, KeyError):
        return None
    server = str(header.authserv_id or "")
    if not server:
        return None
    found = [(str(r.method).lower(), _result(str(r.result).lower())) for r in header.results]
    found = [(m, r) for m, r in found if m in METHODS]
    return (None if no_id else server), found


def _parse_arc(value: str) -> tuple[str, list[tuple[str, str]]] | None:
    """(authserv-id casefolded, results) of an ``ARC-Authentication-Results`` value (``i=N; id; ...``)."""
    m = _ARC_INSTANCE_RE.match(value)
    if m is None:
        return None
    parsed = _parse(value[m.end() :])
    if parsed is None or parsed[0] is None:
        return None
    return parsed[0].casefold(), parsed[1]


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


def verdict_of(raw: bytes, trusted: frozenset[str], spam_headers: bool, preset: Preset = "none") -> Verdict:
    """The verdict from a received message (or its header block): Authentication-Results of the
    ``trusted`` authserv-ids (casefolded), or as ``preset`` allows for a provider that breaks RFC 8601."""
    head = canary.split_message(raw)[0] + b"\r\n\r\n"
    auth, used, ignored = authentication(head, trusted, preset)
    if trusted or preset != "none":  # asked for a verdict: a method nobody trusted reported is missing
        for method in REQUIRED_METHODS:
            auth.setdefault(method, "missing")
    return Verdict(
        auth=auth, authserv_id=used, ignored=ignored, scores=spam_scores(head) if spam_headers else {}
    )
