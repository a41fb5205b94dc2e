"""faust's producer on Redis: records are queued and appended in pipelined batches.

``send()`` only queues; a background task drains the queue every ``linger_ms`` and writes the
queued records in one round trip (one Lua call per partition, in one transaction;
``produce_batch_records`` at most, a transport setting), which is what makes table changelog
writes cheap. A transient Redis error keeps the batch and retries it with backoff until Redis
answers (a retried batch may be written twice if the first reply was lost: the transport is
at-least-once, like faust on Kafka without transactions). So do the partitions Redis refused
to write for now (out of memory, a replica since a failover, ...:
:func:`~.client.refused_for_now`): their records are kept, in order, and ``flush()`` waits for
them. A partition refused for good (``WRONGTYPE``) fails its records' futures, and each such
record is counted and logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, cast

from faust.transport import base
from faust.transport.producer import ProducerBuffer
from faust.types import TP, RecordMetadata
from mode import Service, get_logger
from redis.asyncio import Redis

from ..durations import Durations
from .client import TRANSIENT_ERRORS, Backoff, connect, refused_for_now
from .keys import Keyspace
from .metrics import METRICS
from .settings import TransportSettings
from .wire import Record, partition_for_key, to_bytes
from .writer import TopicMetadata, append_records

if TYPE_CHECKING:
    from .driver import Transport

logger = get_logger(__name__)

#: ``(topic, partition, record, future)``; the future is None for all but the last record of a
#: :meth:`Producer.queue_many` call (nobody waits for them one by one).
_Pending = tuple[str, int, Record, "asyncio.Future[RecordMetadata] | None"]

#: Records queued or being written above which :meth:`Producer.wait_room` holds an agent back.
#: An agent that outruns Redis stops at about 10 MB of records instead of holding a backlog's
#: worth in the queue (40,000 records and 150 MiB more heap, seen in a burst), and the queue
#: still holds the next round trips while one is in Redis, so Redis never waits for the
#: agent. At least two round trips' worth when ``produce_batch_records`` is set higher.
MAX_IN_FLIGHT = 10_000

#: Upper bounds (seconds) of the buckets of the producer's round-trip times
#: (``ocstream_transport_produce_round_trip_seconds``).
ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Buffer(ProducerBuffer):
    """faust's buffer of messages sent through topics, with a cheaper ``size``. faust's conductor
    reads the size before it hands over every message it consumed (``wait_until_ebb``), and
    faust's property looks up the ``producer_threaded`` setting each time, which took about 2 %
    of a busy worker's CPU. This transport never runs a threaded producer."""

    @property
    def size(self) -> int:
        return len(self.pending._queue)  # type: ignore[attr-defined]


