"""The alert path end to end: `mailcanary run` -> Debian's Prometheus (the shipped rules) -> Debian's
Alertmanager (the shipped example deploy/alertmanager/alertmanager.yml) -> a webhook receiver, all real
processes on 127.0.0.1 except the receiver (an in-process HTTP server that records what it is sent).

The exporter probes the session's Postfix + Dovecot: a round trip that reads its mail from a Dovecot of
its own (the fault: that Dovecot stopped, then started again) and TLS checks of two more Dovecots whose
certificates expire in 15 days (the fix: a renewed certificate and a restart, as an operator would).

Test-time timers, all rewrites of the shipped files made here (tests/support/alerting.py), never copies:
every alert's `for:` is 2 s (rules evaluated every second, targets scraped every second), the example
Alertmanager config's group_wait/group_interval are 1 s. Everything else is as shipped: expressions,
labels, annotations and runbook URLs, routes by severity, grouping, inhibition, send_resolved.

Proven: (1) MailcanaryProbeFailing reaches the `critical` receiver with its labels, annotations (the
failure reason filled in by the description's query) and runbook URL, grouped per alertname/job/probe;
while it fires, Alertmanager holds back the same probe's SLO burn alert (inhibited by it); it is sent
`resolved` once runs succeed again. (2) MailcanaryTLSCertExpiringSoon reaches the `warning` receiver as
ONE notification for both endpoints (grouped per alertname/job), and is resolved after the renewal.
Waits are for events (a notification, an API state), each bounded; no fixed sleeps.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mailstack import MailStack
from tests.mailstack._net import claim_ports
from tests.support.alerting import (
    ALERTMANAGER_EXAMPLE,
    WebhookReceiver,
    binary,
    fast_alertmanager_config,
    short_for_rules,
    stop_process,
    tail,
)
from tests.support.procs import run_bounded
from tests.support.rules import RULE_FILES
from tests.support.stackconfig import exporter_argv, roundtrip
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
JOB = "mailcanary"
SHORT_FOR = "2s"
AM_TIMERS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
PROBE = "e2e-roundtrip"
EXPIRING = ("e2e-expiring-a", "e2e-expiring-b")
RUNBOOK = "https://github.com/mailcanary/mailcanary/blob/main/docs/alerts.md#"
EVENT_TIMEOUT = 45.0  # a bound for each awaited event on a loaded machine, never a measurement

pytestmark = pytest.mark.prometheus


@dataclass
class AlertPath:
    """The running alert path and what it needs to report on failure."""

    stack: MailStack
    tmp: Path
    receiver: WebhookReceiver
    prometheus_url: str
    alertmanager_url: str
    logs_of: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]]
    dovecots: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)  # when the processes were started

    def logs(self) -> str:
        return "\n".join(f"--- {name} log\n{tail(path)}" for name, path in self.logs_of.items())

    def get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get(f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return list(data["data"]["result"])

    def am_alerts(self, alertname: str) -> list[dict[str, Any]]:
        """Alertmanager's view (API v2), suppressed (inhibited or silenced) alerts included."""
        params = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
        return list(self.get(f"{self.alertmanager_url}/api/v2/alerts?{params}"))

    def wait(self, what: str, check: Callable[[], Any], timeout: float = EVENT_TIMEOUT) -> Any:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{self.logs()}", pytrace=False)
        return self.receiver.wait_for(what, check, timeout, self.logs, self.runnable)

    def runnable(self) -> list[int]:
        """The alert path's processes: exporter, Prometheus, Alertmanager and the mail servers."""
        servers = [pid for d in self.dovecots.values() if (pid := d.pid) is not None]
        return [*(p.pid for p in self.procs.values()), *self.stack.pids(), *servers]


def runbook_anchors() -> set[str]:
    text = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8")
    return {m.lower() for m in re.findall(r"^## (\w+)\s*$", text, flags=re.M)}


def tls_check(name: str, port: int, stack: MailStack) -> dict[str, Any]:
    return {
        "name": name,
        "host": stack.host,
        "port": port,
        "protocol": "imap",
        "tls": "implicit",
        "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
        "source_address": "127.0.0.2",  # Dovecot would offer plaintext LOGIN to 127.0.0.1 -> .1
    }


