"""`mailcanary probe`'s report of a round trip, from constructed run results: one line per fact
(placement, verdict, bounces, hops, quota, sync), numeric facts in the Nagios perfdata, a check that was
not configured, not applicable, skipped or not reached saying so, and the exit code of each case.
The real round trip through Postfix + Dovecot into Junk is tests/test_placement.py."""

from __future__ import annotations

from typing import Any

from exporter.cli import EXIT_CRITICAL, EXIT_OK, EXIT_WARNING, report
from exporter.config import RoundTripConfig
from exporter.run.results import RunResult
from probes.receipt.received import Hop, Path
from probes.receipt.verdict import Verdict


def config(
    name: str = "rt", protocol: str = "imap", recipient: str = "c@example.test", **receive: Any
) -> RoundTripConfig:
    side = {"host": "127.0.0.1", "username": "c@example.test", "password": "x"}
    return RoundTripConfig.model_validate(
        {
            "name": name,
            "sender": "c@example.test",
            "recipient": recipient,
            "smtp": side,
            "receive": {**side, "protocol": protocol, **receive},
        }
    )


def result(name: str = "rt", **kw: Any) -> RunResult:
    fields: dict[str, Any] = {
        "probe": name,
        "success": True,
        "reason": "success",
        "message": "ok",
        "started": 0.0,
        "duration": 0.3,
        "phases": {},
        "delivery": 0.058,
        "placement": "inbox",
        "path": Path(hops=[Hop(1, "ESMTPSA", True, "127.0.0.1", "mx", 100.0)]),
        "verdict": Verdict(),
    }
    fields.update(kw)
    return RunResult(**fields)


def lines_of(text: str, probe: str = "rt") -> dict[str, str]:
    """The fact lines of the report: key -> rest."""
    out = {}
    for line in text.splitlines():
        key, sep, rest = line.strip().partition(": ")
        if line.startswith("  ") and not line.startswith("   ") and sep:
            out[key] = rest
    return out


def run(r: RunResult, cfg: RoundTripConfig | None) -> tuple[str, int, dict[str, str]]:
    text, code = report([r], entries={cfg.name: cfg} if cfg is not None else None)
    return text.splitlines()[0], code, lines_of(text)


# ---- placement ------------------------------------------------------------------------------------------


def test_junk_placement_is_a_warning_with_the_folder() -> None:
    r = result(placement="junk", receiver={"junk_folder": "Junk"})
    status, code, facts = run(r, config(junk=True))
    assert code == EXIT_WARNING
    assert status.startswith("MAILCANARY WARNING - rt: canary delivered into the junk folder 'Junk' | ")
    assert facts["placement"] == "junk (filed into the junk folder 'Junk')"


def test_inbox_placement_says_whether_junk_was_watched() -> None:
    _, code, facts = run(result(receiver={"junk_folder": "Spam"}), config(junk=True))
    assert code == EXIT_OK and facts["placement"] == "inbox (junk folder 'Spam' watched too)"
    assert run(result(), config())[2]["placement"] == (
        "inbox (the junk folder is not watched: receive.junk is off)"
    )
    assert run(result(), config(junk=True))[2]["placement"] == (
        "inbox (receive.junk is on, but the server has no junk folder: junk not watched)"
    )
    assert run(result(), config(protocol="pop3"))[2]["placement"] == "inbox (POP3 sees only the inbox)"


def test_other_placement_names_the_folder_and_stays_ok() -> None:
    r = result(placement="other", receiver={"found_folder": "Archive"})
    _, code, facts = run(r, config(placement_all_folders=True))
    assert code == EXIT_OK
    assert facts["placement"] == "other (found in 'Archive' by the all-folders walk)"


def test_failed_run_says_nothing_was_read_and_stays_critical() -> None:
    r = result(
        success=False,
        reason="timeout",
        message="no canary",
        delivery=None,
        placement=None,
        path=None,
        verdict=None,
        failed_phase="receive_wait",
    )
    status, code, facts = run(r, config(junk=True, sync={"timeout": "5s"}))
    assert code == EXIT_CRITICAL and status.startswith("MAILCANARY CRITICAL - rt: timeout")
    assert facts["placement"] == "not read: the run ended timeout before the canary was read"
    assert facts["verdict"] == "not read: the run ended timeout before the canary was read"
    assert facts["hops"] == "not read: the run ended timeout before the canary was read"
    assert facts["bounces"] == "none seen before the run ended timeout"
    assert facts["quota"] == "not read (the run ended timeout first)"
    assert facts["sync"] == "not done (the run ended timeout first)"
    assert "'rt_bounces'" not in status and "'rt_hops'" not in status


# ---- verdict --------------------------------------------------------------------------------------------


def test_verdict_with_trusted_ids_names_every_method_and_scores() -> None:
    v = Verdict(
        auth={"spf": "pass", "dkim": "fail", "arc": "none"},
        authserv_id="mx.example.test",
        ignored=2,
        scores={"spamassassin": 5.2, "rspamd": 3.4},
    )
    status, code, facts = run(result(verdict=v), config(trusted_authserv_ids=["mx.example.test"]))
    assert code == EXIT_OK  # one run is not the daemon's 15-minute alert: shown, not judged
    assert facts["verdict"] == (
        "spf=pass dkim=fail dmarc=missing arc=none (from mx.example.test), 2 untrusted or unreadable "
        "Authentication-Results ignored; spam score rspamd 3.4, spamassassin 5.2"
    )
    assert "'rt_spam_rspamd'=3.4" in status and "'rt_spam_spamassassin'=5.2" in status


