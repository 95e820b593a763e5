"""exporter.logs: structured logs, with every secret masked, including stdlib library loggers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from exporter import logs
from probes.recorder import MASK, Masker

SECRET = "hunter2-S3cr3t"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {
        n: logging.getLogger(n).level for n in ("aioimaplib", "apscheduler", "aiohttp.access", "mail.log")
    }
    out = io.StringIO()
    # An earlier test in this process may have run configure() (warnings captured) without undoing it:
    # logging then thinks the capture is on while pytest has since put the original hook back, and a
    # second captureWarnings(True) would do nothing. Start from a fresh process's state.
    logging.captureWarnings(False)
    logs.configure("json", "debug", stream=out)
    masker = Masker()
    masker.add(SECRET, "user@example.com")
    logs.set_masker(masker)
    yield out
    logs.set_masker(Masker())
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines_of(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_json_event_fields_are_masked(stream: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.warning(
        f"login with {SECRET} failed",
        error=f"server said: bad password {SECRET}",
        nested={"inner": {"deeper": [f"x{SECRET}x", ("tuple", SECRET)]}, "n": 3},
        items=[SECRET, {"k": SECRET}],
        count=7,
    )
    (line,) = lines_of(stream)
    assert SECRET not in line
    event = json.loads(line)
    assert event["event"] == f"login with {MASK} failed"
    assert event["error"] == f"server said: bad password {MASK}"
    assert event["nested"] == {"inner": {"deeper": [f"x{MASK}x", ["tuple", MASK]]}, "n": 3}
    assert event["items"] == [MASK, {"k": MASK}]
    assert event["count"] == 7
    assert event["level"] == "warning"
    assert "timestamp" in event


def test_json_masks_the_encoded_forms(stream: io.StringIO) -> None:
    import base64

    b64 = base64.b64encode(SECRET.encode()).decode()
    plain = base64.b64encode(f"\0user@example.com\0{SECRET}".encode()).decode()
    structlog.get_logger("t").info("dialogue", lines=[f"C: {b64}", f"C: AUTH PLAIN {plain}"])
    out = stream.getvalue()
    assert b64 not in out
    assert plain not in out
    assert json.loads(lines_of(stream)[0])["lines"] == [f"C: {MASK}", f"C: AUTH PLAIN {MASK}"]


def test_context_vars_are_masked(stream: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(run=f"r-{SECRET}")
    try:
        structlog.get_logger("t").info("x")
    finally:
        structlog.contextvars.clear_contextvars()
    assert SECRET not in stream.getvalue()
    assert json.loads(lines_of(stream)[0])["run"] == f"r-{MASK}"


def test_exception_tracebacks_are_masked(stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("probe_internal_error", probe="p")
    out = stream.getvalue()
    assert SECRET not in out
    event = json.loads(lines_of(stream)[0])
    assert f"RuntimeError: auth failed for {MASK}" in event["exception"]


def test_masker_swap_takes_effect(stream: io.StringIO) -> None:
    logs.set_masker(Masker(["other-secret"]))
    structlog.get_logger("t").info("a", v="other-secret", w=SECRET)
    event = json.loads(lines_of(stream)[0])
    assert event["v"] == MASK
    assert event["w"] == SECRET  # the old masker is gone: a reload replaces it


def test_stdlib_records_are_masked(stream: io.StringIO) -> None:
    logging.getLogger("aioimaplib").error("LOGIN failed: %s", SECRET)
    logging.getLogger("aioimaplib").error(f"raw line a1 LOGIN u {SECRET} 100%")
    logging.getLogger("somelib").warning("%s and %d%%", SECRET, 5)
    out = stream.getvalue()
    assert SECRET not in out
    # In JSON mode library records are JSON lines too (nothing non-JSON on stderr).
    assert [json.loads(line)["event"] for line in lines_of(stream)] == [
        f"LOGIN failed: {MASK}",
        f"raw line a1 LOGIN u {MASK} 100%",
        f"{MASK} and 5%",
    ]
    assert [json.loads(line)["logger"] for line in lines_of(stream)] == [
        "aioimaplib",
        "aioimaplib",
        "somelib",
    ]


def test_python_warnings_are_json_lines_too(stream: io.StringIO) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # what configure() set (pytest's own capture swaps it per test)
        warnings.warn(f"deprecated thing {SECRET}", DeprecationWarning, stacklevel=1)
    (line,) = lines_of(stream)
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and "DeprecationWarning" in record["event"]
    assert SECRET not in line


def test_stdlib_tracebacks_are_masked(stream: io.StringIO) -> None:
    try:
        raise ValueError(f"bad credentials {SECRET}")
    except ValueError:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
        logging.getLogger("aioimaplib").exception("failure %s", SECRET)
    out = stream.getvalue()
    assert SECRET not in out
    assert "Task exception was never retrieved" in out
    assert f"ValueError: bad credentials {MASK}" in out
    lines = lines_of(stream)
    assert len(lines) == 2 and all(json.loads(line)["level"] == "error" for line in lines)  # one line each


def test_noisy_library_levels(stream: io.StringIO) -> None:
    logging.getLogger("aioimaplib").warning(f"dialogue {SECRET}")
    logging.getLogger("apscheduler.scheduler").info("Running job")
    logging.getLogger("other").info("chatty")
    assert stream.getvalue() == ""
    assert logging.getLogger("aioimaplib").level == logging.ERROR
    assert logging.getLogger("apscheduler").level == logging.WARNING


def test_level_filter() -> None:
    out = io.StringIO()
    try:
        logs.configure("json", "warning", stream=out)
        log = structlog.get_logger("t")
        log.info("hidden")
        log.warning("shown")
        assert [json.loads(line)["event"] for line in lines_of(out)] == ["shown"]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []


def test_console_format_is_masked() -> None:
    out = io.StringIO()
    try:
        logs.configure("console", "info", stream=out)
        logs.set_masker(Masker([SECRET]))
        structlog.get_logger("t").info(f"event {SECRET}", field=SECRET)
        text = out.getvalue()
        assert "event" in text
        assert MASK in text
        assert SECRET not in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
    finally:
        logs.set_masker(Masker())
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []


def test_auto_format_is_json_off_a_tty() -> None:
    out = io.StringIO()
    try:
        logs.configure("auto", "info", stream=out)
        structlog.get_logger("t").info("hello", n=1)
        assert json.loads(out.getvalue())["event"] == "hello"
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
