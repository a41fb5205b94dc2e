"""Delivery of notifications, before and after batching, in one run on real Redis.

    python benchmarks/delivery.py [--redis URL] [--journeys N] [--rounds R] [--socket]

Two in-process "workers" A and B share a Redis, each with its own client, live subscriptions
and delivery service, as two ``ocstream worker`` processes would. 10 persistent subscriptions
select the notifications (origin Asset Hub, destination Hydration, a webhook channel each; 3 of
them with an ``outboundTTL`` timer), 40 others do not. A delivers N journeys (an ``xcm.sent``
and its ``xcm.received``, about 1.3 kB each: 2 x N notifications) from a stream the way the
``xcm_deliver`` agent does; its webhook dispatcher queues each delivery in Redis (its POST
loop is not started: POSTing is ``benchmarks/webhook.py``'s concern). B only listens.

* **old**: the code before batching, kept here verbatim: the agent delivered 16 notifications
  at a time (each journey in order); each delivery did its Redis steps one round trip after the
  other (terminal marker, timer, webhook enqueue) and published every notification to
  ``dlv:notes``, which every worker (B here) received and decoded, websockets or not.
* **new**: :func:`topology.delivery.deliver_stream` and :meth:`Delivery.deliver_encoded`:
  batches of what the stream has ready, two round trips per batch, and the fan-out only to
  workers that hold a websocket subscription of the notification's origin.

Both read the records as the agent does, bytes with the matcher's ``origin`` header; old decodes
each one (faust's json serializer did that for it), new those that a subscription follows.

With ``--socket``, B holds one websocket subscription that selects every notification (both
paths then deliver it to B's hub); without, nobody listens on websockets.

Each round runs old then new, on fresh keys; a round is timed until A acknowledged every
notification and B handled every fan-out message. Printed per path: notifications/s, the CPU of
this process (A and B) and of Redis per notification, the Redis commands per notification
(``INFO commandstats``, the commands Lua runs included) and the round trips per notification
(what the clients sent: one per command, or per pipeline). Each path's webhook deliveries are
checked against what the subscriptions select. The medians of the rounds and the new/old
ratios close the output. Use a Redis nobody else uses at the same time: the command counts are
the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ocstream.delivery import BOOKKEEPING_SECONDS, Delivery, is_terminal, notification_headers  # noqa: E402
from ocstream.sinks.webhook import WebhookDispatcher, WebhookSettings  # noqa: E402
from ocstream.sinks.websocket import WebsocketHub  # noqa: E402
from ocstream.subscriptions import LiveSubscriptions, Subscription, SubscriptionStore  # noqa: E402
from ocstream.transport.client import TRANSIENT_ERRORS, Backoff  # noqa: E402
from topology.delivery import deliver_stream  # noqa: E402

ORIGIN, DESTINATION = "urn:ocn:polkadot:1000", "urn:ocn:polkadot:2034"
RELAY = "urn:ocn:polkadot:0"
OTHER_ORIGINS = [RELAY, "urn:ocn:polkadot:2004", "urn:ocn:polkadot:2032"]

log = logging.getLogger("bench.delivery")


# -- the code before batching (ocstream/delivery.py and topology/delivery.py at 5438ca5) -------


class OldDelivery(Delivery):
    """The delivery service as it was: one notification at a time, round trip after round
    trip, and every notification published to ``dlv:notes`` for every worker."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._notes_all = f"{self.prefix}dlv:notes"
        self.listening = asyncio.Event()

    async def on_start(self) -> None:
        await self.subscriptions.start()
        self.add_future(self._old_listen())

    async def add_ephemeral(self, subscription: Any) -> None:
        self.subscriptions.ephemeral.add(subscription)

    async def deliver(self, notification: dict[str, Any]) -> int:
        delivered = 0
        for subscription in self.subscriptions.matching(notification):
            if not getattr(subscription, "is_ephemeral", False):
                delivered += await self.deliver_to(subscription, notification)
        await self.client.publish(self._notes_all, orjson.dumps(notification))
        return delivered

    async def _old_deliver_ephemeral(self, notification: dict[str, Any]) -> None:
        for subscription in self.subscriptions.matching(notification):
            if getattr(subscription, "is_ephemeral", False):
                await self.deliver_to(subscription, notification)

    async def _old_listen(self) -> None:
        backoff = Backoff()
        while not self.should_stop:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self._notes_all)
                self.listening.set()
                backoff.reset()
                while not self.should_stop:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    try:
                        await self._old_deliver_ephemeral(orjson.loads(message["data"]))
                    except TRANSIENT_ERRORS:
                        raise
                    except Exception:
                        log.exception("ephemeral delivery failed")
                    self.counters["fanout_received"] += 1
            except TRANSIENT_ERRORS as exc:
                self.listening.clear()
                await self.sleep(backoff.next_delay())
                log.warning("notification fan-out: Redis error (%s)", exc)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def deliver_to(self, subscription: Any, notification: dict[str, Any]) -> int:
        kind = str(notification["type"])
        journey = str(notification.get("journeyId", ""))
        member = f"{subscription.id}|{journey}"
        if is_terminal(notification):
            key = f"{self.prefix}dlv:term:{subscription.id}:{journey}"
            note_id = str(notification["id"])
            if not await self.client.set(key, note_id, nx=True, ex=BOOKKEEPING_SECONDS):
                held = await self.client.get(key)
                if (held.decode() if isinstance(held, bytes) else held) != note_id:
                    self.counters["late"] += 1
                    return 0
            await self.client.zrem(self._ttl_key, member)
            await self.client.hdel(self._ttl_notes, member)
        elif (
            kind == "xcm.sent"
            and getattr(subscription, "outboundTTL", None)
            and not getattr(subscription, "is_ephemeral", False)
        ):
            deadline = time.time() + subscription.outboundTTL / 1000
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._ttl_notes, member, orjson.dumps(notification))
                pipe.zadd(self._ttl_key, {member: deadline}, nx=True)
                await pipe.execute()
        payload = {**notification, "subscriptionId": subscription.id}
        sent = 0
        for index in subscription.channel_indexes(kind):
            channel = subscription.channels[index]
            if channel.type == "webhook":
                if self.webhooks is not None and await self.webhooks.enqueue(  # type: ignore[attr-defined]
                    subscription.id, index, payload
                ):
                    sent += 1
                continue
            if not await self._first_time(subscription.id, index, str(notification["id"])):
                self.counters["duplicates"] += 1
                continue
            if channel.type == "websocket" and self.hub is not None:
                await self.hub.publish(subscription.id, payload)  # type: ignore[attr-defined]
                sent += 1
        self.counters[f"delivered_{kind}"] += sent
        return sent

    async def _first_time(self, subscription_id: str, channel: int, notification_id: str) -> bool:
        key = f"{self.prefix}dlv:sent:{subscription_id}:{channel}:{notification_id}"
        return bool(await self.client.set(key, 1, nx=True, ex=BOOKKEEPING_SECONDS))


