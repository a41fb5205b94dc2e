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
Here the drain loop keeps the records of the partitions its member holds as a standby and
writes each fetch's worth to RocksDB in one write batch per table and partition, the persisted
offset included, without decoding them.

Both loops are faust-streaming 0.15.3's (pinned exactly in pyproject.toml) with only those
changes; the integration tests and the benchmark run through them.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, cast

from faust.stores.rocksdb import Store as FaustRocksDBStore
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP

from .local_state import write_partition
from .metrics import METRICS

#: A standby applies what it holds at the end of each fetch, or once it holds this many records.
STANDBY_APPLY_RECORDS = 2000


class StandbyApplier:
    """Writes the changelog records of standby partitions straight to the tables' RocksDB stores.

    A record is taken (:meth:`take`) when its partition is one faust's recovery holds as a
    standby and not as an active, its table is stored in RocksDB (faust's ``memory://`` store
    keeps decoded values, so its records go faust's way) and has no ``on_changelog_event``
    callback (which takes decoded events), and the consumer is in the generation
    in which it was fetched. :meth:`apply` writes what was taken: per table and partition one
    ``WriteBatch`` with the puts, the deletes (tombstones) and the persisted offset, which is
    what faust's own ``apply_changelog_batch`` writes, but atomically. Records of a partition
    that stopped being a standby before :meth:`apply` (a rebalance made it active, or took it
    away) are dropped unapplied: the persisted offset did not move past them, so whoever
    recovers the partition reads them again.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._pending: dict[TP, list[Any]] = {}
        self._count = 0
        self._generation = None

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

    def take(self, tp: TP, message: Any) -> bool:
        """Keep ``message`` for :meth:`apply` if it is a standby record; False: deliver it."""
        if self._table(tp) is None:
            return False
        generation = self.app.consumer_generation_id
        if self._generation != generation:
            self._pending.clear()
            self._count = 0
            self._generation = generation
        self._pending.setdefault(tp, []).append(message)
        self._count += 1
        return True

    @property
    def full(self) -> bool:
        return self._count >= STANDBY_APPLY_RECORDS

    def apply(self) -> None:
        """Write what was taken. Runs without awaiting, so no rebalance comes in between the
        check of a partition and its write."""
        if not self._count:
            return
        pending, self._pending, self._count = self._pending, {}, 0
        if self._generation != self.app.consumer_generation_id:
            return
        for tp, messages in pending.items():
            table = self._table(tp)
            if table is None:
                continue
            last = max(message.offset for message in messages)
            changes = ((message.key, message.value) for message in messages)
            write_partition(table.data, tp.partition, changes, offset=last)
            METRICS.standby_records_applied += len(messages)


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
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = consumer._read_offset.__getitem__
    set_read_offset = consumer._read_offset.__setitem__
    set_flag = consumer.diag.set_flag
    unset_flag = consumer.diag.unset_flag
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    standby = consumer.standby_applier
    take_standby = standby.take
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)
            if not consumer.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        if take_standby(tp, message):
                            set_read_offset(tp, offset)
                            if standby.full:
                                standby.apply()
                            continue
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await consumer._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and consumer._n_acked >= commit_every:
                            consumer._n_acked = 0
                            await consumer.commit()
                        await deliver(consumer, cast(Coroutine[Any, Any, Any], callback(message)))
                        set_read_offset(tp, offset)
                standby.apply()
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


async def wait_next_records(consumer: Any, timeout: float) -> tuple[Any, Any]:
    if not consumer.flow_active:
        await consumer.wait(consumer.can_resume_flow)
    try:
        consumer.not_waiting_next_records.set()
        active_partitions = None if consumer.app.client_only else consumer._get_active_partitions()
        records: Any = {}
        if consumer.app.client_only or active_partitions:
            records = await consumer._getmany(active_partitions=active_partitions, timeout=timeout)
        else:
            await consumer.wait_fetchable(timeout=1.0)
        return records, active_partitions
    finally:
        consumer.not_waiting_next_records.set()
