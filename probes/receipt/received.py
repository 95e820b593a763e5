"""The path the canary took, from its ``Received:`` chain (RFC 5321 4.4, RFC 5322 3.6.7). Pure, total.

Each server that handles a message prepends one ``Received:`` field, so the chain read from the bottom
up is the path from the sender: hop 1 is the first server (the submission server), the last hop the one
that delivered it. Per hop we keep the time stamp after ``;``, the ``with`` protocol (``ESMTPS``,
``ESMTPSA``, ``LMTP``...), whether it says TLS (an ``...S``/``...SA`` protocol per RFC 3848, or a
``(using TLSv1.3 ...)``-style comment as Postfix writes with ``smtpd_tls_received_header``) and the IP
in the ``from`` clause (``[192.0.2.1]``), i.e. the client as that server saw it.

Clock skew is shown, not hidden: the delay of a hop is its stamp minus the stamp of the hop before, as
written by two different clocks, with one-second resolution. A negative delay means the later server's
clock is behind; it is reported as it is, never clamped to 0.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final

from probes import canary

MAX_HOPS: Final = 30  # Received fields read at most (RFC 5321 suggests rejecting ~100 as a loop)
MAX_FIELD_CHARS: Final = 2000
_WITH_RE: Final = re.compile(r"\bwith\s+([A-Za-z0-9_-]{1,32})", re.IGNORECASE)
_FROM_IP_RE: Final = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]")
_BY_RE: Final = re.compile(r"\bby\s+([A-Za-z0-9.\-_\[\]:]{1,255})", re.IGNORECASE)
_TLS_COMMENT_RE: Final = re.compile(
    r"\b(?:using\s+)?TLSv?1(?:\.[0-3])?\b|\bwith\s+TLS\b|\bversion=TLS", re.IGNORECASE
)
# RFC 3848 (and RFC 6531's UTF8 ones): the "S" means TLS, "A" authenticated.
_TLS_PROTOCOLS: Final = frozenset(
    {"ESMTPS", "ESMTPSA", "UTF8SMTPS", "UTF8SMTPSA", "LMTPS", "LMTPSA", "SMTPS"}
)
_SMTP_PROTOCOLS: Final = re.compile(r"^(?:E?SMTPS?A?|UTF8SMTPS?A?|UTF8ESMTPS?A?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Hop:
    index: int  # 1 = the first server, counted from the sender
    protocol: str | None  # the "with" word, upper case: ESMTPS, LMTP, ...
    tls: bool
    from_ip: str | None  # the client's address as this server recorded it
    by: str | None  # this server's name as it wrote it (kept for the log only, never a label)
    timestamp: float | None  # unix seconds; None if the date did not parse

    @property
    def smtp(self) -> bool:
        return self.protocol is not None and bool(_SMTP_PROTOCOLS.match(self.protocol))


@dataclass(frozen=True)
class Path:
    hops: list[Hop] = field(default_factory=list)
    truncated: bool = False  # more Received fields than MAX_HOPS

    @property
    def count(self) -> int:
        return len(self.hops)

    def delays(self) -> list[float | None]:
        """Per hop from the second on: its stamp minus the previous hop's (may be negative: skew)."""
        out: list[float | None] = []
        for prev, hop in zip(self.hops, self.hops[1:], strict=False):
            ok = prev.timestamp is not None and hop.timestamp is not None
            out.append(hop.timestamp - prev.timestamp if ok else None)  # type: ignore[operator]
        return out

    @property
    def total(self) -> float | None:
        """Last stamp minus first stamp, over the hops whose dates parsed."""
        stamps = [h.timestamp for h in self.hops if h.timestamp is not None]
        return stamps[-1] - stamps[0] if len(stamps) >= 2 else None

    @property
    def sender_ip(self) -> str | None:
        """The IP the receiving side saw the message come from: the client of the last hop that
        received it over SMTP (later hops, LMTP or local delivery, are inside the receiver)."""
        for hop in reversed(self.hops):
            if hop.smtp and hop.from_ip is not None:
                return hop.from_ip
        return None


def parse_hop(value: str, index: int) -> Hop:
    """One Received field value (unfolded). Never raises."""
    value = value[:MAX_FIELD_CHARS]
    clauses, _, date = value.rpartition(";")
    if not clauses:
        clauses, date = value, ""
    ts: float | None = None
    try:
        ts = parsedate_to_datetime(date.strip()).timestamp() if date.strip() else None
    except (TypeError, ValueError, IndexError, OverflowError):
        ts = None
    bare = _without_comments(clauses)  # "(using TLSv1.3 with cipher ...)" is no "with" clause
    m = _WITH_RE.search(bare)
    protocol = m.group(1).upper() if m else None
    from_part = clauses.split(" by ", 1)[0] if " by " in clauses else clauses
    ip = None
    for cand in _FROM_IP_RE.findall(from_part):
        try:
            ip = str(ipaddress.ip_address(cand))
            break
        except ValueError:
            continue
    by = _BY_RE.search(bare)
    tls = protocol in _TLS_PROTOCOLS or bool(_TLS_COMMENT_RE.search(clauses))
    return Hop(
        index=index, protocol=protocol, tls=tls, from_ip=ip, by=by.group(1) if by else None, timestamp=ts
    )


def _without_comments(text: str) -> str:
    """``text`` with its (nested) parenthesised comments removed, as RFC 5322 CFWS; linear."""
    out: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return "".join(out)


def path_of(raw: bytes) -> Path:
    """The path of a message from its header block (bytes of the whole message are fine)."""
    values = canary.header_values(raw, "Received", spaced=True)
    truncated = len(values) > MAX_HOPS
    values = values[:MAX_HOPS]  # the topmost (latest) ones: the receiver's side is what we watch
    hops = [parse_hop(v, i + 1) for i, v in enumerate(reversed(values))]
    return Path(hops=hops, truncated=truncated)