async def old_deliver_one(delivery: Any, notification: dict[str, Any]) -> None:
    backoff = Backoff()
    while True:
        try:
            await delivery.deliver(notification)
            return
        except TRANSIENT_ERRORS:
            await asyncio.sleep(backoff.next_delay())
        except Exception:
            log.exception("delivering %s failed", notification.get("id"))
            delivery.counters["errors"] += 1
            return


async def old_deliver_stream(delivery: Any, stream: Any, concurrency: int = 16) -> None:
    stream.enable_acks = False
    slots = asyncio.Semaphore(concurrency)
    latest: dict[str, asyncio.Task[None]] = {}
    running: set[asyncio.Task[None]] = set()

    async def deliver(event: Any, notification: Any, after: asyncio.Task[None] | None) -> None:
        try:
            if after is not None:
                await asyncio.wait({after})
            await old_deliver_one(delivery, notification)
            if event is not None:
                await stream.ack(event)
        finally:
            slots.release()

    def done(task: asyncio.Task[None], journey: str) -> None:
        running.discard(task)
        if latest.get(journey) is task:
            del latest[journey]

    try:
        async for raw in stream:
            notification = orjson.loads(raw)  # what faust's json serializer did for this agent
            event = stream.current_event
            await slots.acquire()
            journey = notification.get("journeyId") if isinstance(notification, dict) else None
            key = str(journey) if journey else f"#{id(event)}"
            task = asyncio.create_task(deliver(event, notification, latest.get(key)))
            latest[key] = task
            running.add(task)
            task.add_done_callback(functools.partial(done, journey=key))
    finally:
        if running:
            await asyncio.wait(set(running))


