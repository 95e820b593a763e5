"""The shipped rules and dashboards against the real thing: Debian's Prometheus scraping `mailcanary run`
probing the session's Postfix + Dovecot.

One Prometheus (1 s scrape and evaluation) loads the shipped rule files plus a variant of every alert
with `for:` shortened to 2 s (rewritten from the shipped files here, never copied by hand), and scrapes
one exporter (2 s probe interval), both its /metrics and, as a second job in the documented blackbox
relabel setup, its /probe against Dovecot's IMAPS port. In order:

(a) every query of every dashboard panel returns data (variables substituted as Grafana would);
(b) with the stack healthy, no alert is pending or firing (the /probe series included);
(c) with Dovecot stopped, the probe-failing alert goes pending or firing; Dovecot is restarted after;
(d) after a reload that adds TLS checks of two extra Dovecots, whose certificates expire in 15 and
    3 days, the warning and critical expiry alerts fire for exactly those endpoints;
(e) after a reload that adds a reports entry over a mailbox of TLS-RPT and DMARC reports, the three
    report alerts fire and the "What others see" dashboard has data.

The tests run in any order: (c) and (d) disturb the system for good (SLO burn alerts last for hours), so
what (b) checks is watched once, by the fixture, before any test runs.

Everything binds 127.0.0.1; every process started here is stopped in a finally block.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mailstack import DovecotInstance, MailStack
from tests.mailstack._net import claim_ports
from tests.support.alerting import stop_process, tail
from tests.support.dashboards import DASHBOARD_DIR, load, queries, substitute
from tests.support.reports import (
    DAY,
    Mail,
    Policy,
    Row,
    dmarc_mail,
    dmarc_xml,
    gzip_bomb,
    mail,
    tlsrpt,
    tlsrpt_mail,
)
from tests.support.stackconfig import exporter_argv
from tests.support.wait import STARTUP_BOUND, eventually

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
JOB = "mailcanary"
PROBE_JOB = "mailcanary-tls"  # Prometheus scraping the exporter's /probe, blackbox style
SHORT_FOR = "2s"
VARIANT_LABEL = ("rules_variant", "short-for")
PROBE_INTERVAL = "2s"

pytestmark = pytest.mark.prometheus


# ---- helpers ----------------------------------------------------------------------------------------


def short_for_variant(paths: list[Path], for_: str = SHORT_FOR) -> dict[str, Any]:
    """Every alert of the shipped files with `for:` set to ``for_`` and a label telling them apart.

    Recording rules stay out: the shipped files record them already, twice would collide.
    """
    groups = []
    for path in paths:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules = []
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                rule = dict(rule)
                if "for" in rule:
                    rule["for"] = for_
                rule["labels"] = {**rule.get("labels", {}), VARIANT_LABEL[0]: VARIANT_LABEL[1]}
                rules.append(rule)
            if rules:
                groups.append({"name": f"{group['name']}.{VARIANT_LABEL[1]}", "rules": rules})
    return {"groups": groups}


def free_port() -> int:
    return claim_ports(1)[0]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


class BadQuery(AssertionError):
    """Prometheus refused an expression (HTTP 400): a broken query, never "no data yet"."""


@dataclass
class QuietWatch:
    """What Prometheus showed while the stack was healthy, before any test stopped or changed anything."""

    active: list[dict[str, Any]]  # the alerts pending or firing at the first evaluation that had any
    legacy_refused: dict[str, list[dict[str, Any]]]  # TLS check -> its `legacy accepted == 0` series
    true_skips: list[dict[str, Any]]  # MailcanaryProbeRunsSkipped for skips the exporter really made


def skipped_in_log(log: str, probe: str) -> bool:
    """Whether the exporter's log shows a run of ``probe`` not started because its previous run was still
    going (APScheduler's line): the ground truth of MailcanaryProbeRunsSkipped."""
    for line in log.splitlines():
        try:
            event = str(json.loads(line).get("event", ""))
        except (ValueError, AttributeError):
            continue
        mine = event.startswith(f'Execution of job "{probe} (')
        if mine and "maximum number of running instances" in event:
            return True
    return False


def watch_quiet(live: Live) -> QuietWatch:
    """Watch a few evaluations (5 s), so that the 2 s `for:` of the variant would have turned anything
    true into firing; stop at the first alert pending or firing. This is a watch over a window, not a
    wait for an event: nothing is expected to happen.

    One alert may be true on a healthy stack: MailcanaryProbeRunsSkipped, when a starved machine (two
    suites on 2 cores) made the first runs (their TLS scans, the first imports) take longer than the
    probes' 2 s interval, so the scheduler really skipped slots. Such an alert is checked against the
    exporter's own log (the skip happened, for that probe) and kept apart; any other alert, or a skip
    alert the log does not bear out, fails the test."""
    wait_for_data(live)
    active: list[dict[str, Any]] = []
    true_skips: list[dict[str, Any]] = []
    end = time.monotonic() + 5
    while time.monotonic() < end:
        log = live.exporter_log.read_text(errors="replace")
        active, true_skips = [], []
        for alert in live.alerts():
            labels = alert["labels"]
            if labels["alertname"] == "MailcanaryProbeRunsSkipped" and skipped_in_log(log, labels["probe"]):
                true_skips.append(alert)
            else:
                active.append(alert)
        if active:
            break
        time.sleep(1)
    legacy = {
        probe: live.query(f'mailcanary_tls_legacy_protocol_accepted{{probe="{probe}"}} == 0')
        for probe in ("tls-imaps", "tls-submission")
    }
    return QuietWatch(active, legacy, true_skips)


@dataclass
class Live:
    stack: MailStack
    tmp: Path
    config: Path
    exporter: subprocess.Popen[bytes]
    prometheus: subprocess.Popen[bytes]
    quota_dovecot: DovecotInstance
    exporter_log: Path
    prometheus_url: str
    prometheus_log: Path
    base_config: dict[str, Any]
    quiet: QuietWatch | None = None  # what the healthy system showed, watched before any test ran

    def runnable(self) -> list[int]:
        """The processes every wait here depends on: the exporter, Prometheus, the mail servers."""
        quota = [pid] if (pid := self.quota_dovecot.pid) is not None else []
        return [self.exporter.pid, self.prometheus.pid, *self.stack.pids(), *quota]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
        """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s in
        which none of the stack's processes waited for a CPU (a starved stack is slow, not broken)."""
        # OSError, ValueError: not up yet (refused, or an answer that is not JSON yet)
        return eventually(
            check,
            timeout=timeout,
            interval=interval,
            ignoring=(OSError, ValueError),
            message=what,
            runnable=self.runnable,
        )

    def last_good_scrape(self, job: str) -> float | None:
        """When Prometheus last scraped ``job`` successfully (None: not in the last 10 minutes).

        A failed scrape (a starved exporter misses the 1 s scrape timeout) marks every series of the
        target stale, so "now" may show no data while the exporter serves it all; at the last good
        scrape, Grafana would show it."""
        found = self.query(f'max_over_time(timestamp(up{{job="{job}"}} == 1)[10m:1s])')
        return float(found[0]["value"][1]) if found else None

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": repr(at)} if at is not None else {})}
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            data = json.loads(http_get(url))
        except urllib.error.HTTPError as exc:  # 400: the expression does not parse
            raise BadQuery(f"{expr}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        assert data["status"] == "success", data
        result = data["data"]["result"]
        if data["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def alerts(self) -> list[dict[str, Any]]:
        data = json.loads(http_get(f"{self.prometheus_url}/api/v1/alerts"))
        return [a for a in data["data"]["alerts"] if a["state"] in ("pending", "firing")]

    def reload_exporter(self, config: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.exporter.send_signal(signal.SIGHUP)

    def logs(self) -> str:
        exporter, prometheus = tail(self.exporter_log, 40), tail(self.prometheus_log, 15)
        return f"--- exporter log\n{exporter}\n--- prometheus log\n{prometheus}"


def has_value(series: list[dict[str, Any]]) -> bool:
    """At least one sample that is a number (a histogram quantile of nothing is NaN: no data)."""
    for s in series:
        value = float(s["value"][1])
        if not math.isnan(value):
            return True
    return False


def tls_check(name: str, port: int, protocol: str, tls: str, stack: MailStack) -> dict[str, Any]:
    return {
        "name": name,
        "host": stack.host,
        "port": port,
        "protocol": protocol,
        "tls": tls,
        "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
        # Dovecot treats 127.0.0.1 -> 127.0.0.1 as secure and would offer plaintext LOGIN there
        "source_address": "127.0.0.2",
    }


def write_secret(tmp: Path, name: str, secret: str) -> str:
    path = tmp / f"{name}.pw"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


QUOTA_DOVECOT_CONFIG = [  # the quota plugin with generous limits: the quota series have data
    "protocol imap {",
    "  mail_plugins = $mail_plugins imap_quota",
    "}",
    "plugin {",
    "  quota = count:User quota",
    "  quota_rule = *:storage=100M:messages=10000",
    "  quota_vsizes = yes",
    "}",
]


def exporter_config(
    stack: MailStack, tmp: Path, addresses: tuple[str, ...], quota_port: int | None = None
) -> dict[str, Any]:
    """live-imaps, live-pop3s and, with ``quota_port`` (a Dovecot with the quota plugin), live-mailbox:
    IMAP with quota and the sync check."""
    tls_config = {"ca_file": str(stack.ca_file), "server_name": stack.server_name}
    probes = []
    sides = [("live-imaps", "imap", stack.imaps_port), ("live-pop3s", "pop3", stack.pop3s_port)]
    if quota_port is not None:
        sides.append(("live-mailbox", "imap", quota_port))
    for (name, protocol, port), address in zip(sides, addresses, strict=True):
        secret = write_secret(tmp, name, stack.password(address))
        probes.append(
            {
                "name": name,
                "sender": address,
                "recipient": address,
                "smtp": {
                    "host": stack.host,
                    "port": stack.submission_port,
                    "tls": "starttls",
                    "tls_config": dict(tls_config),
                    "username": address,
                    "password_file": secret,
                },
                "receive": {
                    "protocol": protocol,
                    "host": stack.host,
                    "port": port,
                    "tls": "implicit",
                    "tls_config": dict(tls_config),
                    "username": address,
                    "password_file": secret,
                    **({"sync": {"timeout": "3s"}} if name == "live-mailbox" else {}),
                },
            }
        )
    return {
        "global": {"interval": PROBE_INTERVAL, "timeout": "8s", "state_dir": str(tmp / "state")},
        "modules": {"live_imaps": {"protocol": "imap", "tls": "implicit", "tls_config": dict(tls_config)}},
        "roundtrip": probes,
        "tls_checks": [
            tls_check("tls-submission", stack.submission_port, "smtp", "starttls", stack),
            tls_check("tls-imaps", stack.imaps_port, "imap", "implicit", stack),
        ],
        # A heartbeat on the first mailbox (read-only beside its round trip): its series and the
        # dashboard's Heartbeats row have data; it expects a mail that never comes, due in an hour.
        "heartbeats": [
            {
                "name": "live-heartbeat",
                "imap": {
                    "host": stack.host,
                    "port": stack.imaps_port,
                    "tls": "implicit",
                    "tls_config": dict(tls_config),
                    "username": addresses[0],
                    "password_file": write_secret(tmp, "live-heartbeat", stack.password(addresses[0])),
                },
                "match": {"from_address": "nightly-job@example.invalid"},
                "every": "1h",
                "grace": "1h",
            }
        ],
    }


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        pytest.fail(
            "prometheus not found: install Debian's prometheus package (sudo scripts/install-deps.sh)",
            pytrace=False,
        )
    return path


# ---- the running system -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    binary = prometheus_binary()
    tmp = tmp_path_factory.mktemp("prometheus-live")
    exporter_port, prometheus_port = free_port(), free_port()
    quota_dovecot = mailstack.make_dovecot(
        "live-quota", tls=mailstack.tls, settings={"mail_plugins": "quota"}, extra_config=QUOTA_DOVECOT_CONFIG
    )
    quota_dovecot.render()
    quota_dovecot.start()
    quota_dovecot.wait_ready(mailstack.start_timeout)
    addresses = (fresh_mailbox(), fresh_mailbox(), fresh_mailbox())
    base = exporter_config(mailstack, tmp, addresses, quota_dovecot.ports["imaps"])
    config = tmp / "mailcanary.yml"
    config.write_text(yaml.safe_dump(base, sort_keys=False))

    variant = tmp / "mailcanary-rules-short-for.yml"
    variant.write_text(yaml.safe_dump(short_for_variant(RULE_FILES), sort_keys=False))
    prom_config = tmp / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in RULE_FILES] + [str(variant)],
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
                    # The documented relabel setup (docs/tls.md): target -> instance, /probe on the exporter.
                    {
                        "job_name": PROBE_JOB,
                        "metrics_path": "/probe",
                        "params": {"module": ["live_imaps"]},
                        "scrape_interval": "2s",
                        "scrape_timeout": "2s",
                        "static_configs": [{"targets": [f"{mailstack.host}:{mailstack.imaps_port}"]}],
                        "relabel_configs": [
                            {"source_labels": ["__address__"], "target_label": "__param_target"},
                            {"source_labels": ["__param_target"], "target_label": "instance"},
                            {"target_label": "__address__", "replacement": f"127.0.0.1:{exporter_port}"},
                        ],
                    },
                ],
            }
        )
    )

    exporter_log, prometheus_log = tmp / "exporter.log", tmp / "prometheus.log"
    exporter = prometheus = None
    with exporter_log.open("wb") as elog, prometheus_log.open("wb") as plog:
        try:
            exporter = subprocess.Popen(
                exporter_argv(config, exporter_port),
                cwd=ROOT,
                stdout=elog,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                cwd=tmp,
                stdout=plog,
                stderr=subprocess.STDOUT,
            )
            live = Live(
                stack=mailstack,
                tmp=tmp,
                config=config,
                exporter=exporter,
                prometheus=prometheus,
                quota_dovecot=quota_dovecot,
                exporter_log=exporter_log,
                prometheus_url=f"http://127.0.0.1:{prometheus_port}",
                prometheus_log=prometheus_log,
                base_config=base,
            )

            def up() -> bool:
                for name, proc in (("exporter", exporter), ("prometheus", prometheus)):
                    if proc.poll() is not None:
                        pytest.fail(f"{name} exited with {proc.returncode}\n{live.logs()}", pytrace=False)
                http_get(f"http://127.0.0.1:{exporter_port}/metrics")
                http_get(f"{live.prometheus_url}/-/ready")
                return True

            live.wait_for("exporter and Prometheus answering", up, timeout=STARTUP_BOUND)  # ends if one exits
            live.quiet = watch_quiet(live)  # before any test: (c) and (d) disturb it for good
            yield live
        finally:
            stop_process(prometheus)
            stop_process(exporter)
            quota_dovecot.stop()


