"""The dashboard of a real worker after a real run, in headless Chromium.

A worker with the production dataflow on real Redis processes recorded Polkadot blocks (the
relay's DMP to Hydration, forwarded on to Asset Hub); three persistent subscriptions send its
notifications to real webhook receivers: one answers 204, one 503 (its deliveries wait for a
retry), one 410 Gone (a dead letter, the channel disabled). The page is loaded through a real
reverse proxy that mounts the worker under ``/ocs/`` (as the docs allow), which also lets the
test see the page's websocket frames: once the live feed has subscribed for every origin,
recorded blocks of another origin (Asset Hub → Interlay) are published, and their
notifications must reach the page. The proxy holds the page's first ``/xcm/journeys`` request
until then: headless Chromium's virtual time stands still while a fetch is pending, so the DOM
is dumped only after the frame arrived.

The new panels must show data of that run: recent journeys with their status, legs and links to
their notifications (the link answers with them), the webhook status per subscription, feed
lines from two origins, a legend for every counter, and the topology graph of /topology.json.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ocstream.testing import blocks_from_case, publish_blocks, register_network
from tests.sinks.test_webhook import Received, Receiver
from tests.test_dashboard import chromium_or_fail, png_size, run_chromium
from tests.workers import Worker

RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
INTERLAY = "urn:ocn:polkadot:2032"
HYDRATION = "urn:ocn:polkadot:2034"
NETWORKS = {
    RELAY: "polkadot-1000001.scale",
    ASSET_HUB: "assethub-9430.scale",
    INTERLAY: "interlay-1025002.scale",
    HYDRATION: "hydra-207.scale",
}
PARTITIONS = 4


#: The three webhook receivers, by the first part of their path: 204, 503 and 410.
ANSWERS = {"good": 204, "flaky": 503, "gone": 410}


def hook_url(hooks: Receiver, name: str) -> str:
    return f"http://127.0.0.1:{hooks.port}/{name}"


def hooked(hooks: Receiver, name: str) -> list[Received]:
    return [r for r in hooks.requests if r.path.split("/")[1] == name]


class Proxy:
    """A reverse proxy mounting the worker under ``/ocs/``, HTTP and websockets. It records the
    frames the worker sends to the page, and can hold the first request of a path made once
    the page subscribed for the origins ``hold_after``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.frames: list[dict[str, Any]] = []
        self.hold_path: str | None = None
        self.hold_after: set[str] = set()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        tail = request.match_info["tail"]
        url = f"{self.target}/{tail}" + (f"?{request.query_string}" if request.query_string else "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request, url.replace("http://", "ws://", 1))
        if tail == self.hold_path and self.subscribed() >= self.hold_after:
            self.hold_path = None
            self.holding.set()
            await self.release.wait()
        async with self.session.request(
            request.method,
            url,
            data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in ("host",)},
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            headers = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() in ("content-type", "location", "cache-control")
            }
            return web.Response(status=answer.status, body=body, headers=headers)

    async def websocket(self, request: web.Request, url: str) -> web.StreamResponse:
        assert self.session is not None
        page = web.WebSocketResponse()
        await page.prepare(request)
        async with self.session.ws_connect(url) as worker:

            async def upstream() -> None:
                async for message in page:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await worker.send_str(message.data)
                await worker.close()

            forward = asyncio.create_task(upstream())
            async for message in worker:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self.frames.append(json.loads(message.data))
                    await page.send_str(message.data)
            forward.cancel()
        await page.close()
        return page

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/ocs/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}/ocs"
        try:
            yield self
        finally:
            self.release.set()
            await self.runner.cleanup()
            await self.session.close()

    def subscribed(self) -> set[str]:
        return {f["origin"] for f in self.frames if f.get("ephemeral") and "origin" in f}

    def notifications(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f.get("type"), str)]


