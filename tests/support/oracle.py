"""The ground truth of issue 21's TLS matrix: Debian's testssl.sh (3.0.8) and sslscan (2.0.x) run against
the weak servers, their answers turned into the same facts as ``probes.tls.scan.ScanFacts``.

Only loopback is ever contacted: every run names the target by its 127.0.0.x address (no name to
resolve), testssl gets ``--ip`` with that address and ``--nodns none`` and never ``--phone-out`` (no CRL,
no OCSP responder, no CAA lookup), and both tools run with a resolv.conf naming 127.0.0.1 only
(:func:`loopback_only`: testssl resolves ``invalid.`` to probe its openssl). Checked with
``strace -f -e trace=connect``: every connect() of a run goes to 127.0.0.1 or a local socket.
:func:`run_all` starts every scan at once (asyncio subprocesses): each spends much of its wall time
waiting on the servers, so the whole oracle costs its CPU spread over the cores, not the sum of walls.

An oracle fact is three-valued like ours: None means "this tool did not say" (not checked, or no finding),
and the comparison skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.weakservers import Target

TESTSSL = "testssl"
SSLSCAN = "sslscan"
PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_TESTSSL_PROTO = {"SSLv2": "SSLv2", "SSLv3": "SSLv3", "TLS1": "TLSv1", "TLS1_1": "TLSv1.1"}
_TESTSSL_PROTO |= {"TLS1_2": "TLSv1.2", "TLS1_3": "TLSv1.3"}
# testssl's -s category -> our weak class (its LOW also holds DES/RC2; its 3DES_IDEA also IDEA: no
# server here offers DES, RC2 or IDEA, so on this matrix they coincide; RC4 comes from -4).
_TESTSSL_CLASS = {"cipherlist_NULL": "null", "cipherlist_aNULL": "anon", "cipherlist_EXPORT": "export"}
_TESTSSL_CLASS |= {"cipherlist_3DES_IDEA": "3des"}

# Which testssl checks each weakness needs (chain/staple endpoints need the server defaults -S; the
# cipher weaknesses need protocols, categories, RC4 and FS). The control gets everything.
# Named DH groups in testssl's findings -> size.
_DH_GROUPS = {
    "RFC2409/Oakley Group 2": 1024,
    "RFC3526/Oakley Group 14": 2048,
    "RFC3526/Oakley Group 15": 3072,
}
_DH_GROUPS |= {"RFC5114/1024-bit": 1024, "RFC5114/2048-bit": 2048, "RFC2409/Oakley Group 1": 768}
CIPHER_CHECKS = ("-p", "-s", "-4", "-f")
CHAIN_CHECKS = ("-p", "-S")
ALL_CHECKS = ("-p", "-s", "-4", "-f", "-S", "-R", "-C")


@dataclass
class OracleFacts:
    """What one tool said about one endpoint, in ScanFacts' terms (None: the tool did not say)."""

    tool: str
    protocols: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS))
    classes: dict[str, bool | None] = field(default_factory=dict)
    fs_offered: bool | None = None  # some suite with forward secrecy accepted
    non_fs: bool | None = None  # some suite without forward secrecy accepted
    suites: dict[str, list[str]] = field(default_factory=dict)  # protocol -> accepted IANA names (sslscan)
    preferred: dict[str, str] = field(default_factory=dict)  # protocol -> IANA suite (server's order)
    dh_bits: int | None = None
    groups: list[str] = field(default_factory=list)  # ECDHE curves / TLS 1.3 groups accepted
    secure_renegotiation: bool | None = None
    compression: bool | None = None
    chain_count: int | None = None  # certificates the server sent
    chain_complete: bool | None = None  # reaches the trust anchor with only what was sent
    chain_misordered: bool | None = None
    stapled: bool | None = None
    staple_status: str | None = None  # good | revoked | stale
    raw: dict[str, str] = field(default_factory=dict, repr=False)  # id -> finding (testssl)
    seconds: float = 0.0  # wall time of the run
    cpu_seconds: float = 0.0  # user+sys of the tool and its children
    returncode: int | None = None
    command: list[str] = field(default_factory=list)


