"""A worker working off a large backlog of ``xcm-legs`` writes its results as it goes, in round
trips of bounded size, and matches every journey exactly once.

The match agent (``topology/xcm.py``, ``xcm_match``) takes records from a direct feed and, while
the feed holds some, has nothing to wait for: its flush only queues records in the producer.
Left to itself it would keep the event loop for as long as the feed lasts, and the producer
(whose task writes what was queued) would write nothing until then, and then everything at
once; the drain loop would not refill the feed meanwhile either. That is the regression this
test guards (``docs/benchmarks.md``, "Issue 14, twenty-fifth round": a burst of 40,000 journeys
held the loop for more than a second at a time, and a round trip of 60,000 records took 200 MiB
of heap). What prevents it is a turn of the event loop while the matcher works: the matcher's
``await app.producer.wait_room()`` after each batch, and the drain loop's own yield every 100
records it hands over (``ocstream/transport/drain.py``, ``_Drain.YIELD_EVERY``), which keeps the
feed short in the first place. The first test fails when neither holds; either one alone is
enough to pass it. The second test is about ``wait_room``'s bound alone: it keeps Redis from
taking writes for a while, so that the producer falls behind whatever the loop does.

The backlog (synthetic journeys, ``benchmarks/journeys.py``, every leg published at once in a
random order) is in Redis before the worker starts, and the worker's fetch count is raised so
that one fetch brings all of it into the worker: how much of it the matcher gets through
between two writes is then decided by those yields alone. While the worker works, the test
samples the notifications in Redis and the worker's ``/metrics``. It asserts:

1. some notifications were in Redis while at least :data:`UNTAKEN_SHARE` of the backlog was not
   yet taken by the worker's agents (``ocstream_transport_direct_records_taken_total``, read
   after the notifications: it counts delivery's records and the matcher's own index records
   too, so it only overstates how far the matcher got). A committed offset would not do:
   offsets are committed after the writes they cover, so the committed lag is still the whole
   backlog just after an agent that held the loop has had its writes made;
2. the producer's round trips carried at most :data:`ROUND_TRIP_RECORDS` records each on
   average, over many round trips (the worker's ``produce_batch_records``, set lower than the
   default so that it binds), and each was timed on ``/metrics``;
3. every journey ended with exactly its three notifications (``xcm.sent``, ``xcm.relayed``,
   ``xcm.received``), each written once, nothing dead-lettered, nothing timed out.

No assertion is about time: the timeouts only keep a broken run from hanging.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from ocstream.transport import Keyspace
from ocstream.transport.producer import MAX_IN_FLIGHT
from tests.workers import Worker, publish_records, wait_for

from .outcomes import assert_each_journey_notified_once, dead_letter_count, notification_entries

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
if TYPE_CHECKING:  # mypy does not see the sys.path above: it finds the module from the root
    from benchmarks.journeys import build_journeys, shuffled
else:
    from journeys import build_journeys, shuffled

PARTITIONS = 4  # the test worker's topic partitions
#: 30,000 leg records: about 4 s of matching for one worker on the 2-core development machine,
#: so that dozens of samples land while it works, several of them in its first third.
JOURNEYS = 10_000
#: The match agent's batch bound (``OCSTREAM_XCM_BATCH_RECORDS``; 500 by default).
BATCH_RECORDS = 200
#: The first test's worker writes at most this many records in one round trip
#: (``OCSTREAM_TRANSPORT_PRODUCE_BATCH_RECORDS``). With the default, 3,000, this backlog's
#: round trips carried 1,169 and 1,298 records on average: a setting that did not reach the
#: worker would fail assertion 2.
ROUND_TRIP_RECORDS = 300
#: More records than one batch of :data:`BATCH_RECORDS` leg records makes: what the match agent
#: may queue past ``wait_room``'s bound before it checks again (it checks after each batch; the
#: peak went 1,700 to 1,900 records past the bound).
BATCH_OUTPUT = 5_000
#: Share of the backlog that must still be untaken in some sample that finds notifications
#: written (assertion 1). A worker yielding per batch had taken a tenth to a fifth of it when the
#: first notifications landed; one that holds the loop until its feed runs dry, all of it.
UNTAKEN_SHARE = 0.3
SAMPLE_EVERY = 0.1  # seconds between samples
TIMEOUT = 180.0  # only against a hang: a healthy run takes a few seconds


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the run: the notifications in Redis, then the worker's counters."""

    at: float  # seconds since the worker was started (for the failure message)
    notifications: int
    taken: float | None  # direct_records_taken; None when the worker did not answer
    produced: float | None  # records_produced

    def __str__(self) -> str:
        taken = "-" if self.taken is None else f"{self.taken:.0f}"
        produced = "-" if self.produced is None else f"{self.produced:.0f}"
        return f"{self.at:.2f}s notes={self.notifications} taken={taken} produced={produced}"


