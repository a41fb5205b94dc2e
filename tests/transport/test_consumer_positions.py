"""Where the consumer reads a partition it has just been given: at the group's committed offset,
like a Kafka consumer, even when it fetches before faust has sought the partition there. And
faust's periodic livelock check, which costs the consumer nothing."""

from __future__ import annotations

from typing import Any, cast

import faust
import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from ocstream.transport import TopicWriter
from ocstream.transport.consumer import Consumer
from ocstream.transport.keys import Keyspace, offset_field
from ocstream.transport.settings import TransportSettings
from tests.transport.tasks import counting_tasks

TOPIC = "positions"


@pytest.fixture
async def consumer(redis_url: str, prefix: str, app_id: str) -> Any:
    app = faust.App(app_id, broker=redis_url)
    app.transport_settings = TransportSettings(prefix=prefix)  # type: ignore[attr-defined]  # read by the transport
    made = cast(Consumer, app.consumer)  # the transport's consumer (broker=redis://)
    yield made
    await made.client.aclose()
    await made.fetch_client.aclose()


async def fill(redis_url: str, prefix: str, count: int, committed: dict[str, int]) -> None:
    """``count`` records in partition 0 of the topic; ``committed``: group id -> its offset."""
    async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
        await writer.create_topic(TOPIC, 1)
        await writer.send_many(TOPIC, [(f"k{i}", f"v{i}") for i in range(count)], partition=0)
        for group, offset in committed.items():
            field = offset_field(TOPIC, 0)
            await writer.client.hset(Keyspace(prefix).group(group).offsets, field, offset)


async def test_a_partition_given_again_is_read_from_its_committed_offset(
    consumer: Any, redis_url: str, prefix: str, app_id: str
) -> None:
    """A worker keeps a partition through a rebalance: its assignment is emptied, then set
    again, and faust seeks it to the committed offset only after it resumed the flow. A fetch
    in between read from the partition's start, and faust handed its first record to the agent
    a second time (docs/transport.md, "Positions of a new assignment")."""
    await fill(redis_url, prefix, 10, {app_id: 6})
    tp = TP(TOPIC, 0)
    consumer.set_assignment({tp})
    fetched = await consumer._getmany({tp}, timeout=0.1)
    assert [offset for offset, _ in fetched[tp]] == [6, 7, 8, 9]

    # Given again (released and re-taken, as in a rebalance that keeps it): the same.
    consumer.set_assignment(set())
    consumer.set_assignment({tp})
    fetched = await consumer._getmany({tp}, timeout=0.1)
    assert [offset for offset, _ in fetched[tp]] == [6, 7, 8, 9]


async def test_a_partition_without_a_committed_offset_is_read_from_its_start(
    consumer: Any, redis_url: str, prefix: str
) -> None:
    await fill(redis_url, prefix, 3, {})
    tp = TP(TOPIC, 0)
    consumer.set_assignment({tp})
    fetched = await consumer._getmany({tp}, timeout=0.1)
    assert [offset for offset, _ in fetched[tp]] == [0, 1, 2]


async def test_a_seek_wins_over_the_committed_offset(
    consumer: Any, redis_url: str, prefix: str, app_id: str
) -> None:
    """faust's recovery seeks changelog partitions to where their stores are: that position,
    not the group's committed offset, is where the next fetch reads, whether the seek came
    before the fetch or while the fetch was looking the committed offset up."""
    await fill(redis_url, prefix, 10, {app_id: 6})
    tp = TP(TOPIC, 0)
    consumer.set_assignment({tp})
    await consumer.seek_wait({tp: 2})
    fetched = await consumer._getmany({tp}, timeout=0.1)
    assert [offset for offset, _ in fetched[tp]][:2] == [2, 3]

    consumer.set_assignment(set())
    consumer.set_assignment({tp})
    lookup = consumer.client.hmget

    async def seek_during_the_lookup(*args: Any) -> Any:
        await consumer.seek_wait({tp: 4})  # lands while the real HMGET is on its way
        return await lookup(*args)

    consumer.client.hmget = seek_during_the_lookup
    try:
        fetched = await consumer._getmany({tp}, timeout=0.1)
    finally:
        consumer.client.hmget = lookup
    assert [offset for offset, _ in fetched[tp]][:2] == [4, 5]  # not 6, the committed one


async def test_the_livelock_check_makes_no_task_per_partition(consumer: Any) -> None:
    """faust's livelock check awaits mode's ``sleep(0)`` (a task, a timer and a cancellation)
    for every assigned partition, every 2.5 commit intervals, only to call a verification that
    ocstream's consumer does not have. Here it is a no-op: no task, however many partitions."""
    consumer.set_assignment({TP(f"t{n}", p) for n in range(20) for p in range(8)})
    with counting_tasks() as created:
        await consumer.verify_all_partitions_active()
        ours = created()
        await FaustConsumer.verify_all_partitions_active(consumer)
        theirs = created() - ours
    assert ours == 0
    assert theirs >= 160  # faust's own: at least one per partition