def test_verdict_not_configured_or_not_found_says_so() -> None:
    facts = run(result(), config())[2]
    assert facts["verdict"] == (
        "authentication not read (receive.trusted_authserv_ids not set); no spam score header"
    )
    facts = run(result(), config(trusted_authserv_ids=["mx.example.test"], spam_headers=False))[2]
    assert facts["verdict"] == (
        "spf=missing dkim=missing dmarc=missing (no trusted Authentication-Results field); "
        "spam score not read (receive.spam_headers is off)"
    )


# ---- bounces --------------------------------------------------------------------------------------------


def test_bounces_counted_when_watched_and_not_watched_said() -> None:
    status, _, facts = run(result(bounces=("4.4.x",)), config())
    assert facts["bounces"] == "1 verified this run: 4.4.x"
    assert "'rt_bounces'=1;;;0" in status
    status, _, facts = run(result(), config())
    assert facts["bounces"] == "none seen this run" and "'rt_bounces'=0;;;0" in status
    status, _, facts = run(result(), config(recipient="other@example.test"))
    assert facts["bounces"] == "not watched (sender differs from recipient and no bounce_receive is set)"
    assert "'rt_bounces'" not in status  # no 0 for a count nobody took
    bounced = result(success=False, reason="bounced", delivery=None, placement=None, bounces=("5.1.x",))
    status, code, facts = run(bounced, config())
    assert code == EXIT_CRITICAL and facts["bounces"] == "1 verified this run: 5.1.x"
    assert "'rt_bounces'=1;;;0" in status


# ---- hops -----------------------------------------------------------------------------------------------


def test_hops_count_total_and_slowest_hop() -> None:
    hops = [
        Hop(1, "ESMTPSA", True, "127.0.0.1", "submit", 100.0),
        Hop(2, "ESMTPS", True, "10.0.0.1", "mx", 101.0),
        Hop(3, "LMTP", False, None, "store", 104.0),
    ]
    status, _, facts = run(result(path=Path(hops=hops)), config())
    assert facts["hops"] == "3 Received fields, 4s from first to last stamp, slowest hop 3 (3s after hop 2)"
    assert "'rt_hops'=3;;;0" in status and "'rt_path'=4s" in status
    one = run(result(), config())[2]
    assert one["hops"] == "1 Received field"
    truncated = run(result(path=Path(hops=hops[:1], truncated=True)), config())[2]
    assert truncated["hops"] == "1 Received field (more not read)"


# ---- quota ----------------------------------------------------------------------------------------------


def test_quota_used_limit_share_and_perfdata() -> None:
    r = result(quota={"storage": (1024 * 900, 1024 * 1000), "message": (3, 0)})
    status, code, facts = run(r, config())
    assert code == EXIT_OK  # 90 % in one run is the alert's threshold, not its 15 minutes
    assert facts["quota"] == "message 3 of 0, storage 921600 of 1024000 bytes (90.0 %)"
    assert "'rt_quota_storage'=921600B;;;0;1024000" in status
    assert "'rt_quota_storage_ratio'=0.9000;0.9;;0;1" in status
    assert "'rt_quota_message'=3;;;0;" in status and "'rt_quota_message_ratio'" not in status


def test_quota_not_read_says_why() -> None:
    assert run(result(), config(quota=False))[2]["quota"] == "off (receive.quota is off)"
    assert run(result(), config())[2]["quota"] == "not read: the server does not offer QUOTA"
    assert run(result(quota_error="timeout"), config())[2]["quota"] == "not read (timeout)"
    assert run(result(quota={}), config())[2]["quota"] == "no limit set"
    assert run(result(), config(protocol="pop3"))[2]["quota"] == "not applicable (POP3 has no quota command)"


# ---- sync -----------------------------------------------------------------------------------------------


def test_sync_seconds_skipped_off_and_failed() -> None:
    on = config(sync={"timeout": "5s"})
    status, _, facts = run(result(sync_seconds=0.123, sync_arrival=0.05), on)
    assert (
        facts["sync"]
        == "the second session saw the flag 0.123s after it was set, the canary 0.050s after acceptance"
    )
    assert "'rt_sync'=0.123s;;;0" in status
    skipped = result(
        placement="junk",
        receiver={"junk_folder": "Junk", "sync_skipped": "junk"},
    )
    status, code, facts = run(skipped, config(junk=True, sync={"timeout": "5s"}))
    assert facts["sync"] == "skipped: the canary was found in junk, not the inbox the second session watches"
    assert code == EXIT_WARNING and "'rt_sync'" not in status  # skipped: no number that looks measured
    assert run(result(), config())[2]["sync"] == "off (receive.sync not set)"
    assert run(result(), config(sync={"enabled": False}))[2]["sync"] == "off (receive.sync not set)"
    assert run(result(), config(protocol="pop3"))[2]["sync"] == "not applicable (POP3 has no flags)"
    failed = result(
        success=False, reason="sync_timeout", delivery=None, placement=None, path=None, verdict=None
    )
    assert (
        run(failed, on)[2]["sync"]
        == "failed (sync_timeout): the second session did not show the flag in time"
    )


def test_report_without_configs_states_only_facts() -> None:
    """report() called without the configs (e.g. a library caller): facts still shown, nothing invented."""
    status, code, facts = run(result(placement="junk", receiver={"junk_folder": "Junk"}), None)
    assert code == EXIT_WARNING and facts["placement"] == "junk (filed into the junk folder 'Junk')"
    assert facts["sync"] == "not run" and facts["quota"] == "not read"
    assert facts["verdict"] == "no trusted authentication results; no spam score header"
    assert "'rt_bounces'" not in status


def test_non_roundtrip_results_get_no_fact_lines() -> None:
    tls = RunResult(
        probe="t", success=True, reason="success", message="ok", started=0.0, duration=0.1, phases={}
    )
    text, code = report([tls])
    assert code == EXIT_OK and "placement:" not in text and "quota:" not in text