def start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )


@pytest.fixture(scope="module")
def alert_path(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AlertPath]:
    prometheus_bin = binary("prometheus", package="prometheus")
    alertmanager_bin = binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("alerts-e2e")
    exporter_port, prometheus_port, am_port = claim_ports(3)
    now = dt.datetime.now(dt.UTC)
    dovecots: dict[str, Any] = {}
    receiver = WebhookReceiver()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # The round trip's own Dovecot (the fault is stopping it) and two with certificates near expiry.
        own = mailstack.make_dovecot("e2e-receive", tls=mailstack.tls)
        dovecots[PROBE] = own
        for name in EXPIRING:
            leaf = mailstack.issue_leaf(name, not_after=now + dt.timedelta(days=15))
            dovecots[name] = mailstack.make_dovecot(name, tls=leaf)
        for dovecot in dovecots.values():
            dovecot.render()
            dovecot.start()
            dovecot.wait_ready(mailstack.start_timeout)

        address = fresh_mailbox()
        probe = roundtrip(mailstack, tmp, PROBE, address)
        probe["receive"]["port"] = own.ports["imaps"]
        config = {
            "global": {"interval": "2s", "timeout": "8s", "state_dir": str(tmp / "state")},
            "roundtrip": [probe],
            "tls_checks": [tls_check(name, dovecots[name].ports["imaps"], mailstack) for name in EXPIRING],
        }
        config_file = tmp / "mailcanary.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))

        rules = tmp / "rules-short-for.yml"
        rules.write_text(yaml.safe_dump(short_for_rules(RULE_FILES, SHORT_FOR), sort_keys=False))
        am_config = tmp / "alertmanager.yml"
        example = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
        am_config.write_text(yaml.safe_dump(fast_alertmanager_config(example, receiver.url, AM_TIMERS)))
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "alerting": {
                        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                    },
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
                    ],
                }
            )
        )
        amtool = binary("amtool", package="prometheus-alertmanager")
        checked = run_bounded([amtool, "check-config", str(am_config)], 60)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        logs_of = {name: tmp / f"{name}.log" for name in ("exporter", "prometheus", "alertmanager")}
        procs["exporter"] = start(exporter_argv(config_file, exporter_port), logs_of["exporter"], ROOT)
        procs["alertmanager"] = start(
            [
                alertmanager_bin,
                f"--config.file={am_config}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                f"--web.external-url=http://127.0.0.1:{am_port}/",
                "--cluster.listen-address=",  # no gossip port (it would bind every interface)
            ],
            logs_of["alertmanager"],
            tmp,
        )
        procs["prometheus"] = start(
            [
                prometheus_bin,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                "--storage.tsdb.retention.time=1h",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                f"--web.external-url=http://127.0.0.1:{prometheus_port}/",
            ],
            logs_of["prometheus"],
            tmp,
        )
        path = AlertPath(
            stack=mailstack,
            tmp=tmp,
            receiver=receiver,
            prometheus_url=f"http://127.0.0.1:{prometheus_port}",
            alertmanager_url=f"http://127.0.0.1:{am_port}",
            logs_of=logs_of,
            procs=procs,
            dovecots=dovecots,
        )

        def healthy() -> bool:
            return bool(path.query(f'mailcanary_roundtrip_success{{job="{JOB}",probe="{PROBE}"}} == 1'))

        eventually(
            healthy,
            timeout=60,
            interval=0.5,
            runnable=path.runnable,
            ignoring=(OSError, ValueError),
            message=lambda: f"a successful round trip in Prometheus\n{path.logs()}",
        )
        yield path
    finally:
        for name in ("prometheus", "alertmanager", "exporter"):
            stop_process(procs.get(name))
        receiver.close()
        for dovecot in dovecots.values():
            dovecot.stop()


