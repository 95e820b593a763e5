"""The ``heartbeats`` section: mail others send that must keep coming (a dead-man's switch). An entry
names an IMAP mailbox (the endpoint keys of the round trip's receive side, OAuth included), folders,
match and ``fail_if`` rules, a schedule (``every`` or ``cron`` + ``timezone``, and ``grace``) and how
many mails a window expects. Read-only unless ``mark_keyword`` or ``move_to`` say otherwise."""

from __future__ import annotations

import re
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from exporter.config.model import Duration, EndpointConfig, Model, RoundTripConfig, _domain_name

KEYWORD_RE = r"[A-Za-z$][A-Za-z0-9$_.-]{0,63}"
MAX_REGEX = 500  # characters of one configured regex


def _regex(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_REGEX:
        raise ValueError(f"a regex of at most {MAX_REGEX} characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


class HeartbeatIMAPConfig(EndpointConfig):
    """The mailbox the mail lands in: the round trip's receive keys (IMAP only) and its read caps."""

    protocol: Literal["imap"] = "imap"
    # A FETCH line carries the BODYSTRUCTURE of any mail in the folder (a foreign one with many parts):
    # 1 MiB, not the round trip's 64 KiB. Headers are fetched in part (at most max_header_bytes).
    max_line_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _login(self) -> Self:
        if self.username is None:
            raise ValueError("the mailbox needs username and a password (or oauth)")
        return self


class MatchConfig(Model):
    """Every given condition must hold."""

    from_address: str | None = Field(default=None, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    from_domain: str | None = None  # the From domain or a subdomain of it
    subject: str | None = None  # regex, searched in the decoded Subject
    headers: dict[str, str] = Field(default_factory=dict, max_length=16)  # header name -> regex
    body: str | None = Field(default=None, min_length=1, max_length=1000)  # substring of the first text part
    body_regex: str | None = None
    attachment: str | None = Field(default=None, min_length=1, max_length=255)  # file name pattern (glob)
    min_size: int | None = Field(default=None, ge=0)  # bytes (RFC822.SIZE)
    max_size: int | None = Field(default=None, ge=0)

    @field_validator("from_domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        return None if v is None else _domain_name(v)

    @field_validator("subject", "body_regex")
    @classmethod
    def _regexes(cls, v: str | None) -> str | None:
        return _regex(v)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            if not re.fullmatch(r"[!-9;-~]{1,76}", name):
                raise ValueError(f"{name!r} is not a header field name")
            try:
                _regex(pattern)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.model_fields_set - {"headers"} and not self.headers:
            raise ValueError(
                "give at least one rule (from_address, from_domain, subject, headers, body, body_regex, "
                "attachment, min_size, max_size): an empty rule would match every mail"
            )
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError("min_size is above max_size")
        return self

    @property
    def needs_body(self) -> bool:
        return self.body is not None or self.body_regex is not None


class HeartbeatConfig(Model):
    name: str
    interval: Duration | None = None  # how often the mailbox is read (default global.interval)
    timeout: Duration | None = None  # one run, at most (default global.timeout)
    imap: HeartbeatIMAPConfig
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1, max_length=20)
    match: MatchConfig
    fail_if: list[MatchConfig] = Field(default_factory=list, max_length=16)  # looked at before match
    body_bytes: int = Field(default=65536, ge=256, le=1024 * 1024)  # of the first text part, at most
    every: Duration | None = None
    cron: str | None = None
    timezone: str = "UTC"
    grace: Duration
    expect: int = Field(default=1, ge=1, le=10000)  # mails per window
    mark_keyword: str | None = None  # an IMAP keyword set on each counted mail (off by default)
    move_to: str | None = Field(default=None, min_length=1, max_length=255)  # a folder (off by default)
    max_messages: int = Field(default=200, ge=1, le=5000)  # new messages read per folder and run

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return RoundTripConfig._name(v)

    @field_validator("mark_keyword")
    @classmethod
    def _keyword(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(KEYWORD_RE, v):
            raise ValueError(
                "must be a keyword: a letter or $, then letters, digits, $ _ . - (at most 64); system flags "
                "such as \\Seen are never set"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone (IANA name such as Europe/Berlin)") from None
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger  # with a cron heartbeat only

            try:
                CronTrigger.from_crontab(v, timezone="UTC")
            except ValueError as exc:
                raise ValueError(
                    f"not a cron expression (5 fields: minute hour day month weekday): {exc}"
                ) from None
        return v

    @field_validator("folders")
    @classmethod
    def _folders(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a folder is listed twice")
        if any(not f or len(f) > 255 for f in v):
            raise ValueError("folder names are 1-255 characters")
        return v

    @model_validator(mode="after")
    def _schedule(self) -> Self:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every, cron")
        if self.every is not None and self.every < 1:
            raise ValueError("every: must be at least 1s")
        if self.every is not None and "timezone" in self.model_fields_set:
            raise ValueError("timezone: only with cron")
        if self.grace < 0:
            raise ValueError("grace: must be >= 0")
        if self.move_to is not None and self.move_to in self.folders:
            raise ValueError("move_to: is a watched folder (a moved mail would be read again)")
        return self

    @property
    def needs_body(self) -> bool:
        return self.match.needs_body or any(r.needs_body for r in self.fail_if)
