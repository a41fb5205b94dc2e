"""Delivery rules on real Redis: filters, one terminal per journey and subscription, persisted
``outboundTTL`` timers shared by workers, at most once per channel, ephemeral subscriptions
served by whichever worker holds their socket (and nothing published while none is held), and
the agent's batches: in order, acknowledged once delivered, two round trips each.

The channels are recording stand-ins with the sinks' interfaces; the webhook, websocket and log
sinks have their own tests, and the deployment test runs the whole chain in a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from ocstream.delivery import (
    ORIGIN_HEADER,
    SELECT_HEADER,
    Delivery,
    EncodedNote,
    _with_subscription,
    is_terminal,
    notification_headers,
    selector,
)
from ocstream.subscriptions import LiveSubscriptions, Subscription, SubscriptionStore
from ocstream.transport.client import connect
from ocstream.transport.direct import DirectFeed
from tests.direct_app import feed_app, feed_message

RELAY, ASSET_HUB, HYDRATION = "urn:ocn:polkadot:0", "urn:ocn:polkadot:1000", "urn:ocn:polkadot:2034"


class Recorder:
    """Records what a channel was given, per subscription."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Mapping[str, Any]]] = []
        self.bodies: list[bytes | None] = []  # the encoded bodies enqueue_many was given

    async def enqueue(self, subscription_id: str, index: int, note: Mapping[str, Any]) -> bool:
        self.got.append((subscription_id, note))
        return True

    async def enqueue_many(
        self,
        deliveries: Sequence[tuple[str, int, Mapping[str, Any]]],
        bodies: Sequence[bytes | None] | None = None,
    ) -> list[bool | Exception]:
        self.bodies.extend(bodies if bodies is not None else [None] * len(deliveries))
        return [await self.enqueue(*delivery) for delivery in deliveries]

    async def publish_many(self, notifications: list[tuple[str, Mapping[str, Any]]]) -> None:
        self.got.extend(notifications)

    async def deliver(self, subscription_id: str, note: dict[str, Any]) -> None:
        self.got.append((subscription_id, note))

    def types(self, subscription_id: str) -> list[str]:
        return [n["type"] for s, n in self.got if s == subscription_id]


def note(kind: str, journey: str = "j1", **extra: Any) -> dict[str, Any]:
    legs = [{"from": RELAY, "to": ASSET_HUB, "type": "vmp"}]
    return {
        "id": f"{journey}:{kind.split('.')[1]}:0",
        "journeyId": journey,
        "type": kind,
        "legs": legs,
        "origin": {"chainId": RELAY, "blockNumber": "1"},
        "destination": {"chainId": ASSET_HUB},
        "waypoint": {"chainId": RELAY, "outcome": extra.pop("outcome", "Success")},
        "sender": None,
        **extra,
    }


def sub(sid: str, channel: str = "webhook", **extra: Any) -> Subscription:
    channels = {
        "webhook": [{"type": "webhook", "url": "https://example.org/hook"}],
        "log": [{"type": "log"}],
        "websocket": [{"type": "websocket"}],
    }[channel]
    body = {"id": sid, "origin": RELAY, "destinations": [ASSET_HUB], "channels": channels}
    return Subscription.model_validate({**body, **extra})


@pytest.fixture
async def world(redis_url: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    client = connect(redis_url, name="test-delivery")
    store = SubscriptionStore(client, prefix)
    lives = [LiveSubscriptions(client, prefix, poll_interval=0.1) for _ in range(2)]
    hooks, hub, log = Recorder(), Recorder(), Recorder()
    workers = [
        Delivery(
            client=client,
            prefix=prefix,
            subscriptions=live,
            webhooks=hooks,
            hub=hub,
            log_sink=log,
            timer_interval=0.05,
        )
        for live in lives
    ]
    for worker in workers:
        await worker.start()
    yield {
        "store": store,
        "lives": lives,
        "workers": workers,
        "hooks": hooks,
        "hub": hub,
        "log": log,
    }
    for worker in workers:
        await worker.stop()
    await client.aclose()


async def settle(lives: list[LiveSubscriptions], count: int) -> None:
    for _ in range(100):
        for live in lives:
            await live.refresh(force=True)
        if all(len(live.persistent()) == count for live in lives):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the live views did not see the subscriptions")


async def test_filters_and_one_terminal_per_subscription(world: dict[str, Any]) -> None:
    store, lives, (first, second) = world["store"], world["lives"], world["workers"]
    await store.create_many(
        [
            sub("all"),
            sub("received-only", events=["xcm.received"]),
            sub("elsewhere", destinations=[HYDRATION]),
            sub("logged", channel="log"),
        ]
    )
    await settle(lives, 4)
    await first.deliver(note("xcm.sent"))
    await second.deliver(note("xcm.received"))
    # A late terminal (the engine's timeout after the receipt, on another worker) is dropped.
    await first.deliver(note("xcm.timeout"))
    hooks, log = world["hooks"], world["log"]
    assert hooks.types("all") == ["xcm.sent", "xcm.received"]
    assert hooks.types("received-only") == ["xcm.received"]
    assert hooks.types("elsewhere") == []
    assert log.types("logged") == ["xcm.sent", "xcm.received"]
    assert all(n["subscriptionId"] == s for s, n in hooks.got + log.got)
    assert first.counters["late"] + second.counters["late"] >= 2
    # The log channel gets a notification id once, whichever worker delivers it again.
    await second.deliver(note("xcm.sent"))
    assert log.types("logged") == ["xcm.sent", "xcm.received"]


async def test_a_batch_booked_after_the_script_cache_is_flushed_goes_once(
    world: dict[str, Any],
) -> None:
    """After a restart or ``SCRIPT FLUSH`` every BOOK call of a batch is answered NOSCRIPT and
    did nothing: the script is loaded and the batch booked again, once. A websocket held on
    the other worker makes the batch ask ``PUBSUB NUMSUB`` in the same transaction, whose
    reply comes back ahead of the calls'."""
    store, lives, (first, second) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("logged", channel="log"), sub("hook", outboundTTL=6000)])
    await settle(lives, 2)
    await second.add_ephemeral(sub("socket", channel="websocket", ephemeral=True))
    notes = [note("xcm.sent", f"f{n}") for n in range(3)]
    await first.client.script_flush()
    await first.deliver_many(notes)
    await first.deliver_many(notes)  # booked the first time: goes to no channel again
    ids = [n["id"] for n in notes]
    assert [n["id"] for sid, n in world["log"].got if sid == "logged"] == ids
    # The webhook subscription's timers were booked (its sink, not BOOK, keeps its marker).
    for n in range(3):
        assert await first.client.zscore(f"{first.prefix}dlv:ttl", f"hook|f{n}") is not None
    assert first.counters["fanned_out"] == 6  # someone listens: published, both times
    assert first.counters["errors"] == 0


