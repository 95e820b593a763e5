"""probes.canary: signed tokens and the canary message."""

from __future__ import annotations

import email
import re
from email import policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes import canary
from probes.canary import HEADER, Token, build_message, candidates, new_token, tokens_in_header, verify
from tests.support.messages import legacy_v1_message

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.123


def header_block(*values: str) -> bytes:
    lines = [b"From: a@example.com", b"Subject: x"]
    lines += [f"{HEADER}: {v}".encode() for v in values]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# ---- tokens ---------------------------------------------------------------------------------------------


def test_new_token_fields() -> None:
    token = new_token("probe-1", now=NOW)
    assert token.probe == "probe-1"
    assert token.sent_ms == 1_700_000_000_123
    assert token.sent == pytest.approx(NOW, abs=0.001)
    assert re.fullmatch(r"[0-9a-f]{32}", token.nonce)
    assert new_token("probe-1", now=NOW).nonce != token.nonce


@pytest.mark.parametrize("name", ["", "-x", "x y", "x" * 64, "ü", "a;probe=b"])
def test_new_token_rejects_bad_probe_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid probe name"):
        new_token(name)


def test_header_value_shape() -> None:
    token = Token(probe="p.1", sent_ms=1234, nonce="0" * 32)
    value = token.header_value(KEY)
    assert re.fullmatch(r"v2;probe=p\.1;sent=1234;nonce=0{32};mac=[0-9a-f]{32}", value)
    legacy = Token(probe="p.1", sent_ms=1234, nonce="0" * 32, version="v1")
    assert re.fullmatch(r"v1;probe=p\.1;sent=1234;nonce=0{32};mac=[0-9a-f]{32}", legacy.header_value(KEY))
    assert value.endswith(f";mac={token.mac(KEY)}")
    assert token.mac(KEY) != token.mac(OTHER_KEY)
    assert canary.probe_search_key("p.1") == ";probe=p.1;"
    assert canary.probe_search_key("p.1") in value


def test_round_trip() -> None:
    token = new_token("roundtrip", now=NOW)
    value = token.header_value(KEY)
    assert verify(value, KEY) == token
    assert verify(value, KEY, probe="roundtrip") == token
    assert verify(f"  {value}\r\n", KEY) == token  # surrounding whitespace is not part of the value


def test_verify_rejects_a_tampered_mac() -> None:
    value = new_token("p", now=NOW).header_value(KEY)
    last = value[-1]
    tampered = value[:-1] + ("0" if last != "0" else "1")
    assert verify(tampered, KEY) is None


@pytest.mark.parametrize("field", ["probe", "sent", "nonce"])
def test_verify_rejects_a_tampered_signed_field(field: str) -> None:
    token = Token(probe="p", sent_ms=1000, nonce="a" * 32)
    value = token.header_value(KEY)
    changed = {
        "probe": value.replace("probe=p;", "probe=q;"),
        "sent": value.replace("sent=1000;", "sent=1001;"),
        "nonce": value.replace("a" * 32, "b" * 32),
    }[field]
    assert changed != value
    assert verify(changed, KEY) is None


def test_verify_rejects_another_key() -> None:
    value = new_token("p", now=NOW).header_value(KEY)
    assert verify(value, OTHER_KEY) is None


def test_verify_rejects_another_probe_name() -> None:
    value = new_token("alpha", now=NOW).header_value(KEY)
    assert verify(value, KEY, probe="beta") is None
    assert verify(value, KEY, probe="alph") is None
    assert verify(value, KEY, probe="alpha") is not None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "v1",
        "v2;probe=p;sent=1;nonce=" + "a" * 32 + ";mac=" + "a" * 32,
        "v1;probe=p;sent=1;nonce=" + "a" * 31 + ";mac=" + "a" * 32,  # short nonce
        "v1;probe=p;sent=1;nonce=" + "A" * 32 + ";mac=" + "a" * 32,  # upper-case hex
        "v1;probe=p;sent=1;nonce=" + "a" * 32 + ";mac=" + "a" * 33,
        "v1;probe=p;sent=-1;nonce=" + "a" * 32 + ";mac=" + "a" * 32,
        "v1;probe=p;sent=" + "1" * 17 + ";nonce=" + "a" * 32 + ";mac=" + "a" * 32,
        "v1;probe=-p;sent=1;nonce=" + "a" * 32 + ";mac=" + "a" * 32,
        "v1;sent=1;probe=p;nonce=" + "a" * 32 + ";mac=" + "a" * 32,  # reordered
        "v1;probe=p;sent=1;nonce=" + "a" * 32,  # unsigned
    ],
)
def test_verify_rejects_malformed_values(value: str) -> None:
    assert verify(value, KEY) is None


