"""Subscriptions in Redis (atomic batches, limits, compare-and-set, persistence) and the live
view every worker keeps (pub/sub with a polling fallback, Redis restarts)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from ocstream.embedded import EmbeddedRedis
from ocstream.subscriptions import (
    ConcurrentModification,
    DuplicateSubscription,
    EphemeralRegistry,
    LiveSubscriptions,
    Subscription,
    SubscriptionChanges,
    SubscriptionError,
    SubscriptionLimits,
    SubscriptionNotFound,
    SubscriptionStore,
    TooManySubscriptions,
)
from ocstream.transport.client import connect

from . import payloads as p
from .conftest import eventually


def make(subscription_id: str, **changes: Any) -> Subscription:
    value: dict[str, Any] = {
        "id": subscription_id,
        "origin": p.ASSET_HUB,
        "destinations": [p.INTERLAY],
        "channels": [{"type": "log"}],
    }
    value.update(changes)
    return Subscription.model_validate(value)


async def test_create_get_list_count_delete(client: Redis, prefix: str) -> None:
    store = SubscriptionStore(client, prefix)
    assert (await store.count(), await store.version(), await store.list()) == (0, 0, [])
    await store.create(make("b", senders=[p.SIGNER_GENERIC]))
    await store.create_many([make("a"), make("c")])
    assert await store.count() == 3
    assert await store.version() == 2
    assert [s.id for s in await store.list()] == ["a", "b", "c"]
    stored = await store.get("b")
    assert stored is not None and stored.senders == [p.SIGNER_GENERIC]
    assert stored.sender_keys() == frozenset({p.SIGNER_KEY})
    assert await store.get("zzz") is None
    assert await store.delete("b") is True
    assert await store.delete("b") is False  # idempotent, and no change counted
    assert await store.version() == 3
    assert [s.id for s in await store.list()] == ["a", "c"]


async def test_a_batch_with_a_duplicate_stores_nothing(client: Redis, prefix: str) -> None:
    store = SubscriptionStore(client, prefix)
    await store.create(make("taken"))
    with pytest.raises(DuplicateSubscription, match="^Subscription with ID taken already exists$"):
        await store.create_many([make("new-1"), make("new-2"), make("taken")])
    with pytest.raises(DuplicateSubscription, match="ID twice already exists"):
        await store.create_many([make("twice"), make("other"), make("twice")])
    assert [s.id for s in await store.list()] == ["taken"]
    assert await store.version() == 1
    with pytest.raises(SubscriptionError, match="ephemeral"):
        await store.create(make("e", ephemeral=True, channels=[{"type": "websocket"}]))


async def test_the_limit_holds_across_racing_writers(client: Redis, prefix: str) -> None:
    limits = SubscriptionLimits(max_persistent=5)
    stores = [SubscriptionStore(client, prefix, limits) for _ in range(2)]
    await stores[0].create_many([make("a"), make("b")])
    with pytest.raises(TooManySubscriptions, match="^too many subscriptions$"):
        await stores[1].create_many([make(f"x{i}") for i in range(4)])
    assert await stores[0].count() == 2
    results = await asyncio.gather(
        *(stores[i % 2].create(make(f"r{i}")) for i in range(10)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, TooManySubscriptions)]
    assert len(refused) == 7 and await stores[0].count() == 5
    with pytest.raises(TooManySubscriptions):
        await stores[0].create_many([make(f"big{i}") for i in range(6)])


async def test_replace_is_a_compare_and_set(client: Redis, prefix: str) -> None:
    store = SubscriptionStore(client, prefix)
    await store.create(make("s"))
    raw = await store.get_raw("s")
    assert raw is not None
    changed = make("s", events=["xcm.received"])
    version = await store.replace(changed, expected=raw)
    assert (await store.get("s")) == changed and version == 2
    with pytest.raises(ConcurrentModification):
        await store.replace(make("s", events=["xcm.sent"]), expected=raw)
    assert await store.replace(changed) == 2  # unchanged: no new version
    with pytest.raises(SubscriptionNotFound, match="^Subscription nope not found.$"):
        await store.replace(make("nope"))


async def test_subscriptions_survive_new_clients_stores_and_live_views(
    redis_url: str, prefix: str
) -> None:
    first = connect(redis_url)
    await SubscriptionStore(first, prefix).create_many([make("one"), make("two")])
    await first.aclose()
    second = connect(redis_url)
    try:
        assert [s.id for s in await SubscriptionStore(second, prefix).list()] == ["one", "two"]
        live = LiveSubscriptions(second, prefix)
        await live.start()
        try:
            assert sorted(s.id for s in live.all()) == ["one", "two"]
            assert live.version == 1
        finally:
            await live.stop()
    finally:
        await second.aclose()


async def test_a_change_on_one_worker_reaches_another_within_a_second(
    redis_url: str, prefix: str
) -> None:
    # Two workers: each its own client, store and live view.
    clients = [connect(redis_url, name=f"worker-{i}") for i in range(2)]
    stores = [SubscriptionStore(c, prefix) for c in clients]
    lives = [LiveSubscriptions(c, prefix) for c in clients]
    seen: list[SubscriptionChanges] = []
    lives[1].add_listener(seen.append)
    for live in lives:
        await live.start()
    try:
        await stores[0].create(make("s1"))
        took = await eventually(lambda: lives[1].get("s1") is not None, 2.0, "s1 on worker 1")
        assert took < 1.0  # pub/sub, not the poll
        assert seen[-1] == SubscriptionChanges(added=frozenset({"s1"}))

        await stores[0].replace(make("s1", destinations=[p.HYDRATION]))
        await eventually(
            lambda: lives[1].matching(p.sent(stops=(p.HYDRATION,))) != [], 2.0, "update"
        )
        assert lives[1].matching(p.sent()) == []

        await stores[1].delete("s1")
        await eventually(lambda: lives[0].get("s1") is None, 2.0, "delete on worker 0")
        await eventually(lambda: bool(seen) and "s1" in seen[-1].removed, 2.0, "listener")
    finally:
        for live in lives:
            await live.stop()
        for c in clients:
            await c.aclose()


async def test_a_lost_message_is_caught_by_the_poll(client: Redis, prefix: str) -> None:
    live = LiveSubscriptions(client, prefix, poll_interval=0.5)
    await live.start()
    try:
        # A change written without its PUBLISH (as if the message were lost).
        await client.hset(f"{prefix}subs", "quiet", make("quiet").to_json_bytes())
        await client.incr(f"{prefix}subs:version")
        took = await eventually(lambda: live.get("quiet") is not None, 2.0, "poll")
        assert took < 1.5
    finally:
        await live.stop()


async def test_invalid_stored_entries_are_skipped(
    client: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SubscriptionStore(client, prefix)
    await store.create(make("good"))
    await client.hset(f"{prefix}subs", "bad", b'{"id": "bad"}')
    live = LiveSubscriptions(client, prefix)
    with caplog.at_level(logging.WARNING):
        assert [s.id for s in await store.list()] == ["good"]
        await live.refresh(force=True)
    assert [s.id for s in live.all()] == ["good"]
    assert "subscription bad in Redis is invalid" in caplog.text


async def test_a_live_subscriptions_json_is_dumped_once_per_version(
    client: Redis, prefix: str
) -> None:
    """The webhook dispatcher reads a subscription at every attempt (``json_view``, through
    ``ocstream/services.py``): the same JSON until the subscription changes, then the new one,
    and what the view shares is not what ``to_json`` hands out to change."""
    store = SubscriptionStore(client, prefix)
    hook = {"type": "webhook", "url": "http://one.example/hook"}
    await store.create(make("s", channels=[hook]))
    live = LiveSubscriptions(client, prefix)
    await live.refresh(force=True)
    current = live.get("s")
    assert current is not None
    first = current.json_view()
    assert first == current.to_json() and first["channels"][0]["url"] == hook["url"]
    assert current.json_view() is first  # not dumped again
    assert current.to_json() is not first
    await store.replace(make("s", channels=[{**hook, "url": "http://two.example/hook"}]))
    await live.refresh(force=True)
    changed = live.get("s")
    assert changed is not None and changed is not current
    assert changed.json_view()["channels"][0]["url"] == "http://two.example/hook"
    assert first["channels"][0]["url"] == "http://one.example/hook"  # the old view is untouched


async def test_matching_uses_persistent_and_ephemeral_subscriptions(
    client: Redis, prefix: str
) -> None:
    store = SubscriptionStore(client, prefix)
    await store.create_many(
        [
            make("to-interlay", senders=[p.SIGNER_KUSAMA]),
            make("to-hydration", destinations=[p.HYDRATION]),
            make("from-interlay", origin=p.INTERLAY, destinations=[p.ASSET_HUB]),
            make("other-sender", senders=[p.PROXIED_KEY]),
        ]
    )
    live = LiveSubscriptions(client, prefix)
    await live.refresh()
    socket = make("eph-1", ephemeral=True, channels=[{"type": "websocket"}])
    live.ephemeral.add(socket)
    assert sorted(s.id for s in live.matching(p.received())) == ["eph-1", "to-interlay"]
    assert live.get("eph-1") is socket and len(live) == 5
    assert live.ephemeral.remove("eph-1") is socket
    assert [s.id for s in live.matching(p.received())] == ["to-interlay"]
    assert live.matching({"type": "xcm.sent"}) == []


def test_the_ephemeral_registry_has_its_own_limit() -> None:
    registry = EphemeralRegistry(limit=2)
    websocket = [{"type": "websocket"}]
    registry.add(make("e1", ephemeral=True, channels=websocket))
    with pytest.raises(DuplicateSubscription):
        registry.add(make("e1", ephemeral=True, channels=websocket))
    registry.add(make("e2", ephemeral=True, channels=websocket))
    with pytest.raises(TooManySubscriptions, match="too many subscriptions"):
        registry.add(make("e3", ephemeral=True, channels=websocket))
    with pytest.raises(SubscriptionError, match="only ephemeral"):
        registry.add(make("p1"))
    assert registry.remove("e1") is not None and registry.remove("e1") is None
    registry.add(make("e3", ephemeral=True, channels=websocket))
    assert sorted(s.id for s in registry.all()) == ["e2", "e3"] and "e2" in registry


async def test_live_view_rides_out_a_redis_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    port = server.port
    prefix = "restart:"
    client = connect(server.url, socket_timeout=2.0)
    live = LiveSubscriptions(client, prefix, poll_interval=0.2)
    restarted: EmbeddedRedis | None = None
    try:
        await SubscriptionStore(client, prefix).create(make("before"))
        await live.start()
        assert live.get("before") is not None
        with caplog.at_level(logging.WARNING):
            server.stop()
            await asyncio.sleep(2.0)  # the outage: the loops fail and back off
            assert live.get("before") is not None  # the cache still serves
            restarted = EmbeddedRedis(tmp_path / "redis", port=port, appendfsync="always").start()
            writer = connect(restarted.url)
            await SubscriptionStore(writer, prefix).create(make("after"))
            await writer.aclose()
            await eventually(lambda: live.get("after") is not None, 15.0, "reload after restart")
        assert live.get("before") is not None  # the AOF kept it
        assert "↻ subscriptions" in caplog.text
        # And pub/sub works again: a change is seen quickly.
        writer = connect(restarted.url)
        await SubscriptionStore(writer, prefix).delete("before")
        await writer.aclose()
        await eventually(lambda: live.get("before") is None, 2.0, "delete after restart")
    finally:
        await live.stop()
        await client.aclose()
        if restarted is not None:
            restarted.stop()
        server.stop()