async def test_outbound_ttl_fires_once_across_workers_and_beats_a_late_receipt(
    world: dict[str, Any],
) -> None:
    store, lives, (first, second) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("patient"), sub("hasty", outboundTTL=6000)])
    await settle(lives, 2)
    await first.deliver(note("xcm.sent", journey="slow"))
    hooks = world["hooks"]
    # Both workers run the timer loop; 6 s later exactly one of them fires it.
    for _ in range(200):
        if hooks.types("hasty") == ["xcm.sent", "xcm.timeout"]:
            break
        await asyncio.sleep(0.05)
    # Fired once: the timer is gone, so neither worker can fire it again.
    assert await first.client.zscore(f"{first.prefix}dlv:ttl", "hasty|slow") is None
    assert hooks.types("hasty") == ["xcm.sent", "xcm.timeout"]
    timeout = [n for s, n in hooks.got if s == "hasty" and n["type"] == "xcm.timeout"][0]
    assert timeout["journeyId"] == "slow" and timeout["origin"]["chainId"] == RELAY
    await second.deliver(note("xcm.received", journey="slow"))
    # The receipt comes after this subscription's own timeout: not delivered to it.
    assert hooks.types("hasty") == ["xcm.sent", "xcm.timeout"]
    assert hooks.types("patient") == ["xcm.sent", "xcm.received"]


async def test_a_receipt_cancels_the_subscription_timer(world: dict[str, Any]) -> None:
    store, lives, (first, second) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("hasty", outboundTTL=6000)])
    await settle(lives, 1)
    await first.deliver(note("xcm.sent", journey="quick"))
    await second.deliver(note("xcm.received", journey="quick"))
    assert await first.fire_due_timers(now=10**12) == 0
    assert world["hooks"].types("hasty") == ["xcm.sent", "xcm.received"]


async def test_ephemeral_subscriptions_are_served_by_the_worker_holding_them(
    world: dict[str, Any],
) -> None:
    (first, second), client = world["workers"], world["workers"][0].client
    channel = second.notes_channel(RELAY)
    # No websocket subscription anywhere: no worker listens, nothing is published.
    assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 0}
    await first.deliver(note("xcm.sent", journey="before"))
    assert first.counters["fanned_out"] == 0
    # The second worker holds the socket; it is registered once its worker listens.
    await second.add_ephemeral(sub("socket-1", channel="websocket", ephemeral=True))
    assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 1}
    # The first worker processes the notifications; the fan-out brings them to the second.
    await first.deliver_many([note("xcm.sent", journey="e"), note("xcm.received", journey="e")])
    assert first.counters["fanned_out"] == 2
    hub = world["hub"]
    for _ in range(100):
        if len(hub.types("socket-1")) == 2:
            break
        await asyncio.sleep(0.05)
    assert hub.types("socket-1") == ["xcm.sent", "xcm.received"]
    assert all(n["subscriptionId"] == "socket-1" for _, n in hub.got)
    # The socket closes: the worker stops listening, and publishing stops with it.
    await second.remove_ephemeral("socket-1")
    for _ in range(100):
        if dict(await client.pubsub_numsub(channel)) == {channel.encode(): 0}:
            break
        await asyncio.sleep(0.05)
    assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 0}
    await first.deliver(note("xcm.sent", journey="after"))
    assert first.counters["fanned_out"] == 2
    assert hub.types("socket-1") == ["xcm.sent", "xcm.received"]


def test_terminal_notifications() -> None:
    assert is_terminal(note("xcm.received")) and is_terminal(note("xcm.timeout"))
    assert is_terminal(note("xcm.hop", outcome="Fail"))
    assert not is_terminal(note("xcm.hop")) and not is_terminal(note("xcm.sent"))