@pytest.mark.parametrize("where", [";probe", ";sent", ";nonce", ";mac", "=", "v2"])
def test_verify_rejects_whitespace_inside(where: str) -> None:
    value = new_token("p", now=NOW).header_value(KEY)
    i = value.index(where) + 1
    for ws in (" ", "\t", "\r\n "):
        assert verify(value[:i] + ws + value[i:], KEY) is None


def test_verify_rejects_trailing_garbage() -> None:
    value = new_token("p", now=NOW).header_value(KEY)
    assert verify(value + ";x=1", KEY) is None
    assert verify(value + "0", KEY) is None
    assert verify("x" + value, KEY) is None


@given(st.text())
def test_verify_arbitrary_text_never_raises(text: str) -> None:
    assert verify(text, KEY) is None  # nobody can forge a MAC by chance


@given(st.text(alphabet="v1;probe=sentmac0123456789abcdef \t\r\n", max_size=120))
def test_verify_token_like_text_never_raises(text: str) -> None:
    assert verify(text, KEY, probe="p") is None


@given(
    st.builds(
        Token,
        probe=st.from_regex(canary.PROBE_NAME_RE, fullmatch=True),
        sent_ms=st.integers(0, 10**16 - 1),
        nonce=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    )
)
def test_every_valid_token_round_trips(token: Token) -> None:
    assert verify(token.header_value(KEY), KEY, token.probe) == token


# ---- tokens in header blocks ----------------------------------------------------------------------------


def test_tokens_in_header_unfolds() -> None:
    value = new_token("p", now=NOW).header_value(KEY)
    cut = value.index(";nonce")
    raw = f"Subject: x\r\n{HEADER}: {value[:cut]}\r\n {value[cut:]}\r\n\r\nbody\r\n".encode()
    assert tokens_in_header(raw) == [value]
    assert candidates(raw, "p") == {canary.parse(value)[0]}  # type: ignore[index]


def test_tokens_in_header_finds_every_value() -> None:
    a, b = new_token("p", now=NOW), new_token("p", now=NOW + 1)
    raw = header_block(a.header_value(KEY), b.header_value(KEY))
    assert tokens_in_header(raw) == [a.header_value(KEY), b.header_value(KEY)]
    assert tokens_in_header(b"Subject: nothing here\r\n\r\n") == []
    assert candidates(raw, "p") == {a, b}
    assert candidates(raw, "other") == set()


@given(st.binary())
def test_tokens_in_header_arbitrary_bytes_never_raises(raw: bytes) -> None:
    result = tokens_in_header(raw)
    assert isinstance(result, list)
    assert all(isinstance(v, str) for v in result)
    assert canary.verify_canary(raw, KEY, "p") is None


@given(st.binary())
def test_tokens_in_header_after_our_header_name_never_raises(tail: bytes) -> None:
    raw = HEADER.encode() + b": " + tail
    assert isinstance(tokens_in_header(raw), list)
    assert canary.verify_canary(raw, KEY, "p") is None


# ---- the message ----------------------------------------------------------------------------------------


def _message(probe: str = "probe-1") -> tuple[Token, bytes]:
    token = new_token(probe, now=NOW)
    return token, build_message(token, KEY, "canary@example.com", "inbox@example.net")


def test_message_has_crlf_line_ends_only() -> None:
    _, raw = _message()
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    raw.decode("ascii")  # 7-bit clean


