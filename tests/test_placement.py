"""Placement: the junk folder found by SPECIAL-USE (or a fallback name), and a real Dovecot + Pigeonhole
sieve filing canaries into Junk: the run is delivered with placement "junk", the canary is deleted
there, foreign mail is untouched."""

from __future__ import annotations

import re
import smtplib
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from exporter.config import ConfigError
from exporter.metrics.collector import ExporterState, build_registry
from exporter.run.runner import Runner
from probes import canary
from probes.errors import ProbeError
from probes.receipt.placement import (
    DEFAULT_JUNK_FOLDERS,
    MAX_NAMESPACES,
    ListedMailbox,
    Namespace,
    choose_junk,
    decode_mutf7,
    other_folders,
    parse_list,
    parse_namespace,
)
from probes.recorder import Recorder
from probes.roundtrip import RoundTripSettings, probe_roundtrip
from probes.wire import imapwire as wire
from tests.mailstack import MailStack
from tests.mailstack._system import chown
from tests.support.faultservers import (
    NO_FAULT,
    Mailboxes,
    courier_imap_handler,
    fault_settings,
    serving,
    smtp_handler,
)
from tests.support.procs import run_bounded
from tests.support.roundtrip import make_runner, run_one
from tests.support.stackconfig import roundtrip, write_config

ROOT = Path(__file__).resolve().parent.parent


def _resp(line: bytes) -> wire.Response:
    return wire.Response(tag=wire.parse_tag(line, b"M1"), parts=[line])


def test_parse_list_reads_flags_and_names() -> None:
    box = parse_list(_resp(b'* LIST (\\HasNoChildren \\Junk) "/" Junk'))
    assert box == ListedMailbox(name="Junk", flags=frozenset({"\\hasnochildren", "\\junk"}), delimiter="/")
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
    out = run_bounded(cmd, 120, cwd=ROOT)
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


# --- issue 19: servers as they are (Courier, Cyrus, Exchange), NAMESPACE, modified UTF-7 ----------------


def test_parse_namespace_of_courier_cyrus_and_dovecot() -> None:
    courier = parse_namespace(_resp(b'* NAMESPACE (("INBOX." ".")) NIL (("#shared." ".")("shared." "."))'))
    assert courier == [Namespace("INBOX.", ".")]
    assert parse_namespace(_resp(b'* NAMESPACE (("INBOX/" "/")) (("user/" "/")) (("" "/"))')) == [
        Namespace("INBOX/", "/")
    ]
    assert parse_namespace(_resp(b'* NAMESPACE (("" "/")) NIL NIL')) == [Namespace("", "/")]
    assert parse_namespace(_resp(b"* NAMESPACE NIL NIL NIL")) == []
    assert parse_namespace(_resp(b'* NAMESPACE (("" NIL)) NIL NIL')) == [Namespace("", None)]
    # RFC 2342 extension data after prefix and delimiter is passed over.
    ext = b'* NAMESPACE (("" "/" "X-PARAM" ("FLAG1" "FLAG2"))) NIL NIL'
    assert parse_namespace(_resp(ext)) == [Namespace("", "/")]
    # Not a NAMESPACE, or one we cannot read: None (names are then matched without a prefix).
    for line in (b'* LIST () "/" INBOX', b"* NAMESPACE ((", b"* NAMESPACE", b"* NAMESPACE (x) NIL NIL"):
        assert parse_namespace(_resp(line)) is None, line
    many = b"* NAMESPACE (" + b'("p" ".")' * 50 + b") NIL NIL"
    assert len(parse_namespace(_resp(many)) or []) == MAX_NAMESPACES  # bounded


@given(st.binary(max_size=200))
def test_parse_namespace_never_raises(data: bytes) -> None:
    line = b"* NAMESPACE " + data.replace(b"\r", b"").replace(b"\n", b"")
    result = parse_namespace(_resp(line))
    assert result is None or len(result) <= MAX_NAMESPACES


def test_modified_utf7_names_are_decoded_for_matching() -> None:
    assert decode_mutf7("Courrier ind&AOk-sirable") == "Courrier indésirable"
    assert decode_mutf7("Lixo Eletr&APQ-nico") == "Lixo Eletrônico"
    assert decode_mutf7("Tom &- Jerry") == "Tom & Jerry"
    assert decode_mutf7("&ZeVnLIqe-") == "日本語"
    for broken in ("a&b", "&!!-", "&AO-"):  # not modified UTF-7: kept as it is
        assert decode_mutf7(broken) == broken
    assert decode_mutf7("Junk") == "Junk"


@given(st.text(max_size=40))
def test_modified_utf7_decoding_never_raises(name: str) -> None:
    decode_mutf7(name)