def _by_fingerprint(items: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    return {alert["fingerprint"]: (path, body, alert) for path, body, alert in items}


def test_probe_failing_reaches_the_receiver_and_resolves(alert_path: AlertPath) -> None:
    path, receiver = alert_path, alert_path.receiver

    def of_probe(status: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        return [
            item
            for item in receiver.alerts("MailcanaryProbeFailing")
            if item[2]["labels"].get("probe") == PROBE and item[2]["status"] == status
        ]

    assert not of_probe("firing"), "MailcanaryProbeFailing sent while the round trip succeeds"
    t0 = time.monotonic()
    path.dovecots[PROBE].stop()
    restored = False
    try:
        (route, body, alert) = path.wait(
            "MailcanaryProbeFailing firing at the receiver", lambda: of_probe("firing")
        )[0]
        fired = time.monotonic() - t0
        labels, annotations = alert["labels"], alert["annotations"]
        assert route == "/mailcanary-page", route  # severity critical -> the paging receiver
        assert body["receiver"] == "mailcanary-page" and body["status"] == "firing", body
        assert labels["severity"] == "critical" and labels["job"] == JOB, labels
        assert labels["instance"].startswith("127.0.0.1:"), labels
        assert body["groupLabels"] == {"alertname": "MailcanaryProbeFailing", "job": JOB, "probe": PROBE}, (
            body
        )
        assert annotations["summary"] == f"Mail round trip {PROBE} is failing", annotations
        # the description's query found the failure reason: the receive side refused the connection
        reason = "Most frequent failure reason over the last 15 minutes: receive_connect."
        assert annotations["description"].endswith(reason), annotations["description"]
        assert annotations["runbook_url"] == RUNBOOK + "mailcanaryprobefailing", annotations
        assert "mailcanaryprobefailing" in runbook_anchors()
        assert alert["generatorURL"].startswith(path.prometheus_url), alert

        # The same probe's SLO burn alert fires too, and Alertmanager holds it back: inhibited by this one.
        # (Whether it was sent before: the two fire within a second of each other, either may be first;
        # Alertmanager's own state is what the inhibit rule decides.)
        def burn_inhibited() -> list[dict[str, Any]]:
            return [
                a
                for a in path.am_alerts("MailcanaryDeliverySLOFastBurn")
                if a["labels"].get("probe") == PROBE
                and a["status"]["state"] == "suppressed"
                and alert["fingerprint"] in a["status"]["inhibitedBy"]
            ]

        path.wait("MailcanaryDeliverySLOFastBurn inhibited by MailcanaryProbeFailing", burn_inhibited)

        t1 = time.monotonic()
        own = path.dovecots[PROBE]
        own.start()
        own.wait_ready(path.stack.start_timeout)
        restored = True
        resolved = path.wait(
            "MailcanaryProbeFailing resolved at the receiver",
            lambda: [i for i in of_probe("resolved") if i[2]["fingerprint"] == alert["fingerprint"]],
        )
        (route, body, gone) = resolved[0]
        assert route == "/mailcanary-page" and body["status"] == "resolved", body
        assert gone["labels"] == labels and gone["startsAt"] == alert["startsAt"], gone
        assert gone["endsAt"] > gone["startsAt"], gone
        print(
            f"\nMailcanaryProbeFailing: fired {fired:.1f} s after the fault, resolved "
            f"{time.monotonic() - t1:.1f} s after the fix"
        )
    finally:
        if not restored:
            path.dovecots[PROBE].start()
            path.dovecots[PROBE].wait_ready(path.stack.start_timeout)


def test_certificate_near_expiry_reaches_the_receiver_grouped_and_resolves(alert_path: AlertPath) -> None:
    path, receiver, stack = alert_path, alert_path.receiver, alert_path.stack
    endpoints = {f"{stack.host}:{path.dovecots[name].ports['imaps']}" for name in EXPIRING}

    def notified(status: str) -> list[tuple[str, dict[str, Any]]]:
        """Notifications that carry the expiry alert of both endpoints, with ``status``."""
        out = []
        for route, body in receiver.notifications():
            hits = [
                a
                for a in body["alerts"]
                if a["labels"].get("alertname") == "MailcanaryTLSCertExpiringSoon" and a["status"] == status
            ]
            if {a["labels"].get("endpoint") for a in hits} == endpoints:
                out.append((route, body))
        return out

    (route, body) = path.wait(
        "one MailcanaryTLSCertExpiringSoon notification for both endpoints", lambda: notified("firing")
    )[0]
    fired = time.monotonic() - path.started  # an upper bound: it may have arrived before this test
    assert route == "/mailcanary-ticket" and body["receiver"] == "mailcanary-ticket", body  # warning
    assert body["groupLabels"] == {"alertname": "MailcanaryTLSCertExpiringSoon", "job": JOB}, body
    alerts = [a for a in body["alerts"] if a["labels"]["alertname"] == "MailcanaryTLSCertExpiringSoon"]
    assert len(alerts) == 2, alerts
    for alert in alerts:
        labels, annotations = alert["labels"], alert["annotations"]
        assert labels["severity"] == "warning" and labels["protocol"] == "imap", labels
        assert "probe" not in labels, labels  # one alert per endpoint, probes folded together
        days = float(annotations["summary"].split(" expires in ")[1].split()[0])
        assert 14 <= days <= 15, annotations
        assert annotations["summary"] == f"TLS certificate of {labels['endpoint']} expires in {days:.0f} days"
        assert "Automatic renewal should have replaced it by now." in annotations["description"], annotations
        assert annotations["runbook_url"] == RUNBOOK + "mailcanarytlscertexpiringsoon", annotations
    assert "mailcanarytlscertexpiringsoon" in runbook_anchors()

    # The renewal: a certificate valid for 90 days in place of each, the Dovecots restarted.
    t1 = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    for name in EXPIRING:
        dovecot = path.dovecots[name]
        dovecot.stop()
        stack.issue_leaf(name, not_after=now + dt.timedelta(days=90))  # same files, new certificate
        dovecot.start()
        dovecot.wait_ready(stack.start_timeout)

    # Renewed one after the other, they may resolve in one notification or two (Alertmanager drops a
    # resolved alert from its group once it has been sent): every endpoint must be sent resolved.
    def resolved() -> dict[str, tuple[str, dict[str, Any]]]:
        out = {}
        for route, body in receiver.notifications():
            for a in body["alerts"]:
                if (
                    a["labels"].get("alertname") == "MailcanaryTLSCertExpiringSoon"
                    and a["status"] == "resolved"
                ):
                    out[a["labels"]["endpoint"]] = (route, body)
        return out if set(out) == endpoints else {}

    for route, body in path.wait(
        "MailcanaryTLSCertExpiringSoon resolved for both endpoints", resolved
    ).values():
        assert route == "/mailcanary-ticket" and body["receiver"] == "mailcanary-ticket", body
    print(
        f"\nMailcanaryTLSCertExpiringSoon: received within {fired:.1f} s of the start, resolved "
        f"{time.monotonic() - t1:.1f} s after the renewal"
    )


def test_the_example_alertmanager_config_passes_amtool() -> None:
    amtool = binary("amtool", package="prometheus-alertmanager")
    result = run_bounded([amtool, "check-config", str(ALERTMANAGER_EXAMPLE)], 60)
    assert result.returncode == 0, result.stdout + result.stderr


def _alternatives(regex: str) -> list[str]:
    """The top-level alternatives of a regex (``a|b(c|d)`` -> ``a``, ``b(c|d)``)."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(regex):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "|" and depth == 0:
            out.append(regex[start:i])
            start = i + 1
    return [*out, regex[start:]]


def test_every_alert_the_example_names_exists() -> None:
    """The inhibit rules name alerts, some by regex: every name and alternative is a shipped alert."""
    shipped = {
        r.get("alert")
        for p in RULE_FILES
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
    }
    shipped.discard(None)
    example = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    for rule in example["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=|!=)"(.+)"', matcher)
            assert m is not None or not matcher.startswith("alertname"), matcher
            if m is None or m.group(2) == "Mailcanary.+":
                continue
            for alternative in _alternatives(m.group(2)) if m.group(1) == "=~" else [m.group(2)]:
                assert any(re.fullmatch(alternative, a) for a in shipped), (
                    f"{matcher}: {alternative} is no alert"
                )
