"""Issue 21's matrix: real servers configured weak, one weakness at a time, scanned by mailcanary and by
the tools an auditor uses (Debian's testssl.sh 3.0.8, sslscan 2.0.x), whose answers are the ground truth.

Servers (tests/support/weakservers.py): Postfix smtpd (SMTP STARTTLS) and Dovecot (IMAP/POP3 STARTTLS, IMAPS)
per OpenSSL weakness; ``gnutls-serv`` (implicit TLS) for RC4, 3DES and stapled OCSP; issue 21's in-process
first-flight fake for SSLv3 with RC4/3DES/EXPORT, which no real server here can offer any more.

mailcanary scans every endpoint (every protocol). The oracles run once per weakness and server software
(``PLAN``: its endpoint and only the testssl checks that weakness needs, to keep the cost down), all at
once; every endpoint of that server is compared with it (the TLS settings are the server's, not the
port's). A fact is compared where both sides say something; where they disagree the disagreement must
be listed in ``KNOWN`` with the reason and who is right (checked by a third look, ``openssl s_client``),
and every listed disagreement must still happen (a stale entry fails too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from probes.recorder import Recorder
from probes.tls import hello as h
from probes.tls.audit import TLSCheckSettings
from probes.tls.chain import chain_facts, staple_status, trust_anchors
from probes.tls.scan import INFO_CLASSES, WEAK_CLASSES, ScanFacts, scan
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import SERVER_NAME, MailStack
from tests.support import oracle
from tests.support.fakehello import FakeHello, fake_hello
from tests.support.oracle import OracleFacts, OracleRun
from tests.support.procs import run_bounded
from tests.support.weakservers import Target, WeakServers, rate_limited, threaded, weak_servers

TOOLS = ("testssl", "sslscan", "gnutls-serv", "unshare", "/usr/bin/time")

# testssl.sh: one endpoint per weakness (Postfix or Dovecot, taking turns) and only the checks that
# weakness needs; it costs 4-15 s of CPU per run (bash + openssl), the budget of the whole oracle.
P, S, F, R4, SD = "-p", "-s", "-f", "-4", "-S"
PLAN: dict[tuple[str, str], tuple[str, ...]] = {
    # The control gets every check, split over its two servers so that no single run is the long pole.
    ("baseline", "smtp"): (P, S, F, "-R", "-C"),
    ("baseline", "imap"): (P, R4, SD),
    ("legacy", "pop3"): (P,),
    ("null", "imap"): (S,),
    ("anon", "smtp"): (S,),
    ("nofs", "smtp"): (P, F),
    ("dhe1024", "pop3"): ("-J",),
    ("nointer", "smtp"): (SD,),
    ("misordered", "imap"): (SD,),
    ("rc4", "tls"): (R4,),
    ("3des", "tls"): (S,),
    ("ocsprevoked", "tls"): (SD,),
    ("sslv3", "tls"): (P, S, R4),
    ("sslv2", "tls"): (P,),
}
# sslscan (a fraction of a second of CPU per run): one endpoint per weakness and server software.
SSLSCAN_PLAN: tuple[tuple[str, str], ...] = (
    *((w, p) for w in ("baseline", "legacy", "null", "anon", "nofs", "dhe1024") for p in ("smtp", "pop3")),
    *((w, "imap") for w in ("nointer", "misordered", "extra")),
    *((w, "tls") for w in ("rc4", "3des", "ocspgood", "ocsprevoked", "sslv3", "sslv2")),
)
SOFTWARE = {"smtp": "postfix", "imap": "dovecot", "pop3": "dovecot", "imaps": "dovecot", "tls": "tls"}

# (weakness or "*", tool, fact) -> (why they disagree, who is right and how we know).
KNOWN: dict[tuple[str, str, str], tuple[str, str]] = {
    ("*", "sslscan", "secure_renegotiation"): (
        "sslscan 2.0 tests renegotiation in the highest version, TLS 1.3, which has no renegotiation",
        "mailcanary and testssl.sh: `openssl s_client -tls1_2` prints 'Secure Renegotiation IS supported'",
    ),
    ("*", "sslscan", "preferred:*"): (
        "neither Postfix (tls_preempt_cipherlist = no) nor Dovecot (ssl_prefer_server_ciphers = no) has a "
        "server order by default: they take the client's first acceptable suite; sslscan's hello lists "
        "AES-256 before AES-128 (and TLS 1.3: AES-128 first), mailcanary's in OpenSSL's client order",
        "both: each reports what the server chose for its own hello (`openssl s_client -cipher A:B` vs B:A)",
    ),
}

# What each weak server must show: fact -> value, for mailcanary on every endpoint of that server and for
# each oracle where its checks cover the fact (so that a silent oracle cannot make the matrix vacuous).
EXPECT: dict[str, dict[str, object]] = {
    "baseline": {"protocol:TLSv1.2": True, "protocol:TLSv1.1": False, "class:null": False},
    "legacy": {"protocol:TLSv1": True, "protocol:TLSv1.1": True, "protocol:SSLv3": False},
    "null": {"class:null": True},
    "anon": {"class:anon": True},
    "nofs": {"non_fs": True},
    "dhe1024": {"dh_bits": 1024},
    "nointer": {"chain_complete": False},
    "misordered": {"chain_misordered": True, "chain_superfluous": 0, "chain_complete": True},
    "extra": {"chain_count": 3, "chain_superfluous": 1, "chain_complete": True},
    "rc4": {"class:rc4": True},
    "3des": {"class:3des": True},
    "ocspgood": {"stapled": True},
    "ocsprevoked": {"stapled": True},
    "sslv3": {"protocol:SSLv3": True, "class:rc4": True, "class:3des": True, "class:export": True},
    "sslv2": {"protocol:SSLv2": True, "protocol:SSLv3": False, "protocol:TLSv1.2": False},
}

SOURCE = "127.0.0.2"
# What no real server here can offer (OpenSSL 3 and GnuTLS 3.7 dropped them): issue 21's first-flight fake.
FAKES: dict[str, Callable[[], FakeHello]] = {
    "sslv3": lambda: FakeHello(versions=frozenset({h.SSL3}), suites=(0x0005, 0x000A, 0x0003, 0x002F)),
    "sslv2": lambda: FakeHello(versions=frozenset({h.SSL2}), sslv2_ciphers=(0x010080, 0x020080, 0x0700C0)),
}


def _serving(fake: FakeHello) -> Callable[[], contextlib.AbstractAsyncContextManager[int]]:
    return lambda: fake_hello(fake)


@dataclass
class Matrix:
    servers: WeakServers
    targets: list[Target]  # every endpoint, the fake's included
    ours: dict[str, ScanFacts]  # target id -> our facts
    ours_seconds: float
    relay_counts: dict[str, int]  # gnutls target id -> connections the relay saw during our scan
    oracle: OracleRun
    work: Path


def representative(t: Target, plan: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The plan's endpoint whose oracle run judges ``t``: same weakness, same server software (the TLS
    settings are the server's, whatever the port)."""
    return next((k for k in plan if k[0] == t.weak and SOFTWARE[k[1]] == SOFTWARE[t.protocol]), None)


