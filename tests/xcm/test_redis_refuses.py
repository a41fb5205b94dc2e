"""A worker whose Redis refuses writes for a while (``maxmemory`` reached, with the
``noeviction`` policy: every write answers ``OOM command not allowed``) loses nothing: once
Redis takes writes again, every journey gets exactly its notifications.

Redis refuses such a write in an error reply, not by dropping the connection: it discards the
round trip's transaction, and the producer gets the refusal for each partition of it instead
of an exception. Before, the
producer took those errors as final: records nobody waited for (the match agent's
notifications and index records) were dropped without a word, and the offsets of the legs that
made them were committed. It must keep them queued, in order, and write them when Redis takes
writes again; commits must wait for them (``ocstream/transport/producer.py``,
``refused_for_now`` in ``ocstream/transport/client.py``).

The Redis servers here are private to the test (``maxmemory`` is a server-wide setting): the
embedded Redis 6.2 and the machine's ``redis-server`` (7.x), started on their own ports. A
script's error reads differently on each (6.2 wraps the code, 7 passes it on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from ocstream.transport import Keyspace
from tests.own_redis import start_version
from tests.workers import publish_records

from .test_backlog import (
    PARTITIONS,
    assert_matched_once,
    backlog_worker,
    notification_count,
    start_writing,
    still_running,
    wait_all_written,
    written,
)

if TYPE_CHECKING:  # test_backlog put benchmarks/ on sys.path; mypy finds it from the root
    from benchmarks.journeys import build_journeys, shuffled
else:
    from journeys import build_journeys, shuffled

JOURNEYS = 3_000
#: How long Redis refuses writes: several of the producer's retries (its backoff starts at
#: 0.1 s), well short of the group's session timeout, which the test sets to 10 s (heartbeats
#: are writes too, refused like the rest).
REFUSED_FOR = 3.0


@pytest.fixture(params=["redis62", "redis7"])
def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own: the embedded 6.2, or the machine's 7.x binary."""
    server = start_version(request.param, tmp_path / "redis")
    try:
        yield server.url
    finally:
        server.stop()


def test_writes_refused_for_a_while_are_written_once_redis_takes_them_again(
    private_redis: str, tmp_path: Path
) -> None:
    prefix, app_id = "oom:", "oom-app"
    journeys = build_journeys(0, JOURNEYS, seed=21, partitions=PARTITIONS)
    records = shuffled(journeys, seed=22)
    publish_records(private_redis, prefix, "xcm-legs", records, PARTITIONS)
    extra = {"OCSTREAM_TRANSPORT_SESSION_TIMEOUT": "10"}
    worker = backlog_worker(private_redis, prefix, app_id, tmp_path / "w", len(records), extra)
    client = redis.Redis.from_url(private_redis)
    keys = Keyspace(prefix)
    try:
        start_writing(worker, client, keys)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used // 2)
        refused_at = notification_count(client, keys)
        try:
            with pytest.raises(redis.exceptions.ResponseError, match="OOM|maxmemory"):
                client.set(f"{prefix}probe", "x")  # the premise: Redis refuses writes now
            time.sleep(REFUSED_FOR)
            still_running(worker)
            # Nothing was written while Redis refused (what the producer holds waits).
            assert notification_count(client, keys) == refused_at
        finally:
            client.config_set("maxmemory", 0)

        final = wait_all_written(worker, client, keys, JOURNEYS)
    finally:
        worker.stop()
    log = worker.log_text()
    entries, dead = written(client, keys)

    assert refused_at < 3 * JOURNEYS, refused_at  # Redis refused while there was work left
    # The producer retried what Redis refused, and gave none of it up.
    assert final["ocstream_transport_produce_retries_total"] >= 1, final
    assert final["ocstream_transport_produce_failed_total"] == 0, final
    assert "maxmemory" in log, log[-3000:]  # the refusal is in the log, as Redis worded it
    # ... in lines with a backoff, not as a traceback for every refused heartbeat.
    assert "tick failed" not in log, log[-3000:]
    assert_matched_once(entries, dead, final, journeys=JOURNEYS)
