"""Downstream first: the stages of one worker take new work after the later stage is done with
what it holds.

A worker that extracts, matches and delivers runs the three stages on one event loop. When a
block's notifications reach delivery, the same fetch usually brings matching the records that
block's journeys sent to other stops (``index``, ``close``), and the next block may be waiting
for extraction. asyncio runs whoever is ready in turn, so each of delivery's Redis round trips
let a matching batch or a block's extraction run in between, and the block's last webhook was
queued after all of it. None of that work is needed for the notifications already written.

:class:`Backlog` lets an earlier stage wait, before it takes its next batch, until the later
stage has finished what it held *at that moment*: the notifications it has taken and those
already waiting in its stream. Work that arrives meanwhile does not extend the wait, so under
a steady load the stages take turns instead of one starving the other, and the total work is
the same: only its order changes. The wait is also capped (:data:`MAX_WAIT`), so a delivery
held up by a Redis outage cannot hold the earlier stages for longer than that.

A worker that does not deliver (``--role match``) has no backlog to wait for; one that only
delivers has no earlier stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["MAX_WAIT", "Backlog"]

#: The longest an earlier stage waits for one backlog (seconds).
MAX_WAIT = 1.0


class Backlog:
    """What a later stage holds: items taken (:meth:`took`) and not yet finished
    (:meth:`finished`), plus those waiting in its input (``waiting``, a count)."""

    def __init__(self, waiting: Callable[[], int] = lambda: 0) -> None:
        self.waiting = waiting
        self.taken = 0  # items taken since the start
        self.done = 0  # items finished since the start, in the order they were taken
        self._progress = asyncio.Event()
        self.waits = 0  # waits that found work in hand (for tests and metrics)
        self.waited = 0.0  # seconds spent in them

    def took(self, count: int = 1) -> None:
        self.taken += count

    def finished(self, count: int) -> None:
        self.done += count
        self._progress.set()
        self._progress = asyncio.Event()

    def pending(self) -> int:
        """Items taken and not finished, plus those waiting in the input."""
        return self.taken - self.done + self.waiting()

    async def drain(self, limit: float = MAX_WAIT) -> None:
        """Return once everything held now is finished, or after ``limit`` seconds."""
        target = self.taken + self.waiting()
        if self.done >= target:
            return
        self.waits += 1
        started = time.monotonic()
        deadline = started + limit
        spins = 0
        try:
            while self.done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self.taken > self.done:
                    try:
                        await asyncio.wait_for(self._progress.wait(), left)
                    except TimeoutError:
                        return
                elif not self.waiting():
                    return  # nothing in hand, nothing left in the input (dropped by a rebalance)
                else:
                    # Nothing in hand, the rest still in the input: the stage takes it on its
                    # next turn (or, paused by a rebalance, later: then poll, do not spin).
                    await asyncio.sleep(0 if spins < 2 else 0.002)
                    spins += 1
        finally:
            self.waited += time.monotonic() - started