def test_message_headers() -> None:
    token, raw = _message()
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    names = [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n") if not line[:1].isspace()]
    for required in ("Date", "Message-ID", "From", "To", "Subject", "Auto-Submitted", "MIME-Version", HEADER):
        assert names.count(required) == 1, required
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["From"] == "canary@example.com"
    assert msg["To"] == "inbox@example.net"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", msg["Message-ID"])
    assert msg["Subject"] == "mailcanary probe probe-1 22:13:20Z"
    assert msg.get_content_type() == "text/plain"
    assert token.nonce.encode() in body


def test_token_header_is_one_plain_line_for_the_longest_probe_name() -> None:
    name = "p" * 30 + "-" + "q" * 32
    assert len(name) == 63
    token, raw = _message(name)
    lines = raw.split(b"\r\n")
    ours = [i for i, line in enumerate(lines) if line.startswith(HEADER.encode() + b":")]
    assert len(ours) == 1
    line = lines[ours[0]]
    assert line.startswith(f"{HEADER}: v2;probe={name};".encode())  # not folded, not =?utf-8?...?=
    assert not lines[ours[0] + 1][:1].isspace()  # no continuation line
    assert b"=?" not in line
    assert canary.verify_canary(raw, KEY, name) == token


def test_verify_message_accepts_the_built_message() -> None:
    token, raw = _message()
    assert canary.verify_message(raw, KEY, token) is True


def test_verify_message_accepts_lf_line_ends() -> None:
    token, raw = _message()
    assert canary.verify_message(raw.replace(b"\r\n", b"\n"), KEY, token) is True


def test_verify_message_detects_a_truncated_body() -> None:
    token, raw = _message()
    cut = raw.index(token.nonce.encode()) + 10  # mid-nonce
    assert canary.verify_message(raw[:cut], KEY, token) is False
    head_only = raw[: raw.index(b"\r\n\r\n") + 4]
    assert canary.verify_message(head_only, KEY, token) is False


def test_verify_message_detects_a_swapped_token() -> None:
    token, raw = _message()
    other = new_token("probe-1", now=NOW)
    [value] = tokens_in_header(raw)
    swapped = raw.replace(value.encode(), other.header_value(KEY).encode())
    assert swapped != raw
    assert canary.verify_message(swapped, KEY, token) is False
    assert canary.verify_message(raw, KEY, other) is False


def test_verify_message_rejects_another_key() -> None:
    token, raw = _message()
    assert canary.verify_message(raw, OTHER_KEY, token) is False


def test_verify_message_rejects_a_token_only_in_the_body() -> None:
    token, raw = _message()
    head, _, body = raw.partition(b"\r\n\r\n")
    [value] = tokens_in_header(raw)
    head = head.replace(f"{HEADER}: {value}\r\n".encode(), b"")
    moved = head + b"\r\n\r\n" + f"{HEADER}: {value}\r\n".encode() + body
    assert canary.verify_message(moved, KEY, token) is False


def test_new_key() -> None:
    a, b = canary.new_key(), canary.new_key()
    assert len(a) == 32
    assert len(a) >= canary.MIN_KEY_BYTES
    assert a != b


# ---- binding: the token verifies only on the one message it was made for --------------------------------


def test_transplanted_token_header_does_not_verify() -> None:
    token, raw = _message()
    [value] = tokens_in_header(raw)
    foreign = (
        f"From: x@example.org\r\nMessage-ID: <user-mail@example.org>\r\n{HEADER}: {value}\r\n\r\nHello\r\n"
    )
    assert canary.verify_canary(foreign.encode(), KEY, token.probe) is None
    # Same Message-ID, another body (a forward that keeps the id) fails too; a changed Message-ID as well.
    head, body = canary.split_message(raw)
    assert canary.verify_canary(head + b"\r\n\r\nforwarded: " + body, KEY, token.probe) is None
    other_id = raw.replace(b"Message-ID: <", b"Message-ID: <x")
    assert canary.verify_canary(other_id, KEY, token.probe) is None
    # What the server adds above the headers (Return-Path, Received) changes nothing.
    assert (
        canary.verify_canary(b"Return-Path: <a@b>\r\nReceived: from x\r\n" + raw, KEY, token.probe) == token
    )


def test_oversized_message_is_never_a_canary() -> None:
    token, raw = _message()
    padded = raw.replace(b"Subject:", b"X-Pad: " + b"a" * canary.MAX_CANARY_BYTES + b"\r\nSubject:")
    assert canary.verify_canary(padded, KEY, token.probe) is None


def test_legacy_v1_canary_is_recognised_as_a_whole() -> None:
    token = new_token("probe-1", now=NOW)
    raw = legacy_v1_message(token, KEY, "canary@example.com", "inbox@example.net")
    found = canary.verify_canary(raw, KEY, "probe-1")
    assert found is not None and found.version == "v1" and found.nonce == token.nonce
    assert (
        canary.verify_canary(raw.replace(b"no action is needed", b"no action needed"), KEY, "probe-1") is None
    )
    [value] = tokens_in_header(raw)
    transplanted = f"From: u@example.org\r\n{HEADER}: {value}\r\n\r\nuser text\r\n".encode()
    assert canary.verify_canary(transplanted, KEY, "probe-1") is None
    assert canary.verify_canary(raw, OTHER_KEY, "probe-1") is None


def test_built_message_parses_the_same_with_the_email_package() -> None:
    token, raw = _message()
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg[HEADER] == tokens_in_header(raw)[0]
    assert msg["Message-ID"] == canary.header_values(raw, "Message-ID")[0]
    assert msg.get_content().replace("\r\n", "\n") == canary._body_text(token)
    assert not msg.defects
