"""The domain checks against real parts on loopback: NSD + Unbound (a DNSSEC-signed zone signed at test
time, and a broken-signature one), two Postfix MX on 127.0.0.3 / 127.0.0.4 sharing one port (one good,
one with a wrong-name certificate that is also an open relay offering AUTH in clear), an HTTPS server
for MTA-STS policies, and an OCSP responder speaking real OCSP over HTTP. Every case asserts exact values.
Clients connect from 127.0.0.2 (Postfix would treat 127.0.0.1 as itself).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from probes.domain import dane, dnsbl, mtasts, mustrefuse
from probes.domain.mx import MXCheckSettings, check_address, check_all, resolution_dnssec, resolve_mx
from probes.recorder import Recorder
from probes.tls.hygiene import OCSPCache, key_facts, ocsp_status
from probes.wire.certs import LEGACY_VERSIONS, openssl_offers
from probes.wire.dns import DNSError, DNSSettings, query
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import MailStack, free_ports
from tests.mailstack.variants import Issued, TestPKI, VariantSet, reap_orphans
from tests.support import dnsstack
from tests.support.wait import eventually_async

# Outside CI a machine without nsd/unbound skips; in CI (.ci/run sets CI) their absence is a failure, so
# a green CI run has really checked a DNSSEC-signed domain.
pytestmark = pytest.mark.skipif(
    not dnsstack.available() and not os.environ.get("CI"), reason="needs Debian's nsd and unbound"
)

SOURCE = "127.0.0.2"
MX1_ADDR, MX2_ADDR, SUB_ADDR = "127.0.0.3", "127.0.0.4", "127.0.0.5"
SILENT_ADDR, CLOSED_ADDR = "127.0.0.6", "127.0.0.7"
DOMAIN = "example.test"
MX1, MX2 = f"mx1.{DOMAIN}", f"mx2.{DOMAIN}"
POLICY_CASES = ("good", "redirect", "wrongtype", "oversize", "uncovered")


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


@dataclass
class World:
    pki: TestPKI
    inter: Issued
    good: Issued
    wrong: Issued
    port: int
    https_port: int
    ocsp_port: int
    dns: DNSSettings
    variants: VariantSet
    stack: dnsstack.DNSStack
    ocsp_served: Issued  # the leaf the "ocsp" Dovecot variant presents (AIA: our responder)
    sub_port: int  # the "sub" Postfix on SUB_ADDR: sender addresses bound to logins

    def settings(self, **kw: object) -> MXCheckSettings:
        return MXCheckSettings(
            port=self.port,
            timeout=5.0,
            ca_file=str(self.variants.ca_file),
            source_address=SOURCE,
            helo_name="canary.example.net",
            **kw,  # type: ignore[arg-type]
        )


def zones(
    w_port: int, good: Issued, wrong: Issued, next_key: ec.EllipticCurvePrivateKey
) -> list[dnsstack.ZoneSpec]:
    next_spki = hashlib.sha256(
        next_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).hexdigest()
    tlsa = f"_{w_port}._tcp"
    policy_hosts = "".join(
        f'mta-sts.{case} A 127.0.0.1\n_mta-sts.{case} TXT "v=STSv1; id={case}1"\n'
        for case in POLICY_CASES
        if case != "good"
    )
    example = (
        f"@ MX 10 mx1\n@ MX 20 mx2\nmx1 A {MX1_ADDR}\nmx2 A {MX2_ADDR}\n"
        f"{tlsa}.mx1 TLSA 3 1 1 {spki_sha256(good.cert)}\n"
        f"{tlsa}.mx1 TLSA 3 1 1 {next_spki}\n"  # the rollover pair: current + next key
        f"{tlsa}.mx2 TLSA 3 1 1 {next_spki}\n"  # stale: does not match mx2's key
        '_mta-sts TXT "v=STSv1; id=20261201"\n'
        '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@example.test"\n'
        "mta-sts A 127.0.0.1\n"
        "nomx A 127.0.0.3\n"  # no MX: the implicit MX (RFC 5321 §5.1)
        "nullmx MX 0 .\n"
        # issue 19: an MX on IPv6 loopback (and IPv4) beside an IPv4 source address
        "v6 MX 10 v6mx\nv6mx AAAA ::1\nv6mx A 127.0.0.1\n"
        # issue 19: one MX host in an insecure zone (the MX answer itself is secure)
        "mixed MX 10 mx1\nmixed MX 20 insecure-mx.dnsbl.test.\n"
        # issue 19: dead addresses: a silent listener (accepts, never answers) and a closed port
        f"dead MX 10 silent\nsilent A {SILENT_ADDR}\ndead MX 20 closed\nclosed A {CLOSED_ADDR}\n"
        + policy_hosts
    )
    bogus = f"@ MX 10 mx1\nmx1 A {MX1_ADDR}\n{tlsa}.mx1 TLSA 3 1 1 {spki_sha256(good.cert)}\n"
    bl = (
        '3.0.0.127 A 127.0.0.2\n3.0.0.127 TXT "listed: test entry"\n'
        "4.0.0.127 A 127.0.0.4\n4.0.0.127 A 127.0.0.2\n"
        "5.0.0.127 A 127.255.255.254\n"
        "insecure-mx A 127.0.0.4\n"
    )
    return [
        dnsstack.ZoneSpec(DOMAIN, example, signed=True),
        dnsstack.ZoneSpec("bogus.test", bogus, signed=True, broken=[f"{tlsa}.mx1"]),
        dnsstack.ZoneSpec("dnsbl.test", bl),
    ]


@pytest.fixture(scope="module")
def world(mailstack: MailStack) -> Iterator[World]:
    if not dnsstack.available():
        pytest.fail("nsd and unbound are missing: run sudo scripts/install-deps.sh", pytrace=False)
    reap_orphans()
    pki = TestPKI("mailcanary domain checks")
    inter = pki.ca("domain intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(1000))
    good = pki.leaf([MX1], issuer=inter, common_name=MX1)
    wrong = pki.leaf(["other.example.test"], issuer=inter, common_name="other.example.test")
    port, https_port, ocsp_port, sub_port = free_ports(4)
    vs = VariantSet(mailstack, pki)
    vs.add(
        "mx1",
        [good, inter],
        dovecot_ports=("imap",),
        smtp_host=MX1_ADDR,
        smtp_port=port,
        postfix_settings={
            "smtpd_tls_security_level": "encrypt",  # MAIL FROM before STARTTLS refused
            "smtpd_sender_restrictions": (
                f"permit_sasl_authenticated, check_sender_access inline:{{{DOMAIN}=REJECT}}"
            ),
        },
    )
    vs.add(
        "mx2",
        [wrong, inter],
        dovecot_ports=("imap",),
        smtp_host=MX2_ADDR,
        smtp_port=port,
        # The classic open relay: the whole of 127/8 (our client 127.0.0.2 too) is "mynetworks".
        # Nothing can leave: foreign mail goes to discard(8) (never to smtp), and no test sends DATA.
        postfix_settings={
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "default_transport": "discard:open relay variant",
            "relay_transport": "discard:open relay variant",
            "smtpd_tls_auth_only": "no",
        },
    )
    # Submission that binds senders to logins (the forged-sender check must be refused there).
    owner = mailstack.test_addresses[0]
    vs.add(
        "sub",
        [good, inter],
        dovecot_ports=("imap",),
        smtp_host=SUB_ADDR,
        smtp_port=sub_port,
        postfix_settings={
            "smtpd_sender_login_maps": f"inline:{{{owner}={owner}}}",
            "smtpd_sender_restrictions": "reject_authenticated_sender_login_mismatch",
            # Nothing can leave (discard(8), never smtp) and no test sends DATA.
            "default_transport": "discard:forged sender variant",
            "relay_transport": "discard:forged sender variant",
        },
    )
    # A Dovecot presenting a leaf whose AIA names the OCSP responder: hygiene on a TLS check's endpoint.
    served = make_ocsp_leaf(pki, inter, ocsp_port, f"imap.{DOMAIN}")
    vs.add("ocsp", [served, inter], dovecot_ports=("imaps",))
    specs = zones(port, good, wrong, ec.generate_private_key(ec.SECP256R1()))
    with dnsstack.DNSStack(specs) as stack, vs:
        dns = DNSSettings(nameservers=("127.0.0.1",), port=stack.resolver_port, timeout=3.0)
        yield World(pki, inter, good, wrong, port, https_port, ocsp_port, dns, vs, stack, served, sub_port)


def expected_legacy(accepted: bool) -> dict[str, bool | None]:
    return {name: (accepted if openssl_offers(v) else None) for name, v in LEGACY_VERSIONS.items()}


# ---- DNS and MX --------------------------------------------------------------------------------------


async def test_dns_status_secure_insecure_bogus(world: World) -> None:
    mxa = await query(f"{DOMAIN}.", "MX", world.dns)
    assert (mxa.rcode, mxa.dnssec) == ("NOERROR", "secure")
    assert sorted(r.to_text() for r in mxa.records) == [f"10 {MX1}.", f"20 {MX2}."]
    nx = await query(f"nothing.{DOMAIN}.", "A", world.dns)
    assert (nx.rcode, nx.dnssec, nx.records) == ("NXDOMAIN", "secure", ())
    bl = await query("3.0.0.127.dnsbl.test.", "A", world.dns)
    assert (bl.dnssec, [r.to_text() for r in bl.records]) == ("insecure", ["127.0.0.2"])
    bogus = await query(f"_{world.port}._tcp.mx1.bogus.test.", "TLSA", world.dns)
    assert (bogus.rcode, bogus.dnssec, len(bogus.records)) == ("NOERROR", "bogus", 1)
    with pytest.raises(DNSError) as err:  # outside our zones: NSD refuses, Unbound says SERVFAIL
        await query("mailcanary.example.", "A", world.dns)
    assert err.value.rcode == "SERVFAIL"


async def test_resolve_mx_fallback_and_null(world: World) -> None:
    res = await resolve_mx(DOMAIN, world.dns)
    assert [(h.name, h.preference, h.addresses, h.dnssec) for h in res.hosts] == [
        (MX1, 10, (MX1_ADDR,), "secure"),
        (MX2, 20, (MX2_ADDR,), "secure"),
    ]
    assert (res.implicit, res.null_mx, res.dnssec, resolution_dnssec(res)) == (
        False,
        False,
        "secure",
        "secure",
    )
    implicit = await resolve_mx(f"nomx.{DOMAIN}", world.dns)
    assert implicit.implicit and [(h.name, h.addresses) for h in implicit.hosts] == [
        (f"nomx.{DOMAIN}", (MX1_ADDR,))
    ]
    null = await resolve_mx(f"nullmx.{DOMAIN}", world.dns)
    assert (null.null_mx, null.hosts, null.implicit) == (True, (), False)
    capped = await resolve_mx(DOMAIN, world.dns, max_hosts=1)
    assert ([h.name for h in capped.hosts], capped.dropped_hosts) == ([MX1], 1)


async def test_every_mx_and_address_on_the_port(world: World) -> None:
    res = await resolve_mx(DOMAIN, world.dns)
    reports = await check_all(res, world.settings(check_plain_mail_from=True), Recorder())
    by_mx = {r.mx: r for r in reports}
    assert [(r.mx, r.address) for r in reports] == [(MX1, MX1_ADDR), (MX2, MX2_ADDR)]
    good, bad = by_mx[MX1], by_mx[MX2]
    assert good.tls is not None and bad.tls is not None
    assert (good.tls.starttls_offered, good.tls.handshake_ok, good.tls.verified, good.tls.hostname_match) == (
        True,
        True,
        True,
        True,
    )
    assert good.tls.version == "TLSv1.3" and good.tls.server_name == MX1
    assert good.tls.legacy == expected_legacy(False)
    assert (bad.tls.handshake_ok, bad.tls.verified, bad.tls.verify_reason, bad.tls.hostname_match) == (
        True,
        False,
        "hostname_mismatch",
        False,
    )
    assert (bad.tls.auth_before_tls, good.tls.auth_before_tls) == (True, False)
    for r in (good, bad):
        assert set(r.phases) >= {"tls_connect", "tls_handshake", "tls_legacy"}
        assert all(v >= 0 for v in r.phases.values())
        assert r.error is None
    assert good.chain[0] == world.good.der and bad.chain[0] == world.wrong.der
    assert (good.plain_mail_from_code, good.plain_mail_from_refused) == (530, True)
    assert (bad.plain_mail_from_code, bad.plain_mail_from_refused) == (250, False)


async def test_unreachable_address_is_a_fact_not_a_crash(world: World) -> None:
    report = await check_address(MX1, "127.0.0.9", world.settings(), Recorder())  # nobody listens there
    assert (report.reason, report.tls) == ("tls_connect", None)
    assert report.error is not None and "127.0.0.9" in report.error


# ---- DANE ----------------------------------------------------------------------------------------------


async def test_dane_matching_stale_rollover_bogus(world: World) -> None:
    records, status = await dane.fetch_tlsa(MX1, world.dns, port=world.port)
    good = dane.evaluate(records, [world.good.der, world.inter.der], status)
    assert (good.present, good.dnssec, good.usable, good.matched, good.rollover_ready, good.valid) == (
        True,
        "secure",
        2,
        True,
        True,
        True,
    )
    records2, status2 = await dane.fetch_tlsa(MX2, world.dns, port=world.port)
    stale = dane.evaluate(records2, [world.wrong.der, world.inter.der], status2)
    assert (stale.present, stale.dnssec, stale.usable, stale.matched, stale.valid) == (
        True,
        "secure",
        1,
        False,
        False,
    )
    records3, status3 = await dane.fetch_tlsa("mx1.bogus.test", world.dns, port=world.port)
    bogus = dane.evaluate(records3, [world.good.der, world.inter.der], status3)
    assert (bogus.present, bogus.dnssec, bogus.matched, bogus.valid) == (True, "bogus", True, False)
    none, none_status = await dane.fetch_tlsa(MX1, world.dns, port=world.port + 1)
    assert (none, none_status) == ([], "secure")  # authenticated denial: no TLSA


# ---- MTA-STS / TLS-RPT ---------------------------------------------------------------------------------


POLICY_PEERS: list[str] = []  # the client address of every policy request, in order


@pytest.fixture
async def https(world: World, tmp_path: Path) -> AsyncIterator[int]:
    """The policy server: one certificate for every mta-sts.<case> name, dispatch by Host."""
    names = [f"mta-sts.{DOMAIN}"] + [f"mta-sts.{c}.{DOMAIN}" for c in POLICY_CASES if c != "good"]
    leaf = world.pki.leaf(names, issuer=world.inter, common_name=names[0])
    files = TestPKI.write_chain(tmp_path, "sts", [leaf, world.inter], world.variants.ca_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(files.chain), str(files.key))
    good = f"version: STSv1\nmode: enforce\nmx: {MX1}\nmx: *.{DOMAIN}\nmax_age: 604800\n"

    async def policy(request: web.Request) -> web.StreamResponse:
        POLICY_PEERS.append(request.remote or "")
        host = request.host.split(":")[0]
        case = host.removeprefix("mta-sts.").removesuffix(DOMAIN).rstrip(".") or "good"
        if case == "redirect":
            raise web.HTTPFound(f"https://mta-sts.{DOMAIN}:{world.https_port}/.well-known/mta-sts.txt")
        if case == "wrongtype":
            return web.Response(text=good, content_type="text/html")
        if case == "oversize":
            return web.Response(text=good + "x" * (70 * 1024), content_type="text/plain")
        if case == "uncovered":
            return web.Response(text=good.replace(f"mx: *.{DOMAIN}\n", ""), content_type="text/plain")
        return web.Response(text=good, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/.well-known/mta-sts.txt", policy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", world.https_port, ssl_context=ctx)
    await site.start()
    try:
        yield world.https_port
    finally:
        await runner.cleanup()


async def test_mta_sts_policies(world: World, https: int) -> None:
    client = ssl.create_default_context(cafile=str(world.variants.ca_file))
    record = await mtasts.fetch_sts_record(DOMAIN, world.dns)
    assert record == mtasts.STSRecord(True, "20261201")
    rpt = await mtasts.fetch_tlsrpt_record(DOMAIN, world.dns)
    assert rpt == mtasts.TLSRPTRecord(True, ("mailto:tlsrpt@example.test",))
    results = {}
    for case in POLICY_CASES:
        domain = DOMAIN if case == "good" else f"{case}.{DOMAIN}"
        results[case] = await mtasts.fetch_policy(
            domain, world.dns, ssl_context=client, port=https, timeout=5
        )
    good = results["good"]
    assert (good.status, good.error, good.content_type) == (200, None, "text/plain")
    assert good.policy == mtasts.Policy(True, "enforce", 604800, (MX1, f"*.{DOMAIN}"))
    assert all(mtasts.mx_covered(h, good.policy.mx) for h in (MX1, MX2))
    assert (results["redirect"].status, results["redirect"].error, results["redirect"].policy) == (
        302,
        "redirect",
        None,
    )
    assert (results["wrongtype"].error, results["wrongtype"].content_type) == ("content_type", "text/html")
    assert (results["oversize"].error, results["oversize"].size) == ("too_large", mtasts.MAX_POLICY_BYTES + 1)
    uncovered = results["uncovered"]
    assert uncovered.error is None and uncovered.policy is not None
    assert [mtasts.mx_covered(h, uncovered.policy.mx) for h in (MX1, MX2)] == [True, False]
    # a certificate we do not trust: the policy must not be used
    untrusting = ssl.create_default_context()
    untrusting.load_verify_locations(cadata=TestPKI("other").root.pem.decode())
    bad_tls = await mtasts.fetch_policy(DOMAIN, world.dns, ssl_context=untrusting, port=https, timeout=5)
    assert (bad_tls.error, bad_tls.policy) == ("tls", None)


# ---- DNSBL ---------------------------------------------------------------------------------------------


async def test_dnsbl(world: World) -> None:
    listed = await dnsbl.lookup("127.0.0.3", "dnsbl.test", world.dns)
    assert listed == dnsbl.Listing("dnsbl.test", "127.0.0.3", "listed", ("127.0.0.2",), "listed: test entry")
    multi = await dnsbl.lookup("127.0.0.4", "dnsbl.test", world.dns, want_reason=False)
    assert (multi.status, multi.codes) == ("listed", ("127.0.0.2", "127.0.0.4"))
    refused = await dnsbl.lookup("127.0.0.5", "dnsbl.test", world.dns)
    assert (refused.status, refused.codes, refused.reason) == ("refused", (), None)
    clean = await dnsbl.lookup("127.0.0.6", "dnsbl.test", world.dns)
    assert clean.status == "not_listed"
    broken = await dnsbl.lookup("127.0.0.6", "nolist.example", world.dns)
    assert broken.status == "error"


# ---- must-refuse ---------------------------------------------------------------------------------------


def ep(address: str, world: World, mode: str = "starttls") -> Endpoint:
    return Endpoint(
        address,
        world.port,
        tls_mode=mode,  # type: ignore[arg-type]
        tls=TLSSettings(ca_file=str(world.variants.ca_file), server_name=MX1),
        source_address=SOURCE,
    )


async def test_must_refuse(world: World) -> None:
    rec = Recorder(transcript=[])
    relay_ok = await mustrefuse.open_relay(
        ep(MX1_ADDR, world), rec, sender="canary@example.net", foreign_recipient="someone@elsewhere.invalid"
    )
    assert relay_ok == mustrefuse.RefusalResult("open_relay", True, 554, "RCPT", True)
    relay_bad = await mustrefuse.open_relay(
        ep(MX2_ADDR, world), rec, sender="canary@example.net", foreign_recipient="someone@elsewhere.invalid"
    )
    assert relay_bad == mustrefuse.RefusalResult("open_relay", False, 250, "RCPT", False)
    own_ok = await mustrefuse.own_domain_sender(
        ep(MX1_ADDR, world), rec, sender=f"ceo@{DOMAIN}", recipient=f"postmaster@{DOMAIN}"
    )
    assert own_ok == mustrefuse.RefusalResult("own_domain_sender", True, 554, "RCPT", True)
    own_bad = await mustrefuse.own_domain_sender(
        ep(MX2_ADDR, world), rec, sender=f"ceo@{DOMAIN}", recipient=f"postmaster@{DOMAIN}"
    )
    assert (own_bad.refused, own_bad.code, own_bad.success) == (False, 250, False)
    auth_ok = await mustrefuse.auth_before_tls(ep(MX1_ADDR, world), rec)
    assert (auth_ok.refused, auth_ok.code, auth_ok.success) == (True, 530, True)
    auth_bad = await mustrefuse.auth_before_tls(ep(MX2_ADDR, world), rec)
    assert auth_bad == mustrefuse.RefusalResult("auth_before_tls", False, 334, "AUTH", False)
    assert rec.transcript is not None and not any(line.startswith("C: smtp DATA") for line in rec.transcript)


async def test_forged_sender_after_auth(world: World, mailstack: MailStack) -> None:
    """On submission, after AUTH over verified TLS: MAIL FROM another user's address must be refused.
    "sub" binds senders to logins (refused, 553); mx2 permits any sender once authenticated
    (accepted: the check fails). The dialogue stops at RCPT; the password never reaches the transcript."""
    from probes.auth.credentials import Credentials

    owner, other = mailstack.test_addresses[0], mailstack.test_addresses[1]
    creds = Credentials(owner, mailstack.password(owner))
    rec = Recorder(transcript=[])
    sub = Endpoint(
        SUB_ADDR,
        world.sub_port,
        tls_mode="starttls",
        tls=TLSSettings(ca_file=str(world.variants.ca_file), server_name=MX1),
        source_address=SOURCE,
    )
    refused = await mustrefuse.forged_sender(sub, rec, credentials=creds, forged=other, recipient=owner)
    # Postfix delays the sender verdict to RCPT (smtpd_delay_reject = yes, its default)
    assert refused == mustrefuse.RefusalResult("forged_sender", True, 553, "RCPT", True)
    # The owner's own address is taken (an authenticated RCPT elsewhere, to discard(8), never followed by
    # DATA): the refusal above is the login map's doing, not a blanket one.
    own = await mustrefuse.forged_sender(
        sub, rec, credentials=creds, forged=owner, recipient="someone@elsewhere.invalid"
    )
    assert (own.refused, own.code, own.stage) == (False, 250, "RCPT")
    mx2 = Endpoint(
        MX2_ADDR,
        world.port,
        tls_mode="starttls",
        tls=TLSSettings(ca_file=str(world.variants.ca_file), server_name="other.example.test"),
        source_address=SOURCE,
    )
    accepted = await mustrefuse.forged_sender(
        mx2, rec, credentials=creds, forged=other, recipient="someone@elsewhere.invalid"
    )
    assert accepted == mustrefuse.RefusalResult("forged_sender", False, 250, "RCPT", False)
    assert rec.transcript is not None
    assert not any(line.startswith("C: smtp DATA") for line in rec.transcript)
    assert not any(creds.password in line for line in rec.transcript)


# ---- OCSP ----------------------------------------------------------------------------------------------


def ocsp_leaf(world: World, name: str) -> Issued:
    return make_ocsp_leaf(world.pki, world.inter, world.ocsp_port, name)


def make_ocsp_leaf(pki: TestPKI, inter: Issued, ocsp_port: int, name: str) -> Issued:
    """A leaf whose AIA names our responder (TestPKI leaves have no AIA): re-signed by the intermediate."""
    base = pki.leaf([name], issuer=inter, common_name=name)
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(f"http://127.0.0.1:{ocsp_port}/"),
            )
        ]
    )
    san = x509.SubjectAlternativeName([x509.DNSName(name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(base.cert.subject)
        .issuer_name(inter.cert.subject)
        .public_key(base.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(base.cert.not_valid_before_utc)
        .not_valid_after(base.cert.not_valid_after_utc)
        .add_extension(aia, critical=False)
        .add_extension(san, critical=False)
    )
    return Issued(builder.sign(inter.key, hashes.SHA256()), base.key)


@dataclass
class Responder:
    table: dict[int, str]  # serial -> "good" | "revoked" | "unknown"
    issued: dict[int, x509.Certificate]  # serial -> certificate (the response builder needs it)
    asked: list[int]  # serials asked, in order
    peers: list[str]  # the client address of each request, in order


@pytest.fixture
async def responder(world: World) -> AsyncIterator[Responder]:
    """A real OCSP responder over HTTP; answers signed by the intermediate (the issuer itself)."""
    state = Responder({}, {}, [], [])
    table, issued, asked = state.table, state.issued, state.asked

    async def answer(request: web.Request) -> web.Response:
        req = ocsp.load_der_ocsp_request(await request.read())
        asked.append(req.serial_number)
        state.peers.append(request.remote or "")
        status = table.get(req.serial_number, "unknown")
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED}.get(
            status, ocsp.OCSPCertStatus.UNKNOWN
        )
        cert = issued[req.serial_number]
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=world.inter.cert,
                algorithm=hashes.SHA1(),
                cert_status=cert_status,
                this_update=now - dt.timedelta(minutes=1),
                next_update=now + dt.timedelta(hours=1),
                revocation_time=now - dt.timedelta(days=1) if status == "revoked" else None,
                revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, world.inter.cert)
        )
        resp = builder.sign(world.inter.key, hashes.SHA256())
        return web.Response(
            body=resp.public_bytes(serialization.Encoding.DER), content_type="application/ocsp-response"
        )

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", world.ocsp_port).start()
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_ocsp_good_revoked_unknown_cached(world: World, responder: Responder) -> None:
    certs = {}
    for status in ("good", "revoked", "unknown"):
        leaf = ocsp_leaf(world, f"{status}.{DOMAIN}")
        responder.issued[leaf.cert.serial_number] = leaf.cert
        responder.table[leaf.cert.serial_number] = status
        certs[status] = leaf
    cache = OCSPCache()
    for status, leaf in certs.items():
        assert key_facts(leaf.der).ocsp_url == f"http://127.0.0.1:{world.ocsp_port}/"
        result = await ocsp_status(leaf.der, world.inter.der, cache=cache, timeout=5)
        assert result.status == status, result
        assert result.next_update is not None and result.this_update is not None
    assert responder.asked == [c.cert.serial_number for c in certs.values()]
    again = await ocsp_status(certs["good"].der, world.inter.der, cache=cache, timeout=5)
    assert again.status == "good" and cache.hits == 1
    assert responder.asked == [c.cert.serial_number for c in certs.values()]
    # signed by someone else than the issuer: invalid, never good
    other = world.pki.ca(
        "other CA", issuer=world.pki.root, not_before=world.pki.days(-1), not_after=world.pki.days(9)
    )
    forged = await ocsp_status(certs["good"].der, other.der, timeout=5)
    assert forged.status == "invalid"
    no_aia = await ocsp_status(world.good.der, world.inter.der, timeout=5)
    assert no_aia.status == "no_responder"


async def test_ocsp_unreachable(world: World) -> None:
    leaf = ocsp_leaf(world, f"down.{DOMAIN}")  # nobody listens on the responder port in this test
    result = await ocsp_status(leaf.der, world.inter.der, timeout=3)
    assert result.status == "unreachable"


# ---- the whole domain, and its report -------------------------------------------------------------------


async def test_probe_domain_report(world: World, https: int) -> None:
    from probes.domain.probe import DomainSettings, probe_domain, render_report

    settings = DomainSettings(
        domain=DOMAIN,
        dns=world.dns,
        mx=world.settings(check_plain_mail_from=True),
        dnsbl_zones=("dnsbl.test",),
        mta_sts_port=https,
        mta_sts_ca_file=str(world.variants.ca_file),
        must_refuse=True,
        timeout=5.0,
    )
    rec = Recorder(transcript=[])
    report = await probe_domain(settings, rec)
    assert [(a.report.mx, a.report.address) for a in report.addresses] == [(MX1, MX1_ADDR), (MX2, MX2_ADDR)]
    mx1, mx2 = report.addresses
    assert mx1.dane is not None and (mx1.dane.valid, mx1.dane.rollover_ready) == (True, True)
    assert mx2.dane is not None and (mx2.dane.present, mx2.dane.matched) == (True, False)
    assert [(li.status, li.codes) for li in mx1.listings] == [("listed", ("127.0.0.2",))]
    assert [(li.status, li.codes) for li in mx2.listings] == [("listed", ("127.0.0.2", "127.0.0.4"))]
    assert [(f.check, f.success) for f in mx1.refusals] == [
        ("open_relay", True),
        ("auth_before_tls", True),
        ("own_domain_sender", True),
    ]
    assert [(f.check, f.success) for f in mx2.refusals] == [
        ("open_relay", False),
        ("auth_before_tls", False),
        ("own_domain_sender", False),
    ]
    assert mx1.leaf is not None and (mx1.leaf.key_type, mx1.leaf.key_bits, mx1.leaf.ocsp_url) == (
        "ec",
        256,
        None,
    )
    assert mx1.ocsp is None  # no AIA responder named: not asked
    assert report.uncovered_mx == []
    assert report.problems == [
        f"{MX1}/{MX1_ADDR}: dnsbl_dnsbl.test",
        f"{MX2}/{MX2_ADDR}: cert_hostname_mismatch",
        f"{MX2}/{MX2_ADDR}: dane_invalid",
        f"{MX2}/{MX2_ADDR}: dnsbl_dnsbl.test",
        f"{MX2}/{MX2_ADDR}: accepts_open_relay",
        f"{MX2}/{MX2_ADDR}: accepts_auth_before_tls",
        f"{MX2}/{MX2_ADDR}: accepts_own_domain_sender",
    ]
    text = render_report(report)
    assert text.splitlines()[0] == f"domain {DOMAIN}"
    assert f"  MX: {MX1}, {MX2}  dnssec secure" in text
    assert "  MTA-STS policy: mode enforce, max_age 604800, MX uncovered: none" in text
    assert "    must refuse open_relay: ACCEPTED (250 at RCPT)" in text
    assert "    DANE present yes  dnssec secure  matches yes  rollover ready yes" in text
    assert "    scan       not checked (scan off): SSLv2/SSLv3, weak cipher classes" in text  # never "fine"
    assert text.splitlines()[-1].startswith("verdict: FAIL (")
    # the DNSBL reason is in the dialogue (logs), never in the report's fixed words
    assert any("listed: test entry" in line for line in rec.transcript or [])
    assert "listed: test entry" not in text


async def test_probe_domain_uncovered_and_lookup_failure(world: World, https: int) -> None:
    from probes.domain.probe import DomainSettings, probe_domain, render_report
    from probes.errors import ProbeError

    # the "uncovered" policy leaves mx2 out; the zone of uncovered.example.test has no MX: implicit, none
    settings = DomainSettings(
        domain=f"uncovered.{DOMAIN}",
        dns=world.dns,
        mx=world.settings(check_legacy=False),
        mta_sts_port=https,
        mta_sts_ca_file=str(world.variants.ca_file),
        timeout=5.0,
    )
    report = await probe_domain(settings, Recorder())
    assert report.sts_record == mtasts.STSRecord(True, "uncovered1")
    assert report.sts_policy is not None and report.sts_policy.error is None
    assert report.resolution is not None and report.resolution.implicit
    assert "verdict: FAIL" in render_report(report)
    with pytest.raises(ProbeError) as err:
        await probe_domain(DomainSettings(domain="outside.example", dns=world.dns), Recorder())
    assert err.value.reason == "dns_lookup"


# ---- the daemon's side: config entry, runner, metrics, mailcanary probe ------------------------------


def domain_config(world: World, https: int, tmp_path: Path) -> str:
    """A domain_checks entry for example.test (YAML), with everything turned on."""
    path = tmp_path / "mailcanary.yml"
    path.write_text(
        f"""
