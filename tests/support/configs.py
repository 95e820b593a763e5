"""A complete two-probe config file (IMAP and POP3 round trips) and the checks of the config tests: a bad
file gives exactly one problem, one line, shaped "FILE: key.path: message"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config import ConfigError, parse_config

F = "/etc/mailcanary/test.yml"
ENV = {"RECV_PW": "env-secret"}


# One line per problem: "FILE: key.path: message" (the path may be "(top level)" or "line L, column C").
LINE_RE = re.compile(r"^(?P<file>[^:]+): (?P<key>[^:]+): (?P<msg>.+)$")


def full_config(pw_file: Path) -> str:
    """Two probes, every section filled; the SMTP password in ``pw_file``, the receiver's in $RECV_PW."""
    return f"""\
global:
  interval: 5m
  timeout: 2m
roundtrip:
  - name: imap-probe
    sender: canary@example.com
    recipient: inbox@example.net
    interval: 1m
    timeout: 30s
    smtp:
      host: smtp.example.com
      tls: starttls
      username: canary@example.com
      password_file: {pw_file}
    receive:
      protocol: imap
      host: imap.example.net
      tls: implicit
      username: inbox@example.net
      password_env: RECV_PW
      mailbox: Canaries
  - name: pop3.probe_2
    sender: canary@example.com
    recipient: pop@example.net
    smtp:
      host: mx.example.net
      port: 25
      tls: none
    receive:
      protocol: pop3
      host: pop.example.net
      tls: starttls
      username: pop@example.net
      password_env: RECV_PW
"""


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, F, ENV if environ is None else environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(text: str, environ: dict[str, str] | None = None) -> str:
    problems = problems_of(text, environ)
    assert len(problems) == 1, problems
    (line,) = problems
    assert "\n" not in line
    assert LINE_RE.match(line), line
    return line


def edit(pw_file: Path, old: str, new: str, count: int = 1) -> str:
    """The full config with ``old`` replaced by ``new`` (``old`` must be there)."""
    text = full_config(pw_file)
    assert old in text, old
    return text.replace(old, new, count)
