"""``ocstream.stages.Backlog``: what an earlier stage waits for before its next batch."""

from __future__ import annotations

import asyncio

from ocstream.stages import Backlog


async def test_a_drain_waits_for_what_is_held_then_not_for_what_comes_later() -> None:
    backlog = Backlog()
    backlog.took(3)
    drained = asyncio.create_task(backlog.drain(limit=30))
    await asyncio.sleep(0)
    backlog.took(5)  # came after the drain began
    backlog.finished(2)
    await asyncio.sleep(0)
    assert not drained.done()
    backlog.finished(1)  # the three held at the start are done
    await asyncio.wait_for(drained, 5)
    assert backlog.pending() == 5 and backlog.waits == 1


async def test_a_drain_counts_what_waits_in_the_stages_input() -> None:
    inbox = [1, 2, 3]
    backlog = Backlog(lambda: len(inbox))

    async def stage() -> None:  # takes its input one item at a time, later
        while inbox:
            await asyncio.sleep(0.01)
            inbox.pop()
            backlog.took()
            await asyncio.sleep(0)
            backlog.finished(1)

    running = asyncio.create_task(stage())
    assert backlog.pending() == 3
    await backlog.drain(limit=30)
    assert backlog.done == 3 and backlog.pending() == 0
    await running


async def test_a_drain_gives_up_after_its_limit() -> None:
    backlog = Backlog()
    backlog.took(1)  # never finished: a delivery held up by a Redis outage
    await asyncio.wait_for(backlog.drain(limit=0.05), 5)
    assert backlog.pending() == 1 and backlog.waits == 1 and backlog.waited > 0


async def test_a_drain_with_nothing_held_returns_at_once() -> None:
    backlog = Backlog()
    await backlog.drain()
    backlog.took(2)
    backlog.finished(2)
    await backlog.drain()
    assert backlog.waits == 0


async def test_a_drain_ends_when_what_waited_in_the_input_is_gone() -> None:
    """Records a rebalance drops from the stage's input are not waited for until the limit."""
    inbox = [1, 2]
    backlog = Backlog(lambda: len(inbox))
    drained = asyncio.create_task(backlog.drain(limit=30))
    for _ in range(3):  # the drain starts, and polls the input
        await asyncio.sleep(0)
    assert not drained.done()
    inbox.clear()  # dropped, never taken
    await asyncio.wait_for(drained, 5)
    assert backlog.done == 0 and backlog.waits == 1
