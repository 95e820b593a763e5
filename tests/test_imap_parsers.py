"""probes.imap: the pure parsers of aioimaplib response lines.

aioimaplib strips ``* `` from untagged lines, strips the name of an async command's untagged data
(``* SEARCH 1 2`` arrives as ``1 2``), hands literals over as ``bytearray`` right after their line, and
ends the list with the tagged status text.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes.imap import parse_exists, parse_fetch_literals, parse_search

# ---- EXISTS ---------------------------------------------------------------------------------------------


def test_exists_from_select() -> None:
    lines = [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.",
        b"3 EXISTS",
        b"0 RECENT",
        b"OK [UIDVALIDITY 1700000000] UIDs valid",
        b"OK [UIDNEXT 4] Predicted next UID",
        b"[READ-WRITE] Select completed (0.001 + 0.000 secs).",
    ]
    assert parse_exists(lines) == 3


def test_exists_last_one_wins() -> None:
    assert parse_exists([b"3 EXISTS", b"1 RECENT", b"5 EXISTS", b"NOOP completed."]) == 5


def test_exists_with_star_and_lower_case() -> None:
    assert parse_exists([b"* 7 EXISTS"]) == 7
    assert parse_exists([b"12 exists"]) == 12


def test_exists_none() -> None:
    assert parse_exists([]) is None
    assert parse_exists([b"NOOP completed (0.001 + 0.000 secs)."]) is None
    assert parse_exists([b"2 EXPUNGE", b"1 RECENT"]) is None
    assert parse_exists([b"3 EXISTSX"]) is None
    assert parse_exists([b"x 3 EXISTS"]) is None


def test_exists_ignores_literal_data() -> None:
    assert parse_exists([bytearray(b"9 EXISTS"), b"OK"]) is None


# ---- SEARCH ---------------------------------------------------------------------------------------------


def test_search_name_stripped() -> None:
    assert parse_search([b"1 2", b"Search completed (0.001 + 0.000 secs)."]) == [1, 2]


def test_search_with_name() -> None:
    assert parse_search([b"SEARCH 1 2 17", b"Search completed."]) == [1, 2, 17]
    assert parse_search([b"search 4"]) == [4]


def test_search_empty() -> None:
    assert parse_search([b"", b"Search completed (0.001 + 0.000 secs)."]) == []
    assert parse_search([b"SEARCH", b"OK"]) == []
    assert parse_search([]) == []


def test_search_several_untagged_lines() -> None:
    assert parse_search([b"1 2", b"SEARCH 3", b"UID SEARCH completed"]) == [1, 2, 3]


@pytest.mark.parametrize(
    "status",
    [
        b"Search completed (0.001 + 0.000 secs).",
        b"SEARCH completed",
        b"OK",
        b"[UIDNEXT 5] 5 more",
        b"5 EXISTS",
    ],
)
def test_search_ignores_status_and_other_untagged_lines(status: bytes) -> None:
    assert parse_search([b"8 9", status]) == [8, 9]


def test_search_ignores_literal_data() -> None:
    assert parse_search([bytearray(b"1 2"), b"3"]) == [3]


def test_search_large_uids() -> None:
    assert parse_search([b"4294967295 1"]) == [4294967295, 1]


# ---- FETCH literals -------------------------------------------------------------------------------------


def test_fetch_one_literal() -> None:
    lines = [b"1 FETCH (UID 5 BODY[] {12}", bytearray(b"Subject: x\r\n"), b")", b"Fetch completed."]
    assert parse_fetch_literals(lines) == {5: b"Subject: x\r\n"}


def test_fetch_returns_bytes_not_bytearray() -> None:
    out = parse_fetch_literals([b"1 FETCH (UID 5 BODY[] {1}", bytearray(b"x"), b")"])
    assert type(out[5]) is bytes


def test_fetch_several_messages() -> None:
    lines = [
        b"1 FETCH (UID 5 BODY[HEADER.FIELDS (X-Mailcanary-Token)] {20}",
        bytearray(b"X-Mailcanary-Token: a"),
        b")",
        b"2 FETCH (UID 9 BODY[HEADER.FIELDS (X-Mailcanary-Token)] {2}",
        bytearray(b"\r\n"),
        b")",
        b"UID FETCH completed (0.001 + 0.000 secs).",
    ]
    assert parse_fetch_literals(lines) == {5: b"X-Mailcanary-Token: a", 9: b"\r\n"}


def test_fetch_uid_after_flags() -> None:
    lines = [b"3 FETCH (FLAGS (\\Seen) UID 42 BODY[] {3}", bytearray(b"abc"), b")", b"OK"]
    assert parse_fetch_literals(lines) == {42: b"abc"}


def test_fetch_without_literals() -> None:
    assert parse_fetch_literals([b"1 FETCH (UID 5 FLAGS (\\Seen))", b"Fetch completed."]) == {}
    assert parse_fetch_literals([b"Fetch completed."]) == {}
    assert parse_fetch_literals([]) == {}


def test_fetch_literal_without_a_fetch_line_is_dropped() -> None:
    assert parse_fetch_literals([bytearray(b"orphan"), b"OK"]) == {}
    # A FLAGS-only update in between does not lend its UID to a later orphan literal.
    lines = [b"1 FETCH (UID 5 BODY[] {1}", bytearray(b"a"), b")", bytearray(b"b")]
    assert parse_fetch_literals(lines) == {5: b"a"}


def test_fetch_uid_word_outside_a_fetch_line_is_ignored() -> None:
    lines = [b"OK [UIDNEXT 7] UID 7 next", bytearray(b"x"), b"OK"]
    assert parse_fetch_literals(lines) == {}


def test_fetch_empty_literal() -> None:
    assert parse_fetch_literals([b"1 FETCH (UID 5 BODY[] {0}", bytearray(b""), b")"]) == {5: b""}


# ---- fuzz -----------------------------------------------------------------------------------------------

_imapish = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.builds(bytearray, st.binary(max_size=60)),
        st.sampled_from([b"1 FETCH (UID 5 BODY[] {3}", b"SEARCH 1 2", b"3 EXISTS", b"SEARCH", b"", b" "]),
        st.from_regex(
            rb"\A(\* )?[0-9 ]{0,12}(EXISTS|SEARCH|FETCH \(UID [0-9]{1,12}|UID|RECENT)?[0-9 ]{0,12}\Z"
        ),
    ),
    max_size=12,
)


@given(_imapish)
def test_parsers_never_raise(lines: list[bytes | bytearray]) -> None:
    exists = parse_exists(lines)
    assert exists is None or exists >= 0
    uids = parse_search(lines)
    assert all(isinstance(u, int) and u >= 0 for u in uids)
    literals = parse_fetch_literals(lines)
    assert all(isinstance(v, bytes) for v in literals.values())
    assert sum(isinstance(line, bytearray) for line in lines) >= len(literals)


@given(st.lists(st.binary(), max_size=8))
def test_parsers_never_raise_on_arbitrary_bytes(lines: list[bytes]) -> None:
    parse_exists(lines)
    parse_search(lines)
    assert parse_fetch_literals(lines) == {}  # no literal, nothing to return


def test_parsers_survive_absurdly_long_numbers() -> None:
    digits = b"9" * 5000
    assert parse_exists([digits + b" EXISTS"]) is None
    assert parse_search([digits]) == []
    assert parse_fetch_literals([b"1 FETCH (UID " + digits + b" BODY[] {1}", bytearray(b"x")]) == {}
