"""The reports kind end to end: report mails built to RFC 8460 §4 and RFC 7489 appendix C by the test,
sent through the real Postfix of the test stack, delivered by Dovecot, read over IMAPS by the kind as the
daemon runs it (Runner, registry families), and again after a restart (a new Runner on the same state).

One mailbox holds all the cases at once, as a real rua mailbox would: several orgs, every policy type,
every TLS-RPT result type, an unknown one, all four mailing forms of each kind, a duplicate, a re-sent
id with other contents, the same id from two orgs, a too-old report, malformed JSON, an XML with
entities, a zip bomb, a gzip bomb, mismatched totals and a mail that is no report.
"""

from __future__ import annotations

import errno
import imaplib
import io
import re
import smtplib
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from prometheus_client.core import Metric

from exporter import registry
from exporter.cli import _probe as run_probe
from exporter.cli import build_parser
from exporter.config import load_config
from exporter.kinds.reports import status_cell
from exporter.metrics.collector import ExporterState
from exporter.run.history import History
from exporter.run.results import ResultStore
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from exporter.web.status import render_status
from probes.reports import mailbox as reports_mailbox
from tests.mailstack import MailStack
from tests.support.reports import (
    DAY,
    ENTITY_XML,
    Mail,
    Policy,
    Row,
    dmarc_mail,
    dmarc_xml,
    every_result_type,
    gzip_bomb,
    mail,
    tlsrpt,
    tlsrpt_mail,
    zip_bomb,
)
from tests.support.stackconfig import secret_file

NAME = "rua"


def _config(stack: MailStack, tmp: Path, address: str, **extra: Any) -> Path:
    entry: dict[str, Any] = {
        "name": NAME,
        "interval": "1h",
        "imap": {
            "host": stack.host,
            "port": stack.imaps_port,
            "tls": "implicit",
            "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
            "username": address,
            "password_file": secret_file(tmp, "rua", stack.password(address)),
        },
        "domains": ["example.test"],
        "senders": {"ourmta": ["192.0.2.0/24"], "newsletter": ["2001:db8:1::/48"]},
        "mx_hosts": ["mx.example.test"],
        "max_age": "7d",
        **extra,
    }
    path = tmp / "mailcanary.yml"
    path.write_text(yaml.safe_dump({"global": {"state_dir": str(tmp / "state")}, "reports": [entry]}))
    return path


def _runner(path: Path) -> Runner:
    loaded = load_config(str(path))
    return Runner(
        loaded=loaded, key=b"k" * 32, ledger=Ledger(None), store=ResultStore(), masker=make_masker(loaded)
    )


def _send(stack: MailStack, address: str, raws: list[bytes]) -> None:
    before = len(stack.messages(address))
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=30) as s:
        for raw in raws:
            s.sendmail("noreply-reports@example.test", [address], raw)
    stack.wait_for_messages(address, before + len(raws), timeout=60)


def _samples(runner: Runner) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    snap = runner.store.snapshot()
    fams: list[Metric] = registry.get("reports").families(snap, [NAME])
    return {(s.name, frozenset(s.labels.items())): s.value for f in fams for s in f.samples}


