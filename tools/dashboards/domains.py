"""The mail domains dashboard: every MX on port 25, DANE, MTA-STS, TLS-RPT, DNSBL (domain_checks)."""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from .common import (
    COLOR_BACKGROUND_BASIC,
    RT,
    Board,
    Json,
    S,
    col,
    dashboard,
    merged_table_panel,
    stat,
    target,
    thresholds,
    timeseries_panel,
    variable_query,
    yes_no,
)

DOM = RT + ', domain=~"$domain"'
DOM_BY = "probe, domain"
MX_BY = "probe, domain, mx, address"


def build() -> Json:
    b = Board()
    summary = [
        (
            "Domains checked",
            f"count(mailcanary_domain_check_success{{{RT}}})",
            "Domain checks (domain_checks in the config) with a completed run.",
            thresholds((None, "text")),
        ),
        (
            "Domains with findings",
            f"count(mailcanary_domain_findings{{{DOM}}} > 0) or vector(0)",
            "Domains whose last check found something (every finding is a row below and in the log).",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Checks not completing",
            f"count(mailcanary_domain_check_success{{{RT}}} == 0 unless on (job, instance, probe) "
            f"mailcanary_domain_findings{{{RT}}}) or vector(0)",
            "Domain checks whose last run could not check the domain (MX lookup failed, timeout).",
            thresholds((None, "green"), (1, "red")),
        ),
        (
            "MX addresses not verified",
            f"count(mailcanary_domain_mx_cert_verified{{{DOM}}} == 0) or vector(0)",
            "MX addresses whose certificate did not verify for the MX name.",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "DNSBL listings",
            f"count(mailcanary_domain_dnsbl_listed{{{DOM}}} == 1) or vector(0)",
            "(MX address, zone) pairs listed.",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Must-refuse failures",
            f"count(mailcanary_domain_must_refuse_success{{{DOM}}} == 0) or vector(0)",
            "(MX address, check) pairs where the server accepted what it must refuse (open relay, "
            "AUTH before TLS, own-domain sender).",
            thresholds((None, "green"), (1, "red")),
        ),
    ]
    b.row(
        "Summary",
        *(
            stat(
                title,
                [target(expr, "")],
                description=description,
                thresholds=steps,
                text_mode=cm.BigValueTextMode.VALUE,
                size=(4, 4),
            )
            for title, expr, description, steps in summary
        ),
    )
    b.row(
        "Domains",
        merged_table_panel(
            "Domains",
            [
                col(
                    "Findings",
                    f"max by ({DOM_BY}) (mailcanary_domain_findings{{{DOM}}})",
                    thresholds=thresholds((None, "green"), (1, "orange")),
                    cells=COLOR_BACKGROUND_BASIC,
                ),
                yes_no("MX DNSSEC", f"min by ({DOM_BY}) (mailcanary_domain_mx_dnssec_valid{{{DOM}}})"),
                yes_no(
                    "MTA-STS record",
                    f"min by ({DOM_BY}) (mailcanary_domain_mta_sts_record_valid{{{DOM}}})",
                ),
                yes_no(
                    "MTA-STS policy",
                    f"min by ({DOM_BY}) (mailcanary_domain_mta_sts_policy_valid{{{DOM}}})",
                ),
                yes_no("TLS-RPT", f"min by ({DOM_BY}) (mailcanary_domain_tlsrpt_valid{{{DOM}}})"),
                col("MX hosts", f"max by ({DOM_BY}) (mailcanary_domain_mx_hosts{{{DOM}}})"),
                col(
                    "MTA-STS max_age",
                    f"max by ({DOM_BY}) (mailcanary_domain_mta_sts_max_age_seconds{{{DOM}}})",
                    unit="s",
                ),
            ],
            description=(
                "One row per domain check: findings of the last run (0 passes), DNSSEC of the MX answer and "
                "the MX addresses, MTA-STS (record, policy fetched as RFC 8461 asks), TLS-RPT. "
                "mailcanary probe NAME prints the same as a report."
            ),
            auto_cells=True,
            sort_by=("Findings", True),
            size=(24, 7),
        ),
    )
    mx = [
        # (column, aggregation, series and matchers, 1 is good)
        ("Up", "min", f"mailcanary_domain_mx_up{{{DOM}}}", True),
        ("STARTTLS", "min", f"mailcanary_domain_mx_starttls_offered{{{DOM}}}", True),
        ("Verified", "min", f"mailcanary_domain_mx_cert_verified{{{DOM}}}", True),
        ("Name match", "min", f"mailcanary_domain_mx_hostname_match{{{DOM}}}", True),
        ("DANE match", "min", f"mailcanary_domain_dane_match{{{DOM}}}", True),
        ("DNSBL listed", "max", f"mailcanary_domain_dnsbl_listed{{{DOM}}}", False),
        (
            "Open relay refused",
            "min",
            f'mailcanary_domain_must_refuse_success{{{DOM}, check="open_relay"}}',
            True,
        ),
        ("AUTH in clear", "max", f"mailcanary_domain_mx_auth_before_tls{{{DOM}}}", False),
        ("Key bits", "min", f"mailcanary_domain_mx_cert_key_bits{{{DOM}}}", None),
        ("Weak signature", "max", f"mailcanary_domain_mx_cert_weak_signature{{{DOM}}}", False),
        ("OCSP revoked", "max", f'mailcanary_domain_mx_cert_ocsp_status{{{DOM}, status="revoked"}}', False),
        # the TLS scan (issue 21): 1 is bad for SSLv2/SSLv3 and weak classes; empty is unknown or not scanned
        (
            "SSLv2/v3",
            "max",
            f'mailcanary_domain_mx_protocol_accepted{{{DOM}, version=~"SSLv2|SSLv3"}}',
            False,
        ),
        (
            "Weak ciphers",
            "max",
            f'mailcanary_domain_mx_cipher_class_accepted{{{DOM}, class=~"null|anon|export|rc4|3des"}}',
            False,
        ),
        ("Forward secrecy", "min", f"mailcanary_domain_mx_forward_secrecy{{{DOM}}}", True),
        ("Chain complete", "min", f"mailcanary_domain_mx_chain_complete{{{DOM}}}", True),
    ]
    b.row(
        "MX addresses",
        merged_table_panel(
            "Every MX at every address",
            [
                col(name, f"{agg} by ({MX_BY}) ({series})")
                if good is None
                else yes_no(name, f"{agg} by ({MX_BY}) ({series})", good=good)
                for name, agg, series, good in mx
            ],
            description=(
                "Every (MX host, address) of each domain, bounded by max_mx x max_addresses. Empty cells: "
                "not asked (no TLSA, no DNSBL zone, must_refuse disabled, no OCSP responder named, scan "
                "off) or unknown (a fact the TLS scan could not tell)."
            ),
            auto_cells=True,
            sort_by=("Verified", False),
            size=(24, 9),
        ),
    )
    b.row(
        "History",
        timeseries_panel(
            "Findings per domain",
            [target(f"max by ({DOM_BY}) (mailcanary_domain_findings{{{DOM}}})", "{{domain}}")],
            description="Findings of each domain's last completed check, over time.",
            unit="short",
            size=(12, 8),
        ),
        timeseries_panel(
            "MX audit stages",
            [
                target(
                    f"max by (mx, address, stage) (mailcanary_domain_mx_stage_seconds{{{DOM}}})",
                    "{{mx}} {{address}} {{stage}}",
                )
            ],
            description="Per-stage timings of each MX address's audit (connect, handshake, legacy).",
            unit="s",
            size=(12, 8),
        ),
    )
    return dashboard(
        "mailcanary-domains",
        "mailcanary / Mail domains",
        "Mail domains from the outside: every MX on port 25, DANE, MTA-STS, TLS-RPT, DNSBL, certificate "
        "hygiene and must-refuse checks (domain_checks).",
        [
            variable_query(
                "probe", "Domain check", "label_values(mailcanary_domain_check_success{" + S + "}, probe)"
            ),
            variable_query(
                "domain",
                "Domain",
                "label_values(mailcanary_domain_findings{" + S + ', probe=~"$probe"}, domain)',
            ),
        ],
        b,
    )
