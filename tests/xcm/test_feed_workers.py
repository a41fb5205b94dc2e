"""The matcher's direct feed (``ocstream/transport/direct.py``) with real workers, through a
join and a kill in the middle of a backlog.

The feed holds records the drain loop fetched and the matcher has not taken yet. A rebalance
clears it (what it held was neither processed nor acknowledged) and the partitions' next
owners read those records again from their committed offsets; a worker killed mid-batch wrote
nothing of that batch. If either went wrong, a leg would be lost (its journey left without a
receipt) or a record would be matched twice with different effects. Here a backlog of
synthetic journeys (the benchmark's, ``benchmarks/journeys.py``), every leg published at once
in a random order, goes through one worker, a second one joining, and the first one killed:
every journey must end with exactly its three notifications (by id), none timed out, nothing
dead-lettered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from ocstream.transport import Keyspace
from tests.workers import Worker, publish_records, wait_for

from .outcomes import assert_each_journey_notified_once, dead_letter_count, notification_entries

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
if TYPE_CHECKING:  # mypy does not see the sys.path above: it finds the module from the root
    from benchmarks.journeys import build_journeys, shuffled
else:
    from journeys import build_journeys, shuffled

PARTITIONS = 4  # the test workers' topic partitions
JOURNEYS = 3000


def publish(redis_url: str, prefix: str, records: list[tuple[str, bytes]]) -> None:
    publish_records(redis_url, prefix, "xcm-legs", records, PARTITIONS)


def notifications(redis_url: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every notification written, by id (a notification written twice, after the kill, is
    the same notification)."""
    client = redis.Redis.from_url(redis_url)
    entries = notification_entries(client, Keyspace(prefix), PARTITIONS)
    client.close()
    return {note["id"]: note for note in entries}


def test_a_backlog_is_matched_whole_through_a_join_and_a_kill(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path
) -> None:
    journeys = build_journeys(0, JOURNEYS, seed=7, partitions=PARTITIONS)
    records = shuffled(journeys, seed=8)
    third = len(records) // 3
    # Small batches: many flushes and acknowledgements for the join and the kill to fall into;
    # offsets committed at rebalances only (not every second), so that what w1 matched after
    # the join is certainly not committed when it is killed.
    config = tmp_path / "worker.toml"
    config.write_text("[worker]\ncommit_interval = 600\n")
    env = {"OCSTREAM_XCM_BATCH_RECORDS": "50", "OCSTREAM_CONFIG_FILE": str(config)}

    def worker(name: str) -> Worker:
        return Worker(
            name,
            tmp_path,
            redis_url=redis_url,
            prefix=prefix,
            app_id=app_id,
            env=env,
            dataflow="xcm,demo",  # the demo's page tells when a worker is assigned
        )

    def received() -> int:
        return sum(n["type"] == "xcm.received" for n in notifications(redis_url, prefix).values())

    first, second = worker("w1"), worker("w2")

    def first_batches() -> int:
        return int(json.loads(first.get("/xcm/pending/"))["counters"].get("batches", 0))

    try:
        first.start()
        first.wait_assigned()
        publish(redis_url, prefix, records[:third])
        second.start()  # joins while the first third is being matched: a rebalance
        second.wait_assigned()
        batches = first_batches()
        publish(redis_url, prefix, records[third : 2 * third])
        # Killed in the middle of its share of the second third: what it fetched, took, or
        # flushed and did not commit is redone by w2.
        wait_for(lambda: first_batches() >= batches + 5, 30, "w1 matching the second third")
        first.kill()
        publish(redis_url, prefix, records[2 * third :])
        wait_for(lambda: received() >= JOURNEYS, 180, "every journey received", interval=1.0)
        redone = json.loads(second.get("/xcm/pending/"))["counters"].get("duplicate_legs", 0)
        # The production worker's agents took their records from the feeds, not from faust.
        taken = second.metric("ocstream_transport_direct_records_taken_total")
    finally:
        second.stop()
        if first.alive():
            first.stop()

    assert_each_journey_notified_once(notifications(redis_url, prefix).values(), JOURNEYS)
    client = redis.Redis.from_url(redis_url)
    dead = dead_letter_count(client, Keyspace(prefix), PARTITIONS)
    client.close()
    assert dead == 0
    # Legs w1 had matched, written and not committed came again to w2, which knew them as
    # seen (matching.md, section 6): the kill fell in the middle of the flow.
    assert redone > 0
    assert taken >= JOURNEYS  # legs, index records and notifications: several per journey