def _get(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return got[(name, frozenset({"probe": NAME, **labels}.items()))]


def _sum(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in got.items() if n == name and want <= set(ls))


def _mails(day: float) -> list[bytes]:
    old = day - 30 * DAY
    google = tlsrpt(
        "Google Inc.",
        "2026-g-1",
        day,
        [Policy(ok=900, failures=every_result_type()), Policy(type="tlsa", ok=5)],
    )
    return [
        tlsrpt_mail(google),  # every result type + an unknown one (other), sts + tlsa, gzip
        tlsrpt_mail(google),  # the same report mailed twice: counted once
        tlsrpt_mail(  # Microsoft: no-policy-found, uncompressed +json, an MX we do not list
            tlsrpt(
                "Microsoft Corporation",
                "ms-1",
                day,
                [
                    Policy(
                        type="no-policy-found",
                        ok=40,
                        failures=[("starttls-not-supported", 2, "mx9.other.test")],
                    )
                ],
            ),
            media="application/tlsrpt+json",
        ),
        tlsrpt_mail(tlsrpt("Comcast", "cc-1", day, [Policy(ok=10)]), media="application/tlsrpt"),  # pre-RFC
        tlsrpt_mail(  # totals that differ from the details: the summary is exported, the mismatch logged
            tlsrpt(
                "Mismatch Org",
                "mm-1",
                day,
                [Policy(ok=1, failed=9, failures=[("certificate-expired", 4, "mx.example.test")])],
            )
        ),
        tlsrpt_mail(tlsrpt("Org A", "shared-id", day, [Policy(ok=11)])),  # the same id from two orgs
        tlsrpt_mail(tlsrpt("Org B", "shared-id", day, [Policy(ok=13)])),
        tlsrpt_mail(tlsrpt("Org A", "shared-id", day, [Policy(ok=99)])),  # re-sent with other contents
        tlsrpt_mail(tlsrpt("Old Org", "old-1", old, [Policy(ok=5)])),  # older than max_age
        tlsrpt_mail(
            {"report-id": "broken"}, raw=b'{"organization-name": "Broken", "policies": ['
        ),  # bad JSON
        dmarc_mail(  # Google DMARC: zip, a known sender, an unknown one spoofing us
            dmarc_xml(
                "google.com",
                "dm-g-1",
                day,
                [
                    Row("192.0.2.10", 120),
                    Row("192.0.2.11", 3, "quarantine", "fail", "fail"),  # our own MTA failing
                    Row("203.0.113.66", 40, "reject", "fail", "fail"),  # unknown, spoofing
                    Row("2001:db8:1::5", 7, dkim="pass", spf="fail"),  # the newsletter (IPv6)
                ],
            ),
            how="zip",
            name="google.com!example.test!1!2.xml",
        ),
        dmarc_mail(
            dmarc_xml("Yahoo", "dm-y-1", day, [Row("203.0.113.66", 5, "reject", "fail", "fail")]), how="gzip"
        ),
        dmarc_mail(
            dmarc_xml("Other", "dm-o-1", day, [Row("198.51.100.1", 2, header_from="elsewhere.test")]),
            how="plain",
        ),
        dmarc_mail(ENTITY_XML, how="plain"),  # entities: refused
        mail(Mail("zip bomb", [(zip_bomb(1 << 30), "application/zip", "report.zip")])),
        mail(Mail("gzip bomb", [(gzip_bomb(1 << 30), "application/gzip", "report.xml.gz")])),
        b"From: someone@example.test\r\nSubject: hello\r\n\r\nnot a report\r\n",
    ]


@pytest.fixture(scope="module")
def mails() -> list[bytes]:
    return _mails((int(time.time()) // DAY - 2) * DAY)


def _flags(stack: MailStack, address: str) -> list[str]:
    return [p.name.partition(":2,")[2] if p.parent.name == "cur" else "" for p in stack.messages(address)]


async def test_reports_counted_once_across_a_restart(
    mailstack: MailStack, mailbox: str, tmp_path: Path, mails: list[bytes]
) -> None:
    _send(mailstack, mailbox, mails)
    path = _config(mailstack, tmp_path, mailbox)
    runner = _runner(path)
    with structlog.testing.capture_logs() as logs:
        run = await runner.run_entry(runner.loaded.config.reports[0])
    assert run.success, run.message
    got = _samples(runner)
    # TLS-RPT: summary totals per policy type and org; every result type, the unknown one as other
    ok = {"domain": "example.test", "result": "successful"}
    assert _get(got, "mailcanary_tlsrpt_sessions_total", policy_type="sts", org="google_inc.", **ok) == 900
    assert _get(got, "mailcanary_tlsrpt_sessions_total", policy_type="tlsa", org="google_inc.", **ok) == 5
    nopol = {"domain": "example.test", "policy_type": "no-policy-found", "org": "microsoft_corporation"}
    assert _get(got, "mailcanary_tlsrpt_sessions_total", result="failed", **nopol) == 2
    assert _get(got, "mailcanary_tlsrpt_failures_total", result_type="starttls-not-supported", **nopol) == 2
    g = {"domain": "example.test", "policy_type": "sts", "org": "google_inc."}
    for i, rt in enumerate(
        [
            "starttls-not-supported",
            "certificate-host-mismatch",
            "certificate-expired",
            "certificate-not-trusted",
            "validation-failure",
            "tlsa-invalid",
            "dnssec-invalid",
            "dane-required",
            "sts-policy-fetch-error",
            "sts-policy-invalid",
            "sts-webpki-invalid",
        ]
    ):
        assert _get(got, "mailcanary_tlsrpt_failures_total", result_type=rt, **g) == i + 1, rt
    assert _get(got, "mailcanary_tlsrpt_failures_total", result_type="other", **g) == 5
    assert _get(got, "mailcanary_tlsrpt_sessions_total", policy_type="sts", org="comcast", **ok) == 10
    # mismatch: the summary (9) is exported, the details (4) counted by type, the mismatch counted
    mm = {"domain": "example.test", "policy_type": "sts", "org": "mismatch_org"}
    assert _get(got, "mailcanary_tlsrpt_sessions_total", result="failed", **mm) == 9
    assert _get(got, "mailcanary_tlsrpt_summary_mismatches_total", org="mismatch_org") == 1
    assert (
        _get(got, "mailcanary_tlsrpt_mx_failures_total", domain="example.test", mx="mx.example.test")
        == 66 + 5 + 4
    )
    assert _get(got, "mailcanary_tlsrpt_mx_failures_total", domain="example.test", mx="other") == 2
    # the same id from two orgs: both; the re-sent one with other contents: the first kept
    assert _get(got, "mailcanary_tlsrpt_sessions_total", policy_type="sts", org="org_a", **ok) == 11
    assert _get(got, "mailcanary_tlsrpt_sessions_total", policy_type="sts", org="org_b", **ok) == 13
    assert not any(dict(ls).get("org") == "old_org" for _, ls in got)
    # DMARC: per source class, alignment and disposition; the unknown one never a label of its own
    dm = {"domain": "example.test", "org": "google.com"}
    assert (
        _get(
            got,
            "mailcanary_dmarc_messages_total",
            disposition="none",
            dkim="pass",
            spf="pass",
            source="ourmta",
            **dm,
        )
        == 120
    )
    assert (
        _get(
            got,
            "mailcanary_dmarc_messages_total",
            disposition="quarantine",
            dkim="fail",
            spf="fail",
            source="ourmta",
            **dm,
        )
        == 3
    )
    assert (
        _get(
            got,
            "mailcanary_dmarc_messages_total",
            disposition="reject",
            dkim="fail",
            spf="fail",
            source="unknown",
            **dm,
        )
        == 40
    )
    assert (
        _get(
            got,
            "mailcanary_dmarc_messages_total",
            disposition="none",
            dkim="pass",
            spf="fail",
            source="newsletter",
            **dm,
        )
        == 7
    )
    assert _sum(got, "mailcanary_dmarc_messages_total", org="yahoo", source="unknown") == 5
    assert _sum(got, "mailcanary_dmarc_messages_total", domain="other") == 2
    assert _get(got, "mailcanary_dmarc_policy_info", domain="example.test", p="reject", sp="quarantine") == 1
    assert _get(got, "mailcanary_reports_unknown_sources") == 1  # 198.51.100.1 sent as elsewhere.test
    # reports counted and skipped, errors by kind and reason
    assert _get(got, "mailcanary_reports_ingested_total", kind="tlsrpt") == 6
    assert _get(got, "mailcanary_reports_ingested_total", kind="dmarc") == 3
    assert _get(got, "mailcanary_reports_skipped_total", kind="tlsrpt", reason="duplicate") == 1
    assert _get(got, "mailcanary_reports_skipped_total", kind="tlsrpt", reason="changed_duplicate") == 1
    assert _get(got, "mailcanary_reports_skipped_total", kind="tlsrpt", reason="too_old") == 1
    assert _get(got, "mailcanary_reports_skipped_total", kind="unknown", reason="not_a_report") == 1
    assert _get(got, "mailcanary_reports_errors_total", kind="tlsrpt", reason="bad_json") == 1
    assert _get(got, "mailcanary_reports_errors_total", kind="dmarc", reason="forbidden_xml") == 1
    assert _get(got, "mailcanary_reports_errors_total", kind="dmarc", reason="bomb") == 2  # zip and gzip
    end = _get(got, "mailcanary_tlsrpt_report_end_timestamp_seconds", org="google_inc.")
    assert end - _get(got, "mailcanary_tlsrpt_report_start_timestamp_seconds", org="google_inc.") == DAY - 1
    # one log line per bad report, per mismatch, per changed re-send, and the top unknown sources
    events = [e["event"] for e in logs]
    assert events.count("report_error") == 4
    assert events.count("tlsrpt_summary_mismatch") == 1 and events.count("report_resent_changed") == 1
    top = next(e for e in logs if e["event"] == "dmarc_unknown_sources")["top"]
    assert top[0] == {"address": "203.0.113.66", "messages": 45}
    assert mailstack.password(mailbox) not in repr(logs)
    assert "203.0.113.66 (45)" in status_cell(run)
    page = render_status(runner.store.snapshot(), ExporterState(probes={NAME: "reports"}), History(), {})
    row = re.search(
        r'<tr class="probe" data-probe="rua" data-kind="reports" data-outcome="success">(.*?)</tr>', page
    )
    assert row is not None and "9 reports counted (tlsrpt 6, dmarc 3)" in row.group(1)
    assert "unknown senders: 203.0.113.66 (45), 198.51.100.1 (2)" not in row.group(1)  # not ours: not listed
    assert "unknown senders: 203.0.113.66 (45)" in row.group(1)
    # read-only: nothing was flagged (EXAMINE, BODY.PEEK)
    assert all("S" not in f and "T" not in f for f in _flags(mailstack, mailbox))

    # A restart: a new runner on the same state; the Google report re-delivered meanwhile
    _send(mailstack, mailbox, [mails[0]])
    again = _runner(path)
    run2 = await again.run_entry(again.loaded.config.reports[0])
    assert run2.success, run2.message
    got2 = _samples(again)
    assert _get(got2, "mailcanary_tlsrpt_sessions_total", policy_type="sts", org="google_inc.", **ok) == 900
    assert _get(got2, "mailcanary_reports_ingested_total", kind="tlsrpt") == 6
    assert _get(got2, "mailcanary_reports_skipped_total", kind="tlsrpt", reason="duplicate") == 2
    assert _get(got2, "mailcanary_reports_errors_total", kind="dmarc", reason="bomb") == 2  # not re-read
    assert isinstance(run2.detail, object) and "1 skipped" in run2.message


async def test_one_shot_probe_reports_what_it_counted(
    mailstack: MailStack, mailbox: str, tmp_path: Path, mails: list[bytes]
) -> None:
    _send(mailstack, mailbox, [mails[0], mails[10]])
    path = _config(mailstack, tmp_path, mailbox)
    args = build_parser().parse_args(["probe", "--config", str(path), NAME])
    buf = io.StringIO()
    assert await run_probe(args, buf) == 0
    out = buf.getvalue()
    assert out.splitlines()[0].startswith("MAILCANARY OK - 1 report mailboxes read"), out
    assert "tlsrpt google_inc. 2026-g-1: 905 successful, 71 failed sessions" in out
    assert "dmarc google.com dm-g-1: 170 messages, 43 failing DMARC, 40 from unknown senders" in out
    assert "unknown sender: 203.0.113.66 (40 messages in the window)" in out


async def test_a_failed_run_keeps_exporting_the_counters(
    mailstack: MailStack, mailbox: str, tmp_path: Path, mails: list[bytes]
) -> None:
    _send(mailstack, mailbox, [mails[2]])
    path = _config(mailstack, tmp_path, mailbox)
    runner = _runner(path)
    assert (await runner.run_entry(runner.loaded.config.reports[0])).success
    (tmp_path / "rua.pw").write_text("wrong-password\n")
    bad = _runner(path)
    run = await bad.run_entry(bad.loaded.config.reports[0])
    assert run.reason == "receive_auth"
    got = _samples(bad)
    assert _get(got, "mailcanary_reports_success") == 0
    assert _get(got, "mailcanary_reports_ingested_total", kind="tlsrpt") == 1


async def test_move_to_moves_only_what_was_read(
    mailstack: MailStack, mailbox: str, tmp_path: Path, mails: list[bytes]
) -> None:
    """With move_to, a counted report leaves the folder (UID MOVE); a mail that is no report stays."""
    _send(mailstack, mailbox, [mails[3], mails[-1]])
    with imaplib.IMAP4_SSL(mailstack.host, mailstack.imaps_port, ssl_context=mailstack.ssl_context()) as c:
        c.login(mailbox, mailstack.password(mailbox))
        c.create("Reports-done")
    path = _config(mailstack, tmp_path, mailbox, move_to="Reports-done")
    runner = _runner(path)
    run = await runner.run_entry(runner.loaded.config.reports[0])
    assert run.success, run.message
    left = mailstack.messages(mailbox)
    assert len(left) == 1 and b"not a report" in left[0].read_bytes()


def test_reports_config_errors_are_one_line(tmp_path: Path) -> None:
    from exporter.config import ConfigError, parse_config

    base = "reports:\n  - {name: r, imap: {host: h, username: u, password: p}, domains: [example.test]%s}\n"
    for extra, problem in [
        (", senders: {unknown: [192.0.2.0/24]}", "reports[0].senders"),
        (", senders: {a: [not-a-cidr]}", "reports[0].senders"),
        (", kinds: [spf]", "reports[0].kinds"),
        (", move_to: INBOX", "reports[0]"),
        (", max_rattio: 3", "reports[0].max_rattio: unknown key"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(base % extra, "f.yml")
        assert len(err.value.problems) == 1 and problem in err.value.problems[0], err.value.problems
        assert "\n" not in err.value.problems[0]


async def test_max_messages_leaves_a_backlog_for_the_next_run(
    mailstack: MailStack, mailbox: str, tmp_path: Path, mails: list[bytes]
) -> None:
    """Three reports, two per run: the first run counts two and says one is left; the next counts it."""
    _send(mailstack, mailbox, [mails[2], mails[3], mails[10]])
    runner = _runner(_config(mailstack, tmp_path, mailbox, max_messages=2))
    entry = runner.loaded.config.reports[0]
    first = await runner.run_entry(entry)
    assert first.success and _get(_samples(runner), "mailcanary_reports_backlog") == 1
    assert "1 left for the next run" in first.message
    second = await runner.run_entry(entry)
    got = _samples(runner)
    assert second.success and _get(got, "mailcanary_reports_backlog") == 0
    assert _get(got, "mailcanary_reports_ingested_total", kind="tlsrpt") == 2
    assert _get(got, "mailcanary_reports_ingested_total", kind="dmarc") == 1


async def test_a_state_that_cannot_be_saved_fails_the_run_and_counts_nothing_twice(
    mailstack: MailStack, mailbox: str, tmp_path: Path, mails: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (faked: the tests run as root, for whom no directory is read-only): the run fails
    (internal, one log line naming the file); the report is counted once the state can be saved."""
    _send(mailstack, mailbox, [mails[3]])
    runner = _runner(_config(mailstack, tmp_path, mailbox))
    entry = runner.loaded.config.reports[0]

    def full(path: Path, state: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m, structlog.testing.capture_logs() as logs:
        m.setattr(reports_mailbox, "save_state", full)
        run = await runner.run_entry(entry)
    assert run.reason == "internal" and "No space left on device" in run.message
    assert [e["file"] for e in logs if e["event"] == "reports_state_not_saved"] == [
        str(tmp_path / "state" / "reports-rua.json")
    ]
    assert (await runner.run_entry(entry)).success
    assert _get(_samples(runner), "mailcanary_reports_ingested_total", kind="tlsrpt") == 1
    assert (await runner.run_entry(entry)).success
    assert _get(_samples(runner), "mailcanary_reports_ingested_total", kind="tlsrpt") == 1


def test_oauth_login_and_secrets_reuse_the_endpoint_models(tmp_path: Path) -> None:
    """The mailbox side takes the receive side's keys: OAuth (a token file here) gives a token source,
    a password file is read at load time and registered with the log masker."""
    from types import SimpleNamespace

    from exporter.config import parse_config
    from exporter.kinds.reports import reports_settings
    from probes.auth.oauth import FileToken

    token = tmp_path / "token"
    token.write_text("tok\n")
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pw\n")
    text = (
        f"global: {{state_dir: {tmp_path}}}\nreports:\n"
        f"  - {{name: a, domains: [example.test], imap: {{host: h, tls: implicit, username: u@example.test, "
        f"oauth: {{token_file: {token}}}}}}}\n"
        f"  - {{name: b, domains: [example.test], imap: {{host: h, tls: implicit, username: u@example.test, "
        f"password_file: {pw}}}}}\n"
    )
    loaded = parse_config(text, "f.yml")
    a, b = loaded.config.reports
    env = SimpleNamespace(loaded=loaded, slots=None)
    sa = reports_settings(a, env)
    assert isinstance(sa.imap.credentials.token_source, FileToken)
    assert sa.imap.endpoint.port == 993 and sa.state_path == tmp_path / "reports-a.json"
    sb = reports_settings(b, env)
    assert sb.imap.credentials.password == "s3cret-pw"
    assert ("u@example.test", "s3cret-pw") in list(loaded.all_secrets())