async def test_a_terminal_retried_after_a_redis_error_is_still_delivered(
    world: dict[str, Any],
) -> None:
    store, lives, (first, _) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("one")])
    await settle(lives, 1)
    hooks: Recorder = world["hooks"]
    original = hooks.enqueue_many
    failures = [ConnectionError("Redis went away")]

    async def flaky(
        deliveries: Sequence[tuple[str, int, Mapping[str, Any]]],
        bodies: Sequence[bytes | None] | None = None,
    ) -> list[bool | Exception]:
        if failures:
            return [failures.pop()] * len(deliveries)
        return await original(deliveries, bodies)

    hooks.enqueue_many = flaky  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await first.deliver(note("xcm.received", journey="retry"))
    # The agent retries the same notification: its terminal marker must not count it as late.
    await first.deliver(note("xcm.received", journey="retry"))
    assert hooks.types("one") == ["xcm.received"]
    # A different terminal of the same journey is late.
    await first.deliver(note("xcm.timeout", journey="retry"))
    assert hooks.types("one") == ["xcm.received"]


class RecordedStream:
    """What ``deliver_stream`` uses of a faust stream over ``xcm-notifications``: iteration
    over the records' bytes, ``current_event`` with the record's headers (the origin header the
    matcher writes, or ``headers`` given per record), ``enable_acks``, ``ack`` and the size of
    the channel's queue (the values not yet taken)."""

    def __init__(
        self,
        values: list[dict[str, Any]],
        hooks: Recorder,
        headers: list[list[tuple[str, bytes]]] | None = None,
    ) -> None:
        self.values = [orjson.dumps(value) for value in values]
        self.headers = headers if headers is not None else [notification_headers(v) for v in values]
        self.hooks = hooks
        self.enable_acks = True
        self.current_event: Any = None
        self.acked: list[tuple[int, set[str]]] = []  # (event, ids delivered when it was acked)
        self.yielded = 0
        self.channel = SimpleNamespace(
            queue=SimpleNamespace(qsize=lambda: len(self.values) - self.yielded)
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, value in enumerate(self.values):
            self.current_event = SimpleNamespace(index=index, headers=self.headers[index])
            self.yielded += 1
            yield value
            await asyncio.sleep(0)

    async def ack(self, event: Any) -> None:
        self.acked.append((event.index, {n["id"] for _, n in self.hooks.got}))


class CountingConnection(Connection):
    """Counts what is sent to Redis: one send per command, or per pipeline."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


async def test_the_agent_delivers_in_batches_each_journey_in_order(
    redis_url: str, prefix: str
) -> None:
    from topology.delivery import MAX_BATCH, deliver_stream  # noqa: PLC0415

    client = connect(redis_url, name="test-delivery-agent")
    counted = Redis.from_url(redis_url, connection_class=CountingConnection)
    store = SubscriptionStore(client, prefix)
    live = LiveSubscriptions(client, prefix, poll_interval=0.1)
    hooks = Recorder()
    delivery = Delivery(
        client=counted, prefix=prefix, subscriptions=live, webhooks=hooks, timer_interval=60
    )
    batches: list[int] = []
    deliver_encoded = delivery.deliver_encoded

    async def recorded(records: Sequence[EncodedNote]) -> int:
        batches.append(len(records))
        return await deliver_encoded(records)

    delivery.deliver_encoded = recorded  # type: ignore[method-assign]
    await delivery.start()
    try:
        await store.create_many([sub("timed", outboundTTL=6000)])
        await settle([live], 1)
        # 60 journeys, interleaved the way partitions interleave them: sent, sent, received...
        notes = []
        for pair in range(30):
            a, b = f"a{pair}", f"b{pair}"
            notes += [note("xcm.sent", a), note("xcm.sent", b)]
            notes += [note("xcm.received", a), note("xcm.received", b)]
        stream = RecordedStream(notes, hooks)
        await asyncio.sleep(0.1)  # the timer loop's first pass is done
        sends = CountingConnection.sends
        await deliver_stream(SimpleNamespace(delivery=delivery), stream)
        round_trips = CountingConnection.sends - sends

        assert stream.enable_acks is False
        delivered = [n["id"] for _, n in hooks.got]
        assert sorted(delivered) == sorted(n["id"] for n in notes)  # each once
        for journey in {n["journeyId"] for n in notes}:
            kinds = [n["type"] for _, n in hooks.got if n["journeyId"] == journey]
            assert kinds == ["xcm.sent", "xcm.received"], (journey, kinds)
        # Every xcm.sent set the subscription's timer before its receipt removed it.
        assert await delivery.fire_due_timers(now=10**12) == 0
        # Batches formed while the previous one was delivered, none beyond the bound.
        assert sum(batches) == len(notes) and 1 < max(batches) <= MAX_BATCH
        # One round trip per batch: the timers and terminal markers of all its pairs and the
        # question whether anyone listens for websockets (nobody does: nothing is published).
        assert round_trips == len(batches)
        assert delivery.counters["fanned_out"] == 0
        # Each record acknowledged once, after its own delivery was recorded.
        assert sorted(event for event, _ in stream.acked) == list(range(len(notes)))
        assert all(notes[event]["id"] in done for event, done in stream.acked)
        assert len(stream.acked) == len(hooks.got)
    finally:
        await delivery.stop()
        await client.aclose()
        await counted.aclose()


async def test_a_batch_that_meets_a_redis_outage_is_delivered_again_then_acknowledged(
    world: dict[str, Any],
) -> None:
    from topology.delivery import deliver_stream  # noqa: PLC0415

    store, lives, (first, _) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("one", outboundTTL=6000)])
    await settle(lives, 1)
    hooks: Recorder = world["hooks"]
    original = hooks.enqueue_many
    failures = [ConnectionError("Redis went away")] * 2

    async def flaky(
        deliveries: Sequence[tuple[str, int, Mapping[str, Any]]],
        bodies: Sequence[bytes | None] | None = None,
    ) -> list[bool | Exception]:
        if failures:
            return [failures.pop()] * len(deliveries)
        return await original(deliveries, bodies)

    hooks.enqueue_many = flaky  # type: ignore[method-assign]
    notes = [note("xcm.sent", "o1"), note("xcm.sent", "o2"), note("xcm.received", "o1")]
    stream = RecordedStream(notes, hooks)
    await deliver_stream(SimpleNamespace(delivery=first), stream)
    assert not failures  # both failed attempts happened
    # Delivered once each, in order, the terminal not taken for late by its own retry.
    assert [n["id"] for _, n in hooks.got] == [n["id"] for n in notes]
    assert first.counters["late"] == 0
    assert sorted(event for event, _ in stream.acked) == [0, 1, 2]
    # The receipt removed the timer its xcm.sent set, the other journey's timer is left.
    assert await first.client.zscore(f"{first.prefix}dlv:ttl", "one|o1") is None
    assert await first.client.zscore(f"{first.prefix}dlv:ttl", "one|o2") is not None


@contextlib.asynccontextmanager
async def private_delivery(server: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Delivery]]:
    """A Redis server of the test's own (``redis62``: the embedded one; ``redis7``: the
    machine's binary), for faults that are server-wide, and one started :class:`Delivery` on it
    with webhook subscription ``one`` (``outboundTTL`` 6 s) in force: ``(client, delivery)``."""
    from tests.own_redis import start_version  # noqa: PLC0415

    redis_server = start_version(server, tmp_path / "redis")
    client = connect(redis_server.url, name="test-delivery-private")
    prefix = "private:"
    live = LiveSubscriptions(client, prefix, poll_interval=0.1)
    delivery = Delivery(
        client=client,
        prefix=prefix,
        subscriptions=live,
        webhooks=Recorder(),
        hub=Recorder(),
        log_sink=Recorder(),
        timer_interval=0.05,
    )
    await delivery.start()
    try:
        await SubscriptionStore(client, prefix).create_many([sub("one", outboundTTL=6000)])
        await settle([live], 1)
        yield client, delivery
    finally:
        await delivery.stop()
        await client.aclose()
        redis_server.stop()


async def refuse_writes(client: Any, refuse: bool) -> None:
    """Redis at its ``maxmemory`` with the ``noeviction`` policy answers every write ``OOM``
    (reads and deletes go on), or back to no limit."""
    if refuse:
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used // 2)
    else:
        await client.config_set("maxmemory", 0)


async def logged(caplog: pytest.LogCaptureFixture, text: str, count: int) -> None:
    """Wait (10 s at most) until ``ocstream.delivery`` has logged ``text`` ``count`` times."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        found = [
            r for r in caplog.records if r.name == "ocstream.delivery" and text in r.getMessage()
        ]
        if len(found) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{text!r} logged {len(found)} times"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("server", ["redis62", "redis7"])
