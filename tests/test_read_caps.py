"""The receive read caps: config keys, their errors, and that they reach the probe library."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import LoadedConfig, parse_config
from exporter.kinds.roundtrip import roundtrip_settings
from probes.wire.framing import ReadLimits
from tests.support.configs import ENV, F, edit, full_config, one_problem


def _loaded(text: str) -> LoadedConfig:
    return parse_config(text, F, ENV)


def test_defaults_reach_both_receivers(pw_file: Path) -> None:
    loaded = _loaded(full_config(pw_file))
    for probe in loaded.config.roundtrip:
        assert roundtrip_settings(loaded, probe, b"k" * 32).receiver.limits == ReadLimits()
    assert ReadLimits() == ReadLimits(64 * 1024, 64 * 1024, 1024 * 1024)


def test_configured_caps_reach_the_receiver(pw_file: Path) -> None:
    text = edit(
        pw_file,
        "      mailbox: Canaries\n",
        "      mailbox: Canaries\n      max_line_bytes: 4096\n      max_header_bytes: 8192\n"
        "      max_message_bytes: 65536\n",
    )
    loaded = _loaded(text)
    settings = roundtrip_settings(loaded, loaded.config.roundtrip[0], b"k" * 32)
    assert settings.receiver.limits == ReadLimits(4096, 8192, 65536)


@pytest.mark.parametrize(
    ("key", "value"), [("max_line_bytes", "10"), ("max_header_bytes", "lots"), ("max_message_bytes", "0")]
)
def test_bad_cap_is_one_line_naming_the_key(pw_file: Path, key: str, value: str) -> None:
    text = edit(pw_file, "      mailbox: Canaries\n", f"      mailbox: Canaries\n      {key}: {value}\n")
    line = one_problem(text)
    assert line.startswith(f"{F}: roundtrip[0].receive.{key}: "), line
