"""Matching apart from delivery: workers of different roles in one group, real processes on real
Redis (docs/deploy.md, "Matching apart from delivery").

One ``--role match`` worker (extract and match, the XCM tables) and two ``--role deliver``
workers (``xcm_deliver``, the webhook dispatcher) share a group. The matching worker gets the
partitions of the XCM topics and none of ``xcm-notifications``; the delivering ones split
``xcm-notifications`` and nothing else. Notifications written to ``xcm-notifications``, and a
real journey matched from recorded blocks, must reach a real webhook receiver exactly once.

The websocket is opened on the matching worker, which delivers nothing itself: what the
delivering workers deliver reaches it through the fan-out. Before it is opened, nothing is
fanned out at all.

The matching worker leads the group, and the leader applies retention to the topics of every
member: ``xcm-notifications``, which it does not read, is trimmed to its limit too.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from ocstream.delivery import SELECT_HEADER
from ocstream.testing import blocks_from_case, publish_blocks, register_network
from ocstream.transport import TopicWriter
from ocstream.transport.client import connect
from ocstream.transport.keys import Keyspace
from ocstream.transport.wire import decode_headers
from tests.sinks.test_webhook import Receiver
from tests.streams import xrange
from tests.workers import Worker, committed_offsets, group_assignment, highwaters

T = TypeVar("T")

PARTITIONS = 4
RELAY = "urn:ocn:polkadot:0"
ASSET_HUB = "urn:ocn:polkadot:1000"
INTERLAY = "urn:ocn:polkadot:2032"
NETWORKS = {
    ASSET_HUB: "assethub-9430.scale",
    INTERLAY: "interlay-1025002.scale",
    RELAY: "polkadot-9430.scale",
}
NOTIFICATIONS = "xcm-notifications"
#: Entries of each partition of ``xcm-notifications`` retention keeps in this test.
KEPT = 20


async def until(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``.

    A check that returns None until it is done gives its result without the None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await check()
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return cast(T, last)
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver().start()
    yield found
    await found.stop()


def ids(receiver: Receiver) -> Counter[str]:
    return Counter(n["id"] for n in receiver.notifications())


def synthetic(n: int) -> list[dict[str, Any]]:
    """``xcm.sent`` notifications of Asset Hub -> Interlay journeys, as the matcher writes them."""
    notes = []
    for i in range(n):
        journey = uuid.uuid4().hex
        notes.append(
            {
                "id": f"{journey}:sent:0",
                "journeyId": journey,
                "type": "xcm.sent",
                "legs": [{"from": ASSET_HUB, "to": INTERLAY, "type": "hrmp", "relay": RELAY}],
                "origin": {"chainId": ASSET_HUB, "blockNumber": str(1000 + i)},
                "destination": {"chainId": INTERLAY},
                "waypoint": {"chainId": ASSET_HUB, "legIndex": 0},
                "sender": None,
            }
        )
    return notes


def assignments(redis_url: str, prefix: str, app_id: str) -> dict[int, set[str]]:
    """The topics of each member's assignment in the group's stable generation, by pid."""
    return {
        pid: {
            # faust's leader topic, which every member subscribes to, goes to one of them.
            topic
            for topic, partitions in held.items()
            if partitions and not topic.endswith("-__assignor-__leader")
        }
        for pid, held in group_assignment(redis_url, prefix, app_id).items()
    }


async def metrics(http: aiohttp.ClientSession, worker: Worker) -> dict[str, float]:
    """The worker's samples by name (labels joined in: ``name{label=value}``)."""
    async with http.get(f"http://127.0.0.1:{worker.port}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


async def test_match_and_deliver_workers_split_the_work_and_deliver_once(
    redis_url: str,
    prefix: str,
    app_id: str,
    tmp_path: Path,
    fixtures_dir: Path,
    receiver: Receiver,
) -> None:
    for network, metadata in NETWORKS.items():
        await register_network(
            redis_url,
            network,
            spec_version=int(metadata.removesuffix(".scale").rsplit("-", 1)[1]),
            metadata=(fixtures_dir / "metadata" / metadata).read_bytes(),
            prefix=prefix,
        )
    hrmp = blocks_from_case(fixtures_dir / "cases" / "v1-hrmp-assethub-interlay.json", fixtures_dir)
    env = {"OCSTREAM_WEBHOOK_ALLOW_PRIVATE": "1", "OCSTREAM_TRANSPORT_RETENTION_INTERVAL": "1"}
    keys = Keyspace(prefix)
    sync_client = redis.Redis.from_url(redis_url)
    sync_client.hset(keys.retention, NOTIFICATIONS, KEPT)
    roles = {"m1": "match", "d1": "deliver", "d2": "deliver"}
    workers = {
        name: Worker(
            name,
            tmp_path,
            redis_url=redis_url,
            prefix=prefix,
            app_id=app_id,
            partitions=PARTITIONS,
            dataflow=None,  # the production dataflow, split by role
            env={**env, "OCSTREAM_ROLE": role},
        )
        for name, role in roles.items()
    }
    matcher, deliverers = workers["m1"], [workers["d1"], workers["d2"]]
    client = connect(redis_url, name="test-roles")
    writer = TopicWriter(client, prefix=prefix, default_partitions=PARTITIONS)
    socket_notes: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            matcher.start()

            async def leading() -> bool:
                if not matcher.alive():
                    raise AssertionError(f"m1 exited:\n{matcher.log_tail()}")
                leader = cast(bytes | None, sync_client.get(keys.group(app_id).leader))
                return leader is not None and int(leader.decode().rsplit("-", 2)[1]) == matcher.pid

            await until(leading, 60, "the matching worker to lead the group")
            for worker in deliverers:
                worker.start()

            async def split() -> dict[int, set[str]] | None:
                for worker in workers.values():
                    if not worker.alive():
                        raise AssertionError(f"{worker.name} exited:\n{worker.log_tail()}")
                found = assignments(redis_url, prefix, app_id)
                if set(found) != {worker.pid for worker in workers.values()}:
                    return None
                return found if all(found.values()) else None  # each holds some partitions

            topics = await until(split, 120, "a generation that assigns all three workers")
            # Each role gets the partitions of its own topics only.
            assert NOTIFICATIONS not in topics[matcher.pid]
            assert {"blocks", "xcm-legs"} <= topics[matcher.pid]
            for worker in deliverers:
                assert topics[worker.pid] == {NOTIFICATIONS}, topics

            body = {
                "id": "hook",
                "origin": ASSET_HUB,
                "senders": "*",
                "destinations": [INTERLAY],
                "channels": [{"type": "webhook", "url": receiver.url}],
            }
            async with http.post(f"http://127.0.0.1:{matcher.port}/subs", json=body) as answer:
                assert answer.status == 201, await answer.text()

            async def seen_everywhere() -> bool:
                for worker in deliverers:
                    found = await metrics(http, worker)
                    if found.get("oc_active_subscriptions_count{type=persistent}") != 1:
                        return False
                return True

            await until(seen_everywhere, 30, "the subscription on the delivering workers")

            async def append(notes: list[dict[str, Any]]) -> None:
                records = [(n["journeyId"], orjson.dumps(n)) for n in notes]
                await writer.send_many(NOTIFICATIONS, records)

            # Wave 1, with no websocket open anywhere: delivered, and nothing fanned out.
            first = synthetic(60)
            await append(first)

            async def wave_done(notes: list[dict[str, Any]]) -> bool:
                got = ids(receiver)
                return all(got[n["id"]] for n in notes)

            await until(lambda: wave_done(first), 60, "the first wave at the webhook")
            for worker in deliverers:
                assert (await metrics(http, worker)).get("oc_delivery_fanned_out_total") == 0

            # A websocket on the matching worker, which delivers nothing itself.
            ws = await http.ws_connect(f"ws://127.0.0.1:{matcher.port}/ws/subs")
            await ws.send_str(json.dumps({"origin": ASSET_HUB, "destinations": [INTERLAY]}))
            echo = await ws.receive_json(timeout=10)
            assert echo.get("ephemeral") is True, echo

            async def read_socket() -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        socket_notes.append(json.loads(message.data))

            reader = asyncio.create_task(read_socket())
            # Wave 2: synthetic notifications, and a real journey matched by the matching
            # worker from recorded blocks (the receipt first, then its origin).
            second = synthetic(60)
            await append(second)
            destination = [b for b in hrmp if b.network == INTERLAY]
            origin = [b for b in hrmp if b.network == ASSET_HUB]
            await publish_blocks(redis_url, destination, prefix=prefix, partitions=PARTITIONS)
            await publish_blocks(redis_url, origin, prefix=prefix, partitions=PARTITIONS)

            made_up = {n["id"] for n in first + second}

            async def real_journey() -> list[dict[str, Any]] | None:
                real = [n for n in receiver.notifications() if n["id"] not in made_up]
                kinds = {n["type"] for n in real}
                return real if {"xcm.sent", "xcm.received"} <= kinds else None

            await until(lambda: wave_done(second), 60, "the second wave at the webhook")
            real = await until(real_journey, 120, "the real journey's sent and received")
            # The matching worker knows the subscription follows Asset Hub: the real journey's
            # records carry the selector its deliverers selected them by (the made-up ones,
            # written here, carry no header at all).
            selected = [
                orjson.loads(headers[SELECT_HEADER])
                for p in range(PARTITIONS)
                for _, fields in xrange(sync_client, keys.stream(NOTIFICATIONS, p))
                if SELECT_HEADER in (headers := dict(decode_headers(fields.get(b"h"))))
            ]
            assert sorted(n["id"] for n in selected) == sorted(n["id"] for n in real), selected

            async def all_acknowledged() -> bool:
                committed = committed_offsets(redis_url, prefix, app_id)
                ends = highwaters(redis_url, prefix, NOTIFICATIONS, PARTITIONS)
                return all(committed.get(tp, 0) >= end for tp, end in ends.items())

            await until(all_acknowledged, 60, "every notification record acknowledged")
            ends = highwaters(redis_url, prefix, NOTIFICATIONS, PARTITIONS)
            assert sum(ends.values()) > PARTITIONS * KEPT  # some partition is over the limit

            async def trimmed() -> bool:
                lengths = [sync_client.xlen(keys.stream(NOTIFICATIONS, p)) for p in range(4)]
                return max(lengths) <= KEPT

            await until(trimmed, 30, f"every partition of {NOTIFICATIONS} cut to {KEPT}")
            expected_socket = len(second) + len(real)

            async def on_socket_too() -> bool:
                return len(socket_notes) >= expected_socket

            await until(on_socket_too, 30, "the second wave on the websocket")
            reader.cancel()
            await ws.close()

            # Exactly once at the webhook, wave 1 and 2 and the real journey.
            got = ids(receiver)
            assert all(count == 1 for count in got.values()), got.most_common(3)
            assert len(got) == len(first) + len(second) + len(real)
            assert all(n["subscriptionId"] == "hook" for n in receiver.notifications())
            # The socket got wave 2 and the real journey once each, nothing of wave 1.
            on_socket = Counter(n["id"] for n in socket_notes)
            assert all(count == 1 for count in on_socket.values()), on_socket.most_common(3)
            assert {n["id"] for n in second} <= set(on_socket)
            assert not {n["id"] for n in first} & set(on_socket)
            assert len(on_socket) == expected_socket
            assert {n["subscriptionId"] for n in socket_notes} == {echo["id"]}

            # Both delivering workers delivered the webhooks; the matching worker only its
            # socket's notifications, which the fan-out brought it.
            def handed(found: dict[str, float]) -> float:
                prefix = "oc_notifier_notification_total"
                return sum(v for k, v in found.items() if k.startswith(prefix))

            delivered = [handed(await metrics(http, worker)) for worker in deliverers]
            assert all(delivered) and sum(delivered) == len(got)
            assert handed(await metrics(http, matcher)) == expected_socket
        finally:
            for worker in workers.values():
                worker.stop()
            await writer.close()
            await client.aclose()
            sync_client.close()
