"""Packaging and the Prometheus toolkit conventions: flags, --version, build_info, dependencies.

The sdist and wheel themselves, built and installed into a fresh venv: tests/test_release.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from exporter import buildinfo, cli
from tests.support.procs import run_bounded

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def git_head() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    return proc.stdout.strip()


# ---- flags -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toolkit", "old", "dest", "value"),
    [
        ("--config.file", "--config", "config", "/tmp/x.yml"),
        ("--web.listen-address", "--listen", "listen", "127.0.0.1:1"),
        ("--log.level", "--log-level", "log_level", "debug"),
        ("--log.format", "--log-format", "log_format", "json"),
    ],
)
def test_toolkit_flags_and_their_old_aliases(toolkit: str, old: str, dest: str, value: str) -> None:
    parser = cli.build_parser()
    for flag in (toolkit, old):
        args = parser.parse_args(["run", flag, value])
        assert getattr(args, dest) == value, flag
    assert toolkit in parser._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]


def test_demo_takes_the_toolkit_spellings_too() -> None:
    args = cli.build_parser().parse_args(["demo", "--web.listen-address", ":1", "--log.level", "info"])
    assert (args.listen, args.log_level) == (":1", "info")


def test_version_reports_revision_branch_date_python(capsys: pytest.CaptureFixture[str]) -> None:
    head = git_head()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"mailcanary, version {buildinfo.__version__} (branch: ")
    assert f"revision: {head})" in lines[0]
    assert lines[1].split(":", 1)[0].strip() == "build date" and "unknown" not in lines[1]
    assert lines[2].split(":", 1)[0].strip() == "python version"


def test_build_info_file_is_read_when_there_is_no_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "_build.json"
    f.write_text(json.dumps({"revision": "abc", "branch": "main", "build_date": "20260101-00:00:00"}))
    monkeypatch.setattr(buildinfo, "_BUILD_FILE", f)
    assert buildinfo._from_file() == {"revision": "abc", "branch": "main", "build_date": "20260101-00:00:00"}
    f.write_text("not json")
    assert buildinfo._from_file() == {}
    assert buildinfo.from_git(tmp_path)["revision"] == "unknown"  # not a repository: unknown, no error


# ---- dependencies --------------------------------------------------------------------------------------


def test_no_exact_pins_and_the_sandbox_only_in_the_demo_extra() -> None:
    """Exact pins only in the `dashboards` extra: a build-time tool whose version decides the JSON."""
    project = PYPROJECT["project"]
    extras = {k: v for k, v in project["optional-dependencies"].items() if k != "dashboards"}.values()
    specs = [*project["dependencies"], *(d for deps in extras for d in deps)]
    assert not [s for s in specs if "==" in s], "exact pins"
    tools = project["optional-dependencies"]["dashboards"]
    assert [d.split("==")[0] for d in tools] == ["grafana-foundation-sdk"]
    core = " ".join(project["dependencies"]).lower()
    assert "aiosmtpd" not in core and "pymap" not in core
    demo = " ".join(project["optional-dependencies"]["demo"])
    assert "aiosmtpd" in demo and "pymap" in demo
    assert project["license"] == "Apache-2.0"


def test_run_does_not_load_what_it_does_not_use() -> None:
    """Idle RSS: everything `mailcanary run` imports (the CLI, the daemon, its HTTP server and probes)
    leaves out the sandbox (pymap, aiosmtpd) and bcrypt (only with a web config's basic auth).
    cryptography imports bcrypt itself, optionally (SSH keys), from more than one module depending on
    the release: so bcrypt is made unimportable, which cryptography copes with and an import of ours
    at load time would not."""
    code = (
        "import sys\n"
        "sys.modules['bcrypt'] = None\n"
        "import exporter.cli, exporter.daemon, exporter.web.server, exporter.web.webconfig\n"
        "import probes.roundtrip.probe\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pymap', 'aiosmtpd'}), 'loaded')"
    )
    proc = run_bounded([sys.executable, "-c", code], 60, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[] loaded"


def test_demo_without_the_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['aiosmtpd'] = None; sys.modules['aiosmtpd.smtp'] = None\n"
        "from exporter.cli import main\n"
        "sys.exit(main(['demo', '--web.listen-address', '127.0.0.1:0', '--duration', '1']))"
    )
    proc = run_bounded([sys.executable, "-c", code], 60, cwd=ROOT)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install 'mailcanary[demo]'" in lines[0] and "aiosmtpd" in lines[0]
    assert proc.stdout == ""


def test_log_format_logfmt_as_the_toolkit_spells_it() -> None:
    import io

    from exporter import logs

    out = io.StringIO()
    logs.configure("logfmt", "info", stream=out)
    try:
        logs.structlog.get_logger("t").info("probe_run", probe="p1", outcome="success")
    finally:
        logs.configure("json", "info")
    line = out.getvalue().strip()
    assert line.startswith("timestamp=") and "level=info event=probe_run" in line and "probe=p1" in line