def testssl_argv(target: Target, checks: Sequence[str], jsonfile: Path, ca_file: Path | None) -> list[str]:
    argv = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--ip", target.host]
    argv += ["--connect-timeout", "10", "--openssl-timeout", "10", "--mapping", "iana"]
    argv += [*checks, "--jsonfile", str(jsonfile)]
    if ca_file is not None:
        argv += ["--add-ca", str(ca_file)]
    if target.starttls:
        argv += ["--starttls", target.starttls]
    return [*argv, f"{target.host}:{target.port}"]


def sslscan_argv(target: Target, xmlfile: Path) -> list[str]:
    argv = [SSLSCAN, "--no-colour", f"--xml={xmlfile}", "--no-heartbleed"]
    if target.starttls:
        argv.append(f"--starttls-{target.starttls}")
    return [*argv, f"{target.host}:{target.port}"]


def _offered(finding: str) -> bool | None:
    f = finding.lower()
    # "not offered", "TLSv1.1 is not offered, and downgraded …", "not vulnerable"
    if "not offered" in f or "not vulnerable" in f or f.startswith("no "):
        return False
    if f.startswith("offered") or f.startswith("vulnerable"):
        return True
    return None


def parse_testssl(entries: list[dict[str, str]]) -> OracleFacts:
    """testssl's flat JSON (``--jsonfile``) -> facts."""
    o = OracleFacts("testssl.sh")
    raw = {e["id"]: e.get("finding", "") for e in entries}
    o.raw = raw
    for tid, ours in _TESTSSL_PROTO.items():
        if tid in raw:
            o.protocols[ours] = _offered(raw[tid])
    for tid, ours in _TESTSSL_CLASS.items():
        if tid in raw:
            o.classes[ours] = _offered(raw[tid])
    if "RC4" in raw:
        o.classes["rc4"] = raw["RC4"].upper().startswith("VULNERABLE")
    elif "cipherlist_LOW" in raw:
        pass  # LOW mixes RC4 with DES/RC2: not a fact of ours on its own
    if "PFS" in raw or "FS" in raw:
        fs = raw.get("PFS", raw.get("FS", ""))
        o.fs_offered = _offered(fs)
        legacy_or_12 = [o.protocols.get(p) for p in PROTOCOLS if p != "TLSv1.3"]
        if o.fs_offered is False and any(legacy_or_12):
            o.non_fs = True  # suites accepted, none with FS
    groups = raw.get("PFS_ECDHE_curves", raw.get("FS_ECDHE_curves", ""))
    o.groups = groups.split() if groups and "not" not in groups.lower() else []
    # The DHE group of TLS <= 1.2: -J names a common prime it found, -f the group it was given (when
    # TLS 1.3 is on, 3.0.8's DH_groups lists the TLS 1.3 FFDHE groups instead: not this fact).
    for key in ("LOGJAM-common_primes", "DH_groups"):
        named = next((bits for name, bits in _DH_GROUPS.items() if name in raw.get(key, "")), None)
        if named is not None:
            o.dh_bits = named
            break
    reneg = raw.get("secure_renego", "").lower()
    if reneg.startswith("supported"):
        o.secure_renegotiation = True
    elif reneg.startswith(("not supported", "vulnerable")):
        o.secure_renegotiation = False  # else ("OpenSSL handshake didn't succeed"): testssl could not tell
    if "CRIME_TLS" in raw:
        o.compression = raw["CRIME_TLS"].upper().startswith("VULNERABLE")
    if "certs_countServer" in raw:
        o.chain_count = int(raw["certs_countServer"])
    trust = raw.get("cert_chain_of_trust", "")
    if trust:
        o.chain_complete = (
            None if "chain incomplete" not in trust and "passed" not in trust else "passed" in trust
        )
    if "certs_list_ordering_problem" in raw:
        o.chain_misordered = raw["certs_list_ordering_problem"].lower().startswith("yes")
    staple = raw.get("OCSP_stapling", "")
    if staple:
        o.stapled = not staple.lower().startswith("not offered")
        if o.stapled:
            low = staple.lower()
            o.staple_status = "revoked" if "revoked" in low else "good" if "not revoked" in low else None
    return o


# sslscan cipher names are OpenSSL's; the IANA name comes from testssl's own mapping file.
_MAPPING = Path("/etc/testssl/cipher-mapping.txt")  # Debian's testssl.sh package


