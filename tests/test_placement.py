"""Placement: the junk folder found by SPECIAL-USE (or a fallback name), and a real Dovecot + Pigeonhole
sieve filing canaries into Junk: the run is delivered with placement "junk", the canary is deleted
there, foreign mail is untouched."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from exporter.config import ConfigError
from exporter.metrics import ExporterState, build_registry
from exporter.runner import Runner
from probes import _imapwire as wire
from probes.errors import ProbeError
from probes.placement import DEFAULT_JUNK_FOLDERS, ListedMailbox, choose_junk, other_folders, parse_list
from tests.mailstack import MailStack
from tests.mailstack._system import chown
from tests.stackconfig import roundtrip, write_config
from tests.test_roundtrip_e2e import make_runner, run_one

ROOT = Path(__file__).resolve().parent.parent


def _resp(line: bytes) -> wire.Response:
    return wire.Response(tag=wire.parse_tag(line, b"M1"), parts=[line])


def test_parse_list_reads_flags_and_names() -> None:
    box = parse_list(_resp(b'* LIST (\\HasNoChildren \\Junk) "/" Junk'))
    assert box == ListedMailbox(name="Junk", flags=frozenset({"\\hasnochildren", "\\junk"}))
    quoted = parse_list(_resp(b'* LIST (\\HasNoChildren) "/" "[Gmail]/Spam"'))
    assert quoted is not None and quoted.name == "[Gmail]/Spam"
    assert parse_list(_resp(b"* 3 EXISTS")) is None
    assert parse_list(_resp(b"M1 OK done")) is None
    with pytest.raises(ProbeError):
        parse_list(_resp(b"* LIST \\Junk"))


def test_choose_junk_prefers_special_use_then_fallback_names() -> None:
    boxes = [
        ListedMailbox("INBOX", frozenset()),
        ListedMailbox("spam", frozenset()),
        ListedMailbox("Bulk", frozenset({"\\junk"})),
    ]
    assert choose_junk(boxes, DEFAULT_JUNK_FOLDERS, "INBOX") == "Bulk"
    assert choose_junk(boxes[:2], DEFAULT_JUNK_FOLDERS, "INBOX") == "spam"  # case-insensitive fallback
    assert choose_junk(boxes[:2], (), "INBOX") is None
    # Never the inbox being watched, never a \Noselect folder.
    assert choose_junk([ListedMailbox("Junk", frozenset({"\\junk"}))], DEFAULT_JUNK_FOLDERS, "junk") is None
    assert choose_junk([ListedMailbox("Junk", frozenset({"\\noselect"}))], ("Junk",), "INBOX") is None


@given(st.binary(max_size=200))
def test_parse_list_never_fails_other_than_probe_error(data: bytes) -> None:
    line = b"* LIST " + data.replace(b"\r", b"").replace(b"\n", b"")
    try:
        parse_list(_resp(line))
    except ProbeError as exc:
        assert exc.reason == "receive_protocol"


def _send_foreign(stack: MailStack, address: str) -> None:
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=10) as s:
        s.sendmail(
            "alice@example.test", [address], b"From: alice@example.test\r\nSubject: hi\r\n\r\nuser mail\r\n"
        )


def _make_junk_folder(stack: MailStack, address: str) -> None:
    junk = stack.maildir(address) / ".Junk"
    for sub in ("", "new", "cur", "tmp"):
        (junk / sub).mkdir(exist_ok=True)
        chown(junk / sub, stack.account, 0o700)
    (junk / "maildirfolder").touch()
    chown(junk / "maildirfolder", stack.account, 0o600)


def _junk_files(stack: MailStack, address: str) -> list[Path]:
    junk = stack.maildir(address) / ".Junk"
    return [p for sub in ("new", "cur") for p in (junk / sub).glob("*")]


def test_canary_filed_into_junk_by_sieve_is_found_and_deleted_there(
    mailstack: MailStack, tmp_path: Path
) -> None:
    address = mailstack.junk_address
    mailstack.clear(address)
    _make_junk_folder(mailstack, address)  # as a user's client would have: the sieve only files into it
    _send_foreign(mailstack, address)  # no token: the sieve rule leaves it in INBOX
    mailstack.wait_for_messages(address, 1)
    probe = roundtrip(mailstack, tmp_path, "junkrt", address, receive__junk=True)
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner, debug=True)
    assert result.success, result.message
    assert result.placement == "junk"
    assert result.delivery is not None and result.delivery >= 0
    assert _junk_files(mailstack, address) == []  # the canary was deleted from Junk
    assert len(mailstack.messages(address)) == 1  # the foreign message is untouched in INBOX
    text = _render(runner)
    assert 'mailcanary_roundtrip_placement{folder="junk",probe="junkrt"} 1.0' in text
    assert 'mailcanary_roundtrip_placement{folder="inbox",probe="junkrt"} 0.0' in text
    assert 'mailcanary_roundtrip_placements_total{folder="junk",probe="junkrt"} 1.0' in text


def test_probe_command_says_the_canary_landed_in_junk(mailstack: MailStack, tmp_path: Path) -> None:
    """`mailcanary probe` against the real Postfix + Dovecot junk mailbox (its sieve files canaries into
    Junk): the report says `placement junk` as the daemon does, and exits 1 (WARNING, the severity of the
    daemon's MailcanaryCanariesInSpam) instead of `OK ... delivered`. The other facts say what they are."""
    address = mailstack.junk_address
    mailstack.clear(address)
    _make_junk_folder(mailstack, address)
    probe = roundtrip(mailstack, tmp_path, "junkcli", address, receive__junk=True)
    config = write_config(tmp_path, [probe])
    cmd = [sys.executable, "-m", "exporter.cli", "probe", "--config", str(config), "junkcli"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr
    status = out.stdout.splitlines()[0]
    assert status.startswith("MAILCANARY WARNING - junkcli: canary delivered into the junk folder 'Junk' | ")
    assert "'junkcli_delivery'=" in status and "'junkcli_hops'=" in status
    assert "\n  placement: junk (filed into the junk folder 'Junk')\n" in out.stdout
    assert "\n  verdict: authentication not read (receive.trusted_authserv_ids not set);" in out.stdout
    assert "\n  bounces: none seen this run\n" in out.stdout  # sender = recipient: watched here
    assert re.search(r"\n  hops: \d+ Received fields?[,\n]", out.stdout)
    assert "\n  sync: off (receive.sync not set)\n" in out.stdout
    assert _junk_files(mailstack, address) == []


def test_inbox_placement_with_junk_watched(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    """A mailbox with no junk folder: placement inbox, nothing else changes."""
    runner = make_runner(tmp_path, [roundtrip(mailstack, tmp_path, "inboxrt", mailbox, receive__junk=True)])
    result = run_one(runner)
    assert result.success, result.message
    assert result.placement == "inbox"
    assert 'mailcanary_roundtrip_placement{folder="inbox",probe="inboxrt"} 1.0' in _render(runner)


def test_pop3_with_junk_is_a_config_error(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="POP3 sees only the inbox"):
        make_runner(
            tmp_path, [roundtrip(mailstack, tmp_path, "p", mailbox, protocol="pop3", receive__junk=True)]
        )


def _render(runner: Runner) -> str:
    return generate_latest(build_registry(runner.store, ExporterState())).decode()


def test_other_folders_are_bounded_and_skip_watched_ones() -> None:
    boxes = [
        ListedMailbox("inbox", frozenset()),
        ListedMailbox("Junk", frozenset({"\\junk"})),
        ListedMailbox("Archive", frozenset()),
        ListedMailbox("Lists", frozenset({"\\noselect"})),
        ListedMailbox("Lists/dev", frozenset()),
        ListedMailbox("Archive", frozenset()),
    ]
    assert other_folders(boxes, ["INBOX", "Junk"], 10) == ["Archive", "Lists/dev"]
    assert other_folders(boxes, ["INBOX"], 2) == ["Junk", "Archive"]
    assert other_folders(boxes, ["INBOX"], 1) == ["Junk"]


def test_canary_in_another_folder_found_by_the_all_folders_walk(mailstack: MailStack, tmp_path: Path) -> None:
    """The sieve files the canary into Junk; with junk off but placement_all_folders on, the walk finds
    it there (placement "other"), deletes it there, and leaves the foreign message alone."""
    address = mailstack.junk_address
    mailstack.clear(address)
    _make_junk_folder(mailstack, address)
    _send_foreign(mailstack, address)
    mailstack.wait_for_messages(address, 1)
    probe = roundtrip(mailstack, tmp_path, "otherrt", address, receive__placement_all_folders=True)
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner, debug=True)
    assert result.success, result.message
    assert result.placement == "other"
    assert result.receiver.get("found_folder") == "Junk"
    assert _junk_files(mailstack, address) == []
    assert len(mailstack.messages(address)) == 1
    text = _render(runner)
    assert 'mailcanary_roundtrip_placement{folder="other",probe="otherrt"} 1.0' in text
    assert 'mailcanary_roundtrip_placements_total{folder="other",probe="otherrt"} 1.0' in text


def test_pop3_with_all_folders_is_a_config_error(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="POP3 sees only the inbox"):
        make_runner(
            tmp_path,
            [
                roundtrip(
                    mailstack, tmp_path, "p", mailbox, protocol="pop3", receive__placement_all_folders=True
                )
            ],
        )


def test_junk_with_too_few_session_slots_is_a_config_error(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    """A run with junk opens two sessions on the server: one slot would make every run queue_timeout."""
    with pytest.raises(ConfigError, match="fewer than the 2 sessions"):
        make_runner(
            tmp_path,
            [roundtrip(mailstack, tmp_path, "p", mailbox, receive__junk=True, receive__max_sessions=1)],
        )
