"""The TLS dashboard: every endpoint the probes and TLS checks audited (expiry, verification, protocol)."""

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
            overrides=[
                column_override(
                    "accepted",
                    mappings=value_map(("1", "ACCEPTED", "red"), ("0", "refused", "green")),
                    custom__cellOptions={"type": "color-text"},
                )
            ],
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
