"""probes.wire.framing: the bounded reader under both receiving clients, fed arbitrary bytes (hypothesis)
and the edge cases of each bound: line, reply budget, dot-terminated bodies (POP3), skipped over-long
lines, the per-read deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.errors import ProbeError, ProbeTimeout
from probes.wire.framing import (
    BoundedReader,
    ConnectionClosed,
    FrameError,
    ReadLimits,
    join_lines,
    strip_eol,
    unstuff,
    unstuff_lines,
)

T = TypeVar("T")
MAX_LINE = 64
LIMITS = ReadLimits(max_line=MAX_LINE, max_header=256, max_message=256)
NEXT = b"+OK next\r\n"  # what the server says after the reply: reading it proves the reader is in step

# Lines without LF: short ones, ones over MAX_LINE within the stream limit, and ones beyond it.
body_line = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.builds(lambda n, c: bytes([c]) * n, st.integers(MAX_LINE + 1, 300), st.sampled_from(b"x.\r")),
)


def stuffed(lines: list[bytes]) -> bytes:
    """A dot-terminated body as a server frames it (RFC 1939 section 3)."""
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"


def run(
    data: bytes, read: Callable[[BoundedReader], Awaitable[T]], *, stream_limit: int = 128
) -> tuple[T, bytes]:
    """``read`` on a reader fed ``data`` then EOF; returns its result and what is left unread."""

    async def go() -> tuple[T, bytes]:
        stream = asyncio.StreamReader(limit=stream_limit)
        stream.feed_data(data)
        stream.feed_eof()
        reader = BoundedReader(stream, LIMITS, "receive_protocol", reply_budget=False)
        result = await read(reader)
        return result, await stream.read()

    return asyncio.run(go())


# --- pure helpers ------------------------------------------------------------------------------------------


def test_strip_eol_and_unstuff() -> None:
    assert [strip_eol(b) for b in (b"a\r\n", b"a\n", b"a\r", b"a")] == [b"a", b"a", b"a\r", b"a"]
    assert unstuff_lines([b"..x\r\n", b".y", b"z"]) == [b".x", b"y", b"z"]
    assert unstuff([b"..x", b""]) == b".x\r\n\r\n" == join_lines([b".x", b""])
    with pytest.raises(FrameError):
        unstuff([b"a", b"."])


# --- dot-terminated bodies ------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=MAX_LINE).filter(lambda b: b"\n" not in b), max_size=12))
def test_dot_body_round_trip_and_stays_in_step(lines: list[bytes]) -> None:
    total = len(stuffed(lines)) - 3  # the lines as sent (stuffed), each with its CRLF; not the terminator
    got, rest = run(stuffed(lines) + NEXT, lambda r: r.dot_body("RETR", cap=10_000))
    assert got == lines
    assert rest == NEXT
    if total:  # exactly at the cap is fine, one byte less is not
        run(stuffed(lines), lambda r: r.dot_body("RETR", cap=total))
        with pytest.raises(FrameError, match="larger than"):
            run(stuffed(lines), lambda r: r.dot_body("RETR", cap=total - 1))


@given(st.lists(body_line, max_size=10), st.integers(0, 400))
@settings(max_examples=200)
def test_dot_body_or_skip_keeps_what_fits_and_stays_in_step(lines: list[bytes], keep: int) -> None:
    """A body is kept exactly when it fits ``keep`` and no line is over the line limit; either way the
    reader stops right after the terminator, whatever the over-long lines' lengths."""
    got, rest = run(stuffed(lines) + NEXT, lambda r: r.dot_body_or_skip("TOP", keep, cap=100_000))
    framed = [(b"." + ln if ln.startswith(b".") else ln) for ln in lines]
    fits = all(len(ln) <= MAX_LINE for ln in framed) and sum(len(ln) + 2 for ln in framed) <= keep
    assert rest == NEXT
    if fits:
        assert got is not None and join_lines(got) == join_lines(unstuff_lines(framed))
    else:
        assert got is None