def wait_for_data(live: Live) -> None:
    """Until several scrapes of completed runs exist: both round trips, the TLS check, recorded SLO series."""
    needed = (
        f'count_over_time(up{{job="{JOB}"}}[1m]) >= 4',
        # Every round trip has a result (not "all three succeeded at once": on a starved machine one
        # may time out, truly, at its 8 s deadline: seen in a busy run, a POP3 sweep at load 11+).
        "count(mailcanary_roundtrip_success) == 3",
        "increase(mailcanary_roundtrip_runs_total{outcome='success'}[1m]) > 0",
        "mailcanary_tls_check_success",
        "mailcanary:delivery_slo_errors:ratio_rate5m",
    )
    for expr in needed:
        live.wait_for(
            f"{expr} in Prometheus\n{live.logs()}", lambda e=expr: has_value(live.query(e)), timeout=30
        )


def dashboard_queries(name: str, job: str = JOB) -> list[tuple[str, str, str]]:
    board = load(DASHBOARD_DIR / name)
    return [
        (panel["title"], target["refId"], substitute(target["expr"], job=job))
        for panel, target in queries(board)
    ]


def empty_queries(
    live: Live, name: str, timeout: float, job: str = JOB, may_be_empty: frozenset[str] = frozenset()
) -> list[str]:
    """The queries of a dashboard that still return no number, at the job's last good scrape, after
    ``timeout`` s of retrying. Queries of ``may_be_empty`` (``"'panel title' refId"``: series this stack
    never makes) are run too, so each must parse (a refused one fails the test at once), but neither
    awaited nor returned."""
    pending = dashboard_queries(name, job)

    def awaited(left: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return [(t, r, e) for t, r, e in left if f"{t!r} {r}" not in may_be_empty]

    def still_empty() -> list[tuple[str, str, str]]:
        nonlocal pending
        at = live.last_good_scrape(job)
        if at is not None:
            pending = [(t, r, e) for t, r, e in pending if not has_value(live.query(e, at=at))]
        return pending

    try:
        eventually(
            still_empty,
            until=lambda left: not awaited(left),
            timeout=timeout,
            interval=1,
            runnable=live.runnable,
        )
    except BadQuery:
        raise
    except AssertionError:  # not all answered in time: the caller names the rest
        pass
    return [f"{t!r} {r}: {e}" for t, r, e in awaited(pending)]


# ---- (a) dashboards --------------------------------------------------------------------------------


# Panels whose series exist only once the receiver did something the healthy session stack never does
# (a bounce, trusted Authentication-Results or spam headers, a second hop): their queries must still
# parse (Prometheus answers 400 otherwise, which fails here); the series themselves are checked by
# the real-stack tests that make them (test_bounces, test_verdict, test_verdict_dkim, test_path).
NEEDS_RECEIVER_EVENTS = frozenset(
    {
        "'Bounces by status class' A",
        "'Authentication verdict (last canary)' A",
        "'Spam score' A",
        "'Path: hops and time between first and last hop' B",
        "'Heartbeats' E",  # since last seen: the live heartbeat's mail never comes
    }
)


# TLS scan series the session stack cannot have: a staple status (it staples no OCSP) and a DH group size
# (ECDSA certificates and no anonymous suites: no DHE suite can be chosen). The queries must still
# parse; the series are checked where they are made (tests/test_tls_scan.py against GnuTLS and
# OpenSSL's s_server, tests/test_tls_scan_report.py).
NEEDS_STAPLING = frozenset({"'Chain, stapling and scan age' E", "'Protocols and key exchange (scan)' H"})


def test_overview_dashboard_queries_return_data(live: Live) -> None:
    wait_for_data(live)
    empty = empty_queries(live, "mailcanary-overview.json", timeout=15, may_be_empty=NEEDS_RECEIVER_EVENTS)
    assert not empty, "overview panels without data:\n" + "\n".join(empty)


def test_tls_dashboard_queries_return_data(live: Live) -> None:
    wait_for_data(live)
    if not live.query('{__name__=~"mailcanary_tls_.+", endpoint!=""}'):
        pytest.fail(
            "the exporter exports no per-endpoint mailcanary_tls_* series yet, so the TLS dashboard "
            "cannot be proven; this must pass once the TLS metrics are in",
            pytrace=False,
        )
    empty = empty_queries(live, "mailcanary-tls.json", timeout=15, may_be_empty=NEEDS_STAPLING)
    testable = live.query("mailcanary_tls_legacy_protocol_testable == 0")
    hint = f"\n(this machine's OpenSSL cannot offer: {testable})" if testable else ""
    assert not empty, "TLS panels without data:\n" + "\n".join(empty) + hint


def test_probe_dashboard_queries_return_data(live: Live) -> None:
    wait_for_data(live)
    live.wait_for(
        f"probe_success from the {PROBE_JOB} job\n{live.logs()}",
        lambda: has_value(live.query(f'probe_success{{job="{PROBE_JOB}"}} == 1')),
        timeout=30,
    )
    empty = empty_queries(live, "mailcanary-probe.json", timeout=15, job=PROBE_JOB)
    assert not empty, "/probe panels without data:\n" + "\n".join(empty)


# ---- (b) healthy: quiet ------------------------------------------------------------------------------


def test_no_alert_while_the_stack_is_healthy(live: Live) -> None:
    """Every alert of both the shipped and the short-for rules stayed inactive while the stack was healthy
    (watched by the fixture before any test ran: see watch_quiet)."""
    assert live.quiet is not None
    active = live.quiet.active
    for alert in live.quiet.true_skips:  # true: the machine, not the stack, was slow (see watch_quiet)
        print(f"true on a starved machine: {alert['labels']}")
    assert not active, "alerts on a healthy stack:\n" + "\n".join(
        f"{a['state']}: {a['labels']} value={a['value']}" for a in active
    )
    # Dovecot and Postfix (both set to TLS 1.2+) refuse the legacy versions: measured, and no alert.
    for probe, refused in live.quiet.legacy_refused.items():
        assert {s["metric"]["version"] for s in refused} == {"TLSv1", "TLSv1.1"}, (probe, refused)


# ---- (c) Dovecot down ---------------------------------------------------------------------------------


def test_dovecot_down_makes_the_probe_failing_alert_go_off(live: Live) -> None:
    wait_for_data(live)
    live.stack.stop_dovecot()
    try:

        def failing() -> list[dict[str, Any]]:
            return [
                a
                for a in live.alerts()
                if a["labels"]["alertname"] == "MailcanaryProbeFailing"
                and a["labels"].get(VARIANT_LABEL[0]) == VARIANT_LABEL[1]
            ]

        alerts = live.wait_for(
            f"MailcanaryProbeFailing pending or firing\n{live.logs()}", failing, timeout=25
        )
        assert {a["labels"]["probe"] for a in alerts} <= {"live-imaps", "live-pop3s", "live-mailbox"}
        assert all(a["labels"]["severity"] == "critical" for a in alerts)
    finally:
        live.stack.start_dovecot()


# ---- (d) a certificate near expiry ---------------------------------------------------------------------


def test_certificate_near_expiry_makes_the_expiry_alerts_fire(live: Live) -> None:
    stack = live.stack
    now = dt.datetime.now(dt.UTC)
    servers = []
    try:
        endpoints = {}
        for name, days in (("expiring-soon", 15), ("expiring-crit", 3)):
            leaf = stack.issue_leaf(f"live-{name}", not_after=now + dt.timedelta(days=days))
            dovecot = stack.make_dovecot(f"live-{name}", tls=leaf)
            servers.append(dovecot)
            dovecot.render()
            dovecot.start()
            dovecot.wait_ready(stack.start_timeout)
            endpoints[name] = dovecot.ports["imaps"]
        config = dict(live.base_config)
        config["tls_checks"] = [
            *live.base_config["tls_checks"],
            *(tls_check(name, port, "imap", "implicit", stack) for name, port in endpoints.items()),
        ]
        live.reload_exporter(config)

        def fired(alertname: str) -> set[str]:
            return {
                a["labels"]["endpoint"]
                for a in live.alerts()
                if a["labels"]["alertname"] == alertname
                and a["state"] == "firing"
                and a["labels"].get(VARIANT_LABEL[0]) == VARIANT_LABEL[1]
            }

        soon = f"{stack.host}:{endpoints['expiring-soon']}"
        crit = f"{stack.host}:{endpoints['expiring-crit']}"
        live.wait_for(
            f"MailcanaryTLSCertExpiringSoon firing for {soon}\n{live.logs()}",
            lambda: fired("MailcanaryTLSCertExpiringSoon") == {soon},
            timeout=25,
        )
        live.wait_for(
            f"MailcanaryTLSCertExpiringCritical firing for {crit}\n{live.logs()}",
            lambda: fired("MailcanaryTLSCertExpiringCritical") == {crit},
            timeout=10,
        )
        # The shipped rules see it too; they wait their 15 minutes before firing.
        shipped = [
            a
            for a in live.alerts()
            if a["labels"]["alertname"] == "MailcanaryTLSCertExpiringCritical"
            and VARIANT_LABEL[0] not in a["labels"]
        ]
        assert [a["state"] for a in shipped] == ["pending"], shipped
        days = float(shipped[0]["value"])
        assert 2.9 < days < 3.0, days
    finally:
        live.reload_exporter(live.base_config)
        for dovecot in servers:
            dovecot.stop()


# ---- (e) the domain's reports ---------------------------------------------------------------------------


def test_reports_make_the_report_alerts_fire_and_fill_the_dashboard(
    live: Live, fresh_mailbox: Callable[[], str]
) -> None:
    """A reports entry reads a mailbox holding a TLS-RPT report with failures and a DMARC report with a
    failing known sender and unknown senders above the threshold (sent through Postfix): the three
    report alerts fire (they have no ``for:``) and every query of "What others see" has data."""
    stack = live.stack
    address = fresh_mailbox()
    day = (int(time.time()) // DAY - 1) * DAY
    raws = [
        tlsrpt_mail(
            tlsrpt(
                "Google Inc.",
                "live-1",
                day,
                [Policy(ok=50, failures=[("certificate-expired", 3, "mx.example.test")])],
            )
        ),
        dmarc_mail(
            dmarc_xml(
                "Yahoo",
                "live-2",
                day,
                [
                    Row("192.0.2.10", 20, "quarantine", "fail", "fail"),
                    Row("203.0.113.9", 7, "reject", "fail", "fail"),
                ],
            ),
            how="gzip",
        ),
        mail(Mail("bomb", [(gzip_bomb(64 << 20), "application/gzip", "r.xml.gz")])),
    ]
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=30) as s:
        for raw in raws:
            s.sendmail("noreply@example.test", [address], raw)
    stack.wait_for_messages(address, len(raws), timeout=60)
    config = dict(live.base_config)
    config["reports"] = [
        {
            "name": "live-rua",
            "interval": PROBE_INTERVAL,
            "imap": {
                "host": stack.host,
                "port": stack.imaps_port,
                "tls": "implicit",
                "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
                "username": address,
                "password_file": write_secret(live.tmp, "live-rua", stack.password(address)),
            },
            "domains": ["example.test"],
            "senders": {"ourmta": ["192.0.2.0/24"]},
            "unknown_threshold": 5,
        }
    ]
    try:
        live.reload_exporter(config)
        want = {
            ("MailcanaryTLSRPTFailures", "certificate-expired"),
            ("MailcanaryDMARCKnownSenderFailing", "ourmta"),
            ("MailcanaryDMARCUnknownSenders", "example.test"),
        }

        def fired() -> set[tuple[str, str]]:
            return {
                (
                    a["labels"]["alertname"],
                    a["labels"].get("result_type") or a["labels"].get("source") or a["labels"]["domain"],
                )
                for a in live.alerts()
                if a["labels"].get("probe") == "live-rua"
                and a["state"] == "firing"
                and VARIANT_LABEL[0] not in a["labels"]
            }

        live.wait_for(f"the report alerts firing\n{live.logs()}", lambda: fired() == want, timeout=30)
        # "skipped" is filtered to > 0 and nothing here is skipped: the only query without data.
        skipped = frozenset({"'Reports counted, skipped, unreadable' B"})
        empty = empty_queries(live, "mailcanary-reports.json", timeout=15, may_be_empty=skipped)
        assert not empty, "reports panels without data:\n" + "\n".join(empty)
    finally:
        live.reload_exporter(live.base_config)


# ---- (f) heartbeats: a mail that stops coming, a failure report -------------------------------------------


def test_heartbeat_missing_and_failed_alerts_fire(live: Live) -> None:
    """A heartbeat due every 2 s (+1 s grace) whose mail never comes goes missing; one whose mail is a
    failure report (sent through the stack's Postfix) goes failed: both alerts fire on real series."""
    base = live.base_config["heartbeats"][0]
    config = dict(live.base_config)
    config["heartbeats"] = [
        base,
        {**base, "name": "live-hb-gone", "every": "2s", "grace": "1s", "interval": "1s"},
        {
            **base,
            "name": "live-hb-failing",
            "match": {"from_address": "nightly-job@example.org"},
            "fail_if": [{"from_address": "nightly-job@example.org", "subject": "FAILED"}],
            "interval": "1s",
        },
    ]
    live.reload_exporter(config)
    try:

        def fired(alertname: str) -> set[str]:
            return {
                a["labels"]["probe"]
                for a in live.alerts()
                if a["labels"]["alertname"] == alertname
                and a["state"] == "firing"
                and a["labels"].get(VARIANT_LABEL[0]) == VARIANT_LABEL[1]
            }

        live.wait_for(
            f"MailcanaryHeartbeatMissing firing for live-hb-gone\n{live.logs()}",
            lambda: fired("MailcanaryHeartbeatMissing") == {"live-hb-gone"},
            timeout=40,
        )
        with smtplib.SMTP(live.stack.host, live.stack.smtp_port, timeout=30) as smtp:
            smtp.sendmail(
                "nightly-job@example.org",
                [base["imap"]["username"]],
                b"From: nightly-job@example.org\r\nSubject: backup FAILED\r\n\r\ndisk full\r\n",
            )
        live.wait_for(
            f"MailcanaryHeartbeatFailed firing for live-hb-failing\n{live.logs()}",
            lambda: fired("MailcanaryHeartbeatFailed") == {"live-hb-failing"},
            timeout=40,
        )
    finally:
        live.reload_exporter(live.base_config)


def test_short_for_variant_rewrites_every_for() -> None:
    variant = short_for_variant(RULE_FILES)
    alerts = [r for g in variant["groups"] for r in g["rules"]]
    shipped = [r for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]]
    assert len(alerts) == sum("alert" in r for r in shipped)
    assert all(r.get("for", SHORT_FOR) == SHORT_FOR for r in alerts)
    assert all(r["labels"][VARIANT_LABEL[0]] == VARIANT_LABEL[1] for r in alerts)
    assert not any("record" in r for r in alerts)