def suite_names() -> dict[int, str]:
    """Suite code point -> IANA name, from testssl's mapping file ("0xC0,0x30 - ECDHE-RSA-… TLS_ECDHE_…")."""
    out: dict[int, str] = {}
    if _MAPPING.exists():
        for line in _MAPPING.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "-" and parts[0].count(",") == 1:
                hi, lo = parts[0].split(",")
                with contextlib.suppress(ValueError):
                    out.setdefault((int(hi, 16) << 8) | int(lo, 16), parts[3])
    return out


_NON_FS_KX = re.compile(r"^(TLS_(RSA|DH|ECDH|PSK|RSA_PSK|KRB5|SRP_SHA)_(?!anon)|TLS_(DH|ECDH)_anon_)")
_FS_KX = re.compile(r"^TLS_(DHE|ECDHE)_(RSA|DSS|ECDSA|PSK)_")


def suite_is_fs(iana: str) -> bool | None:
    """Forward secrecy of a suite by its IANA name (TLS 1.3 suites: always)."""
    if iana.startswith("TLS_AES_") or iana.startswith("TLS_CHACHA20_"):
        return True
    if _FS_KX.match(iana):
        return True
    if iana.startswith(("TLS_RSA_", "TLS_DH_RSA", "TLS_DH_DSS", "TLS_ECDH_RSA", "TLS_ECDH_ECDSA")):
        return False
    if "_anon_" in iana:
        return False  # anonymous suites authenticate nothing; testssl counts ADH/AECDH apart
    return None


def suite_classes(iana: str) -> set[str]:
    out: set[str] = set()
    if "_WITH_NULL_" in iana:
        out.add("null")
    if "_anon_" in iana:
        out.add("anon")
    if "EXPORT" in iana:
        out.add("export")
    if "_RC4_" in iana:
        out.add("rc4")
    if "3DES" in iana:
        out.add("3des")
    return out


def parse_sslscan(xml_text: str) -> OracleFacts:
    """sslscan's ``--xml`` -> facts: every accepted suite per protocol, so classes and FS follow."""
    o = OracleFacts("sslscan")
    names = suite_names()
    root = ET.fromstring(xml_text)
    test = root.find("ssltest")
    if test is None:
        return o
    for proto in test.findall("protocol"):
        name = {"SSL": "SSLv", "TLS": "TLSv"}[proto.get("type", "TLS").upper()] + proto.get("version", "")
        name = "TLSv1" if name == "TLSv1.0" else name
        if name in o.protocols:
            o.protocols[name] = proto.get("enabled") == "1"
    for c in test.findall("cipher"):
        version = c.get("sslversion", "")
        proto = "TLSv1" if version == "TLSv1.0" else version
        cipher = c.get("cipher", "")
        try:
            iana = names.get(int(c.get("id", ""), 16), cipher)
        except ValueError:
            iana = cipher
        o.suites.setdefault(proto, []).append(iana)
        if c.get("status") == "preferred":
            o.preferred[proto] = iana
        if c.get("dhebits"):
            o.dh_bits = min(o.dh_bits or 10**6, int(c.get("dhebits", "0")))
    every = [s for suites in o.suites.values() for s in suites]
    if every:
        o.classes = {k: False for k in ("null", "anon", "export", "rc4", "3des")}
        for s in every:
            for k in suite_classes(s):
                o.classes[k] = True
        # The informational classes: a CBC-mode suite accepted (our scan: the server picks one for a client
        # offering nothing else), a suite whose records carry HMAC-SHA1.
        o.classes["cbc_only"] = any("_CBC_" in s for s in every)
        o.classes["sha1_mac"] = any(s.endswith("_SHA") for s in every)
        fs = [suite_is_fs(s) for s in every]
        o.non_fs = any(f is False for f in fs)
        o.fs_offered = any(f is True for f in fs)
    for g in test.findall("group"):
        if g.get("name"):
            o.groups.append(g.get("name", ""))
    reneg = test.find("renegotiation")
    if reneg is not None:
        o.secure_renegotiation = reneg.get("secure") == "1"
    comp = test.find("compression")
    if comp is not None:
        o.compression = comp.get("supported") == "1"
    return o