class Producer(base.Producer):
    """faust ``Producer`` for ``redis://`` brokers."""

    _client: Redis | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer.__class__ = _Buffer  # made by faust's __init__, not started yet

    def __post_init__(self) -> None:
        transport = cast("Transport", self.transport)
        self.settings: TransportSettings = transport.settings
        #: Most records in one round trip, and the most queued or being written before
        #: ``wait_room`` holds an agent back.
        self.batch_records = self.settings.produce_batch_records
        self.max_in_flight = max(MAX_IN_FLIGHT, 2 * self.batch_records)
        self.keys = Keyspace(self.settings.prefix)
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        # flush() waits for the records queued before it, not for the queue to drain: under
        # steady load the queue is never empty. Counters of records queued and settled
        # (written or failed) tell when that point has passed.
        self._queued = 0
        self._settled = 0
        self._settled_changed = asyncio.Condition()
        self._compacted: set[str] = set()
        #: The most records this producer has held queued or being written at once since it
        #: started (taken as each round trip settles): what agents queued while Redis or the
        #: writer was behind, which ``wait_room`` bounds.
        self.outstanding_peak = 0
        #: How long each answered round trip took, from packing to the last reply: Redis's
        #: time in the transaction, and whatever made it wait (other clients' round trips, a
        #: busy machine, a slow network).
        self.round_trips = Durations(ROUND_TRIP_BUCKETS)

    @property
    def outstanding(self) -> int:
        """Records queued or being written, not yet written or failed."""
        return self._queued - self._settled

    @property
    def client(self) -> Redis:
        if self._client is None:
            transport = cast("Transport", self.transport)
            self._client = connect(transport.redis_url, name=f"{self.app.conf.id}-producer")
            self._topics = TopicMetadata(self._client, self.keys)
        return self._client

    @property
    def topics(self) -> TopicMetadata:
        _ = self.client
        return self._topics

    async def on_stop(self) -> None:
        await self.flush()
        if self._client is not None:
            await self._client.aclose()

    async def create_topic(
        self, topic: str, partitions: int, replication: int, **kwargs: Any
    ) -> None:
        if kwargs.get("compacting"):
            self._compacted.add(topic)
        await self.topics.create(topic, partitions or self.app.conf.topic_partitions)

    def key_partition(self, topic: str, key: bytes) -> TP:
        count = self.topics.partitions.get(topic) or self.app.conf.topic_partitions
        return TP(topic, partition_for_key(key, count))

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        if partition is None:
            count = await self.topics.get(topic, create_with=self.app.conf.topic_partitions)
            partition = partition_for_key(key, cast(int, count))
        ts = timestamp if timestamp is not None else time.time()
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._append(topic, partition, to_bytes(key), to_bytes(value), int(ts * 1000), headers, fut)
        return fut

    def _append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int,
        headers: Any,
        fut: asyncio.Future[RecordMetadata] | None,
    ) -> None:
        """Queue one record (headers as faust passes them: a dict, pairs or None)."""
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
        self._pending.append((topic, partition, Record(key, value, timestamp_ms, items), fut))
        self._queued += 1
        self._wakeup.set()

    def queue(self, topic: str, key: bytes, value: bytes, headers: Any = None) -> bool:
        """:meth:`send` for a record nobody waits for by itself, without the coroutine and the
        future: the partition from the key, the record queued in order with everything sent
        before it (a later ``flush()`` covers it). False, and nothing queued, while the
        topic's partition count is not known in this process yet: :meth:`send` looks it up
        (or creates the topic) and the next ``queue`` succeeds."""
        count = self.topics.partitions.get(topic)
        if not count:
            return False
        partition = partition_for_key(key, count)
        self._append(topic, partition, key, value, int(time.time() * 1000), headers, None)
        return True

    def queue_many(
        self, topic: str, partition: int, items: Sequence[tuple[bytes, bytes | None]]
    ) -> asyncio.Future[RecordMetadata]:
        """Queue ``(key, value)`` records for one partition, in this order, without headers;
        the future is the last record's (records are written in order, so when it is done
        the others are in Redis too, and when their write fails it fails with it). This is
        :meth:`send` without a coroutine, a timestamp and a future per record, for the table
        changelog records of a batch (``ocstream/tablebatch.py``), which come by the hundred
        and are waited for together."""
        if not items:
            raise ValueError("queue_many needs at least one record")
        ms = int(time.time() * 1000)
        pending = self._pending
        for key, value in items[:-1]:
            pending.append((topic, partition, Record(key, value, ms), None))
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        key, value = items[-1]
        pending.append((topic, partition, Record(key, value, ms), fut))
        self._queued += len(items)
        self._wakeup.set()
        return fut

    async def wait_room(self) -> None:
        """Give the event loop a turn, and wait while more than ``max_in_flight`` records
        (:data:`MAX_IN_FLIGHT`) are queued or being written: for an agent that queues records
        in place (:meth:`queue`, :meth:`queue_many`) in a loop that does not otherwise wait
        while it has records to take, which would keep the loop from the writes and let the
        queue grow by as much as the agent can process (``topology/xcm.py``, the match
        agent). A wait is counted in ``ocstream_transport_produce_waits_total``, and its
        length in ``…_produce_wait_seconds_total``."""
        if self.outstanding <= self.max_in_flight:
            await asyncio.sleep(0)
            return
        METRICS.produce_waits += 1
        self._wakeup.set()
        started = time.perf_counter()
        try:
            async with self._settled_changed:
                await self._settled_changed.wait_for(lambda: self.outstanding <= self.max_in_flight)
        finally:  # a wait cut short (a stop, a rebalance) counts as long as it lasted
            METRICS.produce_wait_seconds += time.perf_counter() - started

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        fut = await self.send(topic, key, value, partition, timestamp, headers)
        return await fut

    def _compacted_topics(self) -> set[str]:
        # Table changelogs are compacted, whether or not create_topic ran in this process.
        return self._compacted | set(self.app.tables.changelog_topics)

    @Service.task
    async def _flusher(self) -> None:
        linger = self.settings.linger_ms / 1000.0
        backoff = Backoff()
        while not self.should_stop:
            await self._wakeup.wait()
            if linger:
                await asyncio.sleep(linger)
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self.batch_records]
                del self._pending[: self.batch_records]
                started = time.perf_counter()
                try:
                    results = await append_records(
                        self.client,
                        self.keys,
                        [(topic, p, record) for topic, p, record, _ in batch],
                        self._compacted_topics(),
                    )
                except TRANSIENT_ERRORS as exc:
                    if self.should_stop:  # give up on everything queued, not only this batch
                        batch += self._pending
                        self._pending = []
                        self._fail(batch, exc)
                        await self._settle(len(batch))
                        break
                    self._pending[:0] = batch  # keep order: the failed batch goes first
                    METRICS.produce_retries += 1
                    await backoff.wait(logger, "produce", exc)
                    continue
                self.round_trips.observe(time.perf_counter() - started)
                again: list[_Pending] = []
                refused: BaseException | None = None
                failed = 0
                for item, result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        if refused_for_now(result) and not self.should_stop:
                            again.append(item)
                            refused = result
                        else:
                            failed += 1
                            self._failed(item[0], item[1], result, item[3])
                        continue
                    topic, partition, record, fut = item
                    if fut is None or fut.done():
                        continue
                    fut.set_result(
                        RecordMetadata(
                            topic,
                            partition,
                            TP(topic, partition),
                            result,
                            record.timestamp_ms / 1000.0,
                            0,
                        )
                    )
                written = len(batch) - len(again) - failed
                METRICS.records_produced += written
                if written:
                    METRICS.produce_writes += 1
                await self._settle(len(batch) - len(again))
                if refused is not None:
                    # Redis took nothing for those partitions (one script call each, all or
                    # nothing; a refusal while the round trip's transaction was queued
                    # refuses every partition of it): they go first again, in their order,
                    # and are neither settled nor failed, so flush() and the commits behind
                    # it wait for them.
                    self._pending[:0] = again
                    METRICS.produce_retries += 1
                    await backoff.wait(logger, "produce", refused)
                    continue
                backoff.reset()

    async def _settle(self, count: int) -> None:
        # What is held only grows between two settles: its highest is just before one.
        self.outstanding_peak = max(self.outstanding_peak, self.outstanding)
        async with self._settled_changed:
            self._settled += count
            self._settled_changed.notify_all()

    def _failed(
        self,
        topic: str,
        partition: int,
        exc: BaseException,
        fut: asyncio.Future[RecordMetadata] | None,
    ) -> None:
        """A record Redis refused for good (``WRONGTYPE``: something else holds the stream's
        key; a script error): its future fails; it is counted and logged either way, since
        the records queued without a future (an agent's outputs, all but the last of a table
        batch's) have nobody else to tell."""
        METRICS.produce_failed += 1
        count = METRICS.produce_failed
        if count == 1 or count % 1000 == 0:
            logger.error(
                "a record for %s[%d] was not written (%d so far): %s: %s",
                topic,
                partition,
                count,
                type(exc).__name__,
                exc,
            )
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for *_, fut in batch:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def flush(self) -> None:
        # faust's buffer.flush() returns only once the buffer is empty, which never happens
        # while tables keep writing under load: commits then waited for the backlog to end.
        # The buffer is FIFO, so sending as many messages as it holds now covers every message
        # queued before this call.
        await self.buffer.flush_atmost(self.buffer.size)
        target = self._queued
        if self._settled >= target:
            return
        self._wakeup.set()
        async with self._settled_changed:
            await self._settled_changed.wait_for(lambda: self._settled >= target)

    def supports_headers(self) -> bool:
        return True