async def test_a_batch_redis_refuses_for_now_waits_and_is_delivered_once_it_takes_writes(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis at its ``maxmemory`` answers the batch's bookkeeping ``OOM``, one error reply per
    notification. That is no reason to give the notifications up (which acked them,
    undelivered, before): the agent waits, as for an outage, and delivers each once Redis
    takes writes again."""
    from topology.delivery import deliver_stream  # noqa: PLC0415

    async with private_delivery(server, tmp_path) as (client, delivery):
        hooks = cast(Recorder, delivery.webhooks)
        await refuse_writes(client, True)
        notes = [note("xcm.sent", "o1"), note("xcm.sent", "o2"), note("xcm.received", "o1")]
        stream = RecordedStream(notes, hooks)
        agent = asyncio.ensure_future(deliver_stream(SimpleNamespace(delivery=delivery), stream))
        await logged(caplog, "delivery: Redis error", 3)  # three attempts refused
        assert not agent.done()
        assert hooks.got == [] and stream.acked == []  # nothing given up, nothing acknowledged
        await refuse_writes(client, False)
        await asyncio.wait_for(agent, 30)
        assert [n["id"] for _, n in hooks.got] == [n["id"] for n in notes]
        assert sorted(event for event, _ in stream.acked) == [0, 1, 2]
        assert delivery.counters["errors"] == 0
        # The receipt removed the timer its xcm.sent set; the other journey's timer is there.
        assert await client.zscore("private:dlv:ttl", "one|o1") is None
        assert await client.zscore("private:dlv:ttl", "one|o2") is not None


@pytest.mark.parametrize("server", ["redis62", "redis7"])
async def test_a_timer_redis_refuses_to_fire_or_put_back_fires_on_a_later_pass(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory, Redis lets a worker claim a due timer (``ZREM`` frees memory) but refuses
    its delivery's bookkeeping and the ``ZADD`` that would put the timer back. The worker keeps
    it and puts it back on its next pass: the ``xcm.timeout`` is not lost. Meanwhile the
    timers' own loop, whose passes try to put it back, logs the refusal in one line a try, not
    a traceback every pass."""
    async with private_delivery(server, tmp_path) as (client, delivery):
        hooks = cast(Recorder, delivery.webhooks)
        await delivery.deliver_many([note("xcm.sent", "t1")])
        later = time.time() + 60  # past the 6 s outboundTTL (the agent's own passes are not)
        await refuse_writes(client, True)
        with pytest.raises(Exception, match="OOM|maxmemory"):
            await delivery.fire_due_timers(now=later)
        assert await client.zscore("private:dlv:ttl", "one|t1") is None  # claimed
        # The loop's own passes (every 0.05 s) meet the refusal too.
        await logged(caplog, "subscription timers: Redis error", 2)
        refusals = [r for r in caplog.records if r.name == "ocstream.delivery"]
        assert not [r for r in refusals if r.exc_info], [r.getMessage() for r in refusals]
        await refuse_writes(client, False)
        assert await delivery.fire_due_timers(now=later) == 1
        assert hooks.types("one") == ["xcm.sent", "xcm.timeout"]


@pytest.mark.parametrize("server", ["redis62", "redis7"])
async def test_bookkeeping_that_reaches_maxmemory_part_way_loses_no_log_delivery(
    server: str, tmp_path: Path
) -> None:
    """Memory grows as a batch is booked (the at-most-once markers of a log subscription, the
    timers and stored ``xcm.sent`` of a webhook one), so a Redis reaches its ``maxmemory`` part
    way through a batch. Booked call by call, the first notifications' markers were set and
    the rest refused; the batch went again, met those markers, and their log deliveries were
    never made. Booked in one transaction, a batch is booked whole or refused whole. Tried at
    limits from just above the memory in use to above what a batch needs: each notification
    reaches the log once, and both outcomes happen."""
    async with private_delivery(server, tmp_path) as (client, delivery):
        await SubscriptionStore(client, "private:").create_many([sub("logged", "log")])
        await settle([cast(LiveSubscriptions, delivery.subscriptions)], 2)
        log = cast(Recorder, delivery.log_sink)
        outcomes = set()
        for step in range(24):
            notes = [note("xcm.sent", f"s{step}-{n}") for n in range(60)]
            await client.config_set("maxmemory", 0)
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory-policy", "noeviction")
            await client.config_set("maxmemory", used + 5_000 + step * 5_000)
            try:
                await delivery.deliver_many(notes)
                outcomes.add("booked")
            except Exception as exc:  # the agent's retry, once Redis takes writes again
                assert "OOM" in str(exc) or "maxmemory" in str(exc), exc
                outcomes.add("refused")
                await client.config_set("maxmemory", 0)
                await delivery.deliver_many(notes)
            got = [
                n["id"]
                for sid, n in log.got
                if sid == "logged" and n["journeyId"] in {m["journeyId"] for m in notes}
            ]
            assert got == [n["id"] for n in notes], (step, len(got))
        assert outcomes == {"booked", "refused"}


async def test_earlier_stages_wait_for_the_notifications_delivery_holds(
    world: dict[str, Any],
) -> None:
    """``app.delivery_backlog`` (``ocstream/stages.py``): extraction or matching, draining it
    before their next batch, find delivered every notification the agent had taken or had
    waiting in its stream when they began to wait."""
    from topology.delivery import deliver_stream  # noqa: PLC0415

    store, lives, (first, _) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("one", outboundTTL=6000)])
    await settle(lives, 1)
    hooks = world["hooks"]
    notes = [note("xcm.sent", f"j{i}") for i in range(40)]
    stream = RecordedStream(notes, hooks)
    app = SimpleNamespace(delivery=first)
    agent = asyncio.create_task(deliver_stream(app, stream))
    while stream.yielded < 5:
        await asyncio.sleep(0)
    backlog = app.delivery_backlog
    assert backlog.pending() == len(notes) - len(hooks.got) > 0
    await backlog.drain(limit=30)
    assert [n["id"] for _, n in hooks.got] == [n["id"] for n in notes]
    assert backlog.pending() == 0 and backlog.waits == 1
    await backlog.drain()  # nothing held: returns at once
    assert backlog.waits == 1
    await agent


