"""What reports say about an endpoint's TLS scan (issue 21): ``mailcanary probe`` (TLS blocks and the
domain report), the status page: a testssl-like summary, the weaknesses it found, what it could not tell.

The rule is the monitor's: a fact that was never checked is "not checked", one the scan could not tell
is "unknown"; neither is ever shown as fine, and a report with either never says a plain GOOD.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from probes.tls.audit import TLSFacts
from probes.tls.scan import INFO_CLASSES, PROTOCOLS, WEAK_CLASSES
from probes.tls.scanning import unknown_facts

# How the report names classes (testssl.sh's words).
CLASS_NAMES: Final = {
    "null": "NULL",
    "anon": "anonymous",
    "export": "EXPORT",
    "rc4": "RC4",
    "3des": "3DES",
    "cbc_only": "CBC only",
    "sha1_mac": "SHA-1 MAC",
}
# Facts the report lists as "not checked" when there is no scan at all.
UNSCANNED: Final = (
    "SSLv2/SSLv3",
    "weak cipher classes",
    "forward secrecy",
    "DH group",
    "renegotiation",
    "compression",
    "chain order",
    "OCSP stapling",
)
DH_MIN_BITS: Final = 2048  # below this a DHE group is reported as weak (as internet.nl and testssl.sh)


def scanned(f: TLSFacts) -> bool:
    return f.scan is not None and f.scan.checked_at is not None


def findings(f: TLSFacts) -> list[str]:
    """The weaknesses the scan found, worst first (each one a short phrase)."""
    s = f.scan
    if s is None or s.checked_at is None:
        return []
    out = [f"accepts {p}" for p in ("SSLv2", "SSLv3") if s.protocols.get(p)]
    out += [f"accepts {CLASS_NAMES[c]} suites" for c in WEAK_CLASSES if s.classes.get(c)]
    if s.non_fs:
        out.append("accepts a suite without forward secrecy")
    if f.ocsp_staple_status == "revoked":
        out.append("stapled OCSP response says revoked")
    if f.chain_complete is False:
        out.append("chain incomplete")
    if f.chain_ordered is False:
        out.append("chain misordered")
    if s.dh_bits is not None and s.dh_bits < DH_MIN_BITS:
        out.append(f"DH group of {s.dh_bits} bits")
    if s.compression:
        out.append("TLS compression")
    if s.secure_renegotiation is False:
        out.append("no secure renegotiation")
    return out


def unchecked(f: TLSFacts) -> list[str]:
    """What the report cannot vouch for: everything the scan covers when there was none, else the facts
    it could not tell."""
    if not scanned(f):
        return list(UNSCANNED)
    return [CLASS_NAMES.get(name, name.replace("_", " ")) for name in unknown_facts(f)]


def _yn(v: bool | None, yes: str, no: str) -> str:
    return "unknown" if v is None else yes if v else no


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def summary(f: TLSFacts, now: float) -> list[str]:
    """The testssl-like lines of ``mailcanary probe`` (indented like the TLS block they go into)."""
    s = f.scan
    if s is None:
        return [f"    scan       not checked (scan off): {', '.join(UNSCANNED)} not checked"]
    if s.checked_at is None:
        return [f"    scan       not made yet: {', '.join(UNSCANNED)} not checked"]
    age = max(now - s.checked_at, 0.0)
    lines = [
        f"    scan       {_when(s.checked_at)} ({age / 3600:.1f} h ago), {s.connections} connection(s)"
        + (
            f"; unknown because: {'; '.join(f'{k}: {v}' for k, v in sorted(s.errors.items()))}"
            if s.errors
            else ""
        )
    ]
    offered = {True: "OFFERED", False: "not offered", None: "unknown"}
    lines.append("    protocols  " + "  ".join(f"{p} {offered[s.protocols.get(p)]}" for p in PROTOCOLS))
    lines.append(
        "    weak       " + "  ".join(f"{CLASS_NAMES[c]} {offered[s.classes.get(c)]}" for c in WEAK_CLASSES)
    )
    info = {True: "yes", False: "no", None: "unknown"}
    lines.append(
        "    info       " + "  ".join(f"{CLASS_NAMES[c]} {info[s.classes.get(c)]}" for c in INFO_CLASSES)
    )
    lines.append(
        "    forward secrecy  "
        + _yn(None if s.non_fs is None else not s.non_fs, "yes (no suite without it accepted)", "NO")
    )
    preferred = ", ".join(f"{p} {s.preferred[p]}" for p in PROTOCOLS if s.preferred.get(p))
    lines.append(f"    preferred  {preferred or 'unknown'}")
    dh = "unknown" if s.dh_bits is None else f"{s.dh_bits} bits"
    lines.append(f"    DH group   {dh}   TLS 1.3 group {s.tls13_group or 'unknown'}")
    lines.append(
        f"    secure renegotiation {_yn(s.secure_renegotiation, 'yes', 'NO')}   "
        f"compression {_yn(s.compression, 'YES', 'no')}"
    )
    if f.chain_complete is None:
        chain = "unknown"
    else:
        chain = ", ".join(
            [
                "complete" if f.chain_complete else "INCOMPLETE",
                _yn(f.chain_ordered, "ordered", "MISORDERED").replace("unknown", "order unknown"),
                "superfluous unknown"
                if f.chain_superfluous is None
                else f"{f.chain_superfluous} superfluous",
            ]
        )
    lines.append(f"    chain      {chain}")
    if s.stapled is None:
        staple = "unknown"
    elif not s.stapled:
        staple = "not offered"
    else:
        staple = f"offered, {f.ocsp_staple_status or 'status unknown'}"
    lines.append(f"    OCSP staple {staple}")
    return lines
