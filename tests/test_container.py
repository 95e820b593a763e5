"""The container image, built and run for real (podman), not only linted.

``scripts/container-test`` makes a Debian bookworm base with mmdebstrap (cached), builds
deploy/docker/Dockerfile on it with podman, and runs ``--version``, the user check and ``mailcanary demo``
(read-only root, /metrics, HEALTHCHECK, SIGTERM). This module runs that script, then runs the image as an
operator would against the real Postfix + Dovecot stack: the default command with the config and
secrets mounted read-only at /etc/mailcanary (group-readable by GID 10001, as docs/operations.md says),
the state directory a host volume, read-only root file system, all capabilities dropped, host network
(everything on loopback). It is scraped until both round trips succeed, and SIGTERM must end it with
exit code 0 within podman's grace.

It runs when MAILCANARY_CONTAINER_TEST=1, as .ci/run's step after the suite (scripts/test): an
image build is minutes of CPU that would slow every other test file. Otherwise, or without a usable
podman (not installed, not root, ``podman info`` failing), the module is SKIPPED with the exact
reason. scripts/install-deps.sh installs podman, runc and mmdebstrap; the hadolint check in
tests/test_deploy.py runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.mailstack import MailStack, free_ports
from tests.support.metrics import Scrape, scrape, value
from tests.support.stackconfig import roundtrip
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "container-test"
IMAGE = "localhost/mailcanary:pytest"
CACHE = Path(os.environ.get("MAILCANARY_CACHE", "/var/cache/mailcanary"))
UID = 10001

pytestmark = pytest.mark.container


def podman_problem() -> str | None:
    """Why podman can't build and run the image here, or None."""
    if os.environ.get("MAILCANARY_CONTAINER_TEST") != "1":
        return (
            "runs as .ci/run's step after the suite (minutes of CPU beside it); "
            "by hand: MAILCANARY_CONTAINER_TEST=1 pytest tests/test_container.py"
        )
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc mmdebstrap)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (apt-get install mmdebstrap)"
    if os.geteuid() != 0:
        return "not root: scripts/container-test needs rootful podman and mmdebstrap"
    try:
        info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman info failed: {exc}"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"podman info failed: {last}"
    return None


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


@pytest.fixture(scope="module")
def image() -> tuple[list[str], list[str]]:
    """Build (and smoke-test) the image once; the podman global flags and run flags this host needs."""
    problem = podman_problem()
    if problem:
        pytest.skip(f"container not built: {problem}")
    proc = subprocess.run(
        [str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env={**os.environ, "MAILCANARY_IMAGE": IMAGE, "MAILCANARY_CACHE": str(CACHE)},
    )
    assert proc.returncode == 0, (
        f"scripts/container-test failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    assert "container-test: OK" in proc.stdout

    def lines(name: str) -> list[str]:
        return [x for x in (CACHE / name).read_text().splitlines() if x]

    return ["podman", *lines("podman-global-flags")], lines("podman-run-flags")


def _group_readable(path: Path, mode: int) -> None:
    os.chown(path, 0, UID)
    path.chmod(mode)


@pytest.fixture
def container(
    image: tuple[list[str], list[str]],
    mailstack: MailStack,
    fresh_mailbox: Callable[[], str],
) -> Iterator[tuple[list[str], str, int, Path]]:
    podman, run_flags = image
    # Not under pytest's tmp directories (0700 from the top): UID 10001 must reach the two mounts.
    top = Path(tempfile.mkdtemp(prefix="mailcanary-container-"))
    top.chmod(0o711)
    etc = top / "etc"
    etc.mkdir()
    state = top / "state"
    state.mkdir()
    os.chown(state, UID, UID)
    state.chmod(0o700)
    probes = [
        roundtrip(mailstack, etc, "ct-imap", fresh_mailbox(), protocol="imap", receive_tls="implicit"),
        roundtrip(mailstack, etc, "ct-pop3", fresh_mailbox(), protocol="pop3", receive_tls="starttls"),
    ]
    shutil.copyfile(mailstack.ca_file, etc / "ca.pem")
    for probe in probes:  # the paths as the container sees them
        for side in ("smtp", "receive"):
            probe[side]["password_file"] = "/etc/mailcanary/" + Path(probe[side]["password_file"]).name
            probe[side]["tls_config"]["ca_file"] = "/etc/mailcanary/ca.pem"
    (etc / "mailcanary.yml").write_text(
        yaml.safe_dump({"global": {"interval": "3s", "timeout": "15s"}, "roundtrip": probes})
    )
    _group_readable(etc, 0o750)
    for f in etc.iterdir():
        _group_readable(f, 0o640)
    port = free_ports(1)[0]
    name = f"mailcanary-pytest-{os.getpid()}"
    cmd = [
        *podman,
        "run",
        "-d",
        "--name",
        name,
        *run_flags,
        *("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host"),
        *("--health-interval", "disable"),
        *("-v", f"{etc}:/etc/mailcanary:ro", "-v", f"{state}:/var/lib/mailcanary"),
        *("-e", f"MAILCANARY_HEALTHCHECK_URL=http://127.0.0.1:{port}/-/healthy"),
        IMAGE,
        # The image's default command, with a loopback listen address (host network).
        *("run", "--config.file", "/etc/mailcanary/mailcanary.yml"),
        *("--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"),
    ]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    try:
        yield podman, name, port, state
    finally:
        subprocess.run([*podman, "rm", "-f", name], capture_output=True, timeout=120, check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_image_runs_against_the_real_stack_read_only_with_a_state_volume(
    container: tuple[list[str], str, int, Path],
) -> None:
    podman, name, port, state = container

    def logs() -> str:
        out = subprocess.run([*podman, "logs", name], capture_output=True, text=True, timeout=60, check=False)
        return (out.stdout + out.stderr)[-3000:]

    def running() -> Scrape:
        status = subprocess.run(
            [*podman, "inspect", "-f", "{{.State.Status}}", name], capture_output=True, text=True, check=False
        ).stdout.strip()
        assert status == "running", f"container {status}:\n{logs()}"
        return scrape(port)

    metrics = eventually(
        running,
        until=lambda m: all(
            value(m, "mailcanary_roundtrip_success", probe=p) == 1 for p in ("ct-imap", "ct-pop3")
        ),
        ignoring=(OSError, KeyError),
        timeout=120,
        interval=0.5,
        message=lambda: f"both round trips successful in the container; logs:\n{logs()}",
    )
    assert value(metrics, "mailcanary_build_info", revision=git("rev-parse", "HEAD")) == 1

    # Read-only root: the daemon's user can write its state volume and nothing else.
    inspect = subprocess.run(
        [*podman, "inspect", "-f", "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}", name],
        capture_output=True,
        text=True,
        check=True,
    )
    assert inspect.stdout.split() == ["true", f"{UID}:{UID}"]
    probe = subprocess.run(
        [*podman, "exec", name, "python", "-c", "open('/opt/mailcanary/x', 'w')"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr
    written = list(state.iterdir())
    assert written, "nothing in the state volume (canary key, ledger)"
    assert all(p.stat().st_uid == UID for p in written)

    health = subprocess.run([*podman, "healthcheck", "run", name], capture_output=True, text=True, timeout=60)
    assert health.returncode == 0, health.stdout + health.stderr

    # SIGTERM, 10 s grace: exit code 0 (137 would be the SIGKILL after the grace).
    subprocess.run([*podman, "stop", "-t", "10", name], capture_output=True, timeout=120, check=True)
    code = subprocess.run(
        [*podman, "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert code == "0", f"exit code {code} after SIGTERM:\n{logs()}"
    assert "stopped" in logs()