global: {{state_dir: {tmp_path / "state"}}}
domain_checks:
  - name: dom
    domain: {DOMAIN}
    interval: 1h
    timeout: 5s
    resolvers: [127.0.0.1]
    resolver_port: {world.stack.resolver_port}
    port: {world.port}
    ca_file: {world.variants.ca_file}
    source_address: {SOURCE}
    helo: canary.example.net
    dnsbl_zones: [dnsbl.test]
    mta_sts_port: {https}
    mta_sts_ca_file: {world.variants.ca_file}
    must_refuse: {{enabled: true, mail_from_before_tls: true}}
"""
    )
    return str(path)


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_domain_check_runner_metrics(world: World, https: int, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.config import load_config
    from exporter.metrics.collector import ExporterState, MailcanaryCollector, SeriesCache
    from exporter.registry import find
    from exporter.run.results import ResultStore
    from exporter.run.runner import Runner, make_masker
    from exporter.state.ledger import Ledger

    loaded = load_config(domain_config(world, https, tmp_path))
    found = find(loaded.config, "dom")
    assert found is not None and found[0].name == "domain"
    store = ResultStore()
    state = ExporterState(probes={"dom": "domain"})
    cache = SeriesCache(store, state)
    store.ensure(["dom"])
    runner = Runner(
        loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=store, masker=make_masker(loaded)
    )
    run = await runner.run(found[0], found[1])
    assert (run.success, run.reason) == (False, "domain_findings")
    assert run.message.startswith("7 findings: mx1.example.test/127.0.0.3: dnsbl_dnsbl.test; ")
    text = cache.text()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    assert text == generate_latest(registry).decode()  # pre-rendered = the reference renderer
    got = samples_of(text)

    def v(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    d = {"probe": "dom", "domain": DOMAIN}
    mx1 = {**d, "mx": MX1, "address": MX1_ADDR}
    mx2 = {**d, "mx": MX2, "address": MX2_ADDR}
    assert v("mailcanary_domain_check_success", probe="dom") == 0
    assert v("mailcanary_domain_check_runs_total", probe="dom", outcome="domain_findings") == 1
    assert v("mailcanary_domain_check_runs_total", probe="dom", outcome="success") == 0
    assert v("mailcanary_domain_findings", **d) == 7
    assert v("mailcanary_domain_mx_dnssec_valid", **d) == 1
    assert v("mailcanary_domain_mx_hosts", **d) == 2
    assert v("mailcanary_domain_mx_not_checked", **d, kind="hosts") == 0
    assert v("mailcanary_domain_mta_sts_record_valid", **d) == 1
    assert v("mailcanary_domain_mta_sts_policy_valid", **d) == 1
    assert v("mailcanary_domain_mta_sts_mode_info", **d, mode="enforce") == 1
    assert v("mailcanary_domain_mta_sts_max_age_seconds", **d) == 604800
    assert v("mailcanary_domain_mta_sts_mx_covered", **d, mx=MX1) == 1
    assert v("mailcanary_domain_mta_sts_mx_covered", **d, mx=MX2) == 1
    assert v("mailcanary_domain_tlsrpt_valid", **d) == 1
    for labels, good in ((mx1, True), (mx2, False)):
        b = 1 if good else 0
        assert v("mailcanary_domain_mx_up", **labels) == 1
        assert v("mailcanary_domain_mx_starttls_offered", **labels) == 1
        assert v("mailcanary_domain_mx_tls_handshake_ok", **labels) == 1
        assert v("mailcanary_domain_mx_cert_verified", **labels) == b
        assert v("mailcanary_domain_mx_hostname_match", **labels) == b
        assert v("mailcanary_domain_mx_auth_before_tls", **labels) == 1 - b
        assert v("mailcanary_domain_mx_mail_from_before_tls_code", **labels) == (530 if good else 250)
        assert v("mailcanary_domain_dane_present", **labels) == 1
        assert v("mailcanary_domain_dane_dnssec_valid", **labels) == 1
        assert v("mailcanary_domain_dane_match", **labels) == b
        assert v("mailcanary_domain_dnsbl_listed", **labels, zone="dnsbl.test") == 1
        assert v("mailcanary_domain_dnsbl_status", **labels, zone="dnsbl.test", status="listed") == 1
        assert v("mailcanary_domain_dnsbl_status", **labels, zone="dnsbl.test", status="refused") is None
        assert v("mailcanary_domain_must_refuse_success", **labels, check="open_relay") == b
        assert v("mailcanary_domain_must_refuse_code", **labels, check="open_relay") == (554 if good else 250)
        assert v("mailcanary_domain_must_refuse_success", **labels, check="auth_before_tls") == b
        assert v("mailcanary_domain_must_refuse_code", **labels, check="auth_before_tls") == (
            530 if good else 334
        )
        assert v("mailcanary_domain_must_refuse_success", **labels, check="own_domain_sender") == b
        assert v("mailcanary_domain_mx_cert_key_bits", **labels, key_type="ec") == 256
        assert v("mailcanary_domain_mx_cert_weak_key", **labels) == 0
        assert v("mailcanary_domain_mx_cert_weak_signature", **labels) == 0
        assert v("mailcanary_domain_mx_cert_signature_info", **labels, hash="sha256") == 1
        assert v("mailcanary_domain_mx_cert_scts", **labels) == 0
        assert (
            v("mailcanary_domain_mx_cert_ocsp_status", **labels, status="good") is None
        )  # no AIA: not asked
        # the TLS scan of each MX address (issue 21; scan is on by default)
        assert v("mailcanary_domain_mx_protocol_accepted", **labels, version="TLSv1.3") == 1
        assert v("mailcanary_domain_mx_protocol_accepted", **labels, version="SSLv3") == 0
        assert v("mailcanary_domain_mx_cipher_class_accepted", **labels, **{"class": "export"}) == 0
        assert (v("mailcanary_domain_mx_scan_connections", **labels) or 0) > 0
        assert v("mailcanary_domain_mx_scan_checked_timestamp_seconds", **labels) is not None
    assert v("mailcanary_domain_dane_rollover_ready", **mx1) == 1
    assert v("mailcanary_domain_mx_cert_verify_error_info", **mx2, reason="hostname_mismatch") == 1
    assert v("mailcanary_domain_mx_cert_verify_error_info", **mx1, reason="hostname_mismatch") is None
    assert "listed: test entry" not in text  # the DNSBL reason is never a label


async def test_domain_check_failing_lookup_is_dns_lookup(world: World, tmp_path: Path) -> None:
    from exporter.config import parse_config
    from exporter.registry import find
    from exporter.run.results import ResultStore
    from exporter.run.runner import Runner, make_masker
    from exporter.state.ledger import Ledger

    text = (
        f"domain_checks:\n  - name: gone\n    domain: outside.example\n    timeout: 3s\n"
        f"    resolvers: [127.0.0.1]\n    resolver_port: {world.stack.resolver_port}\n"
    )
    loaded = parse_config(text, "t.yml")
    found = find(loaded.config, "gone")
    assert found is not None
    runner = Runner(
        loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=ResultStore(), masker=make_masker(loaded)
    )
    run = await runner.run(found[0], found[1])
    assert (run.success, run.reason, run.detail) == (False, "dns_lookup", None)
    assert run.message == "MX lookup of outside.example failed: SERVFAIL"


async def test_mailcanary_probe_prints_the_domain_report(world: World, https: int, tmp_path: Path) -> None:
    import argparse
    import io

    from exporter.cli import EXIT_CRITICAL, _probe

    out = io.StringIO()
    args = argparse.Namespace(
        config=domain_config(world, https, tmp_path),
        names=["dom"],
        debug=False,
        warn_days=None,
        crit_days=None,
    )
    code = await _probe(args, out)
    lines = out.getvalue().splitlines()
    assert code == EXIT_CRITICAL
    assert lines[0] == "MAILCANARY CRITICAL - dom: domain_findings"
    assert lines[2].startswith("dom: FAILED domain_findings (run took ")
    assert f"  domain {DOMAIN}" in lines
    assert f"    MX: {MX1}, {MX2}  dnssec secure" in lines
    assert f"    MX {MX1} [{MX1_ADDR}]" in lines and f"    MX {MX2} [{MX2_ADDR}]" in lines
    assert "      must refuse open_relay: ACCEPTED (250 at RCPT)" in lines
    assert "      DANE present yes  dnssec secure  matches yes  rollover ready yes" in lines
    assert lines[-1].startswith("  verdict: FAIL (mx1.example.test/127.0.0.3: dnsbl_dnsbl.test; ")


async def test_hygiene_on_a_tls_check_endpoint(world: World, responder: Responder, tmp_path: Path) -> None:
    """A TLS check's own session gives the chain; the runner adds key facts and the OCSP answer (asked of
    the responder once, then cached until nextUpdate), rendered as mailcanary_tls_cert_* series."""
    from exporter.config import parse_config
    from exporter.metrics.collector import ExporterState, SeriesCache
    from exporter.registry import find
    from exporter.run.results import ResultStore
    from exporter.run.runner import Runner, make_masker
    from exporter.state.ledger import Ledger

    served = world.ocsp_served
    responder.issued[served.cert.serial_number] = served.cert
    responder.table[served.cert.serial_number] = "revoked"
    address = world.variants["ocsp"].address("imaps")
    host, port = address.rsplit(":", 1)
    text = (
        f"tls_checks:\n  - name: imaps\n    host: {host}\n    port: {port}\n    protocol: imap\n"
        f"    tls: implicit\n    check_legacy: false\n    timeout: 5s\n"
        f"    tls_config: {{ca_file: {world.variants.ca_file}, server_name: imap.{DOMAIN}}}\n"
    )
    loaded = parse_config(text, "t.yml")
    found = find(loaded.config, "imaps")
    assert found is not None
    store = ResultStore()
    state = ExporterState(probes={"imaps": "tls"})
    cache = SeriesCache(store, state)
    store.ensure(["imaps"])
    runner = Runner(
        loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=store, masker=make_masker(loaded)
    )
    first = await runner.run(found[0], found[1])
    second = await runner.run(found[0], found[1])
    # The responder says revoked: the check fails (issue 21; it was "success" while the series said revoked).
    assert (first.reason, second.reason) == ("tls_revoked", "tls_revoked")
    assert second.message == f"certificate of {address} is revoked (OCSP responder)"
    assert responder.asked == [served.cert.serial_number]  # the second run's answer came from the cache
    h = second.hygiene[address]
    assert (h.key.key_type, h.key.key_bits, h.key.weak_key, h.key.signature_hash) == (
        "ec",
        256,
        False,
        "sha256",
    )
    assert h.ocsp is not None and h.ocsp.status == "revoked"
    got = samples_of(cache.text())
    labels = {"probe": "imaps", "endpoint": address, "protocol": "imap"}

    def v(name: str, **extra: str) -> float | None:
        return got.get((name, frozenset({**labels, **extra}.items())))

    assert v("mailcanary_tls_cert_ocsp_status", status="revoked") == 1
    assert got.get(("mailcanary_tls_check_success", frozenset({("probe", "imaps")}))) == 0
    assert v("mailcanary_tls_cert_ocsp_status", status="good") == 0
    assert v("mailcanary_tls_cert_key_bits", key_type="ec") == 256
    assert v("mailcanary_tls_cert_weak_key") == 0
    assert v("mailcanary_tls_cert_weak_signature") == 0
    assert v("mailcanary_tls_cert_signature_info", hash="sha256") == 1
    assert v("mailcanary_tls_cert_scts") == 0
    validity = served.cert.not_valid_after_utc - served.cert.not_valid_before_utc
    assert v("mailcanary_tls_cert_validity_seconds") == validity.total_seconds()


async def test_daemon_schedules_a_domain_check(world: World, https: int, tmp_path: Path) -> None:
    """The real daemon: the probe-kind table gives domain_checks a job, /metrics serves its series and
    mailcanary_config_probes counts it as kind domain."""
    import aiohttp

    from exporter.daemon import Daemon

    daemon = Daemon(domain_config(world, https, tmp_path), "127.0.0.1:0")
    await daemon.start()
    try:
        host, port = daemon.http.bound[0]
        async with aiohttp.ClientSession() as session:

            async def metrics() -> str:
                async with session.get(f"http://{host}:{port}/metrics") as resp:
                    return await resp.text()

            text = await eventually_async(
                metrics,
                until=lambda t: (
                    'mailcanary_domain_check_runs_total{outcome="domain_findings",probe="dom"} 1.0' in t
                ),
                timeout=60,
                interval=0.5,
                message="the domain check run exported",
            )
        got = samples_of(text)
        assert got[("mailcanary_domain_check_success", frozenset({"probe": "dom"}.items()))] == 0
        assert got[("mailcanary_config_probes", frozenset({"kind": "domain"}.items()))] == 1
        assert got[("mailcanary_domain_findings", frozenset({"probe": "dom", "domain": DOMAIN}.items()))] == 7
        assert daemon.state.probes == {"dom": "domain"}
    finally:
        await daemon.shutdown()


# ---- CRL (optional) ------------------------------------------------------------------------------------


def crl_leaf(world: World, name: str, url: str) -> Issued:
    """A leaf whose CRL distribution point is ``url``, signed by the intermediate."""
    base = world.pki.leaf([name], issuer=world.inter, common_name=name)
    dp = x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(base.cert.subject)
        .issuer_name(world.inter.cert.subject)
        .public_key(base.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(base.cert.not_valid_before_utc)
        .not_valid_after(base.cert.not_valid_after_utc)
        .add_extension(dp, critical=False)
    )
    return Issued(builder.sign(world.inter.key, hashes.SHA256()), base.key)


def build_crl(
    world: World, revoked: list[int], *, signer: Issued | None = None, stale: bool = False
) -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    signer = signer or world.inter
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer.cert.subject)
        .last_update(now - dt.timedelta(days=2 if stale else 0, minutes=1))
        .next_update(now - dt.timedelta(days=1) if stale else now + dt.timedelta(hours=1))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(days=1))
            .build()
        )
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def test_crl_good_revoked_cached_and_refused(world: World) -> None:
    import time

    from exporter.metrics.domain import hygiene_families
    from probes.tls.hygiene import CRLCache, check_crl, crl_status

    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/inter.crl"
    good = crl_leaf(world, f"crl-good.{DOMAIN}", url)
    bad = crl_leaf(world, f"crl-bad.{DOMAIN}", url)
    body = build_crl(world, [bad.cert.serial_number])
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=body, content_type="application/pkix-crl")

    app = web.Application()
    app.router.add_get("/inter.crl", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        cache = CRLCache()
        first = await crl_status(good.der, world.inter.der, cache=cache, timeout=5)
        revoked = await crl_status(bad.der, world.inter.der, cache=cache, timeout=5)
        again = await crl_status(good.der, world.inter.der, cache=cache, timeout=5)
        assert (first.status, revoked.status, again.status) == ("good", "revoked", "good")
        assert first.next_update is not None and asked == ["/inter.crl", "/inter.crl"] and cache.hits == 1
    finally:
        await runner.cleanup()
    now = time.time()
    other = world.pki.ca(
        "crl other", issuer=world.pki.root, not_before=world.pki.days(-1), not_after=world.pki.days(9)
    )
    assert check_crl(build_crl(world, [], signer=other), good.der, world.inter.der, now).status == "invalid"
    assert check_crl(build_crl(world, [], stale=True), good.der, world.inter.der, now).status == "invalid"
    assert check_crl(b"garbage", good.der, world.inter.der, now).status == "invalid"
    down = await crl_status(good.der, world.inter.der, timeout=3)  # the server is gone now
    assert down.status == "unreachable"
    assert (await crl_status(world.good.der, world.inter.der)).status == "no_crl"
    fams = hygiene_families(
        [(["p", "e:25", "smtp"], key_facts(bad.der), None, revoked)],
        ["probe", "endpoint", "protocol"],
        "mailcanary_tls_",
    )
    crl = {
        s.labels["status"]: s.value
        for f in fams
        if f.name == "mailcanary_tls_cert_crl_status"
        for s in f.samples
    }
    assert crl == {"good": 0, "revoked": 1, "unreachable": 0, "invalid": 0, "no_crl": 0}


async def test_our_own_session_limit_is_queue_timeout_not_a_finding(world: World, tmp_path: Path) -> None:
    """With every slot of mx1's smtpd taken by something else of ours, the domain check must not report
    mx1 as having no TLS: it fails with queue_timeout (our limit), and once the slot is free it checks."""
    from exporter.config import parse_config
    from exporter.registry import find
    from exporter.run.results import ResultStore
    from exporter.run.runner import Runner, make_masker
    from exporter.state.ledger import Ledger

    text = (
        "global: {max_sessions: 1, queue_timeout: 1s}\n"
        f"domain_checks:\n  - name: q\n    domain: {DOMAIN}\n    timeout: 5s\n    max_mx: 1\n"
        f"    resolvers: [127.0.0.1]\n    resolver_port: {world.stack.resolver_port}\n"
        f"    port: {world.port}\n"
        f"    ca_file: {world.variants.ca_file}\n    source_address: {SOURCE}\n    check_legacy: false\n"
        "    check_mta_sts: false\n    check_ocsp: false\n"
    )
    loaded = parse_config(text, "t.yml")
    found = find(loaded.config, "q")
    assert found is not None
    runner = Runner(
        loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=ResultStore(), masker=make_masker(loaded)
    )
    held = Endpoint(MX1_ADDR, world.port, tls_mode="starttls")
    async with runner.slots.session(held, "smtp", Recorder()):
        queued = await runner.run(found[0], found[1])
    assert (queued.reason, queued.detail) == ("queue_timeout", None)
    assert queued.message.startswith(f"no session slot for {MX1}/{MX1_ADDR}: ")
    free = await runner.run(found[0], found[1])
    assert free.reason == "success", free.message  # mx1 alone: verified, DANE valid, nothing else asked


# ---- issue 19: IPv6 MX with an IPv4 source, dead addresses, one DNSSEC status, merged OCSP, sources ------


def fact_samples(report: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from exporter.metrics.domain import domain_fact_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in domain_fact_families([("dom", report)])  # type: ignore[list-item]
        for s in fam.samples
    }


async def test_ipv6_mx_is_checked_beside_an_ipv4_source_address(world: World, mailstack: MailStack) -> None:
    """An IPv4 source_address must not make an IPv6 MX address 'down': that family connects from the
    default source (or from its own configured source), and the MX is really checked."""
    from probes.domain.probe import DomainSettings, probe_domain, render_report

    if not mailstack.ipv6:
        pytest.skip("no IPv6 on this machine (::1 cannot be bound)")
    host = f"v6mx.{DOMAIN}"
    for source in (SOURCE, (SOURCE, "::1")):
        settings = DomainSettings(
            domain=f"v6.{DOMAIN}",
            dns=world.dns,
            mx=MXCheckSettings(
                port=mailstack.smtp_port,
                timeout=5.0,
                ca_file=str(mailstack.ca_file),
                source_address=source,
                helo_name="canary.example.net",
                check_legacy=False,
            ),
            check_mta_sts=False,
            check_dane=False,
            timeout=5.0,
        )
        report = await probe_domain(settings, Recorder())
        assert [(a.report.mx, a.report.address) for a in report.addresses] == [
            (host, "127.0.0.1"),
            (host, "::1"),
        ]
        for a in report.addresses:
            r = a.report
            assert (r.error, r.no_answer) == (None, False), (source, r.address, r.error)
            assert r.tls is not None and r.tls.handshake_ok and r.tls.starttls_offered
        assert not [p for p in report.problems if "no_tls" in p], report.problems
        labels = {"probe": "dom", "domain": f"v6.{DOMAIN}", "mx": host, "address": "::1"}
        assert fact_samples(report)[("mailcanary_domain_mx_up", frozenset(labels.items()))] == 1
        assert f"  MX {host} [::1]" in render_report(report).splitlines()


async def test_dead_addresses_get_one_session_and_skipped_checks(world: World) -> None:
    """A silent listener (accepts, never answers) and a closed port: one session each, reported once
    (no_tls), and the later checks (plain MAIL FROM, the three must-refuse sessions) skipped, visibly,
    neither passed nor failed. Before, each dead address got 5 sessions (5 x timeout when hung)."""
    import asyncio

    from probes.domain.probe import DomainSettings, probe_domain, render_report

    accepted: list[int] = []
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        held.append(writer)
        await reader.read()  # never a byte back; until the client gives up

    (port,) = free_ports(1)
    server = await asyncio.start_server(silent, SILENT_ADDR, port)
    try:
        settings = DomainSettings(
            domain=f"dead.{DOMAIN}",
            dns=world.dns,
            mx=MXCheckSettings(
                port=port,
                timeout=1.0,  # short: the hung address costs one of these
                source_address=SOURCE,
                helo_name="canary.example.net",
                check_plain_mail_from=True,
            ),
            must_refuse=True,
            check_mta_sts=False,
            timeout=3.0,
        )
        rec = Recorder(transcript=[])
        report = await probe_domain(settings, rec)
    finally:
        server.close()
        for w in held:
            w.close()
        await server.wait_closed()
    assert accepted == [1]  # one session to the hung address, not five
    assert [(a.report.mx, a.report.address) for a in report.addresses] == [
        (f"silent.{DOMAIN}", SILENT_ADDR),
        (f"closed.{DOMAIN}", CLOSED_ADDR),
    ]
    every = ("mail_from_before_tls", "open_relay", "auth_before_tls", "own_domain_sender")
    for a in report.addresses:
        assert a.report.no_answer and a.report.tls is None
        assert a.refusals == [] and a.report.plain_mail_from_code is None
        assert a.skipped == dict.fromkeys(every, "no_answer")
    assert report.problems == [
        f"silent.{DOMAIN}/{SILENT_ADDR}: no_tls",
        f"closed.{DOMAIN}/{CLOSED_ADDR}: no_tls",
    ]
    text = render_report(report).splitlines()
    assert "    must refuse open_relay: skipped (the address did not answer)" in text
    assert sum("skipped" in line for line in text) == 8
    facts = fact_samples(report)
    for addr, mx in ((SILENT_ADDR, f"silent.{DOMAIN}"), (CLOSED_ADDR, f"closed.{DOMAIN}")):
        where = {"probe": "dom", "domain": f"dead.{DOMAIN}", "mx": mx, "address": addr}
        for check in every:
            labels = frozenset({**where, "check": check, "reason": "no_answer"}.items())
            assert facts[("mailcanary_domain_must_refuse_skipped", labels)] == 1
        assert not [
            k for k in facts if k[0] == "mailcanary_domain_must_refuse_success" and ("address", addr) in k[1]
        ]


async def test_dnssec_line_finding_and_metric_agree(world: World) -> None:
    """A secure MX answer naming one host in an insecure zone: the text line, the finding and
    mailcanary_domain_mx_dnssec_valid all say insecure (before, the line and finding said secure)."""
    from probes.domain.probe import DomainSettings, probe_domain, render_report

    settings = DomainSettings(
        domain=f"mixed.{DOMAIN}",
        dns=world.dns,
        mx=world.settings(check_legacy=False),
        check_mta_sts=False,
        check_dane=False,
        timeout=5.0,
    )
    report = await probe_domain(settings, Recorder())
    res = report.resolution
    assert res is not None and (res.dnssec, resolution_dnssec(res)) == ("secure", "insecure")
    assert "mx_dnssec_insecure" in report.problems
    line = f"  MX: {MX1}, insecure-mx.dnsbl.test  dnssec insecure (insecure-mx.dnsbl.test addresses insecure)"
    assert line in render_report(report).splitlines()
    d = frozenset({"probe": "dom", "domain": f"mixed.{DOMAIN}"}.items())
    assert fact_samples(report)[("mailcanary_domain_mx_dnssec_valid", d)] == 0


async def test_concurrent_ocsp_requests_are_merged_and_sent_from_the_source(
    world: World, responder: Responder
) -> None:
    """Three addresses presenting one certificate ask at once: one request (single flight per cache key),
    sent from the configured source address of its family."""
    import asyncio

    leaf = ocsp_leaf(world, f"shared.{DOMAIN}")
    responder.issued[leaf.cert.serial_number] = leaf.cert
    responder.table[leaf.cert.serial_number] = "good"
    cache = OCSPCache()
    results = await asyncio.gather(
        *(
            ocsp_status(leaf.der, world.inter.der, cache=cache, timeout=5, source=("::1", SOURCE))
            for _ in range(3)
        )
    )
    assert [r.status for r in results] == ["good"] * 3
    assert responder.asked == [leaf.cert.serial_number]
    assert responder.peers == [SOURCE]
    assert cache.merged == 2


async def test_mta_sts_policy_is_fetched_from_the_source_address(world: World, https: int) -> None:
    """The domain check's source_address is used for the policy fetch too (docs: connect from it)."""
    from probes.domain.probe import DomainSettings, probe_domain

    POLICY_PEERS.clear()
    settings = DomainSettings(
        domain=DOMAIN,
        dns=world.dns,
        mx=world.settings(check_legacy=False),
        mta_sts_port=https,
        mta_sts_ca_file=str(world.variants.ca_file),
        check_dane=False,
        timeout=5.0,
    )
    report = await probe_domain(settings, Recorder())
    assert report.sts_policy is not None and report.sts_policy.error is None
    assert POLICY_PEERS == [SOURCE]
    # an IPv6-only source: the IPv4 policy server is reached from the default source, not refused
    POLICY_PEERS.clear()
    client = ssl.create_default_context(cafile=str(world.variants.ca_file))
    fetch = await mtasts.fetch_policy(DOMAIN, world.dns, ssl_context=client, port=https, source=("::1",))
    assert fetch.error is None and POLICY_PEERS == ["127.0.0.1"]
