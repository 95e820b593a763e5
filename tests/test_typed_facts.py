"""The typed shapes under the probes: failure reasons that mypy checks, and facts with one field each."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

from exporter.run.results import DOMAIN_OUTCOMES, OUTCOMES, TLS_OUTCOMES
from exporter.run.runner import RECEIVER_FACTS
from probes.errors import REASONS, ProbeError, Reason, is_reason
from probes.recorder import Facts, ReceiverFacts

ROOT = Path(__file__).resolve().parent.parent


def test_reasons_are_one_list() -> None:
    assert frozenset(get_args(Reason)) == REASONS and len(get_args(Reason)) == len(REASONS)
    kind_own = {"success", "tls_verify"}  # outcomes a kind's judge gives, not a ProbeError's reason
    for outcomes in (OUTCOMES, DOMAIN_OUTCOMES, TLS_OUTCOMES):
        assert all(is_reason(o) for o in outcomes if o not in kind_own), outcomes


def test_an_unknown_reason_computed_at_run_time_is_still_refused() -> None:
    assert is_reason("timeout") and not is_reason("nope")
    dynamic: Any = "nope"
    with pytest.raises(ValueError, match="unknown probe failure reason 'nope'"):
        ProbeError("x", reason=dynamic)


def test_mypy_rejects_an_unknown_reason_where_it_is_written(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from probes.errors import ProbeError\n"
        'ProbeError("ok", reason="timeout")\n'
        'ProbeError("typo", reason="timout")\n'
    )
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "c"),
         "--follow-imports", "silent", "--config-file", os.devnull, str(snippet)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # The project is followed silently: its own typing is checked by scripts/test with pyproject's settings
    # (e.g. the untyped authres), here only what the snippet writes counts.
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "snippet.py:3:" in errors[0] and '"reason"' in errors[0], done.stdout


def test_receiver_facts_are_the_log_lines_keys_each_a_fact() -> None:
    assert tuple(ReceiverFacts.__annotations__) == RECEIVER_FACTS
    fields = {f.name for f in dataclasses.fields(Facts)}
    assert set(RECEIVER_FACTS) <= fields
    # A fact the run did not learn (None) is left out; a learnt false or zero is kept.
    assert Facts().receiver() == {}
    assert Facts(junk_folder_found=False, login_delay=0, clock_offset=0.0).receiver() == {
        "junk_folder_found": False,
        "login_delay": 0,
        "clock_offset": 0.0,
    }
    values: dict[str, Any] = {
        "junk_folder": "Junk",
        "junk_folder_found": True,
        "sync_skipped": "junk",
        "other_folders": 2,
        "found_folder": "Archive",
        "bounces": [],
        "bounce_watch": "off",
        "sender_ip": "127.0.0.1",
        "sender_dnsbl": {"zone.test": "not_listed"},
        "clock_offset": 1.5,
        "login_delay": 300,
    }
    assert list(Facts(**values).receiver().items()) == list(values.items())  # every key, in log order
