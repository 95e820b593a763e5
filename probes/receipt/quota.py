"""RFC 9208 (IMAP QUOTA) response parsing, pure and bounded; no I/O.

``GETQUOTAROOT mailbox`` answers ``* QUOTAROOT mailbox root…`` and, per root, ``* QUOTA root (RESOURCE
usage limit …)``; a root without limits may come as ``()`` or, from Courier, with no list at all
(both read as "no limit": lenient where harmless). STORAGE is counted in units of 1024 octets (RFC 9208
§5.1); it is returned here in bytes so that metrics carry base units. Anything malformed is ``None``: a
quota the server states badly is not exported, and never fails a probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RESOURCES = 16  # a QUOTA response names a handful; more is noise
# Why a quota read failed; never a round-trip outcome (a quota read never fails a run).
QUOTA_ERRORS = ("refused", "protocol", "timeout")  # NO/BAD; garbage or a malformed QUOTA; no reply
_ATOM = rb'(?:"(?:[^"\\]|\\.)*"|[^\s()"]+)'
# The resource list is optional here: Courier answers a root without limits with ``* QUOTA "ROOT"`` (no
# list at all, outside RFC 9208); like ``()`` that means no limit. Anything else malformed stays None.
_QUOTA = re.compile(rb"^\*\s+QUOTA\s+(" + _ATOM + rb")(?:\s+\(([^()]*)\))?\s*$", re.IGNORECASE)
_QUOTAROOT = re.compile(rb"^\*\s+QUOTAROOT\s+(" + _ATOM + rb")((?:\s+" + _ATOM + rb")*)\s*$", re.IGNORECASE)
_ATOMS = re.compile(_ATOM)
_NUMBER = re.compile(rb"^\d{1,20}$")
_RESOURCE = re.compile(rb"^[A-Za-z][A-Za-z-]{0,40}$")


@dataclass(frozen=True)
class Usage:
    """One resource of one quota root: ``used`` of ``limit`` (bytes for STORAGE, a count otherwise)."""

    used: int
    limit: int

    @property
    def ratio(self) -> float | None:
        return self.used / self.limit if self.limit > 0 else None


def _unquote(atom: bytes) -> str:
    if atom.startswith(b'"') and atom.endswith(b'"') and len(atom) >= 2:
        atom = re.sub(rb"\\(.)", rb"\1", atom[1:-1])
    return atom.decode("utf-8", errors="replace")


def parse_quotaroot(line: bytes) -> tuple[str, list[str]] | None:
    """``* QUOTAROOT mailbox root…`` → (mailbox, roots); anything else → None."""
    m = _QUOTAROOT.match(line.rstrip(b"\r\n"))
    if m is None:
        return None
    roots = [_unquote(a) for a in _ATOMS.findall(m.group(2))]
    return _unquote(m.group(1)), roots[:MAX_RESOURCES]


def parse_quota(line: bytes) -> tuple[str, dict[str, Usage]] | None:
    """``* QUOTA root (STORAGE 10 512 MESSAGE 3 100)`` → (root, {resource: Usage}); STORAGE in bytes."""
    m = _QUOTA.match(line.rstrip(b"\r\n"))
    if m is None:
        return None
    words = (m.group(2) or b"").split()  # no list (Courier) or "()": no limit on this root
    if len(words) % 3 or len(words) > 3 * MAX_RESOURCES:
        return None
    out: dict[str, Usage] = {}
    for i in range(0, len(words), 3):
        name, used, limit = words[i : i + 3]
        if not (_NUMBER.match(used) and _NUMBER.match(limit) and _RESOURCE.match(name)):
            return None
        resource = name.decode("ascii", errors="replace").upper()
        scale = 1024 if resource == "STORAGE" else 1
        out[resource] = Usage(int(used) * scale, int(limit) * scale)
    return _unquote(m.group(1)), out


def tightest(found: dict[str, Usage], more: dict[str, Usage]) -> None:
    """Merge ``more`` into ``found``: per resource, the root nearest its limit counts (it fills first)."""
    for resource, usage in more.items():
        have = found.get(resource)
        if have is None or (usage.ratio or 0.0) > (have.ratio or 0.0):
            found[resource] = usage
