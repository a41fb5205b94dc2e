"""The subscriptions API served for real: an aiohttp server on a free port, on the test's Redis
(both servers, through ``redis_url``) and key prefix, with a few networks in the registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from ocstream.ingress.registry import NetworkRecord, NetworkRegistry
from ocstream.subscriptions import (
    ApiSettings,
    LiveSubscriptions,
    SubscriptionApi,
    SubscriptionLimits,
    SubscriptionStore,
    registry_networks,
)
from ocstream.transport.client import connect

from . import payloads as p

NETWORKS = (
    "urn:ocn:polkadot:0",
    "urn:ocn:polkadot:1000",
    "urn:ocn:polkadot:2000",
    "urn:ocn:polkadot:2032",
    "urn:ocn:polkadot:2034",
)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = connect(redis_url, name="ocstream-test-subscriptions")
    yield redis
    await redis.aclose()


@pytest.fixture
async def registry(client: Redis, prefix: str) -> NetworkRegistry:
    networks = NetworkRegistry(client, prefix)
    await put_networks(networks, NETWORKS)
    return networks


async def put_networks(registry: NetworkRegistry, urns: Iterable[str]) -> None:
    """Registers ``urns`` (the ``:0`` one as the relay, the others as its parachains)."""
    for urn in urns:
        relay = None if urn.endswith(":0") else "urn:ocn:polkadot:0"
        await registry.put(NetworkRecord(id=urn, relay=relay, ss58_prefix=0))


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``check()``; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def sub(subscription_id: str = "s1", **changes: Any) -> dict[str, Any]:
    """A valid subscription as a client posts it, with ``changes``."""
    value: dict[str, Any] = {
        "id": subscription_id,
        "origin": p.ASSET_HUB,
        "senders": [p.SIGNER_GENERIC],
        "destinations": [p.INTERLAY],
        "channels": [{"type": "webhook", "url": "https://example.org/hook"}],
    }
    value.update(changes)
    return value


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def content_type(self) -> str:
        return str(self.headers.get("Content-Type", ""))

    def json(self) -> Any:
        return orjson.loads(self.body)


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> Reply:
    """One HTTP request: ``body`` sent as JSON (or ``raw`` bytes as they are), ``token`` as a
    bearer token."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = raw
    if data is None and body is not None:
        data = orjson.dumps(body)
        all_headers.setdefault("Content-Type", "application/json")
    async with session.request(method, url, data=data, headers=all_headers) as response:
        return Reply(response.status, response.headers, await response.read())


@dataclass
class Server:
    base: str
    api: SubscriptionApi
    store: SubscriptionStore
    live: LiveSubscriptions
    session: aiohttp.ClientSession

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Reply:
        return await send(
            self.session, method, self.base + path, body, raw=raw, headers=headers, token=token
        )

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return await self.request("POST", path, body, **kwargs)

    async def patch(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)


ServeFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(
    client: Redis, prefix: str, registry: NetworkRegistry
) -> AsyncIterator[ServeFactory]:
    """``await serve(settings=..., limits=...)``: the API on a real HTTP server."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []
    lives: list[LiveSubscriptions] = []

    async def start(
        settings: ApiSettings | None = None, limits: SubscriptionLimits | None = None
    ) -> Server:
        store = SubscriptionStore(client, prefix, limits)
        live = LiveSubscriptions(client, prefix)
        await live.start()
        lives.append(live)
        api = SubscriptionApi(
            store=store, networks=registry_networks(registry), live=live, settings=settings
        )
        app = web.Application()
        api.add_routes(app.router)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Server(f"http://127.0.0.1:{port}", api, store, live, session)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()
    for live in lives:
        await live.stop()


@pytest.fixture
async def server(serve: ServeFactory) -> Server:
    return await serve()