def loopback_only(argv: Sequence[str], work: Path) -> list[str]:
    """``argv`` in a private mount namespace whose /etc/resolv.conf names 127.0.0.1 only.

    testssl.sh probes the local openssl's options with ``openssl s_client … -connect invalid.`` (about 30
    times per run, whatever ``--nodns`` says): without this, each is a DNS query to the machine's
    resolver, off loopback. Here it goes to 127.0.0.1:53, where nothing answers."""
    resolv = work / "resolv.conf"
    if not resolv.exists():
        work.mkdir(parents=True, exist_ok=True)
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(resolv), *argv]


async def _run(argv: list[str], log: Path, timeout: float) -> tuple[int | None, float, float]:
    """Run ``argv`` (output to ``log``); (returncode, wall seconds, CPU seconds of it and its children)."""
    began = time.monotonic()
    # CPU of the child tree: wrap it in /usr/bin/time-free bash `times` would miss grandchildren that are
    # still reaped by testssl itself; getrusage(RUSAGE_CHILDREN) is process-wide, so use `time -f`.
    # At the lowest priority: the oracle is ~2 minutes of CPU (testssl.sh is bash), all runs at once, and
    # must not starve the other test files' daemons on a 2-core machine (it takes the idle CPU instead).
    wrapped = [
        "nice", "-n", "19",
        "/usr/bin/time", "-f", "CPU %U %S", "-o", f"{log}.time", *loopback_only(argv, log.parent),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *wrapped,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends testssl's children too
        )
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            rc = None
    cpu = 0.0
    try:
        fields = Path(f"{log}.time").read_text().split()  # noqa: ASYNC240 - a few bytes, once
        i = fields.index("CPU")
        cpu = float(fields[i + 1]) + float(fields[i + 2])
    except (OSError, ValueError, IndexError):
        pass
    return rc, time.monotonic() - began, cpu


async def testssl(target: Target, checks: Sequence[str], work: Path, ca_file: Path | None) -> OracleFacts:
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - before the run, once
    jsonfile = work / f"{target.id}.testssl.json"
    jsonfile.unlink(missing_ok=True)
    argv = testssl_argv(target, checks, jsonfile, ca_file)
    rc, wall, cpu = await _run(argv, work / f"{target.id}.testssl.log", timeout=900)
    try:
        entries = json.loads(jsonfile.read_text())
    except (OSError, ValueError):
        entries = []
    facts = parse_testssl(entries)
    facts.seconds, facts.cpu_seconds, facts.returncode, facts.command = wall, cpu, rc, argv
    return facts


async def sslscan(target: Target, work: Path) -> OracleFacts:
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - before the run, once
    xmlfile = work / f"{target.id}.sslscan.xml"
    xmlfile.unlink(missing_ok=True)
    argv = sslscan_argv(target, xmlfile)
    rc, wall, cpu = await _run(argv, work / f"{target.id}.sslscan.log", timeout=600)
    try:
        facts = parse_sslscan(xmlfile.read_text())
    except (OSError, ET.ParseError):
        facts = OracleFacts("sslscan")
    facts.seconds, facts.cpu_seconds, facts.returncode, facts.command = wall, cpu, rc, argv
    return facts


@dataclass
class OracleRun:
    testssl: dict[str, OracleFacts]  # target id -> facts
    sslscan: dict[str, OracleFacts]
    seconds: float  # wall time of the whole run


async def run_all(
    plan: Sequence[tuple[Target, Sequence[str]]], sslscans: Sequence[Target], work: Path, ca_file: Path | None
) -> OracleRun:
    """Every testssl run of ``plan`` (target, checks) and every sslscan of ``sslscans``, all at once."""
    began = time.monotonic()
    t_jobs = [testssl(t, checks, work, ca_file) for t, checks in plan]
    s_jobs = [sslscan(t, work) for t in sslscans]
    results = await asyncio.gather(*t_jobs, *s_jobs)
    t_res = dict(zip([t.id for t, _ in plan], results[: len(plan)], strict=True))
    s_res = dict(zip([t.id for t in sslscans], results[len(plan) :], strict=True))
    return OracleRun(t_res, s_res, time.monotonic() - began)