async def test_notifications_as_the_topic_holds_them_are_decoded_only_where_followed(
    world: dict[str, Any],
) -> None:
    """``deliver_encoded``: a record whose ``origin`` header names a chain no persistent
    subscription follows is not decoded (here its bytes are not even JSON, and nothing fails),
    yet a websocket on another worker still gets it, published as it came; a followed origin,
    or a record without the header, is decoded and delivered as by ``deliver_many``."""
    (first, second), store, hooks = world["workers"], world["store"], world["hooks"]
    await store.create_many([sub("relay-hook", outboundTTL=6000)])
    await settle(world["lives"], 1)
    followed = note("xcm.sent", journey="followed")
    unlabelled = note("xcm.received", journey="followed")
    other = {**note("xcm.sent", journey="other"), "origin": {"chainId": HYDRATION}}
    other_bytes = orjson.dumps(other)
    not_json = b"\x00 not a notification"
    records = [
        (RELAY, orjson.dumps(followed)),
        (HYDRATION, not_json),  # nobody follows Hydration: left undecoded
        (HYDRATION, other_bytes),
        (None, orjson.dumps(unlabelled)),  # no header: decoded to find its origin
    ]
    assert await first.deliver_encoded(records) == 2
    assert [n["id"] for _, n in hooks.got] == [followed["id"], unlabelled["id"]]
    # Each webhook body is the notification's own bytes with the subscription added, the same
    # bytes as encoding the payload the channel was given.
    assert hooks.bodies == [orjson.dumps(payload) for _, payload in hooks.got]
    assert orjson.loads(hooks.bodies[0])["subscriptionId"] == "relay-hook"
    assert first.counters["errors"] == 0 and first.counters["fanned_out"] == 0

    # Records whose bytes are read only when needed (a direct feed's): Hydration's, which
    # nobody follows nor listens to, are never read; a followed origin's are read once.
    reads: list[str] = []

    def lazily(name: str, raw: bytes | None) -> Callable[[], bytes | None]:
        def read() -> bytes | None:
            reads.append(name)
            return raw

        return read

    again = note("xcm.relayed", journey="followed")
    lazy = [
        (HYDRATION, lazily("hydration", other_bytes)),
        (RELAY, lazily("relay", orjson.dumps(again))),
    ]
    assert await first.deliver_encoded(lazy) == 1
    assert reads == ["relay"]
    assert hooks.got[-1][1]["id"] == again["id"]
    # A followed record without a value: counted as an error, the batch goes on.
    assert await first.deliver_encoded([(RELAY, lazily("none", None))]) == 0
    assert first.counters["errors"] == 1
    first.counters["errors"] = 0

    # A websocket on Hydration's notifications, held by the second worker: the fan-out
    # publishes the records' own bytes, which its worker decodes.
    client = first.client
    listener = client.pubsub()
    await listener.subscribe(first.notes_channel(HYDRATION))
    try:
        await second.add_ephemeral(
            sub("socket-h", channel="websocket", ephemeral=True, origin=HYDRATION)
        )
        reads.clear()
        await first.deliver_encoded([(HYDRATION, lazily("listened", other_bytes))])
        assert reads == ["listened"]  # read, since someone listens
        assert first.counters["fanned_out"] == 1
        message = None
        for _ in range(100):
            message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                break
        assert message is not None and message["data"] == other_bytes
        for _ in range(100):
            if world["hub"].types("socket-h"):
                break
            await asyncio.sleep(0.05)
        assert world["hub"].types("socket-h") == ["xcm.sent"]
    finally:
        await listener.aclose()

    # Bytes of a followed origin that are not a notification: counted, the others go on.
    late = note("xcm.sent", journey="late")
    assert await first.deliver_encoded([(RELAY, not_json), (RELAY, orjson.dumps(late))]) == 1
    assert first.counters["errors"] == 1
    assert hooks.got[-1][1]["id"] == late["id"]