def scrape(worker: Worker) -> dict[str, float] | None:
    """:meth:`Worker.metrics`, or None when the worker does not answer (not started yet, or its
    loop is held)."""
    try:
        return worker.metrics()
    except OSError:  # refused, reset, timed out (urllib's URLError is an OSError)
        return None


def notification_count(client: redis.Redis, keys: Keyspace) -> int:
    streams = [keys.stream("xcm-notifications", p) for p in range(PARTITIONS)]
    return sum(client.xlen(stream) for stream in streams)


def assert_matched_once(
    entries: list[dict[str, Any]], dead: int, final: dict[str, float], journeys: int = JOURNEYS
) -> None:
    """Every one of ``journeys`` journeys ended with exactly its three notifications, each
    written once; nothing dead-lettered, nothing timed out."""
    by_id = {note["id"]: note for note in entries}
    assert len(entries) == len(by_id) == 3 * journeys
    assert_each_journey_notified_once(by_id.values(), journeys)
    assert dead == 0
    assert final["oc_engine_timeout_total"] == 0


def still_running(worker: Worker) -> None:
    if not worker.alive():
        raise AssertionError(f"the worker exited:\n{worker.log_tail()}")


def written(client: redis.Redis, keys: Keyspace) -> tuple[list[dict[str, Any]], int]:
    """Every notification entry written and the count of dead letters; closes ``client``."""
    entries = notification_entries(client, keys, PARTITIONS)
    dead = dead_letter_count(client, keys, PARTITIONS)
    client.close()
    return entries, dead


def start_writing(worker: Worker, client: redis.Redis, keys: Keyspace) -> None:
    """Start the worker and wait until it has written its first notifications."""
    worker.start()

    def writing() -> bool:
        still_running(worker)
        return notification_count(client, keys) > 0

    wait_for(writing, TIMEOUT, "the worker's first notifications")


def wait_all_written(
    worker: Worker, client: redis.Redis, keys: Keyspace, journeys: int
) -> dict[str, float]:
    """Wait for every journey's three notifications, then for the worker's producer to hold
    nothing (the last notifications are queued before their batch's table changes, which may
    still be on their way); returns the worker's metrics then."""

    def done() -> bool:
        still_running(worker)
        return notification_count(client, keys) >= 3 * journeys

    wait_for(done, TIMEOUT, f"all {3 * journeys} notifications")

    def drained() -> dict[str, float] | None:
        found = scrape(worker)
        return found if found and found["ocstream_transport_produce_queued_records"] == 0 else None

    return wait_for(drained, 30, "the producer to write all it held")


def backlog_worker(
    redis_url: str,
    prefix: str,
    app_id: str,
    tmp_path: Path,
    backlog: int,
    extra: dict[str, str] | None = None,
) -> Worker:
    """One worker running the production dataflow (by default matching and delivery, as a
    deployed worker runs it), with small matching batches and a fetch that takes every
    partition's whole backlog at once (the default 1,000 a partition would hand it over in
    slices, each followed by writes whatever the agent does); ``extra``: more settings."""
    env = {
        "OCSTREAM_XCM_BATCH_RECORDS": str(BATCH_RECORDS),
        "OCSTREAM_TRANSPORT_FETCH_COUNT": str(backlog),
        **(extra or {}),
    }
    return Worker(
        "w1",
        tmp_path,
        redis_url=redis_url,
        prefix=prefix,
        app_id=app_id,
        partitions=PARTITIONS,
        env=env,
        dataflow=None,
    )


