"""mailcanary's rules beside a /probe scrape: none of its alerts fires on /probe series, blackbox's do.

The /probe series are rendered by the real /probe renderers (``exporter.metrics.tls``) for two targets with
everything wrong (expiring and expired certificate, not verified, wrong name, legacy TLS, no STARTTLS,
AUTH before TLS, probe failed), labelled as the documented relabel setup labels them (job of the /probe
scrape, instance = target), once under a job of their own and once under job="mailcanary". promtool then
evaluates every shipped rule file plus blackbox rules of the kind operators load for /probe
(tests/fixtures/blackbox-rules.yml): each mailcanary alert must stay quiet, each blackbox alert must fire
for exactly its target. A second test shows the check can fail: with the scoping matchers stripped, the
certificate alerts fire on these series again (the bug this guards against).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics.tls import blackbox_families, tls_families
from exporter.web.multitarget import _Fixed
from probes.wire.certs import CertInfo, TLSFacts
from tests.support.rules import RULE_FILES, alert_rules, load, run_promtool_test

pytestmark = pytest.mark.prometheus

BLACKBOX_RULES = Path(__file__).resolve().parent / "fixtures" / "blackbox-rules.yml"
DAY = 86400.0
TARGETS = {"mx.example.com:25": 5 * DAY, "old.example.com:465": -2 * DAY}  # target -> notAfter (unix)
JOBS = ("mailcanary-tls", "mailcanary")
EVAL_TIMES = ("20m", "60m")


def bad_facts(endpoint: str, not_after: float) -> TLSFacts:
    leaf = CertInfo(
        subject="CN=wrong.example.net",
        issuer="CN=wrong.example.net",
        sans=("wrong.example.net",),
        not_before=-30 * DAY,
        not_after=not_after,
        serial="1",
        self_signed=True,
        is_ca=False,
        fingerprint_sha256="00" * 32,
    )
    return TLSFacts(
        endpoint=endpoint,
        protocol="smtp",
        mode="starttls",
        starttls_offered=False,
        auth_before_tls=True,
        handshake_ok=True,
        version="TLSv1",
        cipher="AES128-SHA",
        chain=[leaf],
        verified=False,
        verify_reason="self_signed",
        hostname_match=False,
        legacy={"TLSv1": True, "TLSv1.1": True},
    )


def probe_samples(endpoint: str, not_after: float) -> list[tuple[str, dict[str, str], float]]:
    """What GET /probe answers for this target, as (name, labels, value) samples."""
    facts = bad_facts(endpoint, not_after)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*blackbox_families(facts, False, 0.5), *tls_families([([], facts)], [])]))
    text = generate_latest(registry).decode()
    return [
        (s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def mailcanary_alerts() -> list[str]:
    names = []
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            names.extend(r["alert"] for r in group["rules"] if "alert" in r)
    return sorted(set(names))


def coexistence_test(rule_files: list[Path], job: str) -> dict[str, Any]:
    inputs = [
        # The exporter itself is scraped too (else MailcanaryExporterAbsent would rightly fire).
        {"series": series("up", {"job": "mailcanary", "instance": "mailcanary:9925"}), "values": "1x90"},
    ]
    for target, not_after in TARGETS.items():
        inputs.append({"series": series("up", {"job": job, "instance": target}), "values": "1x90"})
        for name, labels, value in probe_samples(target, not_after):
            inputs.append(
                {
                    "series": series(name, {**labels, "job": job, "instance": target}),
                    "values": f"{value:.17g}x90",
                }
            )
    blackbox_expected: dict[str, list[str]] = {
        "BlackboxProbeFailed": list(TARGETS),
        "BlackboxSslCertificateWillExpireSoon": [t for t, na in TARGETS.items() if na > 0],
        "BlackboxSslCertificateExpired": [t for t, na in TARGETS.items() if na < 0],
    }
    summaries = {
        "BlackboxProbeFailed": "Blackbox probe failed (instance {})",
        "BlackboxSslCertificateWillExpireSoon": "Blackbox SSL certificate will expire soon (instance {})",
        "BlackboxSslCertificateExpired": "Blackbox SSL certificate expired (instance {})",
    }
    severity = {
        "BlackboxProbeFailed": "critical",
        "BlackboxSslCertificateWillExpireSoon": "warning",
        "BlackboxSslCertificateExpired": "critical",
    }
    cases: list[dict[str, Any]] = []
    for at in EVAL_TIMES:
        cases.extend({"eval_time": at, "alertname": name, "exp_alerts": []} for name in mailcanary_alerts())
        for name, targets in blackbox_expected.items():
            cases.append(
                {
                    "eval_time": at,
                    "alertname": name,
                    "exp_alerts": [
                        {
                            "exp_labels": {"job": job, "instance": t, "severity": severity[name]},
                            "exp_annotations": {"summary": summaries[name].format(t)},
                        }
                        for t in targets
                    ],
                }
            )
    return {
        "rule_files": [str(p) for p in rule_files],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": f"/probe scraped as job {job}",
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": cases,
            }
        ],
    }


def run_coexistence(tmp_path: Path, rule_files: list[Path]) -> tuple[int, str]:
    """One promtool process per job's file, each under its own hang guard; the worst exit code and all
    the output."""
    code, out = 0, ""
    for job in JOBS:
        path = tmp_path / f"coexistence-{job}_test.yml"
        path.write_text(yaml.safe_dump(coexistence_test(rule_files, job), sort_keys=False), encoding="utf-8")
        proc = run_promtool_test(path, cwd=tmp_path)
        code, out = max(code, proc.returncode), out + proc.stdout + proc.stderr
    return code, out


def test_probe_series_cover_the_tls_families() -> None:
    """The input is what /probe really emits, including the mailcanary_tls_* families the rules watch."""
    names = {name for name, _, _ in probe_samples("mx.example.com:25", 5 * DAY)}
    assert {
        "probe_success",
        "probe_ssl_earliest_cert_expiry",
        "mailcanary_tls_earliest_cert_expiry_timestamp_seconds",
        "mailcanary_tls_cert_verified",
        "mailcanary_tls_hostname_match",
        "mailcanary_tls_legacy_protocol_accepted",
        "mailcanary_tls_starttls_offered",
        "mailcanary_tls_auth_before_tls",
    } <= names


def test_no_mailcanary_alert_fires_on_probe_series_and_blackbox_rules_do(tmp_path: Path) -> None:
    code, out = run_coexistence(tmp_path, [*RULE_FILES, BLACKBOX_RULES])
    assert code == 0, out
    assert out.count("SUCCESS") == len(JOBS), out


def unscoped(text: str) -> str:
    """The rules as they were before scoping: no job/probe/endpoint matchers."""
    text = re.sub(r'(job="mailcanary"|probe!=""|endpoint!=""),?', "", text)
    return text.replace(",}", "}").replace("{}", "")


def test_the_check_fails_on_unscoped_rules(tmp_path: Path) -> None:
    """Guard for the guard: without the matchers the certificate alerts fire on /probe series."""
    rules = []
    for path in RULE_FILES:
        copy = tmp_path / path.name
        copy.write_text(unscoped(path.read_text(encoding="utf-8")), encoding="utf-8")
        rules.append(copy)
    code, out = run_coexistence(tmp_path, [*rules, BLACKBOX_RULES])
    assert code != 0
    for alert in (
        "MailcanaryTLSCertExpiringCritical",
        "MailcanaryTLSCertExpired",
        "MailcanaryTLSHostnameMismatch",
    ):
        assert alert in out, out


def test_summaries_only_name_labels_the_expression_guarantees() -> None:
    """No "certificate of  expires": a probe/endpoint/protocol label in an annotation needs a matcher that
    makes it non-empty. endpoint!="" keeps only /metrics TLS series, which always carry probe, endpoint
    and protocol. Alerts on recorded series (name with a colon) inherit the recording rules' scope, and
    every recording rule is checked for it here."""

    guards = {
        "probe": ('probe!=""', 'endpoint!=""'),
        "endpoint": ('endpoint!=""',),
        "protocol": ('endpoint!=""',),
    }
    problems = []
    for rule in alert_rules():
        expr = rule["expr"]
        if re.search(r"\bmailcanary:\w", expr) and "mailcanary_" not in expr:
            continue  # over recorded series only: scoped where they are recorded
        ann = rule.get("annotations", {})
        used = set(re.findall(r"\$labels\.(\w+)", f"{ann.get('summary', '')} {ann.get('description', '')}"))
        for label in sorted(used & guards.keys()):
            if not any(g in expr for g in guards[label]):
                problems.append(f"{rule['alert']}: uses $labels.{label}; expr has none of {guards[label]}")
        if 'job="mailcanary"' not in expr:
            problems.append(f'{rule["alert"]}: not scoped to job="mailcanary"')
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                if "record" not in rule:
                    continue
                selectors = re.findall(r"\bmailcanary_\w+", rule["expr"])
                if len(selectors) != rule["expr"].count('{job="mailcanary",probe!=""'):
                    problems.append(f"recording rule {rule['record']}: a selector is not scoped")
    assert not problems, "\n".join(problems)