async def test_the_agent_takes_the_origin_from_the_record_header(world: dict[str, Any]) -> None:
    """``encoded``: the agent's records are bytes, with the origin header the matcher writes
    (``notification_headers``); a record without it is decoded to find its origin."""
    from topology.delivery import deliver_stream, encoded  # noqa: PLC0415

    store, lives, (first, _) = world["store"], world["lives"], world["workers"]
    assert notification_headers(note("xcm.sent")) == [(ORIGIN_HEADER, RELAY.encode())]
    assert notification_headers({"type": "xcm.sent"}) == []
    event = SimpleNamespace(headers=[(ORIGIN_HEADER, HYDRATION.encode())])
    assert encoded(event, b"{}") == (HYDRATION, b"{}", None)
    assert encoded(SimpleNamespace(headers=[]), b"{}") == (None, b"{}", None)
    event = SimpleNamespace(headers=[(ORIGIN_HEADER, RELAY.encode()), (SELECT_HEADER, b"{}")])
    assert encoded(event, b"{}") == (RELAY, b"{}", b"{}")

    await store.create_many([sub("one", outboundTTL=6000)])
    await settle(lives, 1)
    notes = [note("xcm.sent", "h1"), note("xcm.received", "h1"), note("xcm.sent", "h2")]
    # The last record comes without a header (a matcher of an older release).
    stream = RecordedStream(
        notes, world["hooks"], [notification_headers(n) for n in notes[:2]] + [[]]
    )
    await deliver_stream(SimpleNamespace(delivery=first), stream)
    assert [n["id"] for _, n in world["hooks"].got] == [n["id"] for n in notes]
    assert sorted(event for event, _ in stream.acked) == [0, 1, 2]