def test_a_backlog_is_written_as_it_is_matched_in_bounded_round_trips(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path
) -> None:
    journeys = build_journeys(0, JOURNEYS, seed=11, partitions=PARTITIONS)
    records = shuffled(journeys, seed=12)
    backlog = len(records)
    publish_records(redis_url, prefix, "xcm-legs", records, PARTITIONS)
    extra = {"OCSTREAM_TRANSPORT_PRODUCE_BATCH_RECORDS": str(ROUND_TRIP_RECORDS)}
    worker = backlog_worker(redis_url, prefix, app_id, tmp_path, backlog, extra)
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    samples: list[Sample] = []
    try:
        started = time.monotonic()
        worker.start()
        while True:
            still_running(worker)
            # The notifications first: the counters read after them are of the same moment or
            # later, so they can only overstate what had been taken when the notes were there.
            notes = notification_count(client, keys)
            counters = scrape(worker) or {}
            taken = counters.get("ocstream_transport_direct_records_taken_total")
            produced = counters.get("ocstream_transport_records_produced_total")
            samples.append(Sample(time.monotonic() - started, notes, taken, produced))
            if notes >= 3 * JOURNEYS:
                break
            if time.monotonic() - started > TIMEOUT:
                raise AssertionError(
                    f"{notes} of {3 * JOURNEYS} notifications after {TIMEOUT}s:\n"
                    f"{worker.log_tail()}"
                )
            time.sleep(SAMPLE_EVERY)
        final = wait_for(lambda: scrape(worker), 30, "the worker's /metrics")
    finally:
        worker.stop()
    entries, dead = written(client, keys)

    # 1. Notifications were written while much of the backlog was still to be taken.
    during = [
        s
        for s in samples
        if s.taken is not None
        and s.notifications > 0
        and backlog - s.taken >= UNTAKEN_SHARE * backlog
    ]
    timeline = "\n".join(str(s) for s in samples)
    assert during, (
        f"no sample found notifications written while {UNTAKEN_SHARE:.0%} of the {backlog} "
        f"records of the backlog were still to be taken: the worker wrote only once it had "
        f"taken (nearly) all of it.\n{timeline}"
    )

    # 2. Round trips of bounded size, and many of them.
    produced = final["ocstream_transport_records_produced_total"]
    writes = final["ocstream_transport_produce_writes_total"]
    assert produced >= 3 * JOURNEYS  # the notifications alone, besides the table changelogs
    assert writes > 1
    assert produced / writes <= ROUND_TRIP_RECORDS, (produced, writes)
    # Each round trip timed (ocstream_transport_produce_round_trip_seconds).
    assert final["ocstream_transport_produce_round_trip_seconds_count"] >= writes

    # 3. Every journey matched exactly once: its three notifications, each written once.
    assert_matched_once(entries, dead, final)


#: How long Redis refuses writes in the second test: long enough for a worker on a slow machine
#: to match far more than MAX_IN_FLIGHT records' worth (it makes about five a leg record, some
#: thousands of leg records a second), well short of the group's session timeout, which the
#: test sets to 10 s (the test workers' 3 s would leave too little margin: heartbeats are
#: writes too).
PAUSE_MS = 2000


def test_an_agent_waits_for_room_while_redis_takes_no_writes(
    redis_url: str, prefix: str, app_id: str, tmp_path: Path
) -> None:
    """The same backlog, fetched whole, through a worker that only matches (``--role match``:
    in a worker that also delivers, matching waits for delivery to finish what it holds, which
    during the pause it cannot, and that would stop the agent before the bound does). Once the
    worker has written its first notifications, Redis refuses every write for
    :data:`PAUSE_MS` (``CLIENT PAUSE … WRITE``: reads go on, so the worker's feed stays full).
    The match agent must stop at ``wait_room``'s bound instead of
    queuing the backlog's records: the producer's peak (``ocstream_transport_produce_queued_
    peak_records``) above :data:`~ocstream.transport.producer.MAX_IN_FLIGHT` (so the pause did
    bring it to the bound) but not by more than one batch's records (:data:`BATCH_OUTPUT`:
    the agent checks after each batch), and at least one wait counted. Measured: a peak of
    11,700-11,900 records and 11 waits; with the agent's ``wait_room`` replaced by a bare turn
    of the loop, it went on matching through the pause, to a peak of 20,000-23,000."""
    journeys = build_journeys(0, JOURNEYS, seed=13, partitions=PARTITIONS)
    records = shuffled(journeys, seed=14)
    publish_records(redis_url, prefix, "xcm-legs", records, PARTITIONS)
    extra = {"OCSTREAM_ROLE": "match", "OCSTREAM_TRANSPORT_SESSION_TIMEOUT": "10"}
    worker = backlog_worker(redis_url, prefix, app_id, tmp_path, len(records), extra)
    client = redis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    try:
        start_writing(worker, client, keys)
        client.client_pause(PAUSE_MS, all=False)  # CLIENT PAUSE <ms> WRITE
        paused_at = notification_count(client, keys)

        final = wait_all_written(worker, client, keys, JOURNEYS)
    finally:
        worker.stop()
    entries, dead = written(client, keys)

    # The pause came while most of the backlog was still to be matched (a third of it: the
    # notifications come three a journey).
    assert paused_at < JOURNEYS, paused_at
    peak = final["ocstream_transport_produce_queued_peak_records"]
    assert MAX_IN_FLIGHT < peak <= MAX_IN_FLIGHT + BATCH_OUTPUT, peak
    assert final["ocstream_transport_produce_waits_total"] >= 1, final
    assert_matched_once(entries, dead, final)
