"""structlog set-up: JSON when not on a TTY, console otherwise, every value passed through the masker."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from probes.recorder import Masker

LogFormat = Literal["auto", "json", "console", "logfmt"]  # logfmt: the exporter-toolkit default

_masker = Masker()


def set_masker(masker: Masker) -> None:
    """Swap the masker used by every log line (on config load and reload)."""
    global _masker
    _masker = masker


def _mask(value: Any) -> Any:
    """Mask strings, recursively; anything else that would be rendered as text is rendered and masked."""
    if isinstance(value, str):
        return _masker(value)
    if isinstance(value, dict):
        return {_masker(str(k)): _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _masker(str(value))  # exceptions, paths, objects: their text may hold a secret


def _mask_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = _mask(value)
    return event


def _mask_record(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    # The handler would append the traceback and stack unmasked: fold them into the masked message.
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    record.msg = _masker(text)
    record.args = None
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


class _JSONFormatter(logging.Formatter):
    """Library log records as one JSON line each, like ours: in JSON mode nothing else reaches stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": record.getMessage(),  # already masked, with any traceback folded in (_mask_record)
                "logger": record.name,
                "level": record.levelname.lower(),
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            }
        )


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (it may be swapped after logging is configured)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(fmt: LogFormat = "auto", level: str = "info", stream: Any = None) -> None:
    stream = _Stderr() if stream is None else stream
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif fmt == "logfmt":
        renderer = structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_processor,  # last before rendering: also covers formatted tracebacks
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aioimaplib logs the dialogue at DEBUG; APScheduler logs every run at INFO).
    handler = logging.StreamHandler(stream)
    handler.addFilter(_mask_record)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    logging.captureWarnings(True)  # Python warnings go through the same handler (JSON in JSON mode)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for noisy in ("aioimaplib", "apscheduler", "aiohttp.access", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.ERROR if noisy != "apscheduler" else logging.WARNING)


def add_log_flags(p: argparse.ArgumentParser, default_level: str, level_help: str, format_help: str) -> None:
    """``--log.format`` / ``--log.level`` (exporter-toolkit names, old spellings as aliases), shared by
    every subcommand that logs."""
    p.add_argument(
        "--log.format",
        "--log-format",
        dest="log_format",
        choices=["auto", "json", "console", "logfmt"],
        default="auto",
        help=format_help,
    )
    p.add_argument(
        "--log.level",
        "--log-level",
        dest="log_level",
        choices=["debug", "info", "warning", "error"],
        default=default_level,
        help=level_help,
    )
