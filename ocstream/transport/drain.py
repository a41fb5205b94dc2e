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

Both loops are faust-streaming 0.15.3's (pinned exactly in pyproject.toml) with only those
changes; the integration tests and the benchmark run through them.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING


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
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await consumer._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and consumer._n_acked >= commit_every:
                            consumer._n_acked = 0
                            await consumer.commit()
                        await deliver(consumer, cast(Coroutine[Any, Any, Any], callback(message)))
                        set_read_offset(tp, offset)
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
