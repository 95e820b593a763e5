"""probes.wire.net: TLS client contexts built once per configuration, rebuilt on change; IP literals resolve
without the thread pool."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from pathlib import Path

import pytest

from probes.wire import net as _net
from probes.wire.net import Endpoint, TLSSettings, clear_contexts, client_context, context_builds, tcp_connect
from tests.mailstack.tls import write_ca, write_leaf


@pytest.fixture(autouse=True)
def _fresh() -> None:
    clear_contexts()


def test_one_context_per_configuration_reused(tmp_path: Path) -> None:
    write_ca(tmp_path)
    ca = str(tmp_path / "ca.pem")
    builds = context_builds()
    first = client_context(TLSSettings(ca_file=ca))
    for _ in range(50):
        assert client_context(TLSSettings(ca_file=ca)) is first  # equal settings, same object
    assert context_builds() == builds + 1
    system = client_context(TLSSettings())
    assert system is not first and client_context(TLSSettings()) is system
    insecure = client_context(TLSSettings(insecure_skip_verify=True))
    assert insecure.verify_mode == ssl.CERT_NONE and first.verify_mode == ssl.CERT_REQUIRED
    assert client_context(TLSSettings(server_name="x", ca_file=ca)) is not first  # distinct settings
    assert context_builds() == builds + 4
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2


def test_any_version_is_its_own_context() -> None:
    plain = client_context(TLSSettings(insecure_skip_verify=True))
    old = client_context(TLSSettings(insecure_skip_verify=True), any_version=True)
    assert old is not plain
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2  # the shared one was not widened


def test_rebuilt_on_reload_and_when_a_file_changes(tmp_path: Path) -> None:
    ca = write_ca(tmp_path)
    files = write_leaf(ca, tmp_path)
    settings = TLSSettings(ca_file=str(files.ca), cert_file=str(files.chain), key_file=str(files.key))
    first = client_context(settings)
    assert client_context(settings) is first
    clear_contexts()  # what a reload does
    second = client_context(settings)
    assert second is not first
    # A rotated client certificate (new mtime) is read again without a reload.
    write_leaf(ca, tmp_path)
    stat = os.stat(files.chain)
    os.utime(files.chain, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert client_context(settings) is not second


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound holds and the least recently used context goes first. At a bound of 8 rather than the
    shipped 256: each build reads the system trust store (~40 ms of CPU), and the bound is read per call."""
    assert _net.MAX_CONTEXTS == 256
    monkeypatch.setattr(_net, "MAX_CONTEXTS", 8)
    clear_contexts()
    first = TLSSettings(insecure_skip_verify=True, server_name="h0")
    kept = client_context(first)
    for i in range(1, 8):
        client_context(TLSSettings(insecure_skip_verify=True, server_name=f"h{i}"))
    assert client_context(first) is kept  # a hit: h1 is now the least recently used
    client_context(TLSSettings(insecure_skip_verify=True, server_name="h8"))
    assert client_context(first) is kept  # h1 went, not the older but recently used h0
    for i in range(9, 8 + 20):
        client_context(TLSSettings(insecure_skip_verify=True, server_name=f"h{i}"))
    assert len(_net._contexts) == 8
    assert client_context(first) is not kept  # evicted once 8 newer ones were used after it


def test_ip_literals_do_not_use_getaddrinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        calls: list[str] = []

        async def spy(host: str, *args: object, **kwargs: object) -> object:
            calls.append(host)
            raise OSError("getaddrinfo must not be called for a literal")

        monkeypatch.setattr(loop, "getaddrinfo", spy)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = await tcp_connect(Endpoint("127.0.0.1", port), reason="smtp_connect", timeout=5)
        assert sock.family == socket.AF_INET
        sock.close()
        if socket.has_ipv6:
            try:
                server6 = await asyncio.start_server(lambda r, w: w.close(), "::1", 0)
            except OSError:
                server6 = None
            if server6 is not None:
                port6 = server6.sockets[0].getsockname()[1]
                sock6 = await tcp_connect(Endpoint("::1", port6), reason="smtp_connect", timeout=5)
                assert sock6.family == socket.AF_INET6
                sock6.close()
                server6.close()
        with pytest.raises(Exception, match="cannot resolve localhost"):
            await tcp_connect(Endpoint("localhost", port), reason="smtp_connect", timeout=5)
        server.close()
        return calls

    assert asyncio.run(main()) == ["localhost"]  # names still resolve through getaddrinfo
