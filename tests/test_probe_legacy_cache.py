"""``/probe`` remembers a target's legacy TLS answers (and its scan) for the module's re-test period, as the
daemon's own TLS checks do (issue 23): against the real Postfix + Dovecot of the session stack, through a
counting loopback relay, the second /probe of a target within ``legacy_recheck`` opens one connection (the
verified handshake and certificate audit, done at every request) instead of three; the answer's time is
``mailcanary_tls_legacy_protocol_checked_timestamp_seconds`` (its age grows); after the period the target
is tested again; a burst of requests shares one test; another module or port is another key; and the
cache is bounded. The cache's own rules (certificate change, one test in flight) are tested directly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import DEFAULT_MODULES, ModuleConfig, TLSConfig
from exporter.web.multitarget import PROBE_TARGETS, probe_handler
from probes.recorder import Masker
from probes.tls.audit import LEGACY_VERSIONS, openssl_offers
from probes.tls.legacy import LegacyCache
from tests.mailstack import MailStack

CHECKED = "mailcanary_tls_legacy_protocol_checked_timestamp_seconds"
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Relay:
    """A TCP relay on 127.0.0.1 in front of one server port, counting the connections it accepts: what
    the server sees of each /probe."""

    def __init__(self, host: str, port: int) -> None:
        self.to = (host, port)
        self.accepted = 0
        self.port = 0
        self.tasks: set[asyncio.Task[object]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.to)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.transport.abort()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await server.wait_closed()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def legacy_tests() -> int:
    """Connections one legacy test opens: one per version this machine's OpenSSL can offer."""
    return sum(openssl_offers(v) for v in LEGACY_VERSIONS.values())


