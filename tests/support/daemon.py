"""``mailcanary run`` as a subprocess on a free loopback port, and its JSON log lines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.mailstack import free_ports
from tests.support.stackconfig import exporter_argv


class Daemon:
    def __init__(self, config: Path, *extra: str) -> None:
        self.port = free_ports(1)[0]
        self.proc = subprocess.Popen(
            exporter_argv(config, self.port, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=20)
        overdue = [line for line in err.splitlines() if '"stop_overdue"' in line]
        assert not overdue, f"the daemon's stop hung: {overdue[0]}"
        return out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON: a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
