"""The websocket hub on a real aiohttp server and a real Redis.

Two hubs with their own servers play two workers: a notification published through one reaches
the sockets attached to the other. The subscription callbacks are a small dict store that
validates the way the subscription API does (one path, a §11.3 error object on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ocstream.embedded import EmbeddedRedis
from ocstream.sinks.websocket import (
    SubscriptionRejected,
    WebsocketHub,
    _encode_crockford,
    error_body,
    new_ulid,
)
from ocstream.transport.client import TRANSIENT_ERRORS, connect

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
HYDRATION = "urn:ocn:polkadot:2034"
NETWORKS = {RELAY, ASSET_HUB, HYDRATION}
FIELDS = {"origin", "destinations", "senders", "events", "id", "ephemeral", "channels"}


class DictStore:
    """Subscriptions in dicts; ``validate`` checks the fields the way the API does."""

    def __init__(self) -> None:
        self.persistent: dict[str, dict[str, Any]] = {}
        self.ephemeral: dict[str, dict[str, Any]] = {}
        self.fail_register = False

    async def validate(self, fields: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(fields) - FIELDS)
        if unknown:
            raise SubscriptionRejected.bad_request(f"unknown properties: {', '.join(unknown)}")
        origin = fields.get("origin")
        if not origin:
            raise SubscriptionRejected.bad_request("origin id is required")
        if origin not in NETWORKS:
            raise SubscriptionRejected.bad_request(f"Invalid chain id:{origin}")
        destinations = list(dict.fromkeys(fields.get("destinations", [])))
        return {**fields, "destinations": destinations}

    async def get(self, subscription_id: str) -> dict[str, Any] | None:
        return self.persistent.get(subscription_id)

    async def register(self, subscription: dict[str, Any]) -> None:
        if self.fail_register:
            raise SubscriptionRejected(
                {"error": True, "statusCode": 429, "reason": "too many subscriptions"}
            )
        self.ephemeral[subscription["id"]] = subscription

    async def unregister(self, subscription_id: str) -> None:
        self.ephemeral.pop(subscription_id, None)


class Worker:
    """One "worker": a hub mounted on its own aiohttp server."""

    def __init__(self, hub: WebsocketHub, server: TestServer, redis: Redis) -> None:
        self.hub = hub
        self.server = server
        self.redis = redis

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
async def make_worker(redis_url: str, prefix: str, store: DictStore) -> AsyncIterator[MakeWorker]:
    async with AsyncExitStack() as stack:

        async def make(*, max_clients: int = 100, name: str = "ocstream-ws-test") -> Worker:
            redis = connect(redis_url, name=name)
            stack.push_async_callback(redis.aclose)
            hub = WebsocketHub(
                redis,
                prefix,
                max_clients=max_clients,
                validate=store.validate,
                get_subscription=store.get,
                register_ephemeral=store.register,
                unregister_ephemeral=store.unregister,
            )
            app = web.Application()
            hub.mount(app)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()  # runs on_startup: the hub subscribes
            stack.push_async_callback(server.close)
            assert hub.subscribed
            return Worker(hub, server, redis)

        yield make


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    message = await asyncio.wait_for(ws.receive(), 5)
    assert message.type == WSMsgType.TEXT, message
    return message.json()


async def receive_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    message = await asyncio.wait_for(ws.receive(), 15)
    assert message.type == WSMsgType.CLOSE, message
    return int(message.data), str(message.extra)


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def notification(kind: str = "xcm.sent") -> dict[str, Any]:
    return {
        "id": f"c93599e30bba82fb17ad4ae5b6d21290:{kind.split('.')[1]}:0",
        "type": kind,
        "origin": {"chainId": ASSET_HUB, "blockNumber": "4833171"},
        "destination": {"chainId": HYDRATION},
        "waypoint": {"chainId": ASSET_HUB, "messageHash": "0x19f8", "legIndex": 0},
        "legs": [{"from": ASSET_HUB, "to": HYDRATION, "type": "hrmp", "relay": RELAY}],
    }


async def test_ephemeral_round_trip(
    make_worker: MakeWorker, store: DictStore, session: aiohttp.ClientSession
) -> None:
    worker, other = await make_worker(), await make_worker()
    async with session.ws_connect(worker.url("/ws/subs")) as ws:
        # The client offered permessage-deflate; the server declines it, and no subprotocol.
        assert ws.compress == 0 and ws.protocol is None
        await ws.send_json({"origin": ASSET_HUB, "destinations": [HYDRATION, HYDRATION]})
        echo = await receive_json(ws)
        subscription_id = echo["id"]
        assert ULID.match(subscription_id), subscription_id
        assert echo == {
            "id": subscription_id,
            "origin": ASSET_HUB,
            "destinations": [HYDRATION],  # the validated subscription: deduplicated
            "ephemeral": True,
            "channels": [{"type": "websocket"}],
        }
        assert store.ephemeral[subscription_id] == echo
        assert worker.hub.clients_by_type() == {"ephemeral": 1, "persistent": 0}

        await ws.send_str("anything")
        assert await receive_json(ws) == {"id": subscription_id}

        # The notification was matched on the OTHER worker: it reaches this socket via Redis.
        sent, received = notification("xcm.sent"), notification("xcm.received")
        assert await other.hub.publish(subscription_id, sent) == 2  # both hubs listen
        await other.hub.publish(subscription_id, received)
        assert await receive_json(ws) == {**sent, "subscriptionId": subscription_id}
        assert await receive_json(ws) == {**received, "subscriptionId": subscription_id}
        # Not for this socket: another subscription's notification.
        await other.hub.publish("someone-else", notification())
        await ws.send_str("ping")
        assert await receive_json(ws) == {"id": subscription_id}
        assert 'oc_socket_listener_count{type="ephemeral"} 1.0' in worker.hub.render_metrics()

    # Closing the socket removes the ephemeral subscription.
    await wait_for(lambda: not store.ephemeral)
    await wait_for(lambda: worker.hub.clients_by_type()["ephemeral"] == 0)


async def test_an_invalid_first_message_gets_the_error_and_the_socket_stays_open(
    make_worker: MakeWorker, store: DictStore, session: aiohttp.ClientSession
) -> None:
    worker = await make_worker()
    async with session.ws_connect(worker.url("/ws/subs")) as ws:
        await ws.send_str("{not json")
        error = await receive_json(ws)
        assert error["error"] is True and error["statusCode"] == 400
        assert error["reason"].startswith("invalid JSON")

        await ws.send_json(["a list"])
        assert (await receive_json(ws))["statusCode"] == 400

        await ws.send_json({"destinations": [HYDRATION]})
        assert await receive_json(ws) == {
            "error": True,
            "statusCode": 400,
            "reason": "origin id is required",
        }
        await ws.send_json({"origin": "urn:ocn:nowhere:1"})
        assert (await receive_json(ws))["reason"] == "Invalid chain id:urn:ocn:nowhere:1"
        assert not store.ephemeral and not ws.closed

        # Still open: a valid message now creates the subscription.
        await ws.send_json({"origin": RELAY, "destinations": [ASSET_HUB]})
        echo = await receive_json(ws)
        assert echo["origin"] == RELAY and echo["id"] in store.ephemeral


async def test_frames_up_to_one_mib(
    make_worker: MakeWorker, session: aiohttp.ClientSession
) -> None:
    worker = await make_worker()
    async with session.ws_connect(worker.url("/ws/subs")) as ws:
        # 1 MiB exactly is accepted (and is not a subscription)...
        await ws.send_str("x" * (1 << 20))
        assert (await receive_json(ws))["statusCode"] == 400
        # ...one byte more closes the socket: 1009 "message too big".
        await ws.send_str("x" * ((1 << 20) + 1))
        code, _ = await receive_close(ws)
        assert code == 1009


async def test_attach_to_a_persistent_subscription(
    make_worker: MakeWorker, store: DictStore, session: aiohttp.ClientSession
) -> None:
    store.persistent["ah-transfers"] = {
        "id": "ah-transfers",
        "origin": ASSET_HUB,
        "destinations": [HYDRATION],
        "channels": [{"type": "webhook", "url": "https://example.org/hook"}, {"type": "websocket"}],
    }
    worker, other = await make_worker(), await make_worker()
    async with (
        session.ws_connect(worker.url("/ws/subs/ah-transfers")) as ws1,
        session.ws_connect(other.url("/ws/subs/ah-transfers")) as ws2,
    ):
        await ws1.send_str("hello")
        assert await receive_json(ws1) == {"id": "ah-transfers"}
        await ws2.send_str("hello")
        assert await receive_json(ws2) == {"id": "ah-transfers"}
        assert worker.hub.clients_by_type() == {"ephemeral": 0, "persistent": 1}

        payload = notification("xcm.received")
        await other.hub.publish("ah-transfers", payload)
        expected = {**payload, "subscriptionId": "ah-transfers"}
        assert await receive_json(ws1) == expected
        assert await receive_json(ws2) == expected

        # DELETE /subs/{id} closes the subscription's sockets on every worker.
        assert await worker.hub.close_subscription("ah-transfers") == 2
        assert await receive_close(ws1) == (1000, "subscription deleted")
        assert await receive_close(ws2) == (1000, "subscription deleted")
    assert not store.ephemeral


async def test_close_codes(
    make_worker: MakeWorker, store: DictStore, session: aiohttp.ClientSession
) -> None:
    store.persistent["hooks-only"] = {
        "id": "hooks-only",
        "origin": RELAY,
        "destinations": [ASSET_HUB],
        "channels": [{"type": "webhook", "url": "https://example.org/hook"}],
    }
    worker = await make_worker(max_clients=1)

    async with session.ws_connect(worker.url("/ws/subs/unknown")) as ws:
        assert await receive_close(ws) == (1007, "subscription not found")
    async with session.ws_connect(worker.url("/ws/subs/hooks-only")) as ws:
        assert await receive_close(ws) == (1007, "websocket channel not enabled in subscription")

    async with session.ws_connect(worker.url("/ws/subs")) as first:
        await first.send_json({"origin": RELAY, "destinations": []})
        subscription_id = (await receive_json(first))["id"]
        # One client is the maximum: the second is refused.
        async with session.ws_connect(worker.url("/ws/subs")) as second:
            assert await receive_close(second) == (1013, "server too busy")
        async with session.ws_connect(worker.url("/ws/subs/hooks-only")) as third:
            assert await receive_close(third) == (1013, "server too busy")

        await worker.hub.stop()
        assert await receive_close(first) == (1001, "server shutdown")
    assert subscription_id not in store.ephemeral  # unregistered before stop() returned
    assert not worker.hub.subscribed
    # After stop, new sockets are closed at once.
    async with session.ws_connect(worker.url("/ws/subs")) as late:
        assert await receive_close(late) == (1001, "server shutdown")


async def test_a_failing_register_sends_the_error_and_closes_1013(
    make_worker: MakeWorker, store: DictStore, session: aiohttp.ClientSession
) -> None:
    worker = await make_worker()
    store.fail_register = True
    async with session.ws_connect(worker.url("/ws/subs")) as ws:
        await ws.send_json({"origin": RELAY})
        assert await receive_json(ws) == {
            "error": True,
            "statusCode": 429,
            "reason": "too many subscriptions",
        }
        assert await receive_close(ws) == (1013, "server too busy")
    await wait_for(lambda: worker.hub.clients_by_type()["ephemeral"] == 0)


async def test_the_fan_out_comes_back_after_its_redis_connection_is_killed(
    make_worker: MakeWorker, store: DictStore, session: aiohttp.ClientSession
) -> None:
    worker = await make_worker(name="ocstream-ws-victim")
    async with session.ws_connect(worker.url("/ws/subs")) as ws:
        await ws.send_json({"origin": RELAY})
        subscription_id = (await receive_json(ws))["id"]

        # Kill the hub's pub/sub connection, as a Redis restart would.
        clients = await worker.redis.client_list()
        victims = [c for c in clients if c["name"] == "ocstream-ws-victim" and int(c["psub"]) > 0]
        assert len(victims) == 1, clients
        await worker.redis.client_kill_filter(_id=victims[0]["id"])

        # PUBLISH counts the receivers: once it is 1 again, the hub has subscribed again.
        deadline = asyncio.get_running_loop().time() + 15
        while await worker.hub.publish(subscription_id, notification()) == 0:
            assert asyncio.get_running_loop().time() < deadline, "the hub did not resubscribe"
            await asyncio.sleep(0.05)
        assert (await receive_json(ws))["subscriptionId"] == subscription_id
        assert worker.hub.subscribed


def test_ulids_are_well_formed_and_increase() -> None:
    ids = [new_ulid() for _ in range(1000)]
    assert all(ULID.match(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # The time part is the first 10 characters (the spec's example timestamp).
    assert _encode_crockford(1469918176385, 10) == "01ARYZ6S41"
    assert new_ulid(now_ms=0) > ids[-1]  # a clock step back does not go back


def test_error_bodies() -> None:
    assert error_body(SubscriptionRejected.bad_request("nope")) == {
        "error": True,
        "statusCode": 400,
        "reason": "nope",
    }
    body = {"error": True, "statusCode": 400, "reason": "raised as is"}
    assert error_body(ValueError(body)) == body
    assert error_body(KeyError("boom"))["statusCode"] == 500


async def test_the_fan_out_rides_out_a_redis_restart(
    tmp_path: Path, store: DictStore, session: aiohttp.ClientSession
) -> None:
    # A private Redis (the embedded 6.2), killed for longer than redis-py's own quick retries.
    first = EmbeddedRedis(tmp_path / "redis").start()
    port = first.port
    second: EmbeddedRedis | None = None
    redis = connect(first.url, name="ocstream-ws-restart")
    hub = WebsocketHub(
        redis,
        "restart:",
        validate=store.validate,
        get_subscription=store.get,
        register_ephemeral=store.register,
        unregister_ephemeral=store.unregister,
    )
    app = web.Application()
    hub.mount(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with session.ws_connect(str(server.make_url("/ws/subs"))) as ws:
            await ws.send_json({"origin": RELAY})
            subscription_id = (await receive_json(ws))["id"]

            os.kill(first.pid, signal.SIGKILL)
            await wait_for(lambda: not hub.subscribed, 15)
            await asyncio.sleep(2)  # the outage
            second = EmbeddedRedis(tmp_path / "redis", port=port).start()

            deadline = asyncio.get_running_loop().time() + 30
            while True:
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    if await hub.publish(subscription_id, notification()) > 0:
                        break
                assert asyncio.get_running_loop().time() < deadline, "no resubscription"
                await asyncio.sleep(0.1)
            assert (await receive_json(ws))["subscriptionId"] == subscription_id
            assert hub.subscribed and hub.reconnects >= 1
            assert not ws.closed  # the socket never noticed
    finally:
        await server.close()
        await redis.aclose()
        if second is not None:
            second.stop()
        first.stop()
