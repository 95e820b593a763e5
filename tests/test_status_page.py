"""The status page at / and /probe?debug=true against a running `mailcanary run` probing the real stack.

A real headless Chromium (Debian's ``chromium``; scripts/install-deps.sh installs it) loads the page; the
assertions are on the DOM it built, and its screenshot is kept as a test artefact
(``$MAILCANARY_TEST_ARTIFACTS``, default ``test-artifacts/`` in the checkout). Chromium may resolve no
name but the loopback address and runs with background networking off: nothing leaves the machine.
The HTML is also checked for every secret of the configuration (plain and base64).
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.mailstack import MailStack, free_ports
from tests.support.stackconfig import exporter_argv, roundtrip, write_config
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
BAD_POP3_SECRET = "Wr0ng-s3cret!"
BAD_SMTP_SECRET = 'Qu"ote<b>\\d-s3cret'  # quote, markup and backslash: escaping must not reveal it either


def artefact_dir() -> Path:
    path = Path(os.environ.get("MAILCANARY_TEST_ARTIFACTS", str(ROOT / "test-artifacts")))
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium not found: install it with sudo scripts/install-deps.sh", pytrace=False)


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


@dataclass
class Running:
    port: int
    proc: subprocess.Popen[str]
    secrets: list[str]
    ca_file: Path
    stack: MailStack

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def running(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("status")
    a, b = fresh_mailbox(), fresh_mailbox()
    probes = [
        roundtrip(mailstack, tmp, "ok-imap", a, protocol="imap", receive_tls="starttls"),
        roundtrip(mailstack, tmp, "bad-pop3", b, protocol="pop3", receive_password=BAD_POP3_SECRET),
        roundtrip(mailstack, tmp, "bad-smtp", a, smtp_password=BAD_SMTP_SECRET),
    ]
    config = write_config(tmp, probes, interval="3s", timeout="10s", state_dir=str(tmp / "state"))
    port = free_ports(1)[0]
    log = (tmp / "exporter.log").open("w")
    proc = subprocess.Popen(
        exporter_argv(config, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    run = Running(
        port,
        proc,
        [mailstack.password(a), mailstack.password(b), BAD_POP3_SECRET, BAD_SMTP_SECRET],
        mailstack.ca_file,
        mailstack,
    )
    try:

        def page() -> str:
            if proc.poll() is not None:
                pytest.fail(f"exporter exited: {(tmp / 'exporter.log').read_text()}", pytrace=False)
            return get(run.url)

        eventually(
            page,
            until=lambda text: (
                text.count('data-outcome="') == 3
                and 'data-outcome="none"' not in text
                and text.count('class="failure"') >= 2
            ),
            ignoring=(urllib.error.URLError, OSError),
            timeout=60,
            interval=0.5,
            message="the status page showing all three probes run",
        )
        yield run
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class DOM(HTMLParser):
    """Just enough of the DOM Chromium serialised: elements with their attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.elements if t == tag and want.items() <= a.items()]


def browser(run: Running, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--no-pings",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1400,1100",
            *args,
            run.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.mailstack
def test_chromium_renders_every_probe_its_outcome_and_the_failed_dialogue(
    running: Running, tmp_path: Path
) -> None:
    proc = browser(running, tmp_path, "--dump-dom")
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    dom = DOM()
    dom.feed(proc.stdout)
    rows = {r["data-probe"]: r for r in dom.find("tr", **{"class": "probe"})}
    assert set(rows) == {"ok-imap", "bad-pop3", "bad-smtp"}
    assert rows["ok-imap"]["data-outcome"] == "success"
    assert rows["bad-pop3"]["data-outcome"] == "receive_auth"
    assert rows["bad-smtp"]["data-outcome"] == "smtp_auth"
    assert len(dom.find("svg", **{"class": "spark"})) == 3  # a sparkline per probe
    phases = {a["data-phase"] for a in dom.find("span") if "data-phase" in a}
    assert {"smtp_connect", "smtp_send", "receive_login"} <= phases, phases
    certs = dom.find("tr", **{"class": "cert"})
    assert certs and all(float(c.get("data-days", "nan")) > 0 for c in dom.find("td") if "data-days" in c)
    failures = dom.find("details", **{"class": "failure"})
    assert {"bad-pop3", "bad-smtp"} <= {f["data-probe"] for f in failures}
    text = "".join(dom.text)
    assert "C: smtp AUTH PLAIN ********" in text  # the masked dialogue of the failed SMTP login
    assert "C: pop3" in text
    form = dom.find("form", action="probe")
    assert form and dom.find("input", name="target")

    shot = artefact_dir() / "status-page.png"
    shot.unlink(missing_ok=True)
    proc = browser(running, tmp_path, f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.mailstack
def test_status_page_holds_no_secret_and_sends_a_strict_csp(running: Running) -> None:
    with urllib.request.urlopen(running.url, timeout=10) as resp:
        page = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "<script" not in page
    for secret in running.secrets:
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            assert form not in page
        assert html.escape(secret) not in page and html.escape(secret, quote=False) not in page


@pytest.mark.mailstack
def test_probe_debug_answers_the_dialogue_as_text(running: Running) -> None:
    stack = running.stack
    url = f"{running.url}probe?module=imap_implicit&target=127.0.0.1:{stack.imaps_port}&debug=true"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read().decode()
        ctype = resp.headers["Content-Type"]
    assert ctype.startswith("text/plain")
    assert body.startswith("Logs for the probe (secrets masked):")
    assert "C: imap connect 127.0.0.1:" in body
    assert "Metrics that would have been returned:" in body and "probe_success" in body
    # without debug: the exposition only, as Prometheus scrapes it
    plain = get(url.removesuffix("&debug=true"), timeout=30)
    assert plain.startswith("# HELP") and "Logs for the probe" not in plain
