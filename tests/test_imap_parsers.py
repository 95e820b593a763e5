"""probes.wire.imapwire: the pure parsers of IMAP responses (parts: text, literal, text, ...)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes.errors import ProbeError
from probes.wire import imapwire as wire


def resp(*parts: bytes | None) -> wire.Response:
    first = parts[0] or b""
    return wire.Response(tag=wire.parse_tag(first, b"M1"), parts=list(parts))


def test_tags() -> None:
    assert wire.parse_tag(b"* OK hi", None) == b"*"
    assert wire.parse_tag(b"+ idling", b"M1") == b"+"
    assert wire.parse_tag(b"+", b"M1") == b"+"
    assert wire.parse_tag(b"M1 OK done", b"M1") == b"M1"
    for garbage in (b"", b"HTTP/1.1 200 OK", b"M2 OK other tag", b"*OK", b"\x00\xff"):
        with pytest.raises(ProbeError) as info:
            wire.parse_tag(garbage, b"M1")
        assert info.value.reason == "receive_protocol"


def test_status_and_capabilities() -> None:
    greeting = resp(b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] Dovecot ready.")
    assert greeting.status == b"OK"
    assert wire.capabilities_of(greeting) == {"IMAP4REV1", "IDLE", "UIDPLUS"}
    assert wire.capabilities_of(resp(b"* CAPABILITY IMAP4rev1 STARTTLS")) == {"IMAP4REV1", "STARTTLS"}
    assert resp(b"* BYE too many").status == b"BYE"
    assert resp(b"* 3 EXISTS").status is None
    assert resp(b"M1 NO [AUTHENTICATIONFAILED] nope").text() == "[AUTHENTICATIONFAILED] nope"


def test_number_events() -> None:
    assert wire.number_event(resp(b"* 3 EXISTS")) == (3, b"EXISTS")
    assert wire.number_event(resp(b"* 12 expunge")) == (12, b"EXPUNGE")
    assert wire.number_event(resp(b"* 99999999999 EXISTS")) is None  # over 32 bits: not a number
    assert wire.number_event(resp(b"* OK 3 EXISTS")) is None


def test_search() -> None:
    assert wire.parse_search(resp(b"* SEARCH 1 2 30")) == [1, 2, 30]
    assert wire.parse_search(resp(b"* SEARCH")) == []
    assert wire.parse_search(resp(b"* SEARCH 4 (MODSEQ 9)")) == [4]
    assert wire.parse_search(resp(b"* 3 EXISTS")) is None
    with pytest.raises(ProbeError):
        wire.parse_search(resp(b"* SEARCH 1 x"))


def test_fetch_uid_before_and_after_the_literal() -> None:
    a = wire.parse_fetch(resp(b"* 1 FETCH (UID 5 RFC822.SIZE 4 BODY[] ", b"abcd", b")"))
    assert a == wire.FetchItem(seq=1, uid=5, size=4, body=b"abcd")
    b = wire.parse_fetch(resp(b"* 1 FETCH (BODY[] ", b"ab)c", b" UID 5)"))
    assert b is not None and (b.uid, b.body) == (5, b"ab)c")  # a ")" inside a literal is data


def test_fetch_header_fields_section_with_spaces_and_parens() -> None:
    item = wire.parse_fetch(
        resp(b"* 2 FETCH (UID 7 BODY[HEADER.FIELDS (X-MAILCANARY-TOKEN)] ", b"X: y\r\n\r\n", b")")
    )
    assert item is not None and (item.uid, item.body) == (7, b"X: y\r\n\r\n")


def test_fetch_flags_only_from_another_session_has_no_body() -> None:
    item = wire.parse_fetch(resp(b"* 3 FETCH (FLAGS (\\Seen \\Deleted) UID 9)"))
    assert item == wire.FetchItem(seq=3, uid=9)


def test_fetch_quoted_nil_and_skipped_bodies() -> None:
    q = wire.parse_fetch(resp(b'* 1 FETCH (UID 1 BODY[] "a\\"b")'))
    assert q is not None and q.body == b'a"b'
    nil = wire.parse_fetch(resp(b"* 1 FETCH (UID 1 BODY[] NIL)"))
    assert nil is not None and nil.body == b""
    skipped = wire.parse_fetch(resp(b"* 1 FETCH (UID 1 BODY[] ", None, b")"))
    assert skipped is not None and skipped.body_skipped and skipped.body is None


@pytest.mark.parametrize(
    "first",
    [
        b"* 1 FETCH (UID x)",
        b"* 1 FETCH (UID 1",
        b"* 1 FETCH UID 1)",
        b"* 1 FETCH (UID 1 BODY[ NIL)",
        b"* 1 FETCH (UID)",
        b'* 1 FETCH (UID 1 BODY[] "unterminated)',
        b"* 1 FETCH (UID 1))",
    ],
)
def test_fetch_garbage_raises(first: bytes) -> None:
    with pytest.raises(ProbeError) as info:
        wire.parse_fetch(resp(first))
    assert info.value.reason == "receive_protocol"


def test_quote() -> None:
    assert wire.quote('a"b\\c') == b'"a\\"b\\\\c"'
    assert wire.quote("pässword") is None
    assert wire.quote("a\r\nb") is None


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=5))
def test_arbitrary_parts_return_or_raise_probe_error(parts: list[bytes]) -> None:
    r = wire.Response(tag=b"*", parts=[b"* 1 FETCH " + parts[0], *parts[1:]])
    try:
        item = wire.parse_fetch(r)
    except ProbeError as exc:
        assert exc.reason == "receive_protocol"
    else:
        assert item is None or item.seq == 1
    wire.capabilities_of(r)
    with contextlib.suppress(ProbeError):
        wire.parse_search(r)