def _box(name: str, delim: str | None = "/", *flags: str) -> ListedMailbox:
    return ListedMailbox(name, frozenset(flags), delim)


def test_choose_junk_under_the_personal_namespace() -> None:
    courier = [_box(n, ".") for n in ("INBOX", "INBOX.Drafts", "INBOX.Sent", "INBOX.Trash", "INBOX.Junk")]
    assert choose_junk(courier, DEFAULT_JUNK_FOLDERS, "INBOX", [Namespace("INBOX.", ".")]) == "INBOX.Junk"
    # Without NAMESPACE (not advertised), the last path component finds it all the same.
    assert choose_junk(courier, DEFAULT_JUNK_FOLDERS, "INBOX") == "INBOX.Junk"
    cyrus = [_box("INBOX"), _box("INBOX/Sent"), _box("INBOX/Spam")]
    assert choose_junk(cyrus, DEFAULT_JUNK_FOLDERS, "INBOX", [Namespace("INBOX/", "/")]) == "INBOX/Spam"
    assert choose_junk(cyrus, ("spam",), "inbox") == "INBOX/Spam"  # case-insensitive, last component
    # Localised names arrive in modified UTF-7; the wire name is what SELECT gets.
    french = [_box("INBOX"), _box("Courrier ind&AOk-sirable")]
    assert choose_junk(french, DEFAULT_JUNK_FOLDERS, "INBOX") == "Courrier ind&AOk-sirable"
    exchange = [_box("Inbox"), _box("Junk Email"), _box("Sent Items")]
    assert choose_junk(exchange, DEFAULT_JUNK_FOLDERS, "INBOX") == "Junk Email"
    yahoo = [_box("Inbox"), _box("Bulk Mail"), _box("Draft")]
    assert choose_junk(yahoo, DEFAULT_JUNK_FOLDERS, "INBOX") == "Bulk Mail"


def test_choose_junk_order_is_special_use_then_exact_names_then_last_component() -> None:
    special = _box("Quarantine", "/", "\\junk")
    exact = _box("Spam")
    deep = _box("Archive/2019/Junk")
    shallow = _box("Work/Junk")
    nested_spam = _box("INBOX/Spam")
    assert choose_junk([deep, exact, special], ("Junk", "Spam"), "INBOX") == "Quarantine"
    # An exact configured name beats a last-component match of an earlier configured name.
    assert choose_junk([deep, exact], ("Junk", "Spam"), "INBOX") == "Spam"
    # Among last-component matches: configured order first, then the shallower folder, then LIST order.
    assert choose_junk([deep, shallow, nested_spam], ("Junk", "Spam"), "INBOX") == "Work/Junk"
    assert choose_junk([nested_spam, deep], ("Junk", "Spam"), "INBOX") == "Archive/2019/Junk"
    # A flat server (NIL delimiter) matches whole names only; \Noselect parents never.
    assert choose_junk([_box("a/Junk", None)], ("Junk",), "INBOX") is None
    assert choose_junk([_box("INBOX/Junk", "/", "\\noselect")], ("Junk",), "INBOX") is None


def test_parse_list_keeps_the_delimiter() -> None:
    box = parse_list(_resp(b'* LIST (\\HasNoChildren) "." "INBOX.Junk"'))
    assert box == ListedMailbox("INBOX.Junk", frozenset({"\\hasnochildren"}), ".")
    flat = parse_list(_resp(b"* LIST () NIL Junk"))
    assert flat is not None and flat.delimiter is None


def _courier_settings(smtp_port: int, imap_port: int, **extra: object) -> RoundTripSettings:
    base = fault_settings("courier", smtp_port, imap_port)
    return replace(base, junk_folders=DEFAULT_JUNK_FOLDERS, **extra)  # type: ignore[arg-type]


async def test_courier_files_the_canary_into_inbox_junk_and_it_is_found_and_deleted_there() -> None:
    """Courier's exact answers (no SPECIAL-USE, NAMESPACE (("INBOX." ".")), QUOTA "ROOT" without a list,
    IDLE that never pushes): the canary filed into INBOX.Junk is found there (placement junk), deleted
    there, and the quota read is no protocol error. On the old code the run was a timeout."""
    boxes = Mailboxes()
    junk = boxes.folders["INBOX.Junk"]
    foreign = junk.add(b"From: a@example.org\r\nSubject: real spam\r\n\r\nbuy\r\n")
    rec = Recorder(transcript=[])
    async with serving(smtp_handler(junk, NO_FAULT)) as sp, serving(courier_imap_handler(boxes)) as ip:
        result = await probe_roundtrip(_courier_settings(sp, ip), rec)
    assert result.placement == "junk"
    assert rec.facts.junk_folder == "INBOX.Junk" and rec.facts.junk_folder_found is True
    assert list(junk.messages) == [foreign] and len(junk.deleted) == 1  # only the canary is gone
    assert rec.facts.quota == {} and rec.facts.quota_error is None  # no limit, not an error
    assert any(line.endswith("NAMESPACE") for line in rec.transcript or [])


