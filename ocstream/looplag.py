"""How late the event loop runs what is ready: the lag a worker's or an ingress' every step waits.

A worker runs extraction, matching, delivery, its HTTP API and its timers on one event loop. A
callback that holds the loop (a large batch, a decoder build, a garbage collection) delays
everything else by as long, and that is what a notification's latency shows first (the e2e
benchmark's slowest blocks, ``docs/benchmarks.md``). :func:`watch_loop` measures it the way an
operator needs it: a task asks to wake up every :data:`LAG_EVERY` seconds and records how much
later than asked it ran. The longest stall since start and a histogram of the lags are on
``/metrics`` (``ocstream_event_loop_lag_*``, :func:`ocstream.metrics.loop_families`).

It costs one wake-up per tick, about 20 a second: a few microseconds of CPU per second.
Like :mod:`ocstream.gctune`, it imports nothing heavy.
"""

from __future__ import annotations

import asyncio

from .durations import Durations

__all__ = ["LAG_BUCKETS", "LAG_EVERY", "LOOP_LAG", "watch_loop"]

#: Seconds between two wake-ups of :func:`watch_loop`.
LAG_EVERY = 0.05

#: Upper bounds (seconds) of the histogram's buckets; a stall longer than the last one is
#: counted in ``+Inf`` only.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


#: This process's lags (a worker's, or an ``ocstream ingress``').
LOOP_LAG = Durations(LAG_BUCKETS)


async def watch_loop(every: float = LAG_EVERY, into: Durations = LOOP_LAG) -> None:
    """Forever: sleep ``every`` seconds and record in ``into`` how much later the loop woke
    this task up than asked (a task of a worker or an ingress)."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + every
        await asyncio.sleep(every)
        into.observe(loop.time() - asked)
