"""/probe under the session limit: a target whose pool is full is a failed scrape (503), never a false
probe_success 0; an idle pool of an unconfigured target does not stay around."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.config import DEFAULT_MODULES
from exporter.web.multitarget import probe_handler
from probes.recorder import Masker, Recorder
from probes.wire.net import Endpoint
from probes.wire.slots import ServerSlots


async def _ask(slots: ServerSlots, port: int, timeout_header: str | None) -> tuple[int, str]:
    app = web.Application()
    app.add_routes([web.get("/probe", probe_handler(lambda: DEFAULT_MODULES, Masker, slots=lambda: slots))])
    async with TestClient(TestServer(app)) as client:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": timeout_header} if timeout_header else {}
        resp = await client.get(f"/probe?module=smtp_starttls&target=127.0.0.1:{port}", headers=headers)
        return resp.status, await resp.text()


def test_full_pool_is_503_not_a_failed_probe() -> None:
    async def main() -> list[tuple[int, str]]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never reached
        port = server.sockets[0].getsockname()[1]
        slots = ServerSlots(default_limit=1, queue_timeout=0.2)
        slots.configure(1, {}, 0.2, known=set())
        release = asyncio.Event()

        async def hog() -> None:
            async with slots.session(Endpoint("127.0.0.1", port), "smtp", Recorder()):
                await release.wait()

        task = asyncio.create_task(hog())
        await asyncio.sleep(0)
        answers = [await _ask(slots, port, None)]  # queue_timeout (0.2 s) first
        slots.configure(1, {}, 30, known=set())
        answers.append(await _ask(slots, port, "1.0"))  # the scrape deadline first
        release.set()
        await task
        assert slots.in_use(f"127.0.0.1:{port}") == 0
        assert slots.high_water(f"127.0.0.1:{port}") == 0  # an unconfigured target's pool is gone once idle
        server.close()
        return answers

    (s1, t1), (s2, t2) = asyncio.run(main())
    assert s1 == 503 and "no session slot for 127.0.0.1:" in t1, t1
    assert s2 == 503 and "no session slot" in t2, t2