# -- the bench ---------------------------------------------------------------------------------


class CountingConnection(Connection):
    """Counts what the clients send: commands, and sends (one per command, or per pipeline:
    the round trips)."""

    sends = 0
    commands = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)

    def pack_command(self, *args: Any) -> list[bytes]:
        CountingConnection.commands += 1
        return super().pack_command(*args)


class NewDelivery(Delivery):
    """:class:`Delivery`, counting the fan-out messages it handles (for the end of a round)."""

    async def _deliver_ephemeral(self, notifications: list[dict[str, Any]]) -> None:
        await super()._deliver_ephemeral(notifications)
        self.counters["fanout_received"] += len(notifications)


class Stream:
    """What the agents use of a faust stream over ``xcm-notifications``: the records' bytes,
    each event with the origin header the matcher writes, the channel's queue size; counts
    acknowledgements."""

    def __init__(self, values: list[dict[str, Any]]) -> None:
        self.values = [orjson.dumps(value) for value in values]
        self.headers = [notification_headers(value) for value in values]
        self.enable_acks = True
        self.current_event: Any = None
        self.acked = 0
        self.yielded = 0
        self.channel = SimpleNamespace(
            queue=SimpleNamespace(qsize=lambda: len(self.values) - self.yielded)
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, value in enumerate(self.values):
            self.current_event = SimpleNamespace(index=index, headers=self.headers[index])
            self.yielded += 1
            yield value
            if index % 64 == 63:
                await asyncio.sleep(0)  # a consumer hands records over in fetches

    async def ack(self, event: Any) -> None:
        self.acked += 1


def journeys(n: int, tag: str) -> list[dict[str, Any]]:
    """2 x n notifications: each journey's xcm.sent, and later its xcm.received (interleaved
    as partitions interleave them), about 1.3 kB each."""
    sent, received = [], []
    for i in range(n):
        journey = f"{tag}{i:06d}{uuid.uuid4().hex[:10]}"
        base = {
            "journeyId": journey,
            "legs": [
                {"from": ORIGIN, "to": DESTINATION, "type": "hrmp", "relay": OTHER_ORIGINS[0]}
            ],
            "origin": {
                "chainId": ORIGIN,
                "blockNumber": str(4833171 + i),
                "blockHash": "0x" + uuid.uuid4().hex * 2,
                "extrinsicId": f"{4833171 + i}-2",
                "outcome": "Success",
                "error": None,
                "messageHash": "0x" + uuid.uuid4().hex * 2,
                "messageData": "0x" + uuid.uuid4().hex * 8,
                "event": {"section": "XcmpQueue", "method": "XcmpMessageSent"},
            },
            "destination": {"chainId": DESTINATION},
            "sender": {"signer": {"id": "14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQT"}},
        }
        sent.append(
            {
                **base,
                "id": f"{journey}:sent:0",
                "type": "xcm.sent",
                "waypoint": {"chainId": ORIGIN, "legIndex": 0, "outcome": "Success"},
            }
        )
        received.append(
            {
                **base,
                "id": f"{journey}:received:0",
                "type": "xcm.received",
                "waypoint": {"chainId": DESTINATION, "legIndex": 0, "outcome": "Success"},
            }
        )
    # A journey's receipt comes a while after its sending: 50 sent, then the 50 receipts of
    # the journeys sent before those, and so on.
    notes: list[dict[str, Any]] = []
    for start in range(0, n, 50):
        notes += sent[start : start + 50] + received[max(0, start - 50) : start]
    notes += received[(n - 1) // 50 * 50 :]
    return notes


def subscriptions(selecting: int) -> list[Subscription]:
    found = []
    for i in range(selecting):
        found.append(
            Subscription.model_validate(
                {
                    "id": f"hook-{i}",
                    "origin": ORIGIN,
                    "senders": "*",
                    "destinations": [DESTINATION],
                    "channels": [{"type": "webhook", "url": f"https://example.org/hook/{i}"}],
                    **({"outboundTTL": 600_000} if i < 3 else {}),
                }
            )
        )
    for i in range(40):
        found.append(
            Subscription.model_validate(
                {
                    "id": f"other-{i}",
                    "origin": OTHER_ORIGINS[i % 3],
                    "senders": "*",
                    "destinations": [DESTINATION],
                    "channels": [{"type": "webhook", "url": f"https://example.org/other/{i}"}],
                }
            )
        )
    return found


def server_stats(sync: redis.Redis) -> tuple[int, float, dict[str, int]]:
    """(commands, Redis CPU seconds, calls by command) so far."""
    stats = sync.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    cpu = sync.info("cpu")
    return sum(calls.values()), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


async def run_path(path: str, url: str, n: int, socket: bool, selecting: int) -> dict[str, Any]:
    prefix = f"bench-dlv-{uuid.uuid4().hex[:8]}:"
    made = OldDelivery if path == "old" else NewDelivery
    clients: list[Redis] = []
    workers: list[Delivery] = []
    dispatcher: WebhookDispatcher | None = None
    for name in ("A", "B"):
        client = Redis.from_url(url, connection_class=CountingConnection, max_connections=100)
        clients.append(client)
        live = LiveSubscriptions(client, prefix, poll_interval=3600, resync_interval=3600)

        async def nothing(*_: Any) -> Any:
            return None

        hub = WebsocketHub(
            client,
            prefix,
            validate=nothing,
            get_subscription=nothing,
            register_ephemeral=nothing,
            unregister_ephemeral=nothing,
        )
        webhooks = WebhookDispatcher(
            client, prefix, WebhookSettings(), get_subscription=lambda _: None, name=name
        )
        if name == "A":
            dispatcher = webhooks
        workers.append(
            made(
                client=client,
                prefix=prefix,
                subscriptions=live,
                webhooks=webhooks,
                hub=hub,
                timer_interval=3600,
            )
        )
    store = SubscriptionStore(clients[0], prefix)
    await store.create_many(subscriptions(selecting))
    for worker in workers:
        await worker.start()
        await worker.subscriptions.refresh(force=True)  # type: ignore[attr-defined]
    a, b = workers
    if socket:
        await b.add_ephemeral(
            Subscription.model_validate(
                {
                    "id": "socket",
                    "origin": ORIGIN,
                    "destinations": [DESTINATION],
                    "ephemeral": True,
                    "channels": [{"type": "websocket"}],
                }
            )
        )
    if path == "old":
        await asyncio.wait_for(b.listening.wait(), 10)  # type: ignore[attr-defined]
    notes = journeys(n, path[0])
    stream = Stream(notes)
    sync = redis.Redis.from_url(url)
    commands0, redis_cpu0, calls0 = server_stats(sync)
    sends0, sent_commands0 = CountingConnection.sends, CountingConnection.commands
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if path == "old":
        await old_deliver_stream(a, stream)
    else:
        await deliver_stream(SimpleNamespace(delivery=a), stream)
    # B has handled every fan-out message (old: all of them, new: those it listens to).
    expected = len(notes) if path == "old" or socket else 0
    deadline = time.monotonic() + 60
    while b.counters["fanout_received"] < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    sends = CountingConnection.sends - sends0
    sent_commands = CountingConnection.commands - sent_commands0
    commands1, redis_cpu1, calls1 = server_stats(sync)
    assert dispatcher is not None
    enqueued = dispatcher.counters["enqueued"]
    by_command = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v - calls0.get(k, 0)}
    result = {
        "path": path,
        "notifications": len(notes),
        "rate": len(notes) / wall,
        "cpu_us": cpu / len(notes) * 1e6,
        "redis_cpu_us": (redis_cpu1 - redis_cpu0) / len(notes) * 1e6,
        # the two INFO calls of the measurement itself are not the delivery's
        "commands": (commands1 - commands0 - 2) / len(notes),
        "client_commands": sent_commands / len(notes),
        "round_trips": sends / len(notes),
        "by_command": by_command,
        "acked": stream.acked,
        "enqueued": enqueued,
        "expected_hooks": n * selecting * 2,  # sent and received, for each subscription
        "fanned_in": b.counters["fanout_received"],
        "socket_delivered": sum(v for k, v in b.counters.items() if k.startswith("delivered_")),
    }
    for worker in workers:
        await worker.stop()
        await worker.webhooks.stop()  # type: ignore[union-attr]
    for client in clients:
        await client.aclose()
    keys = list(sync.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 1000):
        sync.delete(*keys[start : start + 1000])
    sync.close()
    return result


KEYS = ("rate", "cpu_us", "redis_cpu_us", "client_commands", "commands", "round_trips")


def line(r: dict[str, Any]) -> str:
    return (
        f"{r['path']:<4} {r['rate']:>7,.0f}/s   CPU {r['cpu_us']:>5.0f} µs   "
        f"Redis CPU {r['redis_cpu_us']:>4.0f} µs   commands sent {r['client_commands']:>5.2f}   "
        f"run by Redis {r['commands']:>5.1f}   round trips {r['round_trips']:>6.3f}"
    )


async def amain(args: argparse.Namespace) -> int:
    n, selecting = args.journeys, args.subscriptions
    print(
        f"command: python benchmarks/delivery.py --journeys {n} --rounds {args.rounds} "
        f"--subscriptions {selecting}" + (" --socket" if args.socket else "")
    )
    print(
        f"{2 * n} notifications per path and round (sent and received of {n} journeys); "
        f"{selecting} of {selecting + 40} subscriptions select them "
        f"({min(3, selecting)} with outboundTTL); "
        + ("B holds a websocket subscription that selects them" if args.socket else "no websocket")
    )
    print("per notification: CPU of A and B, CPU of Redis, commands the clients sent, commands")
    print("Redis ran (INFO commandstats: Lua's own included), round trips (sends)")
    await run_path("new", args.redis, min(n, 200), args.socket, selecting)  # warm-up
    results: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    failed = False
    for round_ in range(1, args.rounds + 1):
        for path in ("old", "new"):
            r = await run_path(path, args.redis, n, args.socket, selecting)
            results[path].append(r)
            print(f"round {round_}  {line(r)}   fan-out messages B handled {r['fanned_in']}")
            checks = [
                (r["acked"] == r["notifications"], f"acked {r['acked']}"),
                (r["enqueued"] == r["expected_hooks"], f"webhooks {r['enqueued']}"),
            ]
            if args.socket:
                ok = r["socket_delivered"] == r["notifications"]
                checks.append((ok, f"socket got {r['socket_delivered']}"))
            for ok, what in checks:
                if not ok:
                    failed = True
                    print(f"  WRONG: {what}, expected {r['notifications']} / {r['expected_hooks']}")
    print("commands Redis ran per notification, by command (last round):")
    for path in ("old", "new"):
        last = results[path][-1]
        per = ", ".join(
            f"{k} {v / last['notifications']:.2f}"
            for k, v in sorted(last["by_command"].items(), key=lambda kv: -kv[1])
            if k != "info" and v / last["notifications"] >= 0.005
        )
        print(f"  {path}: {per}")
    for path, rs in results.items():
        medians = {key: statistics.median(r[key] for r in rs) for key in KEYS}
        print(f"medians    {line({'path': path, **medians})}")
    ratios = {
        key: statistics.median(
            new[key] / old[key] for old, new in zip(results["old"], results["new"], strict=True)
        )
        for key in KEYS
    }
    print(
        "RATIOS new/old: throughput {rate:.2f}  CPU {cpu_us:.2f}  Redis CPU {redis_cpu_us:.2f}  "
        "commands sent {client_commands:.2f}  run by Redis {commands:.2f}  round trips "
        "{round_trips:.3f}   (medians of the per-round ratios)".format(**ratios)
    )
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--journeys", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--socket", action="store_true", help="B holds a websocket subscription")
    parser.add_argument(
        "--subscriptions", type=int, default=10, help="subscriptions that select the notifications"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