def settings_for(t: Target) -> TLSCheckSettings:
    protocol = "tcp" if t.protocol == "tls" else "imap" if t.protocol == "imaps" else t.protocol
    ep = Endpoint(
        t.host,
        t.port,
        tls_mode=t.tls_mode,  # type: ignore[arg-type]
        tls=TLSSettings(server_name=SERVER_NAME),
        source_address=SOURCE if t.host == "127.0.0.1" else None,
    )
    return TLSCheckSettings(ep, protocol, timeout=15.0)


async def scan_all(targets: list[Target]) -> dict[str, ScanFacts]:
    """Every endpoint at once (each scan is sequential inside: one connection at a time)."""
    results = await asyncio.gather(*(scan(settings_for(t), Recorder(transcript=[])) for t in targets))
    return {t.id: r for t, r in zip(targets, results, strict=True)}


@pytest.fixture(scope="module")  # module: the ~30 servers stop when this file is done
def matrix(mailstack: MailStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:  # a failure, not a skip: a skip would let CI pass while comparing nothing
        pytest.fail(f"missing {missing}: run scripts/install-deps.sh (testssl.sh sslscan gnutls-bin time)")
    work = tmp_path_factory.mktemp("tls-matrix")
    with contextlib.ExitStack() as stack:
        ws = stack.enter_context(weak_servers(mailstack, work / "servers"))
        fakes = {name: make() for name, make in FAKES.items()}
        ports = {name: stack.enter_context(threaded(_serving(f))) for name, f in fakes.items()}
        targets = [*ws.targets, *(Target(n, "tls", "127.0.0.1", port, "fake") for n, port in ports.items())]
        before = {name: s.connections() for name, s in ws.gnutls.items()}
        began = time.monotonic()
        ours = asyncio.run(scan_all(targets))
        ours_seconds = time.monotonic() - began
        counts = {f"{n}-tls": s.connections() - before[n] for n, s in ws.gnutls.items()}
        counts |= {f"{n}-tls": f.connections for n, f in fakes.items()}
        by_id = {t.id: t for t in targets}
        plan = [(by_id[f"{w}-{p}"], checks) for (w, p), checks in PLAN.items()]
        sslscan = [by_id[f"{w}-{p}"] for w, p in SSLSCAN_PLAN]
        run = asyncio.run(oracle.run_all(plan, sslscan, work / "oracle", ws.ca_file))
        summary = {
            "servers_startup_s": round(ws.startup_seconds, 1),
            "ours_wall_s": round(ours_seconds, 1),
            "oracle_wall_s": round(run.seconds, 1),
            "testssl": {k: [round(v.seconds, 1), round(v.cpu_seconds, 1)] for k, v in run.testssl.items()},
            "sslscan": {k: [round(v.seconds, 1), round(v.cpu_seconds, 2)] for k, v in run.sslscan.items()},
            "ours_connections": {k: v.connections for k, v in ours.items()},
            "ours": {k: facts_of(v, ws.ca_file) for k, v in ours.items()},
        }
        (work / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"\ntls matrix: {work / 'summary.json'}: {json.dumps(summary)}")
        yield Matrix(ws, targets, ours, ours_seconds, counts, run, work)


# ---- the comparison --------------------------------------------------------------------------------

_GROUP_ALIASES = {"prime256v1": "secp256r1", "x25519": "x25519", "x448": "x448"}


def _group(name: str) -> str:
    base = name.split()[0].lower()
    return _GROUP_ALIASES.get(base, base)


def third_look_staple(t: Target) -> str | None:
    """``openssl s_client -status``: the stapled response's ``Cert Status`` (good/revoked), or None."""
    argv = ["openssl", "s_client", "-connect", f"{t.host}:{t.port}", "-status", "-servername", SERVER_NAME]
    out = run_bounded(argv, 30, input="").stdout
    found = re.search(r"Cert Status: (\w+)", out)
    return found.group(1) if found else None


def differences(ours: ScanFacts, theirs: OracleFacts, ca_file: Path) -> dict[str, tuple[object, object]]:
    """fact -> (ours, theirs) wherever both said something and it differs."""
    out: dict[str, tuple[object, object]] = {}
    a_facts, b_facts = facts_of(ours, ca_file), oracle_facts(theirs)
    for fact in sorted(set(a_facts) | set(b_facts)):
        a, b = a_facts.get(fact), b_facts.get(fact)
        if a is not None and b is not None and a != b:
            out[fact] = (a, b)
    if (
        ours.tls13_group
        and theirs.groups
        and _group(ours.tls13_group) not in {_group(g) for g in theirs.groups}
    ):
        out["tls13_group"] = (ours.tls13_group, theirs.groups)
    if theirs.fs_offered is False:
        fs_ours = (
            ours.protocols.get("TLSv1.3")
            or ours.dhe
            or any(s.startswith(("TLS_ECDHE_", "TLS_DHE_")) for s in ours.preferred.values())
        )
        if fs_ours:
            out["fs_offered"] = (True, False)
    return out


def facts_of(ours: ScanFacts, ca_file: Path) -> dict[str, object]:
    """Our facts under the comparison's names."""
    out: dict[str, object] = {f"protocol:{p}": ours.protocols.get(p) for p in oracle.PROTOCOLS}
    out |= {f"class:{k}": ours.classes.get(k) for k in WEAK_CLASSES + INFO_CLASSES}
    out |= {"non_fs": ours.non_fs, "secure_renegotiation": ours.secure_renegotiation}
    out |= {"compression": ours.compression, "stapled": ours.stapled}
    out |= {f"preferred:{p}": s for p, s in ours.preferred.items()}
    if ours.dhe:
        out["dh_bits"] = ours.dh_bits
    if ours.served_chain:
        chain = chain_facts(ours.served_chain, trust_anchors(str(ca_file)))
        out["chain_count"] = len(ours.served_chain)
        out["chain_complete"] = chain.complete
        out["chain_misordered"] = None if chain.ordered is None else not chain.ordered
        out["chain_superfluous"] = chain.superfluous
    return out


def oracle_facts(theirs: OracleFacts) -> dict[str, object]:
    out: dict[str, object] = {f"protocol:{p}": theirs.protocols.get(p) for p in oracle.PROTOCOLS}
    out |= {f"class:{k}": theirs.classes.get(k) for k in WEAK_CLASSES + INFO_CLASSES}
    out |= {"non_fs": theirs.non_fs, "secure_renegotiation": theirs.secure_renegotiation}
    out |= {"compression": theirs.compression, "stapled": theirs.stapled, "dh_bits": theirs.dh_bits}
    out |= {f"preferred:{p}": s for p, s in theirs.preferred.items()}
    out |= {"chain_count": theirs.chain_count, "chain_complete": theirs.chain_complete}
    out |= {"chain_misordered": theirs.chain_misordered}
    return out


def _ids(plan: Iterable[tuple[str, str]]) -> list[str]:
    return [f"{w}-{p}" for w, p in plan]


def _known(weak: str, tool: str, fact: str) -> bool:
    keys = {(weak, tool, fact), ("*", tool, fact), ("*", tool, fact.split(":")[0] + ":*")}
    return any(k in KNOWN for k in keys)


def _check(matrix: Matrix, tool: str, rep: tuple[str, str]) -> None:
    testssl = tool == "testssl.sh"
    run = matrix.oracle.testssl if testssl else matrix.oracle.sslscan
    theirs = run[f"{rep[0]}-{rep[1]}"]
    judged = [t for t in matrix.targets if representative(t, PLAN if testssl else SSLSCAN_PLAN) == rep]
    assert judged, rep
    problems = []
    for t in judged:
        for fact, (a, b) in differences(matrix.ours[t.id], theirs, matrix.servers.ca_file).items():
            if not _known(t.weak, tool, fact):
                problems.append(f"{t.id}: {fact}: mailcanary {a!r}, {tool} {b!r}")
    assert not problems, "\n".join(problems) + f"\nours: {matrix.ours[judged[0].id]}\n{tool}: {theirs}"


@pytest.mark.parametrize("rep", list(PLAN), ids=_ids(PLAN))
def test_agrees_with_testssl(matrix: Matrix, rep: tuple[str, str]) -> None:
    """Every fact mailcanary reports on every endpoint of this server agrees with testssl.sh."""
    _check(matrix, "testssl.sh", rep)


@pytest.mark.parametrize("rep", SSLSCAN_PLAN, ids=_ids(SSLSCAN_PLAN))
def test_agrees_with_sslscan(matrix: Matrix, rep: tuple[str, str]) -> None:
    """… and with sslscan (every accepted suite listed: classes, forward secrecy, DH size)."""
    _check(matrix, "sslscan", rep)


@pytest.mark.parametrize("rep", list(PLAN), ids=_ids(PLAN))
def test_the_weakness_is_seen(matrix: Matrix, rep: tuple[str, str]) -> None:
    """The matrix is not vacuous: each server shows what it was configured to show, to mailcanary on
    every one of its endpoints, and to each oracle whose checks cover that fact (None from an oracle
    whose check ran would let a broken run pass the comparison)."""
    judged = [t for t in matrix.targets if t.weak == rep[0]]  # every endpoint: the weakness is everywhere
    rep_t = next(t for t in judged if (t.weak, t.protocol) == rep)
    want = EXPECT[rep[0]]
    for t in judged:
        ours = facts_of(matrix.ours[t.id], matrix.servers.ca_file)
        assert {k: ours.get(k) for k in want} == want, f"mailcanary on {t.id}: {matrix.ours[t.id]}"
    theirs = oracle_facts(matrix.oracle.testssl[rep_t.id])
    covered = {k: v for k, v in want.items() if _covered(k, PLAN[rep])}
    assert {k: theirs.get(k) for k in covered} == covered, matrix.oracle.testssl[rep_t.id].raw


def _covered(fact: str, checks: tuple[str, ...]) -> bool:
    """Whether testssl's ``checks`` report ``fact`` (in our terms)."""
    if fact.startswith("protocol:"):
        return "-p" in checks
    if fact in ("class:rc4",):
        return "-4" in checks
    if fact.startswith("class:"):
        return "-s" in checks
    if fact == "non_fs":
        return "-f" in checks and "-p" in checks
    if fact == "dh_bits":
        return "-J" in checks
    if fact == "chain_superfluous":
        return False  # testssl.sh counts the certificates, it does not say which are off the path
    return "-S" in checks  # chain_*, stapled


def test_connections_per_scan(matrix: Matrix) -> None:
    """The cost: at most 15 connections per endpoint per full scan, and the count we report is the
    count the server saw (the relay in front of gnutls-serv, the fake's own counter)."""
    assert {k: v.connections for k, v in matrix.ours.items() if v.connections > 15} == {}
    assert {k: matrix.ours[k].connections for k in matrix.relay_counts} == matrix.relay_counts


@pytest.mark.parametrize("weak", ["ocspgood", "ocsprevoked"])
def test_staple_status_third_look(matrix: Matrix, weak: str) -> None:
    """testssl.sh 3.0.8 says only "offered" without --phone-out; the staple's status is checked against
    ``openssl s_client -status`` (good / revoked)."""
    t = next(t for t in matrix.targets if t.weak == weak)
    ours = matrix.ours[t.id]
    assert ours.ocsp_staple is not None and ours.served_chain
    chain = chain_facts(ours.served_chain, trust_anchors(str(matrix.servers.ca_file)))
    assert chain.issuer is not None
    status = staple_status(ours.ocsp_staple, ours.served_chain[0], chain.issuer, time.time())
    assert status == third_look_staple(t) == weak.removeprefix("ocsp")


@pytest.mark.parametrize(("protocol", "after"), [("smtp", 3), ("imap", 2), ("pop3", 5)])
async def test_rate_limit_is_unknown_never_refused(matrix: Matrix, protocol: str, after: int) -> None:
    """A server that starts refusing before TLS after ``after`` connections (the real baseline server
    behind a rate-limiting front): what the scan could not ask stays unknown; nothing is a false
    "not accepted"; every fact it did get agrees with the unlimited scan of the same server."""
    full = facts_of(matrix.ours[f"baseline-{protocol}"], matrix.servers.ca_file)
    real = matrix.servers.target("baseline", protocol)
    async with rate_limited(real.host, real.port, protocol, after) as (port, log):
        limited = Target("baseline", protocol, "127.0.0.1", port, real.software)
        facts = await scan(settings_for(limited), Recorder(transcript=[]))
    assert facts.rate_limited and log.count("refused") == 1  # stopped at the first refusal
    assert facts.connections == after + 1
    got = facts_of(facts, matrix.servers.ca_file)
    assert {k: v for k, v in got.items() if v is not None and v != full.get(k)} == {}
    assert any(v is None for k, v in got.items() if full.get(k) is not None)  # some were not reached
    assert not facts.complete


def test_the_oracle_resolves_nothing_off_loopback(tmp_path: Path) -> None:
    """testssl.sh resolves ``invalid.`` to probe its openssl (about 30 lookups per run, ``--nodns none``
    or not): the oracle runs it where the only name server is 127.0.0.1, never the machine's resolver."""
    argv = oracle.loopback_only(["cat", "/etc/resolv.conf"], tmp_path)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert [line.split()[1] for line in out.splitlines() if line.startswith("nameserver")] == ["127.0.0.1"]
    argv = oracle.testssl_argv(Target("x", "smtp", "127.0.0.1", 25, "postfix"), ["-p"], tmp_path / "j", None)
    assert "--phone-out" not in argv and argv[argv.index("--ip") + 1] == "127.0.0.1"
    assert argv[argv.index("--nodns") + 1] == "none"


def test_known_disagreements_still_happen(matrix: Matrix) -> None:
    """Every row of KNOWN is seen in this run: a disagreement that went away (a fixed tool, a changed
    server) must leave the table, so the table always tells the truth."""
    seen: set[tuple[str, str, str]] = set()
    for tool, plan in (("testssl.sh", list(PLAN)), ("sslscan", list(SSLSCAN_PLAN))):
        run = matrix.oracle.testssl if tool == "testssl.sh" else matrix.oracle.sslscan
        for t in matrix.targets:
            rep = representative(t, plan)
            if rep is None:
                continue
            for fact in differences(matrix.ours[t.id], run[f"{rep[0]}-{rep[1]}"], matrix.servers.ca_file):
                for key in ((t.weak, tool, fact), ("*", tool, fact), ("*", tool, fact.split(":")[0] + ":*")):
                    if key in KNOWN:
                        seen.add(key)
    assert set(KNOWN) - seen == set()
