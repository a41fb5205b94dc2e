"""Whole workers (``python -m ocstream worker``) on real Redis: the transport's promises.

Every test runs against the machine's Redis 7 and the embedded Redis 6.2.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import rocksdict
from faust.stores.rocksdb import Store as FaustRocksDBStore

from ocstream.transport import TopicWriter
from ocstream.transport.assignor import MIN_RECORDS
from ocstream.transport.keys import Keyspace
from ocstream.transport.lag import group_lag
from ocstream.transport.traffic import SETTLE_RECORDS
from tests.streams import xrange
from tests.workers import (
    Worker,
    changelog_counts,
    changelog_partition,
    committed_offsets,
    highwaters,
    produce,
    produce_all,
    wait_for,
)

USERS = 50
OFFSET_KEY = FaustRocksDBStore.offset_key

Spawn = Callable[..., Worker]


@pytest.fixture
def spawn(redis_url: str, prefix: str, app_id: str, data_root: Path) -> Iterator[Spawn]:
    """Make workers of this test's group; any still running at the end are stopped."""
    made: list[Worker] = []

    def make(name: str, **kwargs: Any) -> Worker:
        worker = Worker(
            name, data_root, redis_url=redis_url, prefix=prefix, app_id=app_id, **kwargs
        )
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def test_agent_consumes_everything_another_process_produced(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    worker = spawn("w1")
    worker.start()
    try:
        view = worker.wait_assigned()
        assert view["partitions"] == [0, 1, 2, 3]
        produce_all(redis_url, prefix, 2000, users=USERS)
        view = wait_for(
            lambda: (v := worker.view())["processed_here"] >= 2000 and v,
            60,
            "2000 events processed",
        )
        assert view["processed_here"] == 2000
        assert view["counts"] == {f"u{i}": 40 for i in range(USERS)}
        # Offsets reach the end of every partition once the periodic commit ran.
        ends = highwaters(redis_url, prefix, "demo-events")
        assert sum(ends.values()) == 2000 and all(ends.values())
        wait_for(
            lambda: all(
                committed_offsets(redis_url, prefix, app_id).get(tp) == end
                for tp, end in ends.items()
            ),
            20,
            "offsets committed up to the highwaters",
        )
        # The lag a tool reads from Redis (ocstream.transport.lag) agrees: the group's topics
        # as its member subscribed them, changelogs left out, nothing behind.
        client = redis.Redis.from_url(redis_url)
        lag = group_lag(client, Keyspace(prefix), app_id)
        client.close()
        assert {tp for tp in lag if tp[0] == "demo-events"} == {
            ("demo-events", p) for p in range(4)
        }
        assert not any(topic.endswith("-changelog") for topic, _ in lag)
        assert not any(lag.values()), lag
        metrics = worker.get("/metrics")
        # The demo dataflow alone: 4 partitions of demo-events, 4 of its changelog, the leader's.
        assert "ocstream_group_assigned_partitions 9.0" in metrics
        fetched = [
            line
            for line in metrics.splitlines()
            if line.startswith("ocstream_transport_records_fetched_total ")
        ]
        assert float(fetched[0].split()[1]) >= 2000
    finally:
        assert worker.stop() == 0, worker.log_tail()
    # The changelog in Redis holds the same table.
    assert changelog_counts(redis_url, prefix, app_id) == {f"u{i}": 40 for i in range(USERS)}


def test_wiped_state_is_rebuilt_from_changelog_and_consumption_resumes(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    worker = spawn("w1")
    worker.start()
    worker.wait_assigned()
    produce_all(redis_url, prefix, 500, users=USERS)
    wait_for(lambda: worker.view()["processed_here"] == 500, 60, "first 500 events")
    assert worker.stop() == 0, worker.log_tail()

    shutil.rmtree(worker.data_dir / "faust")  # the local RocksDB is gone
    produce_all(redis_url, prefix, 500, users=USERS)
    # At debug: faust's recovery tables (left out of the log at info) are printed.
    restarted = spawn("w1", loglevel="debug")
    restarted.start()
    try:
        restarted.wait_assigned()
        view = wait_for(
            lambda: (v := restarted.view())["processed_here"] >= 500 and v, 60, "500 more events"
        )
        # The first 500 came back from the changelog, not from reprocessing: only the new
        # events were processed, and the table holds all 1000.
        assert view["processed_here"] == 500
        assert view["counts"] == {f"u{i}": 20 for i in range(USERS)}
        assert "Highwater" in restarted.log_text()  # faust's recovery table was printed
    finally:
        assert restarted.stop() == 0, restarted.log_tail()


def send_events(redis_url: str, prefix: str, events: list[dict[str, Any]]) -> None:
    """Write demo events (``{"user": ..., "n": ...}`` or ``{"user": ..., "delete": True}``)
    keyed by user, through TopicWriter."""

    async def send() -> None:
        async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
            await writer.create_topic("demo-events", 4)
            await writer.send_many("demo-events", [(e["user"], json.dumps(e)) for e in events])

    asyncio.run(send())


def wait_tombstones_removed(redis_url: str, prefix: str, app_id: str, deleted: set[str]) -> None:
    """Wait until no entry of the demo's changelog names a ``deleted`` user: their values were
    compacted away, so what is left of them is their tombstones, and the leader removed those."""
    client = redis.Redis.from_url(redis_url)
    stream = Keyspace(prefix).stream
    changelog = f"{app_id}-demo-counts-changelog"
    wait_for(
        lambda: (
            not any(
                fields[b"k"].decode().strip('"') in deleted
                for p in range(4)
                for _, fields in xrange(client, stream(changelog, p))
            )
        ),
        30,
        f"the tombstones of {len(deleted)} deleted users to be removed",
    )


def test_an_old_store_does_not_bring_back_keys_whose_tombstones_were_removed(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    """w1 counts everyone and stops; while it is away, w2 deletes u0..u9 and, being the only
    holder of the changelog, lets the leader remove the tombstones. w1 comes back with its old
    store: replaying the changelog from its local offset would keep u0..u9 (their values were
    compacted away and their tombstones are gone), so it must discard that store and recover
    from the changelog's start."""
    env = {"OCSTREAM_TRANSPORT_RETENTION_INTERVAL": "0.3"}
    deleted = {f"u{i}" for i in range(10)}
    kept = {f"u{i}" for i in range(10, USERS)}
    first = spawn("w1", env=env)
    first.start()
    first.wait_assigned()
    produce_all(redis_url, prefix, 500, users=USERS)
    wait_for(lambda: first.view()["processed_here"] == 500, 60, "500 events counted by w1")
    assert first.stop() == 0, first.log_tail()

    second = spawn("w2", env=env)
    second.start()
    try:
        second.wait_assigned()
        send_events(redis_url, prefix, [{"user": u, "delete": True} for u in sorted(deleted)])
        # Then one more event for each remaining user, so that no partition's newest changelog
        # entry is a tombstone (the newest entry always stays).
        send_events(redis_url, prefix, [{"user": u, "n": 1} for u in sorted(kept)])
        wait_for(
            lambda: (c := second.view()["counts"]) == {u: 11 for u in kept} and c,
            60,
            "w2 to recover, delete u0..u9 and count the rest",
        )
        wait_tombstones_removed(redis_url, prefix, app_id, deleted)
        assert redis.Redis.from_url(redis_url).hlen(Keyspace(prefix).tombstone_floors) > 0
    finally:
        assert second.stop() == 0, second.log_tail()

    again = spawn("w1", env=env)  # the same data dir: the store w1 left, from before the deletes
    again.start()
    try:
        again.wait_assigned()
        counts = wait_for(
            lambda: (c := again.view()["counts"]) and all(c.get(u) == 11 for u in kept) and c,
            60,
            "w1 to recover the table",
        )
        assert counts == {u: 11 for u in kept}  # no deleted user came back
        assert "older than removed tombstones" in again.log_text()
    finally:
        assert again.stop() == 0, again.log_tail()


def two_workers_after_deletes(
    spawn: Spawn, redis_url: str, prefix: str, events: int
) -> tuple[list[Worker], set[str]]:
    """Two workers split 2 + 2, each the standby of the other's partitions (the default, one
    replica), reporting how far they applied every 0.3 s; ``events`` demo events over USERS
    users, then u0..u9 deleted and one more event for each other user. Returns the workers once
    their counts show all of it, and the deleted users."""
    env = {"OCSTREAM_TRANSPORT_RETENTION_INTERVAL": "0.3"}
    deleted = {f"u{i}" for i in range(10)}
    kept = {f"u{i}" for i in range(10, USERS)}
    workers = [spawn(name, env=env) for name in ("w1", "w2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.wait_assigned()
    wait_for(lambda: all(len(w.view()["partitions"]) == 2 for w in workers), 30, "a 2 + 2 split")
    produce_all(redis_url, prefix, events, users=USERS)
    send_events(redis_url, prefix, [{"user": u, "delete": True} for u in sorted(deleted)])
    send_events(redis_url, prefix, [{"user": u, "n": 1} for u in sorted(kept)])

    def counts() -> dict[str, int]:
        merged: dict[str, int] = {}
        for worker in workers:
            merged.update(worker.view()["counts"])
        return merged

    expected = {u: events // USERS + 1 for u in kept}
    wait_for(lambda: counts() == expected, 60, "the deletes and the last events")
    return workers, deleted


def test_tombstones_go_on_a_quiet_partition_that_a_standby_holds(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    """Two workers, each the standby of the other's partitions (the default, one replica).
    faust applies a standby's changelog records only 1,000 at a time per table; after a few
    deletes and then silence, each member still reports how far it applied, so the leader can
    remove the tombstones without waiting for more traffic."""
    workers, deleted = two_workers_after_deletes(spawn, redis_url, prefix, 200)
    wait_tombstones_removed(redis_url, prefix, app_id, deleted)  # with no more traffic
    for worker in workers:
        assert worker.stop() == 0, worker.log_tail()


def stored_counts(worker: Worker, partition: int) -> tuple[dict[str, int], int | None] | None:
    """What a stopped worker's RocksDB store of the demo table holds for ``partition``: the
    counts and the persisted changelog offset; None when it holds no store of it."""
    found = [p for p in worker.data_dir.rglob(f"demo-counts-{partition}.db") if p.is_dir()]
    if not found:
        return None
    (path,) = found
    db = rocksdict.Rdict(
        str(path),
        options=rocksdict.Options(raw_mode=True),
        access_type=rocksdict.AccessType.read_only(),
    )
    try:
        offset = db.get(OFFSET_KEY)
        counts = {
            json.loads(cast(bytes, key)): json.loads(value)  # raw_mode: bytes keys
            for key, value in db.items()
            if key != OFFSET_KEY
        }
    finally:
        db.close()
    return counts, int(offset) if offset is not None else None


def test_standby_stores_hold_what_the_changelog_holds(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    """Two workers with the default one standby replica: every store a worker keeps of a
    partition, active or standby, ends equal to the changelog (values, deletes and persisted
    offset). The standbys write their records straight from the fetch (``StandbyApplier``),
    which the workers' counters show."""
    workers, deleted = two_workers_after_deletes(spawn, redis_url, prefix, 2000)
    # Each member reports how far its stores applied each changelog partition it holds.
    client = redis.Redis.from_url(redis_url)
    applied_key = Keyspace(prefix).group(app_id).applied
    changelog = f"{app_id}-demo-counts-changelog"
    # The counts can show before the last changelog records are appended: the end is read anew.
    ends: dict[int, int] = {}

    def caught_up() -> bool:
        ends.update({p: changelog_partition(redis_url, prefix, app_id, p)[1] + 1 for p in range(4)})
        reports = [json.loads(r).get("applied", {}) for r in client.hvals(applied_key)]
        holders = {p: 0 for p in range(4)}
        for report in reports:
            for field, applied in report.items():
                topic, _, partition = field.partition("\x1f")
                if topic == changelog:
                    if applied != ends[int(partition)]:
                        return False
                    holders[int(partition)] += 1
        return all(n == 2 for n in holders.values())

    try:
        wait_for(caught_up, 30, "both holders of every partition to apply its whole changelog")
    except AssertionError as exc:
        applied_reports = cast(dict[bytes, bytes], client.hgetall(applied_key))
        reports = {k.decode(): json.loads(v) for k, v in applied_reports.items()}
        raise AssertionError(f"{exc}\nchangelog ends {ends}\nreports {reports}") from None
    applied = [
        worker.metric("ocstream_transport_standby_records_applied_total") for worker in workers
    ]
    for worker in workers:
        assert worker.stop() == 0, worker.log_tail()
    assert all(n > 0 for n in applied), applied
    for p in range(4):
        expected, last = changelog_partition(redis_url, prefix, app_id, p)
        stores = [stored_counts(worker, p) for worker in workers]
        held = [store for store in stores if store is not None]
        assert len(held) == 2, (p, stores)
        for store_counts, offset in held:
            assert offset == last
            assert store_counts == expected
        assert not deleted & set(expected)


def test_two_workers_split_evenly_and_survive_kill_9(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    env = {"OCSTREAM_PARTITIONS": "4"}
    first = spawn("w1", env=env)
    second = spawn("w2", env=env)
    first.start()
    second.start()
    try:
        first.wait_assigned()
        second.wait_assigned()
        wait_for(
            lambda: len(first.view()["partitions"]) == 2 and len(second.view()["partitions"]) == 2,
            30,
            "an even 2 + 2 split",
        )
        assert set(first.view()["partitions"]) | set(second.view()["partitions"]) == {0, 1, 2, 3}

        producer = produce(redis_url, prefix, 6000, users=USERS, rate=1500)
        wait_for(lambda: second.view()["processed_here"] > 300, 30, "w2 to be mid-flow")
        victim = set(second.view()["partitions"])
        second.kill()  # SIGKILL: no commit, no graceful leave
        ends_at_kill = highwaters(redis_url, prefix, "demo-events")
        committed_at_kill = committed_offsets(redis_url, prefix, app_id)
        window = sum(
            ends_at_kill[f"demo-events/{p}"] - committed_at_kill.get(f"demo-events/{p}", 0)
            for p in victim
        )

        out, _ = producer.communicate(timeout=120)
        assert "DONE 6000" in out
        wait_for(lambda: first.view()["partitions"] == [0, 1, 2, 3], 30, "takeover by w1")
        counts = wait_for(
            lambda: (c := first.view()["counts"]) and total(c) >= 6000 and c,
            60,
            "every event counted after the takeover",
        )
        duplicates = total(counts) - 6000
        # Nothing committed is lost; what w2 processed but had not committed may be counted
        # twice, and that can only be the entries past its committed offsets when it died.
        assert 0 <= duplicates <= window, (duplicates, window)
    finally:
        second.stop()
        assert first.stop() == 0, first.log_tail()


def test_worker_joining_mid_backlog_counts_every_message_exactly_once(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    produce_all(redis_url, prefix, 20_000, users=50)
    first = spawn("w1")
    second = spawn("w2")
    first.start()
    try:
        first.wait_assigned()
        wait_for(lambda: first.view()["processed_here"] > 1000, 60, "w1 into the backlog")
        assert first.view()["processed_here"] < 20_000, "backlog too small to rebalance mid-way"
        second.start()
        wait_for(
            lambda: len(second.wait_assigned()["partitions"]) == 2,
            60,
            "w2 to take half the partitions",
        )

        def all_counted() -> int:
            return total(first.view()["counts"]) + total(second.view()["counts"])

        wait_for(lambda: all_counted() >= 20_000, 120, "20,000 counted")
        views = [first.view(), second.view()]
        shape = [(v["partitions"], v["processed_here"], total(v["counts"])) for v in views]
        # Every message is counted once. About one run in three used to count the first
        # message of each partition the first worker kept twice: a fetch between faust
        # resuming the flow and seeking the kept partitions read them from their start
        # (docs/transport.md, "Positions of a new assignment";
        # tests/transport/test_consumer_positions.py).
        processed = first.view()["processed_here"] + second.view()["processed_here"]
        assert all_counted() == 20_000, shape
        assert processed == 20_000, (processed, shape)
    finally:
        second.stop()
        first.stop()
    assert total(changelog_counts(redis_url, prefix, app_id)) == 20_000


def test_more_partitions_for_a_topic_trigger_a_rebalance(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    worker = spawn("w1")
    worker.start()
    try:
        assert worker.wait_assigned()["partitions"] == [0, 1, 2, 3]
        assert "Created topic 'demo-events' with 4 partitions" in worker.log_text()
        # Grow the topic and its table's changelog together (they are copartitioned).
        client = redis.Redis.from_url(redis_url)
        client.hset(
            f"{prefix}topics",
            mapping={"demo-events": 6, f"{app_id}-demo-counts-changelog": 6},
        )
        wait_for(
            lambda: worker.view()["partitions"] == [0, 1, 2, 3, 4, 5],
            30,
            "the new partitions to be assigned",
        )
        assert "topics changed" in worker.log_text()
        produce_all(redis_url, prefix, 600, users=60, partitions=6)
        wait_for(lambda: worker.view()["processed_here"] == 600, 60, "600 events on 6 partitions")
    finally:
        assert worker.stop() == 0, worker.log_tail()


def fill_demo_partitions(redis_url: str, prefix: str, counts: dict[int, int]) -> None:
    """``counts[p]`` demo events written straight to partition ``p`` of ``demo-events`` (20
    users per partition)."""

    async def fill() -> None:
        async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
            await writer.create_topic("demo-events", 4)
            for partition, count in counts.items():
                users = [f"u{partition}-{i % 20}" for i in range(count)]
                items = [(user, json.dumps({"user": user, "n": 1})) for user in users]
                await writer.send_many("demo-events", items, partition=partition)

    asyncio.run(fill())


def wait_two_by_two(first: Worker, second: Worker) -> None:
    wait_for(
        lambda: (
            len(second.wait_assigned()["partitions"]) == 2
            and len(first.wait_assigned()["partitions"]) == 2
        ),
        60,
        "a 2 + 2 split",
    )


def start_two_by_two(
    spawn: Spawn, check_every: str, first_look: str | None = None
) -> tuple[Worker, Worker]:
    """Two demo workers with the leader's traffic check every ``check_every`` seconds (and its
    looks at an assignment not settled yet every ``first_look``, if given), started on an empty
    group and waited for until they hold two partitions each."""
    env = {"OCSTREAM_TRANSPORT_LOAD_CHECK_INTERVAL": check_every}
    if first_look is not None:
        env["OCSTREAM_TRANSPORT_LOAD_FIRST_LOOK"] = first_look
    first = spawn("w1", env=env)
    second = spawn("w2", env=env)
    first.start()
    second.start()
    try:
        wait_two_by_two(first, second)
    except BaseException:
        second.stop()
        first.stop()
        raise
    return first, second


def one_busy_each(first: Worker, second: Worker, busy: set[int]) -> bool:
    """Whether each of the two workers holds exactly one of the ``busy`` partitions."""
    held = [set(first.view()["partitions"]), set(second.view()["partitions"])]
    return [len(h & busy) for h in held] == [1, 1]


@pytest.mark.parametrize("assignment", ["load", "sticky"])
def test_a_joining_worker_gets_a_fair_share_of_the_traffic(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str, assignment: str
) -> None:
    """Partitions 0 and 1 have carried far more records than 2 and 3. faust's sticky deal, when
    a second worker joins, leaves the first one two of the four partitions by count alone (here
    2 and 3, the quiet ones); weighing what each partition carried gives each worker one busy
    partition. ``sticky`` shows that the weighing is what makes the difference."""

    fill_demo_partitions(redis_url, prefix, {0: 3000, 1: 3000, 2: 100, 3: 100})
    env = {"OCSTREAM_TRANSPORT_ASSIGNMENT": assignment}
    first = spawn("w1", env=env)
    second = spawn("w2", env=env)
    first.start()
    try:
        assert first.wait_assigned()["partitions"] == [0, 1, 2, 3]
        wait_for(lambda: first.view()["processed_here"] >= 6200, 60, "the backlog processed")
        second.start()
        wait_two_by_two(first, second)
        held = [set(first.view()["partitions"]), set(second.view()["partitions"])]
        busy = [len(h & {0, 1}) for h in held]
        if assignment == "load":
            assert busy == [1, 1], held
            assert "partition swap(s) by traffic" in first.log_text() + second.log_text()
        else:
            assert sorted(busy) == [0, 2], held  # faust's deal by counts: both busy on one
    finally:
        second.stop()
        first.stop()


@pytest.mark.parametrize(
    "check_every", ["2", "300", "0"], ids=["checked", "first-look", "not-checked"]
)
def test_uneven_traffic_on_a_stable_group_leads_to_a_fairer_assignment(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str, check_every: str
) -> None:
    """Two workers share four partitions that have carried nothing (a new deployment), then
    the traffic goes mostly to the two partitions one of them holds. With the leader weighing
    the traffic every ``load_check_interval`` (2 s here), it rebalances on its own and each
    worker ends up with one busy partition. With the default 300 s, so does the leader's first
    look at its blind assignment (``traffic.FIRST_LOOK``, 10 s), and no check follows: the
    look weighed enough to settle the assignment. With the check off, nothing moves, not even
    at the looks that would otherwise come every second (``load_first_look`` 1 s there)."""
    first, second = start_two_by_two(spawn, check_every, "1" if check_every == "0" else None)
    try:
        busy = set(first.view()["partitions"])
        fill_demo_partitions(redis_url, prefix, {p: 2000 if p in busy else 50 for p in range(4)})

        def spread() -> bool:
            return one_busy_each(first, second, busy)

        def counted() -> int:
            return total(first.view()["counts"]) + total(second.view()["counts"])

        if check_every == "0":
            wait_for(lambda: counted() >= 4100, 60, "every event counted")
            # Nothing to wait for when nothing may happen: watch for five looks' time (and more
            # than two intervals of the "checked" case), then look.
            time.sleep(5)
            assert set(first.view()["partitions"]) == busy
            for worker in (first, second):
                assert worker.metric("ocstream_transport_traffic_checks_total") == 0
            return
        wait_for(spread, 60, "one busy partition per worker")
        logs = first.log_text() + second.log_text()
        assert "uneven traffic (the busiest member carries" in logs
        leader = first if "uneven traffic" in first.log_text() else second
        assert leader.metric("ocstream_transport_traffic_rebalances_total") == 1
        wait_for(lambda: counted() >= 4100, 60, "every event counted")
        if check_every == "300":
            # The assignment now made was weighed against every event (over 1,000 records per
            # partition with the changelog's): settled, the next check is a whole interval away.
            weighed = leader.metric("ocstream_group_assignment_weighed_records")
            assert weighed >= SETTLE_RECORDS
            assert leader.metric("ocstream_transport_traffic_checks_total") == 1
            return
        # The next check of the leader finds the group even: no second rebalance.
        checks = leader.metric("ocstream_transport_traffic_checks_total")
        wait_for(
            lambda: leader.metric("ocstream_transport_traffic_checks_total") > checks,
            30,
            "another traffic check",
        )
        assert leader.metric("ocstream_transport_traffic_rebalances_total") == 1
        assert spread()
    finally:
        second.stop()
        first.stop()


def test_a_first_look_at_a_small_sample_is_followed_by_more_until_the_assignment_settles(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    """With the default 300 s interval, the leader's first look at a new group sees a little
    even traffic (150 events per partition): weighed, but too small a sample to trust
    (``load_settle_records``, 1,000). It looks again ``load_first_look`` later (3 s here, 10 by
    default), when the traffic has gone to one worker's two partitions, and evens the group out
    then, not an interval later."""
    first, second = start_two_by_two(spawn, "300", "3")
    try:
        fill_demo_partitions(redis_url, prefix, {p: 150 for p in range(4)})

        def leader() -> Worker:
            return first if first.metric("ocstream_group_leader") else second

        def weighed() -> float:
            return leader().metric("ocstream_group_assignment_weighed_records")

        wait_for(
            lambda: leader().metric("ocstream_transport_traffic_checks_total") >= 1,
            60,
            "the first look",
        )
        assert MIN_RECORDS <= weighed() < SETTLE_RECORDS
        assert leader().metric("ocstream_transport_traffic_rebalances_total") == 0
        busy = set(first.view()["partitions"])
        fill_demo_partitions(redis_url, prefix, {p: 1500 for p in busy})
        wait_for(lambda: one_busy_each(first, second, busy), 60, "one busy partition per worker")
        assert leader().metric("ocstream_transport_traffic_rebalances_total") == 1
        assert "weighed, an assignment settling before this look)" in leader().log_text()
        wait_for(lambda: weighed() >= SETTLE_RECORDS, 30, "the assignment settled")
    finally:
        second.stop()
        first.stop()


def test_a_lasting_shift_in_traffic_shows_against_a_long_even_history_and_a_burst_does_not(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    """Four partitions with an even history (2,500 events each) are shared 2 + 2. New traffic
    then goes only to one worker's two partitions. Against the whole history that is a small
    gain (the busiest share about 0.57 -> 0.5, below ``REBALANCE_GAIN``); the leader weighs
    what was written since its last check, where it is the whole difference. One burst of it
    is seen once and left alone (``UNEVEN_CHECKS``); the same traffic lasting over two checks
    is rebalanced."""
    fill_demo_partitions(redis_url, prefix, {p: 2500 for p in range(4)})
    first, second = start_two_by_two(spawn, "2")
    try:

        def counted() -> int:
            return total(first.view()["counts"]) + total(second.view()["counts"])

        wait_for(lambda: counted() >= 10_000, 90, "the history counted")
        leader = first if first.metric("ocstream_group_leader") else second

        def checks_after(count: int) -> None:
            checks = leader.metric("ocstream_transport_traffic_checks_total")
            wait_for(
                lambda: leader.metric("ocstream_transport_traffic_checks_total") >= checks + count,
                30,
                f"{count} more traffic check(s)",
            )

        # Two checks after the history was handled: the last one weighed only what came after
        # it (the changelog's last writes at most), and left things be.
        checks_after(2)
        busy = set(first.view()["partitions"])
        fill_demo_partitions(redis_url, prefix, {p: 800 for p in busy})
        checks_after(3)
        assert "uneven traffic (the busiest member carries 1.00" in leader.log_text()
        assert "in 1 check(s) in a row; a rebalance takes 2" in leader.log_text()
        assert leader.metric("ocstream_transport_traffic_rebalances_total") == 0
        assert set(first.view()["partitions"]) == busy

        def spread() -> bool:
            return one_busy_each(first, second, busy)

        # The same traffic, lasting: more of it after every check, until the leader moves.
        filled = 1
        while not spread():
            assert filled < 8, "no rebalance after a lasting shift"
            fill_demo_partitions(redis_url, prefix, {p: 800 for p in busy})
            filled += 1
            checks_after(1)
            if leader.metric("ocstream_transport_traffic_rebalances_total"):
                wait_for(spread, 60, "one newly busy partition per worker")
        assert filled >= 3  # the burst, then at least two checks of lasting traffic
        assert "in 2 check(s) in a row" not in leader.log_text()
        assert leader.metric("ocstream_transport_traffic_rebalances_total") == 1
        wait_for(lambda: counted() >= 10_000 + 1600 * filled, 60, "every event counted")
    finally:
        second.stop()
        first.stop()


def test_a_leader_taking_over_without_a_rebalance_checks_the_traffic(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    """The leader lease moves to the other worker while the members stay (as when a leader is
    paused past its lease): nothing rebalances, so the new leader did not make the current
    assignment. It takes over the maker's record of it and, when the traffic then goes to one
    worker's two partitions, its first look evens the group out."""
    first, second = start_two_by_two(spawn, "2")
    try:
        old, new = (first, second) if first.metric("ocstream_group_leader") else (second, first)
        group = Keyspace(prefix).group(app_id)
        client = redis.Redis.from_url(redis_url)
        generation = old.metric("ocstream_group_generation")
        assert client.exists(group.assigned_groups)
        leader = client.get(group.leader)
        (other,) = [
            m for m in cast(list[bytes], client.zrange(group.members, 0, -1)) if m != leader
        ]
        client.set(group.leader, other, px=10_000)
        wait_for(lambda: new.metric("ocstream_group_leader") == 1, 30, "the lease moved")
        wait_for(lambda: "took over the traffic checks" in new.log_text(), 30, "the record taken")
        assert new.metric("ocstream_group_generation") == generation  # no rebalance
        busy = set(old.view()["partitions"])
        fill_demo_partitions(redis_url, prefix, {p: 2000 if p in busy else 50 for p in range(4)})

        def spread() -> bool:
            return one_busy_each(first, second, busy)

        wait_for(spread, 60, "one busy partition per worker")
        assert new.metric("ocstream_transport_traffic_rebalances_total") == 1
        assert old.metric("ocstream_transport_traffic_rebalances_total") == 0
        # The leader's gauge shows the sample its assignment was weighed against. It follows
        # the lease: moved back, the first worker takes over the record of the assignment the
        # second made, and the second shows nothing.
        gauge = "ocstream_group_assignment_weighed_records"
        wait_for(lambda: new.metric(gauge) >= MIN_RECORDS, 30, "the new leader's gauge")
        leader = client.get(group.leader)
        (other,) = [
            m for m in cast(list[bytes], client.zrange(group.members, 0, -1)) if m != leader
        ]
        client.set(group.leader, other, px=10_000)
        wait_for(
            lambda: old.metric(gauge) >= MIN_RECORDS and new.metric(gauge) == 0,
            30,
            "the gauge moved with the lease",
        )
    finally:
        second.stop()
        first.stop()


def test_a_frozen_worker_cannot_move_offsets_when_it_wakes_up(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    first = spawn("w1")
    zombie = spawn("w2")
    first.start()
    zombie.start()
    try:
        first.wait_assigned()
        zombie.wait_assigned()
        wait_for(lambda: len(zombie.view()["partitions"]) == 2, 30, "a 2 + 2 split")
        producer = produce(redis_url, prefix, 3000, users=USERS, rate=1000)
        wait_for(lambda: zombie.view()["processed_here"] > 200, 30, "w2 mid-flow")
        os.kill(zombie.pid, signal.SIGSTOP)  # frozen: no heartbeats, no commits
        assert "DONE 3000" in producer.communicate(timeout=60)[0]
        wait_for(lambda: first.view()["partitions"] == [0, 1, 2, 3], 30, "takeover by w1")
        wait_for(lambda: total(first.view()["counts"]) >= 3000, 60, "w1 to count everything")
        after_takeover = committed_offsets(redis_url, prefix, app_id)

        os.kill(zombie.pid, signal.SIGCONT)  # it wakes up believing it owns 2 partitions
        wait_for(
            lambda: "Commit fenced" in zombie.log_text() or "released" in zombie.log_text(),
            30,
            "the zombie to be fenced or to give its partitions back",
        )
        wait_for(lambda: len(zombie.view()["partitions"]) == 2, 30, "w2 to rejoin")
        final = committed_offsets(redis_url, prefix, app_id)
        for tp, offset in after_takeover.items():
            assert final[tp] >= offset, f"{tp} went back from {offset} to {final[tp]}"
    finally:
        zombie.stop()
        first.stop()


def test_a_static_member_restarting_gets_its_partitions_back_without_a_rebalance(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    env = {"OCSTREAM_INSTANCE_ID": "worker-a"}
    worker = spawn("a", env=env)
    worker.start()
    generation = worker.wait_assigned()["generation"]
    assert worker.stop() == 0, worker.log_tail()
    # Same instance id and URL (the URL is part of what the assignor routes by).
    again = spawn("a", env=env, port=worker.port)
    again.start()
    try:
        view = again.wait_assigned()
        assert view["generation"] == generation  # the same generation: no rebalance happened
        assert view["partitions"] == [0, 1, 2, 3]
        produce_all(redis_url, prefix, 100, users=USERS)
        wait_for(lambda: again.view()["processed_here"] == 100, 30, "100 events")
    finally:
        assert again.stop() == 0, again.log_tail()


def test_a_member_that_never_releases_is_evicted_after_the_rebalance_timeout(
    spawn: Spawn, redis_url: str, prefix: str, app_id: str
) -> None:
    env = {"OCSTREAM_TRANSPORT_REBALANCE_TIMEOUT": "2"}
    worker = spawn("w1", env=env)
    worker.start()
    client = redis.Redis.from_url(redis_url)
    group = Keyspace(prefix).group(app_id)
    stop = threading.Event()
    try:
        generation = worker.wait_assigned()["generation"]
        # A member that heartbeats and has joined, but never releases anything.
        [real_member] = client.hkeys(group.meta)
        client.hset(group.meta, "stuck", client.hget(group.meta, real_member))

        def heartbeat() -> None:
            while not stop.is_set():
                client.zadd(group.members, {"stuck": int(time.time() * 1000) + 60_000})
                stop.wait(0.2)

        threading.Thread(target=heartbeat, daemon=True).start()
        wait_for(
            lambda: "did not release within 2s: evicted" in worker.log_text(),
            30,
            "the stuck member to be evicted",
        )
        view = wait_for(
            lambda: (v := worker.view())["generation"] > generation and v, 30, "a new generation"
        )
        assert view["partitions"] == [0, 1, 2, 3]
        assert client.hget(group.meta, "stuck") is None
    finally:
        stop.set()
        assert worker.stop() == 0, worker.log_tail()


def test_a_distributed_worker_sees_networks_registered_later(
    spawn: Spawn, redis_url: str, prefix: str
) -> None:
    import json

    worker = spawn("w1")
    worker.start()
    worker.wait_assigned()
    assert json.loads(worker.get("/networks")) == {}
    # An ingress elsewhere registers a network: no restart needed to see it.
    record: dict[str, Any] = {
        "id": "urn:ocn:polkadot:2034",
        "relay": "urn:ocn:polkadot:0",
        "tip_number": 7,
    }
    redis.Redis.from_url(redis_url).hset(f"{prefix}networks", record["id"], json.dumps(record))
    networks = json.loads(worker.get("/networks"))
    assert networks["urn:ocn:polkadot:2034"]["tip_number"] == 7
    assert networks["urn:ocn:polkadot:2034"]["relay"] == "urn:ocn:polkadot:0"
    assert worker.stop() == 0, worker.log_tail()
