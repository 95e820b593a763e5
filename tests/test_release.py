"""The release as an operator gets it: the sdist and wheel built with PyPA's ``build``, the wheel installed
into a fresh virtualenv outside the checkout and used from there.

Built once per session (an isolated build environment from the package registry, as CI has it); the
venv gets ``mailcanary[demo]`` from the wheel and its dependencies from the registry, and every command
runs with the checkout off ``sys.path`` (no PYTHONPATH, another working directory), so nothing is
borrowed from the source tree. What the artifacts carry (README, "Install"): the wheel is the program
(``exporter``, ``probes`` with ``py.typed``, the build facts), the sdist is everything the project
ships beside it (dashboards, rules, deploy files, docs with the config schema, examples, tests, tools).
"""

from __future__ import annotations

import email
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mailstack import free_ports
from tests.support.deploy import shipped_configs, with_stand_in_secrets
from tests.support.metrics import Scrape, scrape, value
from tests.support.procs import run_bounded
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
# What the sdist must carry beside the code, file for file as committed.
SDIST_TREES = ("dashboards", "deploy", "docs", "examples")

pytestmark = pytest.mark.release


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    return proc.stdout.strip()


BUILD_LOCK = Path(tempfile.gettempdir()) / "mailcanary-test-build.lock"


def build(source: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """One build at a time on this machine: an sdist is assembled inside the source tree
    (``mailcanary-X.Y.Z/``, ``*.egg-info``), so two at once (two xdist workers each with this session's
    fixture, or two suites) would take each other's files away."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCANARY_")}
    with BUILD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(source, out, env, *flags)


def _build(source: Path, out: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "build", *flags, "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    build(ROOT, out)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel)


@pytest.fixture(scope="session")
def unpacked_sdist(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    with tarfile.open(dists.sdist) as tar:
        tar.extractall(out, filter="data")
    (top,) = out.iterdir()
    return top


@dataclass(frozen=True)
class Installed:
    bin: Path
    env: dict[str, str]
    cwd: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``timeout``: seconds not waiting for a CPU (a starved process is not a hung one)."""
        return run_bounded([str(self.bin / "mailcanary"), *args], timeout, env=self.env, cwd=self.cwd)


@pytest.fixture(scope="session")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh venv (not under the checkout) with ``mailcanary[demo]`` installed from the built wheel."""
    where = tmp_path_factory.mktemp("release-venv")
    assert ROOT not in where.parents
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    bin_dir = where / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(
        # --no-compile: only what the commands import gets byte-compiled (on first use), not every
        # dependency up front: less CPU taken from the test files running beside this one.
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-compile", f"{dists.wheel}[demo]"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
        cwd=where,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cwd = where / "work"
    cwd.mkdir()
    return Installed(bin_dir, env, cwd)


# ---- the artifacts --------------------------------------------------------------------------------------


def test_sdist_carries_dashboards_rules_schema_deploy_docs_examples(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name and m.isfile()}
        committed = git("ls-files", *SDIST_TREES).splitlines()
        assert (
            "docs/mailcanary.schema.json" in committed
            and "deploy/prometheus/mailcanary-rules.yml" in committed
        )
        for name in committed:
            assert name in members, f"sdist lacks {name}"
            fh = tar.extractfile(members[name])
            assert fh is not None and fh.read() == (ROOT / name).read_bytes(), f"sdist's {name} differs"
    for must in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "setup.py",
        "exporter/_build.json",
        "probes/py.typed",
    ):
        assert must in members, must
    assert not [n for n in members if n.startswith((".venv", ".git/")) or "__pycache__" in n]


def test_wheel_is_the_program_typed_licensed_with_build_facts(dists: Dists) -> None:
    head = git("rev-parse", "HEAD")
    with zipfile.ZipFile(dists.wheel) as whl:
        names = whl.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(meta_name))
        info = json.loads(whl.read("exporter/_build.json"))
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"exporter", "probes", f"mailcanary-{VERSION}.dist-info"}, tops
    assert "probes/py.typed" in names  # PEP 561: the probe library is typed for its users
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert meta["Version"] == VERSION and meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist") or []
    sandbox = [r for r in requires if r.startswith(("aiosmtpd", "pymap"))]
    assert sandbox and all('extra == "demo"' in r for r in sandbox)
    assert info["revision"] == head and info["branch"] != "unknown"
    assert re.fullmatch(r"\d{8}-\d\d:\d\d:\d\d", info["build_date"])


def test_a_wheel_built_outside_git_says_unknown(
    unpacked_sdist: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Without git and without the sdist's build facts, the build can't know its revision: it says so."""
    tree = tmp_path_factory.mktemp("nogit") / "src"
    shutil.copytree(unpacked_sdist, tree)
    (tree / "exporter" / "_build.json").unlink()
    out = tmp_path_factory.mktemp("nogit-dist")
    build(tree, out, "--wheel")
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        info = json.loads(whl.read("exporter/_build.json"))
    assert (info["revision"], info["branch"]) == ("unknown", "unknown")
    assert re.fullmatch(r"\d{8}-\d\d:\d\d:\d\d", info["build_date"])  # the build's own date is known


# ---- the installed wheel --------------------------------------------------------------------------------


def test_installed_wheel_runs_from_the_venv_not_the_checkout(installed: Installed) -> None:
    proc = subprocess.run(
        [
            str(installed.bin / "python"),
            "-c",
            "import exporter, probes; print(exporter.__file__, probes.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=installed.env,
        cwd=installed.cwd,
    )
    for path in proc.stdout.split():
        assert Path(path).is_relative_to(installed.bin.parent), path
        assert not Path(path).is_relative_to(ROOT), path


def test_installed_version_shows_version_revision_and_build_date(installed: Installed) -> None:
    proc = installed.run("--version")
    assert proc.returncode == 0, proc.stderr
    first, date, python = proc.stdout.splitlines()
    assert first == (
        f"mailcanary, version {VERSION} (branch: {git('rev-parse', '--abbrev-ref', 'HEAD')}, "
        f"revision: {git('rev-parse', 'HEAD')})"
    )
    assert re.fullmatch(r"  build date:\s+\d{8}-\d\d:\d\d:\d\d", date), date
    assert python.strip().startswith("python version:")


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_installed_check_config_passes_the_shipped_examples(
    installed: Installed, name: str, tmp_path: Path
) -> None:
    """Each shipped example, with stand-ins for the secrets and CA a deployment supplies beside it."""
    text, env = with_stand_in_secrets(shipped_configs()[name], tmp_path)
    config = tmp_path / "mailcanary.yml"
    config.write_text(text)
    proc = run_bounded(
        [str(installed.bin / "mailcanary"), "check-config", "--config.file", str(config)],
        60,  # seconds not waiting for a CPU: a busy run starved this past 60 s of wall clock
        env={**installed.env, **env},
        cwd=installed.cwd,
    )
    assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
    *notes, last = proc.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(str(config))}: ok \(.*\)", last), proc.stdout
    assert all(line.startswith("note: ") for line in notes), proc.stdout  # advice, not problems


def test_installed_config_schema_is_the_one_the_sdist_ships(
    installed: Installed, unpacked_sdist: Path
) -> None:
    proc = installed.run("config-schema")
    assert proc.returncode == 0, proc.stderr
    shipped = (unpacked_sdist / "docs" / "mailcanary.schema.json").read_text(encoding="utf-8")
    assert json.loads(proc.stdout) == json.loads(shipped)


def test_installed_demo_reaches_a_successful_round_trip_and_stops_on_sigterm(installed: Installed) -> None:
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [
            str(installed.bin / "mailcanary"),
            "demo",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--duration",
            "300",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=installed.env,
        cwd=installed.cwd,
    )
    try:

        def alive() -> Scrape:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            return scrape(port)

        metrics = eventually(
            alive,
            until=lambda m: any(
                value(m, "mailcanary_roundtrip_success", probe=p) == 1
                for p in ("sandbox-imap", "sandbox-pop3")
            ),
            ignoring=(OSError, KeyError),
            timeout=120,
            interval=0.3,
            message="a successful sandbox round trip from the installed wheel",
            runnable=lambda: [proc.pid],
        )
        assert value(metrics, "mailcanary_config_info", sandbox="true") == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"^\S+  ok    sandbox-(imap|pop3) +delivered in ", out, re.M), out[-3000:]
