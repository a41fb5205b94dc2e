"""A cheaper inner loop for faust's consumer: hand messages to streams without two tasks each.

faust's ``Consumer._drain_messages`` delivers every message with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: two new tasks and at
least one trip through the event loop per message, which the prototype measured as the largest
cost of a stateless agent. The race exists only for the rare case where delivery blocks (a
stream's queue is full, or flow control is suspended for a rebalance) and a rebalance must be
able to abandon it.

:func:`deliver` keeps those semantics but pays for them only when needed: it runs the delivery
coroutine until its first suspension point by hand; most deliveries finish right there (the
queue had room), with no task created. Only a delivery that really has to wait is handed, from
the point where it stopped, to ``wait_first`` as before.

Delivering faster fills a stream's buffer sooner; faust then takes the partition out of the
active set until the buffer drains, and when no partition is active its
``_wait_next_records`` sleeps a whole second. :func:`wait_next_records` waits for a partition
to become fetchable again instead (the consumer sets ``_fetchable``), so back-pressure costs
only the time the agent needs to catch up.

A standby's changelog records take a shorter way too (:class:`StandbyApplier`). faust hands
each one to its recovery service as a decoded event: the key and the value are parsed as JSON
(which nobody reads: the RocksDB store writes the raw bytes), the event goes through a queue
and ``asyncio.wait_for`` (a task and a timer per record), and the store applies them 1,000 at a
time per table. Measured with two workers, that was about 2 ms of CPU per XCM journey, as much
as the matching itself, so a second worker with standbys made the pair slower than one worker.
Here :func:`wait_next_records` takes the records of the partitions its member holds as a
standby out of each fetch, before faust's ``getmany`` sees them, and writes them to RocksDB in
one write batch per table and partition, the persisted offset included, without decoding them.
They never become faust messages: skipping ``getmany``'s per-record work (the round-robin
scheduler, a generation check, the highwater sensor, a ``ConsumerMessage``) and the drain
loop's took a tenth off two workers' CPU per XCM journey (``docs/benchmarks.md``, "Issue 14,
twelfth round").

A topic with a direct feed (``direct.py``: the XCM matcher's and the delivery agent's) skips
faust's conductor and streams, and its records skip ``getmany``'s messages too: the drain
loop runs ``getmany`` inlined (:func:`drain_messages`), makes a ``FeedMessage`` of each record
of such a topic after the checks ``getmany`` and the drain loop make (:class:`_Drain`), and
puts it in the feed, by a plain call while the flow is active and otherwise the same way as
any delivery (:func:`deliver`); the agent takes them from there. The other topics' records
become faust messages for the conductor, as before.

Both loops are faust-streaming 0.15.3's (pinned exactly in pyproject.toml) with only those
changes, and a plain ``asyncio.sleep(0)`` for the drain loop's ``consumer.sleep(0)`` (mode's,
which makes a task per fetch); the integration tests and the benchmark run through them.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator, MutableMapping
from typing import Any

from faust.stores.rocksdb import Store as FaustRocksDBStore
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP

from .direct import FeedMessage, feeds_of
from .local_state import write_partition
from .metrics import METRICS
from .wire import FetchedRecord, entry_value


class StandbyApplier:
    """Writes the changelog records of standby partitions straight to the tables' RocksDB stores.

    A fetched partition is taken (:meth:`apply_fetched`) when it is one faust's recovery holds
    as a standby and not as an active, its table is stored in RocksDB (faust's ``memory://``
    store keeps decoded values, so its records go faust's way) and has no
    ``on_changelog_event`` callback (which takes decoded events). Its records are written as
    soon as they are fetched: per table and partition one ``WriteBatch`` with the puts, the
    deletes (tombstones) and the persisted offset, which is what faust's own
    ``apply_changelog_batch`` writes, but atomically. Nothing is awaited between the fetch
    and the write, so no rebalance comes in between: a partition's records are written by the
    member that held it as a standby when they were read, or, when that changed during the
    fetch, go faust's way (which drops what the new assignment does not want).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def _table(self, tp: TP) -> Any:
        tables = self.app.tables
        table = tables._changelogs.get(tp.topic)
        if table is None:
            return None
        recovery = tables.recovery
        if tp not in recovery.standby_tps or tp in recovery.active_tps:
            return None
        store = table.data
        if not isinstance(store, FaustRocksDBStore) or not store.use_rocksdict:
            return None  # memory:// keeps decoded values; python-rocksdb has its own batches
        if table._on_changelog_event is not None:
            return None  # the table wants each decoded event: faust's path calls it
        return table

    def apply_fetched(
        self, records: dict[TP, list[FetchedRecord]], read_offset: MutableMapping[TP, Any]
    ) -> None:
        """Write the records of the standby partitions in ``records`` (a fetch, as the
        consumer's ``_getmany`` returns it) and remove them from it; the rest stays for faust.
        As the drain loop does, records below a partition's read offset (already read) are
        skipped and the read offset moves to the last record written."""
        standbys = [(tp, table) for tp in records if (table := self._table(tp)) is not None]
        for tp, table in standbys:
            batch = records.pop(tp)
            floor = read_offset[tp]
            if floor is not None and batch[0][0] < floor:
                batch = [record for record in batch if record[0] >= floor]
                if not batch:
                    continue
            last = batch[-1][0]
            # A table's changelog records all have keys; one without could not be stored.
            changes = [(fields[b"k"], entry_value(fields)) for _, fields in batch if b"k" in fields]
            write_partition(table.data, tp.partition, changes, offset=last)
            read_offset[tp] = last
            METRICS.standby_records_applied += len(changes)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Drive ``coro`` on from a suspension point reached outside any task.

    The future it yielded is yielded again to the task running us, and results or exceptions
    are passed back in, so ``coro`` cannot tell it changed hands.
    """
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation included: forward it into coro
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _await_resumed(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _resume(coro, yielded)


async def deliver(consumer: Any, coro: Coroutine[Any, Any, Any]) -> None:
    try:
        yielded = coro.send(None)
    except StopIteration:
        return  # delivered without waiting: the common case
    await consumer.wait_first(_await_resumed(coro, yielded), consumer.suspend_flow.wait())


async def drain_messages(consumer: Any, fetcher: Any) -> None:  # pragma: no cover - see tests
    """faust's drain loop, with its ``getmany`` inlined: the records of topics with a direct
    feed go to their feed as ``FeedMessage`` objects, a partition's batch at a time; the
    others become faust messages for the conductor (``callback``), as in faust."""
    app = consumer.app
    callback = consumer.callback
    to_message = consumer._to_message
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    set_flag = consumer.diag.set_flag
    unset_flag = consumer.diag.unset_flag
    # Topics whose agent takes their messages itself (direct.py), registered at declaration.
    feeds = feeds_of(app)
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            # faust awaits mode's ``consumer.sleep(0)`` here: a task, a timer and its
            # cancellation per fetch. A plain yield lets the other tasks run all the same,
            # and a stop meanwhile is seen by the check below, as it was.
            await asyncio.sleep(0)
            if not consumer.should_stop:
                # What faust's getmany does before its loop.
                records, active_partitions = await consumer._wait_next_records(1.0)
                if records is not None and not consumer.should_stop:
                    if not consumer.flow_active:
                        await _seek_back(consumer)
                    elif records:
                        direct = {tp: records.pop(tp) for tp in list(records) if tp.topic in feeds}
                        drain = _Drain(consumer, app.consumer_generation_id, active_partitions)
                        for tp, batch in direct.items():
                            if not await drain.to_feed(feeds[tp.topic], tp, batch):
                                break
                        else:
                            for tp, record in consumer.scheduler.iterate(records):
                                if not drain.current() or not drain.wanted(tp):
                                    if drain.stopped:
                                        break
                                    continue
                                message = to_message(tp, record)
                                if await drain.admit(tp, message.offset, message.topic):
                                    delivery = callback(message)
                                    await deliver(consumer, delivery)
                                    drain.read(tp, message.offset)
            unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


class _Drain:
    """The per-record rules of faust's ``getmany`` and drain loop for one fetch: stop at a new
    generation or a suspended flow, skip partitions no longer active and records already read,
    register gaps for acks, commit every ``commit_every`` acks, yield every 100 records."""

    YIELD_EVERY = 100

    def __init__(self, consumer: Any, generation: int, active: set[TP] | None) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.generation = generation
        self.active = active
        self.read_offset = consumer._read_offset
        self.acks_enabled_for = self.app.topics.acks_enabled_for
        self.commit_every = consumer._commit_every
        self.since_yield = 0
        #: the fetch's generation ended, or the flow was suspended: leave the rest
        self.stopped = False

    def current(self) -> bool:
        if self.consumer.flow_active and self.app.consumer_generation_id == self.generation:
            return True
        self.stopped = True
        return False

    def wanted(self, tp: TP) -> bool:
        """Whether ``tp``'s records go on (faust's getmany: an active partition, or one
        whose buffer is full). For one that does, the monitor is told its highwater, as
        faust's getmany does before each record it yields."""
        active = self.active
        if active is None or tp in active or tp in self.consumer._buffered_partitions:
            self.app.monitor.track_tp_end_offset(tp, self.consumer.highwater(tp))
            return True
        return False

    async def admit(self, tp: TP, offset: int, topic: str) -> bool:
        """The drain loop's checks before a record is delivered; whether it is."""
        self.since_yield += 1
        if self.since_yield > self.YIELD_EVERY:
            await asyncio.sleep(0)
            self.since_yield = 0
        r_offset = self.read_offset[tp]
        if r_offset is not None and offset < r_offset:
            return False
        consumer = self.consumer
        gap = offset - (r_offset or 0)
        if gap > 1 and r_offset and self.acks_enabled_for(topic):
            await consumer._add_gap(tp, r_offset + 1, offset)
        if self.commit_every is not None and consumer._n_acked >= self.commit_every:
            consumer._n_acked = 0
            await consumer.commit()
        return True

    def read(self, tp: TP, offset: int) -> None:
        self.read_offset[tp] = offset

    async def to_feed(self, feed: Any, tp: TP, batch: list[FetchedRecord]) -> bool:
        """Put a partition's records in its feed; False once the rest of the fetch is to be
        left (see :attr:`stopped`)."""
        if not self.current():
            return False
        if not self.wanted(tp):
            return True
        topic = tp.topic
        generation = self.generation
        for offset, fields in batch:
            if not self.current():
                return False
            if not await self.admit(tp, offset, topic):
                continue
            message = FeedMessage(tp, offset, fields, generation)
            if not feed.offer(message):  # the flow is suspended: wait, as any delivery
                await deliver(self.consumer, feed.put(message))
            self.read(tp, offset)
        return True


async def _seek_back(consumer: Any) -> None:
    """faust's getmany with the flow stopped: the fetch is dropped, and the partitions seek
    back to their committed offsets."""
    consumer.log.dev("getmany called while flow not active. Seek back to committed offsets.")
    try:
        await consumer.perform_seek()
    except Exception as ex:
        consumer.log.warning(f"exception performing seek when flow not active {ex}")


async def wait_next_records(consumer: Any, timeout: float) -> tuple[Any, Any]:
    if not consumer.flow_active:
        await consumer.wait(consumer.can_resume_flow)
    try:
        consumer.not_waiting_next_records.set()
        active_partitions = None if consumer.app.client_only else consumer._get_active_partitions()
        records: Any = {}
        if consumer.app.client_only or active_partitions:
            records = await consumer._getmany(active_partitions=active_partitions, timeout=timeout)
            if records and consumer.flow_active:
                # Standby records are written here, before faust's getmany (StandbyApplier);
                # with flow stopped, getmany drops the whole fetch and seeks back.
                consumer.standby_applier.apply_fetched(records, consumer._read_offset)
        else:
            await consumer.wait_fetchable(timeout=1.0)
        return records, active_partitions
    finally:
        consumer.not_waiting_next_records.set()