async def test_canaries_that_timed_out_in_courier_junk_are_swept_by_a_later_run() -> None:
    """A canary filed as spam that timed out (or was left by an older version that never found the
    folder) sits in INBOX.Junk: the next run sweeps it (known late) and leaves the user's mail."""
    boxes = Mailboxes()
    junk = boxes.folders["INBOX.Junk"]
    foreign = junk.add(b"From: a@example.org\r\nSubject: real spam\r\n\r\nbuy\r\n")
    inbox = boxes.folders["INBOX"]
    rec = Recorder()
    async with serving(smtp_handler(inbox, NO_FAULT)) as sp, serving(courier_imap_handler(boxes)) as ip:
        # An earlier canary, as filed into junk by the server while its run timed out.
        settings = _courier_settings(sp, ip)
        first = await probe_roundtrip(settings, rec)
        assert first.placement == "inbox"
        token = canary.new_token(settings.name)
        junk.add(canary.build_message(token, settings.key, settings.sender, settings.recipient))
        second = await probe_roundtrip(settings, Recorder(), late={token.nonce})
    assert [t.nonce for t in second.swept] == [token.nonce]
    assert list(junk.messages) == [foreign]


def test_no_junk_folder_is_said_once_and_exported(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    """Placement on, a mailbox with no junk folder: junk_folder_found 0 and one warning for the probe
    (not one per run); the runs themselves succeed (placement inbox)."""
    runner = make_runner(tmp_path, [roundtrip(mailstack, tmp_path, "nojunk", mailbox, receive__junk=True)])
    with structlog.testing.capture_logs() as logs:
        first, second = run_one(runner), run_one(runner)
    assert first.success and second.success, (first.message, second.message)
    assert first.receiver["junk_folder_found"] is False
    warnings = [e for e in logs if e.get("event") == "junk_folder_missing"]
    assert len(warnings) == 1 and warnings[0]["probe"] == "nojunk"
    assert 'mailcanary_roundtrip_junk_folder_found{probe="nojunk"} 0.0' in _render(runner)


def test_sync_check_skipped_in_junk_is_visible(mailstack: MailStack, tmp_path: Path) -> None:
    """Placement + sync on the real Dovecot + sieve: the canary lands in Junk, the second device watches
    the inbox: the check does not run, and says so (the log line's sync_skipped, the series)."""
    address = mailstack.junk_address
    mailstack.clear(address)
    _make_junk_folder(mailstack, address)
    probe = roundtrip(mailstack, tmp_path, "junksync", address, receive__junk=True)
    probe["receive"]["sync"] = {"timeout": "5s"}
    runner = make_runner(tmp_path, [probe])
    with structlog.testing.capture_logs() as logs:
        result = run_one(runner)
    assert result.success and result.placement == "junk", result.message
    assert result.receiver["sync_skipped"] == "junk"
    assert result.sync_seconds is None
    line = [e for e in logs if e.get("event") == "probe_run"][-1]
    assert line["sync_skipped"] == "junk"
    text = _render(runner)
    assert 'mailcanary_roundtrip_sync_skipped{probe="junksync",reason="junk"} 1.0' in text
    assert 'mailcanary_roundtrip_sync_skipped{probe="junksync",reason="other"} 0.0' in text
    assert _junk_files(mailstack, address) == []


_names = st.sampled_from(
    ["INBOX", "Junk", "Spam", "INBOX.Junk", "INBOX/Spam", "a/b/Junk", "Bulk Mail", "x&AOk-"]
)


@given(
    st.lists(
        st.tuples(
            _names, st.sampled_from([None, "/", "."]), st.sets(st.sampled_from(["\\junk", "\\noselect"]))
        ),
        max_size=8,
    ),
    st.lists(st.sampled_from(["Junk", "spam", "Bulk Mail", "[Gmail]/Spam", "xé"]), max_size=4),
)
def test_choose_junk_is_a_listed_selectable_folder_never_the_inbox(
    boxes: list[tuple[str, str | None, set[str]]], wanted: list[str]
) -> None:
    listing = [ListedMailbox(n, frozenset(f), d) for n, d, f in boxes]
    spaces = [Namespace("INBOX.", "."), Namespace("INBOX/", "/")]
    chosen = choose_junk(listing, wanted, "INBOX", spaces)
    if chosen is not None:
        assert chosen.upper() != "INBOX"
        assert any(b.name == chosen and b.selectable for b in listing)
    # Deterministic: the same listing gives the same answer.
    assert choose_junk(listing, wanted, "INBOX", spaces) == chosen
