"""The order in which ``--dist loadfile`` hands test files to the xdist workers: the most expensive first.

xdist's own order is by number of tests, so a file with a few minutes-long tests (the promtool runs, the
release build, the TLS matrix with its oracle) could start last and run alone at the end while the
other workers idle. Longest first (LPT) keeps the cheap files for the end, where they fill the gaps.
A file whose tests share nothing but function-scoped fixtures may also be split into parts that run on
different workers (``SPLIT``): otherwise the longest single file bounds the whole run.

``COSTS`` are seconds per file measured in a whole run (``--junitxml``; see docs/development.md); only
the order matters, so a file missing here is not an error: it is weighed by its number of tests.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Seconds per file in a whole run (3 workers, 2 cores, load 7-24: 2026-12-07 08:02 UTC), rounded. The
# relative order is what counts; refresh them when a file's cost changes a lot.
COSTS: dict[str, float] = {
    "tests/test_fault_matrix.py": 210,
    "tests/test_generate.py": 165,
    "tests/test_rules.py": 140,
    "tests/test_release.py": 135,
    "tests/test_tls_matrix.py": 120,
    "tests/test_hardening.py": 115,
    "tests/test_tls_audit.py": 100,
    "tests/test_prometheus_live.py": 90,
    "tests/interop/test_cyrus_exim.py": 65,
    "tests/interop/test_opensmtpd.py": 45,
    "tests/test_reports_e2e.py": 40,
    "tests/test_verdict_dmarc.py": 40,
    "tests/test_roundtrip_e2e.py": 40,
    "tests/test_daemon_state.py": 40,
    "tests/test_verdict_dkim.py": 30,
    "tests/test_daemon_e2e.py": 30,
    "tests/test_heartbeats_e2e.py": 30,
    "tests/test_shared_mailbox.py": 25,
    "tests/test_alerts_e2e.py": 25,
    "tests/test_demo.py": 20,
    "tests/test_deploy.py": 20,
}
DEFAULT_PER_TEST = 0.3  # seconds per test of a file not in COSTS (most such files are unit tests)

# Files split into this many parts (their tests use function-scoped fixtures only, so a part needs
# nothing the others set up). A test's part is a hash of its id: stable from run to run.
SPLIT: dict[str, int] = {
    "tests/test_fault_matrix.py": 3,
}


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its file, or ``file@part`` for a file in ``SPLIT``."""
    path = file_of(nodeid)
    parts = SPLIT.get(path)
    if not parts:
        return path
    return f"{path}@{zlib.crc32(nodeid.encode()) % parts}"


def cost(scope: str, tests: int) -> float:
    """The expected seconds of a work unit (a split file's cost shared by its parts)."""
    path = scope.split("@", 1)[0]
    if path in COSTS:
        return COSTS[path] / SPLIT.get(path, 1)
    return tests * DEFAULT_PER_TEST


def by_cost(workqueue: dict[str, dict[str, bool]]) -> OrderedDict[str, dict[str, bool]]:
    """The work units, most expensive first (ties: the file name, so the order is reproducible)."""
    ordered = sorted(workqueue.items(), key=lambda item: (-cost(item[0], len(item[1])), item[0]))
    return OrderedDict(ordered)


def make_scheduler(config: Any, log: Any) -> Any:
    """xdist's loadfile scheduler with our scopes and our order (imported only when xdist runs)."""
    from xdist.scheduler import LoadFileScheduling

    class CostOrderedScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            self.workqueue = by_cost(self.workqueue)
            super()._assign_work_unit(node)

    return CostOrderedScheduling(config, log)


def costs_from_junit(xml_file: Path, root: Path) -> dict[str, float]:
    """Seconds per test file of a run (``pytest --junitxml=FILE``): the sum of its test cases' times
    (setup and teardown included, so a module fixture counts once, in its first test)."""
    import xml.etree.ElementTree as ET

    out: dict[str, float] = {}
    for case in ET.parse(xml_file).iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        path = next(
            (
                "/".join(parts[:n]) + ".py"
                for n in range(len(parts), 0, -1)
                if (root / "/".join(parts[:n])).with_suffix(".py").is_file()
            ),
            None,
        )
        if path is not None:
            out[path] = out.get(path, 0.0) + float(case.get("time") or 0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":  # python -m tests.support.schedule run.xml: the figures for COSTS
    import sys

    for name, seconds in costs_from_junit(Path(sys.argv[1]), Path.cwd()).items():
        print(f"    {name!r}: {seconds:.0f},")
