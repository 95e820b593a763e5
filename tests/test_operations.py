"""Operating the daemon: reload (SIGHUP, POST /-/reload), secured HTTP, sharding, vantage."""

from __future__ import annotations

import base64
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.mailstack import MailStack, free_ports
from tests.support.procs import run_bounded
from tests.support.stackconfig import exporter_argv
from tests.support.wait import eventually


def tls_check(
    stack: MailStack, name: str, port_name: str = "submission", protocol: str = "smtp", tls: str = "starttls"
) -> dict[str, Any]:
    return {
        "name": name,
        "host": stack.host,
        "port": stack.ports[port_name],
        "protocol": protocol,
        "tls": tls,
        "interval": "1s",
        "check_legacy": False,
        "tls_config": {"ca_file": str(stack.ca_file), "server_name": stack.server_name},
    }


def write(path: Path, checks: list[dict[str, Any]], **global_: Any) -> Path:
    path.write_text(
        yaml.safe_dump({"global": {"state_dir": str(path.parent / "state"), **global_}, "tls_checks": checks})
    )
    return path


class Exporter:
    def __init__(self, config: Path, *extra: str) -> None:
        self.port = free_ports(1)[0]
        self.proc = subprocess.Popen(
            exporter_argv(config, self.port, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def get(self, path: str, scheme: str = "http", **kw: Any) -> tuple[int, str]:
        req = urllib.request.Request(
            f"{scheme}://127.0.0.1:{self.port}{path}",
            headers=kw.pop("headers", {}),
            method=kw.pop("method", "GET"),
        )
        try:
            with urllib.request.urlopen(req, timeout=5, **kw) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self, **kw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = self.get("/metrics", **kw)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def wait(
        self, predicate: Any, timeout: float = 20, **kw: Any
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            assert self.proc.poll() is None, self.output()
            return self.metrics(**kw)

        return eventually(
            scrape,
            until=predicate,
            ignoring=(OSError,),
            timeout=timeout,
            interval=0.2,
            message="condition on the metrics",
            runnable=lambda: [self.proc.pid],
        )

    def output(self) -> str:
        self.stop()
        return self.proc.stdout.read() if self.proc.stdout else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    yield started
    for e in started:
        e.stop()


def checks_in(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {dict(labels)["probe"] for (name, labels) in m if name == "mailcanary_tls_check_success"}


def test_reload_adds_removes_and_keeps_old_config_on_error(
    mailstack: MailStack, tmp_path: Path, exporters: list[Exporter]
) -> None:
    config = write(
        tmp_path / "mc.yml",
        [tls_check(mailstack, "a"), tls_check(mailstack, "b", "imaps", "imap", "implicit")],
    )
    e = Exporter(config)
    exporters.append(e)
    e.wait(lambda m: checks_in(m) == {"a", "b"})
    # SIGHUP with a changed set: b removed, c added, a unchanged.
    write(config, [tls_check(mailstack, "a"), tls_check(mailstack, "c", "pop3s", "pop3", "implicit")])
    e.proc.send_signal(signal.SIGHUP)
    m = e.wait(lambda m: checks_in(m) == {"a", "c"})
    assert m[("mailcanary_config_last_reload_successful", ())] == 1
    # A broken config is refused; the old one keeps running and the gauge says so.
    config.write_text("tls_checks: [{name: x, bogus: 1}]\n")
    status, body = e.get("/-/reload", method="POST")
    assert status == 500 and "previous configuration keeps running" in body
    m = e.metrics()
    assert m[("mailcanary_config_last_reload_successful", ())] == 0
    assert checks_in(m) == {"a", "c"}
    runs_before = m[("mailcanary_tls_check_runs_total", (("outcome", "success"), ("probe", "a")))]
    e.wait(
        lambda m: (
            m[("mailcanary_tls_check_runs_total", (("outcome", "success"), ("probe", "a")))] > runs_before
        )
    )
    write(config, [tls_check(mailstack, "a")])
    status, _ = e.get("/-/reload", method="POST")
    assert status == 200
    m = e.wait(lambda m: checks_in(m) == {"a"})
    assert m[("mailcanary_config_last_reload_successful", ())] == 1
    assert "config_reload_failed" in e.output()


def test_web_config_tls_and_basic_auth(
    mailstack: MailStack, tmp_path: Path, exporters: list[Exporter]
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "web.pem", tmp_path / "web.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"prometheus": hashed},
            }
        )
    )
    e = Exporter(write(tmp_path / "mc.yml", [tls_check(mailstack, "a")]), "--web.config.file", str(web))
    exporters.append(e)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    good = {"Authorization": "Basic " + base64.b64encode(b"prometheus:scrape-pass").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"prometheus:wrong").decode()}

    def get_metrics() -> tuple[int, str]:
        assert e.proc.poll() is None
        return e.get("/metrics", scheme="https", context=ctx, headers=good)

    status, body = eventually(
        get_metrics,
        ignoring=(OSError,),
        timeout=15,
        interval=0.2,
        message="an HTTPS answer to /metrics",
        runnable=lambda: [e.proc.pid],
    )
    assert status == 200 and "mailcanary_build_info" in body
    assert e.get("/metrics", scheme="https", context=ctx, headers=bad)[0] == 401
    assert e.get("/-/healthy", scheme="https", context=ctx)[0] == 401  # every endpoint, health included
    with pytest.raises(OSError):  # plain HTTP is not served
        e.get("/metrics", headers=good)


def test_bad_web_config_is_one_line_error(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {u: plaintext}\nbogus: 1\n")
    config = tmp_path / "mc.yml"
    config.write_text("tls_checks: []\n")
    proc = run_bounded(
        [sys.executable, "-m", "exporter.cli", "run", "--config", str(config), "--web.config.file", str(web)],
        30,
    )
    assert proc.returncode == 3
    assert f"{web}: bogus: unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_two_shards_cover_every_probe_exactly_once(
    mailstack: MailStack, tmp_path: Path, exporters: list[Exporter]
) -> None:
    names = [f"check-{i}" for i in range(8)]
    config = write(tmp_path / "mc.yml", [tls_check(mailstack, n) for n in names])
    a = Exporter(config, "--shard", "0/2", "--vantage", "eu-west")
    b = Exporter(config, "--shard", "1/2")
    exporters.extend([a, b])
    from exporter.config import in_shard

    want_a = {n for n in names if in_shard(n, (0, 2))}
    ma = a.wait(lambda m: checks_in(m) == want_a)
    mb = b.wait(lambda m: checks_in(m) == set(names) - want_a)
    got_a, got_b = checks_in(ma), checks_in(mb)
    assert got_a | got_b == set(names) and not got_a & got_b
    assert got_a and got_b  # with 8 names both shards get some (fixed by the stable hash)
    assert all(
        dict(labels).get("vantage") == "eu-west" for (name, labels) in ma if name.startswith("mailcanary_")
    )
    assert not any("vantage" in dict(labels) for (_, labels) in mb)


def test_ready_and_healthy(mailstack: MailStack, tmp_path: Path, exporters: list[Exporter]) -> None:
    e = Exporter(write(tmp_path / "mc.yml", [tls_check(mailstack, "a")]))
    exporters.append(e)
    e.wait(lambda m: True)
    assert e.get("/-/healthy") == (200, "Healthy\n")
    assert e.get("/-/ready") == (200, "Ready\n")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"x: 2020-13-45\n", "(top level): invalid YAML: month must be in 1..12"),
        (b"\xff\xfe", "(file): not UTF-8 text"),
        (b'basic_auth_users: {u: "$2b$10$abc"}\n', "basic_auth_users.u: not a bcrypt hash"),
        (
            b"tls_server_config: {cert_file: /nonexistent.pem, key_file: /nonexistent.key}\n",
            "tls_server_config.cert_file: cannot read /nonexistent.pem",
        ),
        (b"- a\n", "(top level): must be a mapping"),
        (b"tls_server_config: {cert_file: a}\n", "tls_server_config.key_file: required key is missing"),
    ],
)
def test_web_config_problems_are_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    from exporter.config import ConfigError
    from exporter.web.webconfig import load_web_config

    path = tmp_path / "web.yml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_web_config(str(path))
    assert any(p.startswith(f"{path}: {expected}") for p in err.value.problems), err.value.problems
    assert all("\n" not in p for p in err.value.problems)


def test_reload_drops_tls_series_of_endpoints_no_longer_probed(
    mailstack: MailStack, tmp_path: Path, exporters: list[Exporter]
) -> None:
    config = write(tmp_path / "mc.yml", [tls_check(mailstack, "a")])
    e = Exporter(config)
    exporters.append(e)

    def endpoints(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
        return {
            dict(labels)["endpoint"]
            for (name, labels) in m
            if name == "mailcanary_tls_earliest_cert_expiry_timestamp_seconds"
            and dict(labels)["probe"] == "a"
        }

    old = f"{mailstack.host}:{mailstack.ports['submission']}"
    new = f"{mailstack.host}:{mailstack.ports['imaps']}"
    e.wait(lambda m: endpoints(m) == {old})
    write(config, [tls_check(mailstack, "a", "imaps", "imap", "implicit")])
    e.proc.send_signal(signal.SIGHUP)
    e.wait(lambda m: endpoints(m) == {new})  # the old endpoint's frozen expiry is gone, not kept forever