async def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await predicate()
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.mark.parametrize("redis_url", ["redis7"], indirect=True)
async def test_the_new_panels_show_a_real_run(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path, fixtures_dir: Path
) -> None:
    binary = chromium_or_fail()
    for network, metadata in NETWORKS.items():
        await register_network(
            redis_url,
            network,
            spec_version=int(metadata.removesuffix(".scale").rsplit("-", 1)[1]),
            metadata=(fixtures_dir / "metadata" / metadata).read_bytes(),
            relay=None if network == RELAY else RELAY,
            prefix=prefix,
        )
    dmp = blocks_from_case(fixtures_dir / "cases" / "v1-dmp-hop-polkadot-hydra.json", fixtures_dir)
    hrmp = blocks_from_case(fixtures_dir / "cases" / "v1-hrmp-assethub-interlay.json", fixtures_dir)
    hooks = await Receiver(plan=lambda n, request: ANSWERS[request.path.split("/")[1]]).start()
    worker = Worker(
        "w1",
        tmp_path,
        redis_url=redis_url,
        prefix=prefix,
        app_id=app_id,
        partitions=PARTITIONS,
        dataflow=None,  # the production dataflow
        env={"OCSTREAM_WEBHOOK_ALLOW_PRIVATE": "1"},
    )
    base = f"http://127.0.0.1:{worker.port}"
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> Any:
            async with http.get(base + path) as response:
                assert response.status == 200, (path, response.status, await response.text())
                return await response.json()

        async def assigned() -> bool:
            if not worker.alive():
                raise AssertionError(worker.log_tail())
            async with http.get(base + "/metrics") as response:
                text = await response.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            return families["ocstream_group_assigned_partitions"].samples[0].value > 0

        try:
            worker.start()
            await until(assigned, 90, "the worker to be assigned partitions")
            for name in ("good", "flaky", "gone"):
                body = {
                    "id": f"{name}-hook",
                    "origin": RELAY,
                    "senders": "*",
                    "destinations": [ASSET_HUB, HYDRATION],
                    "channels": [{"type": "webhook", "url": hook_url(hooks, name)}],
                }
                async with http.post(base + "/subs", json=body) as response:
                    assert response.status == 201, await response.text()
            await publish_blocks(redis_url, dmp, prefix=prefix, partitions=PARTITIONS)

            async def delivered() -> Any:
                status = await get("/webhooks/status")
                rows = {row["id"]: row for row in status["subscriptions"]}
                done = (
                    rows["good-hook"]["delivered"] == 4
                    and rows["flaky-hook"]["retrying"] >= 1
                    and rows["gone-hook"]["dead"] >= 1
                )
                if not done:
                    paths = [r.path for r in hooks.requests]
                    raise ValueError(f"not yet: {rows}, received {paths}")
                return rows

            rows = await until(delivered, 180, "the webhook figures of the DMP journey")
            assert rows["gone-hook"]["disabledChannels"] == [0]
            # Deliveries claimed together (delivery works in batches) may all meet the 410
            # before the channel is marked disabled: each is then a dead letter; later ones
            # are dropped, so there are no more than the journey's 4 notifications.
            gone_dead = rows["gone-hook"]["dead"]
            assert 1 <= gone_dead <= 4
            assert rows["flaky-hook"]["failed"] >= 1 and rows["flaky-hook"]["delivered"] == 0
            assert len(hooked(hooks, "good")) == 4

            journeys = await get("/xcm/journeys")
            (dmp_journey,) = [j for j in journeys if j["origin"] == RELAY]
            assert dmp_journey["status"] == "in transit"
            assert [leg["to"] for leg in dmp_journey["legs"]] == [HYDRATION, ASSET_HUB]
            # The journey's own route: its notifications in full.
            full = await get(f"/xcm/journeys/{dmp_journey['journeyId']}")
            kinds = sorted(item["notification"]["type"] for item in full["notifications"])
            assert kinds == ["xcm.hop", "xcm.hop", "xcm.relayed", "xcm.sent"]

            async with Proxy(base).running() as proxy:
                proxy.hold_path = "xcm/journeys"
                proxy.hold_after = set(NETWORKS)
                page = f"{proxy.base}/dashboard/"
                # Virtual time: the page loads, subscribes, and polls every 5 s; the /xcm/journeys
                # of the first poll after the subscriptions is held while the test publishes the
                # Asset Hub blocks.
                chromium = asyncio.create_task(
                    run_chromium(
                        binary,
                        tmp_path / "profile",
                        "--dump-dom",
                        page,
                        timeout=120,
                        budget_ms=30000,
                    )
                )

                async def holding() -> bool:
                    if chromium.done():
                        raise AssertionError(f"Chromium exited first: {proxy.frames}")
                    return proxy.holding.is_set()

                await until(holding, 60, "the live feed to subscribe for every origin")
                await publish_blocks(redis_url, hrmp, prefix=prefix, partitions=PARTITIONS)

                async def live() -> bool:
                    return any(
                        n["type"] == "xcm.received" and n["origin"]["chainId"] == ASSET_HUB
                        for n in proxy.notifications()
                    )

                await until(live, 90, "the Asset Hub journey's notification on the page's socket")
                await asyncio.sleep(0.5)  # the frame on its way into the page
                proxy.release.set()
                dom = html.unescape(await chromium)

                flow = await get("/topology.json")
                screenshot = tmp_path / "dashboard.png"
                await run_chromium(
                    binary,
                    tmp_path / "profile",
                    f"--screenshot={screenshot}",
                    "--window-size=1400,2300",
                    page,
                    timeout=120,
                )
        finally:
            worker.stop()
            await hooks.stop()

    # Recent journeys: both, with status, legs and links to their notifications.
    hrmp_id = next(
        n["journeyId"] for n in proxy.notifications() if n["origin"]["chainId"] == ASSET_HUB
    )
    for journey, status in ((dmp_journey["journeyId"], "in transit"), (hrmp_id, "received")):
        row = re.search(rf'<tr data-journey="{journey}">(.*?)</tr>', dom, re.S)
        assert row, f"journey {journey} not in the recent journeys"
        assert f">{status}<" in row[1]
        assert f'href="{proxy.base}/xcm/journeys/{journey}#{journey}:sent:0"' in row[1]
    dmp_row = re.search(rf'<tr data-journey="{dmp_journey["journeyId"]}">(.*?)</tr>', dom, re.S)
    assert dmp_row and "Polkadot" in dmp_row[1] and "Hydration" in dmp_row[1]
    assert "Asset Hub" in dmp_row[1] and ">hop<" in dmp_row[1]
    # Webhook delivery per subscription.
    good = re.search(r'<tr data-webhook="good-hook">(.*?)</tr>', dom, re.S)
    assert good and '<td class="num good">4</td>' in good[1]
    flaky = re.search(r'<tr data-webhook="flaky-hook">(.*?)</tr>', dom, re.S)
    assert flaky and re.search(r'<td class="num warn">[1-9]\d*</td>', flaky[1])
    gone = re.search(r'<tr data-webhook="gone-hook">(.*?)</tr>', dom, re.S)
    assert gone and f'<td class="num bad">{gone_dead}</td>' in gone[1]
    assert "disabled (410)" in gone[1]
    # The live feed: all origins subscribed; the recent DMP lines and the live HRMP ones.
    assert f"All origins ({len(NETWORKS)})" in dom
    assert dom.count('<span class="type">subscribed</span>') == len(NETWORKS)
    assert f"[{RELAY} ➜ {ASSET_HUB}] NOTIFICATION xcm.sent" in dom  # from /xcm/notifications
    assert f"[{ASSET_HUB} ➜ {INTERLAY}] NOTIFICATION xcm.received subscription=" in dom  # live
    # A legend for every counter the worker shows.
    counters = re.findall(r'<tr data-counter="([^"]+)">(.*?)</tr>', dom, re.S)
    assert {"blocks", "sent", "received", "hop_in", "hop_out"} <= {name for name, _ in counters}
    for name, row in counters:
        legend = re.search(r'<div class="legend muted small">([^<]+)</div>', row)
        assert legend and "no description" not in legend[1], f"counter {name} has no legend"
    # The topology: every node and edge of /topology.json's graph.
    nodes = re.findall(r'<g class="node (\w+)" data-name="[^"]*" data-id="(\w+)"', dom)
    assert sorted(i for _, i in nodes) == sorted(n["id"] for n in flow["graph"]["nodes"])
    edges = re.findall(r'data-from="(\w+)" data-to="(\w+)"', dom)
    assert sorted(edges) == sorted((e["from"], e["to"]) for e in flow["graph"]["edges"])
    assert {"producer", "topic", "agent", "table", "sink", "page"} == {k for k, _ in nodes}
    assert 'data-name="ingress"' in dom and 'data-name="xcm_deadlines"' in dom

    print(f"dashboard screenshot: {screenshot}")
    assert png_size(screenshot) == (1400, 2300)
    assert screenshot.stat().st_size > 120_000, "the screenshot looks blank"
