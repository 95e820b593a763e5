"""The TLS dashboard: every endpoint the probes and TLS checks audited (expiry, verification, protocol,
and what its TLS scan found)."""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from .common import (
    COLOR_BACKGROUND_BASIC,
    DAYS_THRESHOLDS,
    FIXED_TEXT,
    OK_FAIL,
    RT,
    Board,
    Json,
    Override,
    S,
    bar_gauge,
    col,
    column_override,
    dashboard,
    last_not_null,
    merged_table,
    merged_table_panel,
    stat,
    table_panel,
    table_target,
    target,
    thresholds,
    timeseries_panel,
    value_map,
    variable_query,
    yes_no,
)

T = RT + ', endpoint=~"$endpoint"'
BY = "probe, endpoint, protocol"


def accepted_column() -> Override:
    """The ``accepted`` column of a "did the server take it" table: ACCEPTED in red, refused in green."""
    return column_override(
        "accepted",
        mappings=value_map(("1", "ACCEPTED", "red"), ("0", "refused", "green")),
        custom__cellOptions={"type": "color-text"},
    )


def build() -> Json:
    b = Board()
    days = f"(mailcanary_tls_earliest_cert_expiry_timestamp_seconds{{{T}}} - time()) / 86400"
    b.row(
        "Summary",
        stat(
            "Audited endpoints",
            [
                target(
                    f"count(max by (endpoint, protocol) (mailcanary_tls_cert_verified{{{T}}}))",
                    "endpoints",
                )
            ],
            description="Audited endpoints (host:port) with a certificate seen.",
            color=FIXED_TEXT,
            text_mode=cm.BigValueTextMode.VALUE,
            color_mode=cm.BigValueColorMode.VALUE,
            size=(6, 4),
        ),
        stat(
            "Expiring within 21 days",
            [target(f"count(min by (endpoint) ({days}) < 21) or vector(0)", "endpoints")],
            description="Endpoints whose chain has a certificate expiring in less than 21 days (or expired).",
            thresholds=thresholds((None, "green"), (1, "orange")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 4),
        ),
        stat(
            "Not verified",
            [
                target(
                    f"count(max by ({BY}) (mailcanary_tls_cert_verified{{{T}}} == 0)) or vector(0)",
                    "endpoints",
                )
            ],
            description="Probe/endpoint pairs whose certificate chain or name did not verify.",
            thresholds=thresholds((None, "green"), (1, "red")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 4),
        ),
        stat(
            "Legacy TLS accepted",
            [
                target(
                    "count(max by (endpoint, version) "
                    f"(mailcanary_tls_legacy_protocol_accepted{{{T}}} == 1)) "
                    "or vector(0)",
                    "endpoints",
                )
            ],
            description="Endpoint/version pairs that completed a TLS 1.0 or 1.1 handshake.",
            thresholds=thresholds((None, "green"), (1, "orange")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 4),
        ),
    )
    leaf_days = f"(mailcanary_tls_cert_not_after_timestamp_seconds{{{T}}} - time()) / 86400"
    days_left = {"decimals": 1, "thresholds": DAYS_THRESHOLDS, "cells": COLOR_BACKGROUND_BASIC}
    b.row(
        "Certificates",
        merged_table_panel(
            "Endpoints",
            [
                col("Days left (chain)", f"min by ({BY}) ({days})", **days_left),
                col("Days left (leaf)", f"min by ({BY}) ({leaf_days})", **days_left),
                yes_no("Verified", f"min by ({BY}) (mailcanary_tls_cert_verified{{{T}}})"),
                yes_no("Hostname match", f"min by ({BY}) (mailcanary_tls_hostname_match{{{T}}})"),
                yes_no("STARTTLS offered", f"min by ({BY}) (mailcanary_tls_starttls_offered{{{T}}})"),
                yes_no(
                    "AUTH before TLS",
                    f"max by ({BY}) (mailcanary_tls_auth_before_tls{{{T}}})",
                    good=False,
                ),
            ],
            description=(
                "Every audited endpoint. Days left: red under 7, orange under 21, dark red expired. "
                "STARTTLS and AUTH-before-TLS apply to plain ports only (empty for implicit TLS)."
            ),
            auto_cells=True,
            sort_by=("Days left (chain)", False),
            size=(24, 9),
        ),
        bar_gauge(
            "Days to earliest expiry",
            [target(f"min by (endpoint) ({days})", "{{endpoint}}")],
            description="Earliest expiry in each endpoint's chain. Thresholds 21 / 7 / 0 days.",
            unit="none",
            decimals=0,
            min=0,
            max=90,
            thresholds=DAYS_THRESHOLDS,
            size=(12, 8),
        )
        .min_viz_height(10)
        .min_viz_width(0)
        .name_placement(cm.BarGaugeNamePlacement.AUTO)
        .reduce_options(last_not_null())
        .sizing(cm.BarGaugeSizing.AUTO)
        .value_mode(cm.BarGaugeValueMode.COLOR),
        timeseries_panel(
            "Days left over time",
            [target(f"min by (endpoint) ({days})", "{{endpoint}}")],
            description="A renewal shows as a jump up; thresholds at 21 and 7 days.",
            unit="none",
            thresholds_style=cm.GraphThresholdsStyleMode.LINE_AND_AREA,
            thresholds=thresholds((None, "red"), (7, "orange"), (21, "transparent")),
            size=(12, 8),
        ),
    )
    b.row(
        "Protocol",
        table_panel(
            "TLS version and cipher",
            [
                table_target(
                    f"max by ({BY}, version, cipher) (mailcanary_tls_version_info{{{T}}} "
                    "* on (job, instance, probe, endpoint, protocol) group_left (cipher) "
                    f"mailcanary_tls_cipher_info{{{T}}})"
                )
            ],
            description="Negotiated protocol version and cipher suite of the last handshake.",
            overrides=[
                column_override(
                    "version",
                    mappings=value_map(
                        ("TLSv1.3", "TLSv1.3", "green"),
                        ("TLSv1.2", "TLSv1.2", "green"),
                        ("TLSv1.1", "TLSv1.1", "red"),
                        ("TLSv1", "TLSv1", "red"),
                    ),
                    custom__cellOptions={"type": "color-text"},
                )
            ],
            transformations=merged_table({}, hide=("Time", "Value")),
            size=(12, 8),
        ),
        table_panel(
            "Legacy protocols accepted",
            [table_target(f"max by ({BY}, version) (mailcanary_tls_legacy_protocol_accepted{{{T}}})")],
            description=(
                "Whether a handshake pinned to TLS 1.0 / 1.1 completed. Absent where it was not tested or "
                "this machine's OpenSSL cannot offer the version (see the panel below)."
            ),
            overrides=[accepted_column()],
            transformations=merged_table({"A": "accepted"}),
            size=(12, 8),
        ),
        table_panel(
            "Verification",
            [
                table_target(
                    f"max by ({BY}, reason) (mailcanary_tls_cert_verify_error_info{{{T}}}) "
                    f"or on ({BY}) "
                    f"label_replace(max by ({BY}) (mailcanary_tls_cert_verified{{{T}}} == 1), "
                    '"reason", "verified", "", "")'
                )
            ],
            description="Verification result per probe and endpoint: verified, or the reason it failed.",
            overrides=[
                column_override(
                    "reason",
                    mappings=[
                        *value_map(("verified", "verified", "green")),
                        {
                            "type": "regex",
                            "options": {"pattern": ".+", "result": {"color": "red", "index": 1}},
                        },
                    ],
                    custom__cellOptions={"type": "color-text"},
                )
            ],
            transformations=merged_table({}, hide=("Time", "Value")),
            size=(12, 7),
        ),
        stat(
            "Legacy protocols testable here",
            [
                target(
                    "max by (version) (mailcanary_tls_legacy_protocol_testable{" + S + "})",
                    "{{version}}",
                )
            ],
            description="Whether this exporter's OpenSSL can offer TLS 1.0 / 1.1; if not, none is measured.",
            mappings=value_map(("1", "testable", "green"), ("0", "not testable", "orange")),
            thresholds=thresholds((None, "orange")),
            size=(12, 7),
        ),
    )
    scan_by = f"max by ({BY}) "

    def accepted(version: str) -> str:
        return scan_by + f'(mailcanary_tls_protocol_accepted{{{T}, version="{version}"}})'

    b.row(
        "TLS scan",
        stat(
            "Endpoints with scan findings",
            [
                target(
                    "count(max by (endpoint) ("
                    f'mailcanary_tls_protocol_accepted{{{T}, version=~"SSLv2|SSLv3"}} == 1 '
                    "or mailcanary_tls_cipher_class_accepted"
                    f'{{{T}, class=~"null|anon|export|rc4|3des"}} == 1 '
                    f"or mailcanary_tls_forward_secrecy{{{T}}} == 0 "
                    f"or mailcanary_tls_chain_complete{{{T}}} == 0 "
                    f'or mailcanary_tls_ocsp_staple_status{{{T}, status="revoked"}} == 1'
                    ")) or vector(0)",
                    "endpoints",
                )
            ],
            description=(
                "Endpoints whose TLS scan found SSLv2/SSLv3, a weak cipher class, a suite without forward "
                "secrecy, an incomplete chain or a revoked staple (each an alert)."
            ),
            thresholds=thresholds((None, "green"), (1, "red")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 4),
        ),
        stat(
            "Facts the scan could not tell",
            [target(f"sum(mailcanary_tls_scan_unknown{{{T}}}) or vector(0)", "facts")],
            description=(
                "Scan facts left unknown (a 421, a refused or failed connection, a timeout): never shown as "
                "fine. Empty cells in the tables below are these, or endpoints not scanned."
            ),
            thresholds=thresholds((None, "green"), (1, "orange")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 4),
        ),
        stat(
            "Oldest scan",
            [
                target(
                    f"max(time() - mailcanary_tls_scan_checked_timestamp_seconds{{{T}}})",
                    "age",
                )
            ],
            description="Age of the oldest scan shown (scans are reused for scan_recheck, default 1 d).",
            unit="s",
            thresholds=thresholds((None, "green"), (172800, "orange")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 4),
        ),
        stat(
            "Scan connections",
            [target(f"sum(mailcanary_tls_scan_connections{{{T}}})", "connections")],
            description="Connections the scans shown opened (each scan once per scan_recheck).",
            color=FIXED_TEXT,
            text_mode=cm.BigValueTextMode.VALUE,
            color_mode=cm.BigValueColorMode.VALUE,
            size=(6, 4),
        ),
        merged_table_panel(
            "Protocols and key exchange (scan)",
            [
                yes_no("SSLv2", accepted("SSLv2"), good=False),
                yes_no("SSLv3", accepted("SSLv3"), good=False),
                yes_no("TLS 1.0", accepted("TLSv1"), good=False),
                yes_no("TLS 1.1", accepted("TLSv1.1"), good=False),
                yes_no("TLS 1.2", accepted("TLSv1.2")),
                yes_no("TLS 1.3", accepted("TLSv1.3")),
                yes_no("Forward secrecy", scan_by + f"(mailcanary_tls_forward_secrecy{{{T}}})"),
                col("DH bits", scan_by + f"(mailcanary_tls_dh_group_bits{{{T}}})"),
                yes_no("Secure reneg.", scan_by + f"(mailcanary_tls_secure_renegotiation{{{T}}})"),
                yes_no("Compression", scan_by + f"(mailcanary_tls_compression{{{T}}})", good=False),
            ],
            description=(
                "What each endpoint accepts, from its TLS scan: a version is accepted when the server chose "
                "it for a hello offering only it. An empty cell is unknown (or not scanned), never fine."
            ),
            auto_cells=True,
            size=(24, 8),
        ),
        table_panel(
            "Weak cipher classes (scan)",
            [table_target(f"max by ({BY}, class) (mailcanary_tls_cipher_class_accepted{{{T}}})")],
            description=(
                "Whether the server chose a suite of each class when offered only that class. null, anon, "
                "export, rc4, 3des are weak (alerted); cbc_only and sha1_mac informational."
            ),
            overrides=[accepted_column()],
            transformations=merged_table({"A": "accepted"}),
            size=(12, 8),
        ),
        table_panel(
            "Preferred suites (scan)",
            [table_target(f"max by ({BY}, version, cipher) (mailcanary_tls_preferred_cipher_info{{{T}}})")],
            description="The suite the server chose from our full offer at each version it accepts.",
            transformations=merged_table({}, hide=("Time", "Value")),
            size=(12, 8),
        ),
        merged_table_panel(
            "Chain, stapling and scan age",
            [
                yes_no("Chain complete", scan_by + f"(mailcanary_tls_chain_complete{{{T}}})"),
                yes_no("Chain ordered", scan_by + f"(mailcanary_tls_chain_ordered{{{T}}})"),
                col("Superfluous certs", scan_by + f"(mailcanary_tls_chain_superfluous_certs{{{T}}})"),
                yes_no("OCSP stapled", scan_by + f"(mailcanary_tls_ocsp_stapled{{{T}}})"),
                yes_no(
                    "Staple revoked",
                    scan_by + f'(mailcanary_tls_ocsp_staple_status{{{T}, status="revoked"}})',
                    good=False,
                ),
                col(
                    "Scan age (h)",
                    f"min by ({BY}) (time() - mailcanary_tls_scan_checked_timestamp_seconds{{{T}}}) / 3600",
                    decimals=1,
                ),
                col("Connections", scan_by + f"(mailcanary_tls_scan_connections{{{T}}})"),
                col("Unknown facts", f"sum by ({BY}) (mailcanary_tls_scan_unknown{{{T}}})"),
            ],
            description=(
                "The served chain (complete without AIA fetching, in order, extra certificates), OCSP "
                "stapling, and the scan these facts come from. Empty: unknown or not scanned."
            ),
            auto_cells=True,
            size=(24, 8),
        ),
    )
    b.row(
        "TLS checks",
        stat(
            "TLS check status",
            [
                target(
                    "mailcanary_tls_check_success{" + S + ', probe=~"$probe"}',
                    "{{probe}}",
                )
            ],
            description="Standalone TLS checks (tls_checks): 1 if the last check completed and verified.",
            mappings=OK_FAIL,
            thresholds=thresholds((None, "red")),
            size=(12, 6),
        ),
        timeseries_panel(
            "TLS check duration",
            [
                target(
                    "mailcanary_tls_check_duration_seconds{" + S + ', probe=~"$probe"}',
                    "{{probe}}",
                )
            ],
            description="Wall time of the last check, legacy-protocol handshakes included.",
            unit="s",
            size=(12, 6),
        ),
    )
    return dashboard(
        "mailcanary-tls",
        "mailcanary / TLS",
        "TLS audit of every endpoint mailcanary talks to: expiry, verification, versions, STARTTLS.",
        [
            variable_query(
                "probe",
                "Probe",
                "label_values(mailcanary_tls_cert_verified{" + S + "}, probe)",
            ),
            variable_query(
                "endpoint",
                "Endpoint",
                "label_values(mailcanary_tls_cert_verified{" + S + ', probe=~"$probe"}, endpoint)',
            ),
        ],
        b,
    )
