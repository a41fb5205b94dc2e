"""The dashboard in a real headless Chromium, against a real aiohttp server.

The server mounts the dashboard and a real :class:`WebsocketHub` (on the machine's Redis), and
serves the worker's JSON endpoints from fixed data shaped like the real ones (``/networks`` as
the registry records, ``/xcm/pending/`` as topology/xcm.py answers, ``/topology.json`` as
``ocstream topology --format json`` prints). When the page's live feed subscribes, the test's
``register_ephemeral`` publishes a notification for it, so the rendered DOM shows the whole
round trip.

Chromium is required: without it the test fails, unless ``OCSTREAM_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ocstream.sinks.log import format_line
from ocstream.sinks.websocket import SubscriptionRejected, WebsocketHub
from ocstream.transport.client import connect
from ocstream.webui import STATIC_DIR, register_webui
from tests.workers import ocstream_env

CHROMIUM = os.environ.get("OCSTREAM_CHROMIUM", "/usr/bin/chromium")
RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
HYDRATION = "urn:ocn:polkadot:2034"
HASH = "0x19f82753eb9718974dd2d6dfc5e3b238625d012c1a8de5e3347f56079f143867"

NETWORKS = {
    RELAY: {
        "id": RELAY,
        "relay": None,
        "genesis_hash": "0x91b171bb158e2d3848fa23a9f1c25182fb8e20313b2c1eb49219da7a70ce90c3",
        "spec_version": 1003000,
        "ss58_prefix": 0,
        "tip_number": 21456789,
        "tip_hash": "0x5d1f0a3e9c6b2d4f8a7e1c3b5d9f0e2a4c6b8d1f3e5a7c9b0d2f4e6a8c1b3d5f",
    },
    ASSET_HUB: {
        "id": ASSET_HUB,
        "relay": RELAY,
        "genesis_hash": "0x68d56f15f85d3136970ec16946040bc1752654e906147f7e43e9d539d7c3de2f",
        "spec_version": 1003000,
        "ss58_prefix": 0,
        "tip_number": 7812345,
        "tip_hash": "0x4f3d5ef32f86cb27430306a7ad4dda83600be4fcb10d6217e9027e8c9307837e",
    },
    HYDRATION: {
        "id": HYDRATION,
        "relay": RELAY,
        "genesis_hash": "0xafdc188f45c71dacbaa0b62e16a91f726c7b8699a9748cdf715459de6b7f366d",
        "spec_version": 276,
        "ss58_prefix": 63,
        "tip_number": 6543210,
        "tip_hash": "0x90ad4002e0510aa202bd8dafd3c9ef868acf57f2ed60ed70c9aa85a648d66b1b",
    },
}

SUBSCRIPTIONS = [
    {
        "id": "ah-transfers",
        "origin": ASSET_HUB,
        "destinations": [HYDRATION, RELAY],
        "senders": "*",
        "events": ["xcm.sent", "xcm.received", "xcm.timeout"],
        "channels": [{"type": "webhook", "url": "https://example.org/hook"}, {"type": "websocket"}],
    },
    {
        "id": "relay-watch",
        "origin": RELAY,
        "destinations": [ASSET_HUB],
        "channels": [{"type": "log"}],
    },
]

PENDING = {
    "pending_journeys": 17,
    "tables": {
        "xcm-journeys": 23,
        "xcm-outbound": 19,
        "xcm-inbound": 2,
        "xcm-relay": 0,
        "xcm-hop": 1,
        "xcm-seen": 311,
    },
    "counters": {"sent": 1204, "received": 1187, "timeout": 3, "hop": 41},
}


@functools.cache
def topology() -> dict[str, Any]:
    """What the worker serves at /topology.json: ``ocstream topology --format json`` of the
    dataflow declared in topology/ (an unreachable Redis: describing connects to nothing)."""
    result = subprocess.run(
        [sys.executable, "-m", "ocstream", "topology", "--format", "json"],
        env=ocstream_env(OCSTREAM_PARTITIONS="16", OCSTREAM_REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    flow: dict[str, Any] = json.loads(result.stdout)
    return flow


def received_notification() -> dict[str, Any]:
    return {
        "id": "c93599e30bba82fb17ad4ae5b6d21290:received:0",
        "journeyId": "c93599e30bba82fb17ad4ae5b6d21290",
        "type": "xcm.received",
        "legs": [{"from": ASSET_HUB, "to": HYDRATION, "type": "hrmp", "relay": RELAY}],
        "origin": {"chainId": ASSET_HUB, "blockNumber": "7812001", "messageHash": HASH},
        "destination": {"chainId": HYDRATION, "blockNumber": "6543001", "outcome": "Success"},
        "waypoint": {
            "chainId": HYDRATION,
            "blockNumber": "6543001",
            "outcome": "Success",
            "error": None,
            "messageHash": HASH,
            "legIndex": 0,
        },
        "sender": None,
    }


class Store:
    """Ephemeral subscriptions in a dict; validation as the API does it (origin required).

    Each ephemeral subscription gets one notification right after its echo, published through
    the hub as another worker would. ``wait_notified`` lets a JSON endpoint hold its answer
    until then: headless Chromium's virtual time stands still while a fetch is pending, so the
    DOM dump cannot happen before the websocket frame reached the page. (Only for
    ``--dump-dom``: with ``--screenshot``, a held fetch sometimes keeps Chromium 156 from ever
    exiting, so the screenshot run sets ``hold = False``.)
    """

    def __init__(self) -> None:
        self.ephemeral: dict[str, dict[str, Any]] = {}
        self.origins: dict[str, str] = {}  # subscription id -> origin, kept after it closes
        self.notified: set[str] = set()
        self.hold = True
        self.hub: WebsocketHub | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        if fields.get("origin") not in NETWORKS:
            raise SubscriptionRejected.bad_request(f"Invalid chain id:{fields.get('origin')}")
        return fields

    async def get(self, subscription_id: str) -> dict[str, Any] | None:
        return next((s for s in SUBSCRIPTIONS if s["id"] == subscription_id), None)

    async def register(self, subscription: dict[str, Any]) -> None:
        self.ephemeral[subscription["id"]] = subscription
        self.origins[subscription["id"]] = subscription["origin"]
        # One notification, on the socket of the relay chain's subscription.
        if subscription["origin"] != RELAY:
            return
        task = asyncio.create_task(self._notify(subscription["id"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _notify(self, subscription_id: str) -> None:
        assert self.hub is not None
        # The hub attaches the socket right after this callback returns.
        await asyncio.sleep(0.05)
        forwarded = self.hub.frames_forwarded
        await self.hub.publish(subscription_id, received_notification())
        while self.hub.frames_forwarded == forwarded:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the frame on its way to the page
        self.notified.add(subscription_id)

    async def wait_notified(self, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.notified & set(self.ephemeral):
            if asyncio.get_running_loop().time() > deadline:
                return  # the assertions on the DOM will tell what is missing
            await asyncio.sleep(0.02)

    async def unregister(self, subscription_id: str) -> None:
        self.ephemeral.pop(subscription_id, None)


@asynccontextmanager
async def dashboard_server(
    redis_url: str, prefix: str, *, with_optional_endpoints: bool = True
) -> AsyncIterator[tuple[str, Store]]:
    """The dashboard, the hub and the JSON endpoints on 127.0.0.1; yields the base URL."""
    store = Store()
    redis = connect(redis_url, name="ocstream-dashboard-test")
    hub = WebsocketHub(
        redis,
        prefix,
        validate=store.validate,
        get_subscription=store.get,
        register_ephemeral=store.register,
        unregister_ephemeral=store.unregister,
    )
    store.hub = hub
    app = web.Application()

    def static_json(
        value: Any, *, hold: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            if hold and store.hold:
                await store.wait_notified()
            return web.json_response(value() if callable(value) else value)

        return handler

    app.router.add_get("/networks", static_json(NETWORKS))
    # The page polls /xcm/pending/ while its live feed subscribes: held until the notification.
    app.router.add_get("/xcm/pending/", static_json(PENDING, hold=True))
    if with_optional_endpoints:
        app.router.add_get("/subs", static_json(SUBSCRIPTIONS))
        app.router.add_get("/topology.json", static_json(topology))
    hub.mount(app)
    register_webui(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", store
    finally:
        await runner.cleanup()
        await redis.aclose()


def chromium_or_fail() -> str:
    if os.environ.get("OCSTREAM_SKIP_BROWSER") == "1":
        reason = "OCSTREAM_SKIP_BROWSER=1: the headless Chromium dashboard test is skipped"
        print(reason)
        pytest.skip(reason)
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        pytest.fail(
            f"Chromium is needed for the dashboard test and {CHROMIUM} is missing"
            + (f" (there is {found}: set OCSTREAM_CHROMIUM)" if found else "")
            + ". Install it (apt-get install -y chromium), or set OCSTREAM_SKIP_BROWSER=1 to skip."
        )
    return CHROMIUM


async def run_chromium(
    binary: str, profile: Path, *args: str, timeout: float = 60, budget_ms: int = 5000
) -> str:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        *args,
    ]
    # Not subprocess.run: the server answering the browser runs on this event loop.
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"Chromium did not exit within {timeout:.0f}s: {' '.join(command)}")
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


async def dump_dom_showing(
    binary: str, profile: Path, page: str, text: str, attempts: int = 4
) -> str:
    """The page's DOM once it shows ``text``, loading it again with a longer budget if not.

    Chromium's virtual time does not wait for websocket frames, so on a loaded machine the
    DOM can be dumped before a reply from the worker reached the page. Each try doubles the
    budget; the last DOM is returned whatever it holds, for the caller's asserts to judge.
    """
    dom = ""
    for attempt in range(attempts):
        dom = await run_chromium(
            binary, profile / str(attempt), "--dump-dom", page, budget_ms=5000 * 2**attempt
        )
        if text in dom:
            break
    return dom


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("redis_url", ["redis7"], indirect=True)
async def test_the_dashboard_renders_in_chromium(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    binary = chromium_or_fail()
    async with dashboard_server(redis_url, prefix) as (base, store):
        line = f"[{ASSET_HUB} ➜ {HYDRATION}] NOTIFICATION xcm.received subscription="
        dom = await dump_dom_showing(binary, tmp_path / "profile", f"{base}/dashboard/", line)

        # Networks with their tips.
        assert 'data-urn="urn:ocn:polkadot:2034"' in dom
        assert "Hydration" in dom and "6,543,210" in dom and "0x90ad4002…" in dom
        # Subscriptions, pending journeys and the topology graph.
        assert 'data-subscription="ah-transfers"' in dom and "relay-watch" in dom
        assert 'id="pending-journeys">17<' in dom and "xcm-seen" in dom
        assert 'class="node agent" data-name="xcm_match"' in dom
        assert 'class="node topic" data-name="xcm-notifications"' in dom
        assert 'class="edge back"' in dom  # the matcher writes into xcm-legs, which it reads
        # The live feed subscribed (all origins, all destinations) and showed a notification.
        assert "ephemeral subscription" in dom, "the live feed did not subscribe"
        # Each load of the page (dump_dom_showing may load it again) subscribes every origin.
        assert set(store.origins.values()) == set(NETWORKS)
        assert len(store.origins) % len(NETWORKS) == 0, store.origins
        assert line in dom, "the published notification did not reach the page"
        # The page's line is the log sink's line, for the subscription of this load.
        shown = [sid for sid in store.notified if format_line(received_notification(), sid) in dom]
        assert len(shown) == 1, (shown, store.notified)
        subscription_id = shown[0]
        # The default is all origins, one subscription each; destinations: all the others.
        assert f"ephemeral subscription {subscription_id}: Polkadot → Asset Hub, Hydration" in dom
        others = [sid for sid, origin in store.origins.items() if origin == HYDRATION]
        hydration = "Hydration → Polkadot, Asset Hub"
        assert any(f"ephemeral subscription {sid}: {hydration}" in dom for sid in others), others
        # Panels whose routes this fixed-data server does not serve say so.
        assert "The journey view is not served by this worker" in dom
        assert "Webhook delivery is not served by this worker" in dom

        screenshot = tmp_path / "dashboard.png"
        store.hold = False
        await run_chromium(
            binary,
            tmp_path / "profile",
            f"--screenshot={screenshot}",
            "--window-size=1280,900",  # not --hide-scrollbars: Chromium 156 then never exits
            f"{base}/dashboard/",
        )
    print(f"dashboard screenshot: {screenshot}")
    assert png_size(screenshot) == (1280, 900)
    assert screenshot.stat().st_size > 30_000, "the screenshot looks blank"


@pytest.mark.parametrize("redis_url", ["redis7"], indirect=True)
async def test_missing_endpoints_are_shown_as_such(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    binary = chromium_or_fail()
    async with dashboard_server(redis_url, prefix, with_optional_endpoints=False) as (base, _):
        dom = await run_chromium(binary, tmp_path / "profile", "--dump-dom", f"{base}/dashboard/")
    assert "The subscription API is not served by this worker (GET /subs answered 404)." in dom
    assert "The topology is not served by this worker (GET /topology.json answered 404)." in dom
    assert "Hydration" in dom  # the rest of the page works


@pytest.mark.parametrize("redis_url", ["redis7"], indirect=True)
async def test_routes(redis_url: str, prefix: str) -> None:
    async with (
        dashboard_server(redis_url, prefix) as (base, _),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/dashboard?x=1", allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == "/dashboard/?x=1"
        async with http.get(f"{base}/dashboard/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert 'src="static/dashboard.js"' in await response.text()
        for asset in ("dashboard.js", "dashboard.css"):
            async with http.get(f"{base}/dashboard/static/{asset}") as response:
                assert response.status == 200
                assert await response.read() == (STATIC_DIR / asset).read_bytes()
        async with http.get(f"{base}/dashboard/static/../__init__.py") as response:
            assert response.status in (403, 404)
        async with http.get(f"{base}/dashboard/static/") as response:
            assert response.status in (403, 404)  # no directory listing


def test_the_page_loads_nothing_from_elsewhere() -> None:
    # Offline use: no CDN, no font service; the only absolute URL is the SVG namespace.
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