async def test_the_agent_takes_a_direct_feed_in_order_and_acks_each_record_through_it(
    world: dict[str, Any],
) -> None:
    """``deliver_feed``: the worker's agent takes the notifications from the topic's direct
    feed (``ocstream/transport/direct.py``), not from a faust stream: each delivered once, in
    the feed's order, with the origin of its header, and acknowledged through the consumer only
    once delivered; a stale one (an earlier generation) is neither delivered nor acknowledged;
    the backlog counts what the feed still holds."""
    from topology.delivery import deliver_feed  # noqa: PLC0415

    store, lives, (first, _) = world["store"], world["lives"], world["workers"]
    await store.create_many([sub("one", outboundTTL=6000)])
    await settle(lives, 1)
    hooks = world["hooks"]
    app = feed_app(delivery=first)
    feed = DirectFeed(app, "xcm-notifications", 100)
    notes = [note("xcm.sent", f"f{i}") for i in range(30)] + [note("xcm.received", "f0")]
    messages = [
        feed_message(
            "xcm-notifications", i % 4, i, value=orjson.dumps(n), headers=notification_headers(n)
        )
        for i, n in enumerate(notes)
    ]
    stale = feed_message(
        "xcm-notifications", 0, 99, generation=2, value=orjson.dumps(note("xcm.sent", "old"))
    )
    for m in [messages[0], stale, *messages[1:]]:
        await feed.put(m)
    agent = asyncio.create_task(deliver_feed(app, feed))
    try:
        for _ in range(1000):
            if len(app.consumer.acked) == len(notes):
                break
            await asyncio.sleep(0.01)
        assert [n["id"] for _, n in hooks.got] == [n["id"] for n in notes]
        assert app.consumer.acked == [(m.tp, m.offset) for m in messages]
        assert feed.dropped == 1 and app.consumer.unacked == set()
        assert app.delivery_backlog.pending() == 0
        await feed.put(feed_message("xcm-notifications", 1, 100, value=b"{}"))
        assert app.delivery_backlog.waiting() == 1  # held by the feed, not taken yet
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, min_size=1, max_size=6), st.text(min_size=1))
def test_webhook_body_from_the_notification_bytes(notification: dict[str, Any], sid: str) -> None:
    """The body made from a notification's bytes is what encoding ``{**notification,
    "subscriptionId": id}`` gives, or None (encode it) where splicing could differ."""
    raw = orjson.dumps(notification)
    spliced = _with_subscription(raw, sid)
    if "subscriptionId" in notification or b'"subscriptionId"' in raw:
        assert spliced is None
    else:
        assert spliced == orjson.dumps({**notification, "subscriptionId": sid})
    assert _with_subscription(None, sid) is None
    assert _with_subscription(b"{}", sid) is None
    assert _with_subscription(b' {"a":1}', sid) is None
    assert _with_subscription(b'{"a":1}\n', sid) is None


# --- selectors -------------------------------------------------------------------------------

_KEYS = ["0x" + "ab" * 32, "0x" + "cd" * 32]
_CHAINS = [RELAY, ASSET_HUB, HYDRATION]
_SUBSCRIPTIONS = [
    sub(f"s{i}", origin=origin, destinations=destinations, senders=senders)
    for i, (origin, destinations, senders) in enumerate(
        (origin, destinations, senders)
        for origin in (RELAY, HYDRATION)
        for destinations in ([ASSET_HUB], [HYDRATION, RELAY])
        for senders in ("*", [_KEYS[0]], _KEYS)
    )
]


def _leaf() -> st.SearchStrategy[Any]:
    texts = [*_CHAINS, *_KEYS, _KEYS[0].upper(), "Success", "Fail", "accepted", "xcm.hop"]
    return st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(texts)


_ANY = st.recursive(
    _leaf(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["chainId", "to", "publicKey", "legIndex"]), inner)
    ),
    max_leaves=8,
)


