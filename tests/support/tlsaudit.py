"""TLS audit targets: real Dovecot/Postfix variants (tests/mailstack/variants.py) each showing one TLS
property, with certificates made here so every expected value is known; an endpoint as the audit sees
it, and what a legacy-version audit must report. The fixtures ``certs`` and ``variants`` (tests/conftest.py)
are built from these."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from probes.tls.audit import LEGACY_VERSIONS, openssl_offers
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import SERVER_NAME, MailStack
from tests.mailstack.variants import Issued, TestPKI, VariantSet, reap_orphans

SOURCE = "127.0.0.2"  # Dovecot treats 127.0.0.1 -> 127.0.0.1 as secure and would offer plaintext LOGIN
NAMES = (SERVER_NAME, "localhost", "127.0.0.1")


@dataclass
class Certs:
    pki: TestPKI
    inter: Issued  # the long-lived intermediate most chains use
    early: Issued  # an intermediate that expires (in 20 days) before the leaf it signs (60 days)


def make_certs() -> Certs:
    """A test PKI with the two intermediates the variant chains use."""
    pki = TestPKI("mailcanary tls audit")
    inter = pki.ca("audit intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(1000))
    early = pki.ca(
        "short-lived intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(20)
    )
    return Certs(pki, inter, early)


@contextlib.contextmanager
def audit_variants(mailstack: MailStack, certs: Certs) -> Iterator[VariantSet]:
    """One Dovecot per case (two with a Postfix smtpd), started together, stopped at the module's end."""
    reap_orphans()
    pki, inter = certs.pki, certs.inter

    def leaf(**kw: object) -> Issued:
        return pki.leaf(NAMES, issuer=inter, common_name=SERVER_NAME, **kw)  # type: ignore[arg-type]

    vs = VariantSet(mailstack, pki)
    vs.add("valid", [leaf(not_after=pki.days(90)), inter])
    vs.add(
        "expired",
        [leaf(not_before=pki.days(-30), not_after=pki.days(-2)), inter],
        dovecot_ports=("imaps", "pop3"),
    )
    vs.add("expiring", [leaf(not_after=pki.days(5)), inter], dovecot_ports=("imaps",))
    vs.add(
        "wronghost",
        [pki.leaf(["other.example.test"], issuer=inter, common_name="other.example.test"), inter],
        dovecot_ports=("imaps",),
    )
    vs.add("selfsigned", [pki.leaf(NAMES, issuer=None, common_name=SERVER_NAME)], dovecot_ports=("imaps",))
    vs.add("notyet", [leaf(not_before=pki.days(2), not_after=pki.days(60)), inter], dovecot_ports=("imaps",))
    vs.add(
        "earlyinter",
        [pki.leaf(NAMES, issuer=certs.early, not_after=pki.days(60)), certs.early],
        dovecot_ports=("imap", "imaps"),
        postfix_settings={"smtpd_tls_protocols": ">=TLSv1.2"},
    )
    vs.add(
        "legacy",
        [leaf(), inter],
        dovecot_ports=("imap", "imaps", "pop3"),
        ssl_min_protocol="TLSv1",
        dovecot_settings={"ssl_cipher_list": "ALL:@SECLEVEL=0"},
    )
    vs.add(
        "plainauth",
        [leaf(), inter],
        dovecot_ports=("imap", "pop3"),
        # ssl=required would refuse plaintext auth whatever disable_plaintext_auth says.
        dovecot_settings={"ssl": "yes", "disable_plaintext_auth": False},
        postfix_settings={"smtpd_tls_auth_only": "no", "smtpd_tls_protocols": ">=TLSv1"},
    )
    vs.add(
        "notls",
        [leaf(), inter],
        dovecot_ports=("imap", "pop3"),
        dovecot_settings={"ssl": "no", "disable_plaintext_auth": False},
    )
    with vs:
        yield vs


def endpoint(
    host: str,
    port: int,
    mode: str,
    *,
    ca_file: Path | None,
    server_name: str = SERVER_NAME,
    source: str | None = SOURCE,
) -> Endpoint:
    return Endpoint(
        host,
        port,
        tls_mode=mode,  # type: ignore[arg-type]
        tls=TLSSettings(ca_file=str(ca_file) if ca_file else None, server_name=server_name),
        source_address=source,
    )


def expected_legacy(accepted: bool) -> dict[str, bool | None]:
    """What a server that does/does not accept legacy versions must show: None where this machine's
    OpenSSL cannot even offer the version (never a false 0)."""
    return {name: (accepted if openssl_offers(v) else None) for name, v in LEGACY_VERSIONS.items()}