def imaps(stack: MailStack, **kw: object) -> ModuleConfig:
    tls = TLSConfig(ca_file=str(stack.ca_file), server_name=stack.server_name)
    return ModuleConfig(protocol="imap", tls="implicit", tls_config=tls, **kw)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, float]:
    return {
        s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@contextlib.asynccontextmanager
async def client_for(
    modules: dict[str, ModuleConfig], legacy: LegacyCache | None = None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    cache = None if legacy is None else (lambda: legacy)
    app.add_routes([web.get("/probe", probe_handler(lambda: modules, Masker, legacy=cache))])
    async with TestClient(TestServer(app)) as client:
        yield client


async def ask(client: TestClient[web.Request, web.Application], module: str, target: str) -> dict[str, float]:
    resp = await client.get(f"/probe?module={module}&target={target}")
    text = await resp.text()
    assert resp.status == 200, text
    found = samples(text)
    assert found["probe_success"] == 1.0, text  # the handshake and the audit are done at every request
    assert "probe_ssl_earliest_cert_expiry" in found, text
    return found


@pytest.fixture
def need_legacy() -> None:
    assert legacy_tests() > 0, "DESIGN.md: this machine's OpenSSL can offer TLS 1.0"


@pytest.mark.usefixtures("need_legacy")
async def test_second_probe_within_the_period_makes_no_legacy_handshake(mailstack: MailStack) -> None:
    clock = Clock()
    cache = LegacyCache(clock=clock)
    relay = Relay(mailstack.host, mailstack.ports["imaps"])
    async with relay.running(), client_for({"m": imaps(mailstack)}, cache) as client:
        first = await ask(client, "m", relay.target)
        assert relay.accepted == 1 + legacy_tests()
        assert first[CHECKED] == clock.now
        legacy = {k: v for k, v in first.items() if k.startswith("mailcanary_tls_legacy_protocol_accepted")}
        assert legacy and set(legacy.values()) == {0.0}  # the session stack refuses TLS 1.0/1.1

        clock.now += 600
        again = await ask(client, "m", relay.target)
        assert relay.accepted == 2 + legacy_tests()  # the verified handshake only
        assert again[CHECKED] == first[CHECKED]  # the answer's time: its age is now 600 s
        assert clock.now - again[CHECKED] == 600
        assert {k: again[k] for k in legacy} == legacy
        resp = await client.get(f"/probe?module=m&target={relay.target}&debug=true")
        assert "tls: legacy remembered: " in await resp.text()  # ?debug=true says so
        assert relay.accepted == 3 + legacy_tests()

        clock.now += DAY  # older than legacy_recheck (1 d): tested again
        later = await ask(client, "m", relay.target)
        assert relay.accepted == 4 + 2 * legacy_tests()
        assert later[CHECKED] == clock.now


@pytest.mark.usefixtures("need_legacy")
async def test_legacy_recheck_zero_tests_every_time(mailstack: MailStack) -> None:
    relay = Relay(mailstack.host, mailstack.ports["imaps"])
    async with relay.running(), client_for({"m": imaps(mailstack, legacy_recheck=0)}) as client:
        for n in (1, 2):
            await ask(client, "m", relay.target)
            assert relay.accepted == n * (1 + legacy_tests())


@pytest.mark.usefixtures("need_legacy")
async def test_another_module_or_port_is_another_key(mailstack: MailStack) -> None:
    modules = {"a": imaps(mailstack), "b": imaps(mailstack, helo="other.example.test")}
    one = Relay(mailstack.host, mailstack.ports["imaps"])
    two = Relay(mailstack.host, mailstack.ports["imaps"])
    async with one.running(), two.running(), client_for(modules) as client:
        await ask(client, "a", one.target)
        await ask(client, "a", one.target)
        assert one.accepted == 2 + legacy_tests()
        await ask(client, "b", one.target)  # other settings: tested for this module too
        assert one.accepted == 3 + 2 * legacy_tests()
        await ask(client, "a", two.target)  # another port
        assert two.accepted == 1 + legacy_tests()


@pytest.mark.usefixtures("need_legacy")
async def test_a_burst_of_requests_shares_one_legacy_test(mailstack: MailStack) -> None:
    """Eight /probe requests for one target at once (the handler's own cache): eight verified handshakes,
    one legacy test between them (the old code made eight)."""
    relay = Relay(mailstack.host, mailstack.ports["submission"])
    tls = TLSConfig(ca_file=str(mailstack.ca_file), server_name=mailstack.server_name)
    modules = {"smtp": ModuleConfig(protocol="smtp", tls="starttls", tls_config=tls)}
    async with relay.running(), client_for(modules) as client:
        answers = await asyncio.gather(*(ask(client, "smtp", relay.target) for _ in range(8)))
        assert relay.accepted == 8 + legacy_tests()
        assert len({a[CHECKED] for a in answers}) == 1


@pytest.mark.usefixtures("need_legacy")
async def test_the_cache_is_bounded(mailstack: MailStack) -> None:
    cache = LegacyCache(max_entries=2)
    relays = [Relay(mailstack.host, mailstack.ports["imaps"]) for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for r in relays:
            await stack.enter_async_context(r.running())
        client = await stack.enter_async_context(client_for({"m": imaps(mailstack)}, cache))
        for r in relays:
            await ask(client, "m", r.target)
        assert len(cache) == 2
        await ask(client, "m", relays[0].target)  # the oldest was dropped: tested again
        assert relays[0].accepted == 2 * (1 + legacy_tests())
        await ask(client, "m", relays[2].target)  # still remembered
        assert relays[2].accepted == 2 + legacy_tests()
    assert PROBE_TARGETS <= 4096  # the handler's own caches (legacy and scan) are bounded too


async def test_a_scan_module_is_scanned_once_per_period(mailstack: MailStack) -> None:
    """``scan: true``: the first /probe scans (a dozen connections, the legacy answers among them), the
    next one within ``scan_recheck`` opens one connection: the handler's own scan cache."""
    relay = Relay(mailstack.host, mailstack.ports["imaps"])
    async with relay.running(), client_for({"s": imaps(mailstack, scan=True)}) as client:
        first = await ask(client, "s", relay.target)
        scanned = relay.accepted
        assert scanned > 1 + legacy_tests()
        again = await ask(client, "s", relay.target)
        assert relay.accepted == scanned + 1
        scan_checked = "mailcanary_tls_scan_checked_timestamp_seconds"
        assert again[scan_checked] == first[scan_checked]


# ---- the cache's own rules -----------------------------------------------------------------------------

KEY = ("probe", "digest", "h:993", "imap", "implicit", "h")


def test_a_new_certificate_or_none_is_tested_again() -> None:
    clock = Clock()
    cache = LegacyCache(clock=clock)
    cache.put(KEY, {"TLSv1": False, "TLSv1.1": False}, "fp")
    assert cache.fresh(KEY, "fp", DAY) is not None
    assert cache.fresh(KEY, "new-cert", DAY) is None
    assert cache.fresh(KEY, None, DAY) is None  # no certificate seen now: nothing ties the answer to it
    cache.put(KEY, {"TLSv1": False, "TLSv1.1": False}, None)  # tested without a certificate: not kept
    assert len(cache) == 0


async def test_one_test_in_flight_per_key() -> None:
    cache = LegacyCache()
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def run() -> dict[str, bool | None]:
        runs.append("run")
        started.set()
        await release.wait()
        return {"TLSv1": True, "TLSv1.1": False}

    first = asyncio.create_task(cache.get(KEY, "fp", DAY, run))
    await started.wait()
    others = [asyncio.create_task(cache.get(KEY, "fp", DAY, run)) for _ in range(5)]
    other_cert = asyncio.create_task(cache.get(KEY, "other", DAY, run))
    await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(first, *others)
    assert [new for _, new in answers] == [True] + [False] * 5
    assert {a.results["TLSv1"] for a, _ in answers} == {True}
    answer, new = await other_cert
    assert new and answer.fingerprint == "other" and runs == ["run", "run"]


async def test_a_test_cut_short_leaves_its_waiters_to_test_themselves() -> None:
    cache = LegacyCache()
    started = asyncio.Event()

    async def stuck() -> dict[str, bool | None]:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def quick() -> dict[str, bool | None]:
        return {"TLSv1": False}

    first = asyncio.create_task(cache.get(KEY, "fp", DAY, stuck))
    await started.wait()
    waiter = asyncio.create_task(cache.get(KEY, "fp", DAY, quick))
    await asyncio.sleep(0)
    first.cancel()
    answer, new = await waiter
    assert new and answer.results == {"TLSv1": False}
    with pytest.raises(asyncio.CancelledError):
        await first


def test_default_modules_remember_legacy_for_a_day() -> None:
    assert {m.legacy_recheck for m in DEFAULT_MODULES.values()} == {DAY}