def _shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A dict with some of ``fields`` and a field selection never reads, or anything."""
    return st.fixed_dictionaries({"other": _ANY}, optional=fields) | _ANY


_ACCOUNT = _shaped({"id": st.just("addr"), "publicKey": st.sampled_from(_KEYS) | _ANY})
_NOTIFICATION = st.fixed_dictionaries(
    {"body": _ANY},
    optional={
        "id": st.sampled_from(["j:sent:0", "j:received:1"]) | _ANY,
        "journeyId": st.just("j") | _ANY,
        "type": st.sampled_from(["xcm.sent", "xcm.received", "xcm.hop", "xcm.bridge"]) | _ANY,
        "bridgeStatus": st.sampled_from(["accepted", "received"]) | _ANY,
        "origin": _shaped({"chainId": st.sampled_from(_CHAINS) | _ANY}),
        "destination": _shaped({"chainId": st.sampled_from(_CHAINS) | _ANY}),
        "legs": st.lists(_shaped({"to": st.sampled_from(_CHAINS) | _ANY}), max_size=4) | _ANY,
        "sender": _shaped({"signer": _ACCOUNT, "extraSigners": st.lists(_ACCOUNT) | _ANY}),
        "waypoint": _shaped(
            {"legIndex": st.integers(-1, 3) | _ANY, "outcome": st.sampled_from(["Fail"]) | _ANY}
        ),
    },
)


def _outcome(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:
        return type(exc)


_BRIDGED = {
    "type": "xcm.bridge",
    "bridgeStatus": "accepted",
    "legs": [{"from": RELAY, "to": ASSET_HUB}, {"from": ASSET_HUB, "to": "urn:ocn:ethereum:1"}],
    "waypoint": {"legIndex": 1},
}


@settings(max_examples=300)
@given(_NOTIFICATION)
@example({**_BRIDGED, "body": 1})  # accepted onto the last leg: terminal
@example({**_BRIDGED, "waypoint": {"legIndex": 0}, "body": 1})  # not the last: not terminal
@example({**_BRIDGED, "bridgeStatus": "received", "body": 1})
@example({**note("xcm.hop", outcome="Fail"), "body": 1})
@example({**note("xcm.hop", sender={"extraSigners": [{"publicKey": _KEYS[1]}]}), "body": 1})
@example({**note("xcm.sent", sender={"extraSigners": [{}, {"publicKey": _KEYS[0]}]}), "body": 1})
def test_a_selector_selects_and_ends_a_journey_as_its_notification_does(
    notification: dict[str, Any],
) -> None:
    """Whatever a notification's shape, its selector (as the header carries it: JSON) gives the
    subscriptions' filters, :func:`is_terminal` and the bookkeeping's fields the same answers,
    or the same error, as the whole notification; and it leaves out what they do not read."""
    selected = orjson.loads(orjson.dumps(selector(notification)))
    for subscription in _SUBSCRIPTIONS:
        assert _outcome(subscription.matches, selected) == _outcome(
            subscription.matches, notification
        ), subscription.id
    assert _outcome(is_terminal, selected) == _outcome(is_terminal, notification)
    for key in ("id", "journeyId", "type"):
        assert selected.get(key) == notification.get(key)
    assert "body" not in selected


def test_the_matcher_adds_the_selector_where_someone_follows_the_origin() -> None:
    sent = note("xcm.sent", sender={"signer": {"id": "addr", "publicKey": _KEYS[0]}})
    origin = (ORIGIN_HEADER, RELAY.encode())
    assert notification_headers(sent) == [origin]
    assert notification_headers(sent, lambda chain: chain != RELAY) == [origin]
    headers = notification_headers(sent, lambda chain: chain == RELAY)
    assert headers[0] == origin and headers[1][0] == SELECT_HEADER
    assert orjson.loads(headers[1][1]) == {
        "id": sent["id"],
        "journeyId": "j1",
        "type": "xcm.sent",
        "origin": {"chainId": RELAY},
        "destination": {"chainId": ASSET_HUB},
        "legs": [{"to": ASSET_HUB}],
        "sender": {"signer": {"publicKey": _KEYS[0]}},
        "waypoint": {"outcome": "Success"},
    }


async def test_a_record_s_selector_stands_in_for_its_notification(
    world: dict[str, Any],
) -> None:
    """With a selector, a followed record is selected and booked without decoding its bytes
    (here they are not even JSON, where only webhooks want it); webhooks get the record's own
    bytes, the timer of ``outboundTTL`` keeps them whole, and a channel that takes the
    notification as an object (the log) gets it decoded, as without a selector."""
    (first, _), store, hooks, log = world["workers"], world["store"], world["hooks"], world["log"]
    await store.create_many(
        [
            sub("hook", outboundTTL=6000),
            sub("signed", senders=[_KEYS[0]]),
            sub("received", channel="log", events=["xcm.received"]),
        ]
    )
    await settle(world["lives"], 3)
    signer = {"signer": {"id": "addr", "publicKey": _KEYS[0]}, "extraSigners": []}
    notes = [
        note("xcm.sent", "k1", sender=signer),
        note("xcm.received", "k1", sender=signer),
        note("xcm.sent", "k2"),
    ]

    def record(notification: dict[str, Any], raw: bytes | None = None) -> Any:
        headers = dict(notification_headers(notification, lambda _: True))
        return (RELAY, raw or orjson.dumps(notification), headers[SELECT_HEADER])

    assert await first.deliver_encoded([record(n) for n in notes]) == 6
    assert sorted((s, n["id"]) for s, n in hooks.got) == [
        ("hook", "k1:received:0"),
        ("hook", "k1:sent:0"),
        ("hook", "k2:sent:0"),
        ("signed", "k1:received:0"),
        ("signed", "k1:sent:0"),
    ]
    by_id = {n["id"]: n for n in notes}
    assert [orjson.loads(body or b"") for body in hooks.bodies] == [
        {**by_id[n["id"]], "subscriptionId": s} for s, n in hooks.got
    ]
    assert log.got == [("received", {**notes[1], "subscriptionId": "received"})]
    # k1's receipt ended its timer; k2's keeps the xcm.sent whole, from the record's bytes.
    timers = await first.client.hgetall(f"{first.prefix}dlv:ttl:notes")
    assert timers == {b"hook|k2": orjson.dumps(notes[2])}
    assert first.counters["errors"] == 0

    # A selector spares the bytes any check where only webhooks want them: they are posted as
    # the matcher wrote them (here, not JSON). Where the log wants the notification, bytes
    # that do not decode are refused before anything is booked, and counted.
    broken = b'{"broken": }'
    assert await first.deliver_encoded([record(note("xcm.sent", "k3"), broken)]) == 1
    assert hooks.bodies[-1] == b'{"broken": ,"subscriptionId":"hook"}'
    assert await first.deliver_encoded([record(note("xcm.received", "k4"), broken)]) == 0
    assert first.counters["errors"] == 1
    assert [n["id"] for _, n in log.got] == ["k1:received:0"]