def test_dot_body_or_skip_bounds_what_it_drops() -> None:
    lines = [b"y" * 50] * 20  # 1,040 bytes, over keep: dropped, until the drop cap is passed
    run(stuffed(lines), lambda r: r.dot_body_or_skip("TOP", 10, cap=2_000))
    with pytest.raises(FrameError, match="larger than 500"):
        run(stuffed(lines), lambda r: r.dot_body_or_skip("TOP", 10, cap=500))
    with pytest.raises(FrameError, match="longer than 500"):  # one endless line: cut off inside it
        run(b"z" * 5_000 + b"\r\n.\r\n", lambda r: r.dot_body_or_skip("TOP", 10, cap=500))


def test_over_long_line_ends_a_strict_body() -> None:
    for length in (MAX_LINE + 1, 1_000):  # within the stream limit, and beyond it
        with pytest.raises(FrameError, match=f"longer than {MAX_LINE}"):
            run(b"a" * length + b"\r\n.\r\n", lambda r: r.dot_body("RETR", cap=10_000))


@given(st.binary(max_size=600), st.integers(0, 300))
@settings(max_examples=300)
def test_arbitrary_bytes_end_in_a_body_or_a_probe_error(data: bytes, keep: int) -> None:
    """Whatever arrives: a result within the bounds, or a ProbeError (garbage, EOF, a limit), nothing else."""
    for strict in (True, False):
        try:
            if strict:
                got: list[bytes] | None
                got, _ = run(data, lambda r: r.dot_body("RETR", cap=300))
                assert got is not None and sum(len(line) + 2 for line in got) <= 300
            else:
                got, _ = run(data, lambda r: r.dot_body_or_skip("TOP", keep, cap=300))
                assert got is None or sum(len(line) + 2 for line in got) <= keep
            assert got is None or all(len(line) <= MAX_LINE for line in got)
        except ProbeError as exc:
            assert exc.reason == "receive_protocol"


# --- EOF, budget, deadline -------------------------------------------------------------------------------


def test_eof_says_whether_a_line_was_cut() -> None:
    with pytest.raises(ConnectionClosed) as clean:
        run(b"", lambda r: r.line("greeting"))
    with pytest.raises(ConnectionClosed) as cut:
        run(b"+OK hal", lambda r: r.line("greeting"))
    assert (clean.value.partial, cut.value.partial) == (False, True)
    assert "greeting" in clean.value.message


def test_reply_budget() -> None:
    async def go(budget: bool) -> int:
        stream = asyncio.StreamReader(limit=128)
        stream.feed_data(b"* noise\r\n" * 200)
        reader = BoundedReader(
            stream, ReadLimits(max_line=64, max_message=64), "receive_protocol", reply_budget=budget
        )
        for _ in range(200):
            await reader.line("NOOP")
        return reader.used

    with pytest.raises(FrameError, match="max_reply"):  # 4 x 64 + 16 x 64 = 1,280 bytes
        asyncio.run(go(True))
    assert asyncio.run(go(False)) == 1_800


async def test_read_timeout_is_per_read_and_names_the_step() -> None:
    stream = asyncio.StreamReader(limit=128)
    reader = BoundedReader(stream, LIMITS, "receive_protocol", read_timeout=0.05)
    stream.feed_data(b"+OK\r\n1 abc\r\n")
    with pytest.raises(ProbeTimeout) as info:  # two lines, then silence: no terminator
        await reader.dot_body("UIDL", cap=1_000)
    assert info.value.reason == "timeout" and "UIDL" in info.value.message


async def test_without_read_timeout_the_callers_deadline_stands() -> None:
    stream = asyncio.StreamReader(limit=128)
    reader = BoundedReader(stream, LIMITS, "receive_protocol")
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.05):
            await reader.line("greeting")
    assert not isinstance(info.value, ProbeError)  # the caller's own timeout, for the caller to name
