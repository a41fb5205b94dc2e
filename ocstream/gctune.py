"""Python's cyclic garbage collector, tuned for a worker and an ingress process.

Both tune it once they have started (:func:`tune_gc`, from :class:`ocstream.runtime.Worker`
and ``IngressService.run``).
Measured with ``benchmarks/xcm.py``, a busy worker spent about a quarter of its time in it:
every decoded record allocates hundreds of objects, so the default thresholds (700, 10, 10)
ran a full collection every few seconds over a heap of 250-350 thousand objects (runtime
metadata, faust's and aiohttp's own), 100-150 ms each. What the worker allocates while
processing is acyclic and freed by reference counting; the collector only has to find the
occasional cycle. So the start-up heap is frozen, and the young generations are collected on a
clock (:func:`collect_young`) rather than by allocation counts, which a backlog's buffered
records kept tripping (:data:`GC_THRESHOLDS`).

This module imports nothing heavy, so that the decoder cache, which the ingress shares with
workers, can call :func:`promote_loaded` (a no-op where the collector was not tuned).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

from .envvars import env_seconds

__all__ = [
    "GC_STATS",
    "GC_THRESHOLDS",
    "GC_YOUNG_EVERY",
    "FULL_CHECK_TICKS",
    "FULL_GROWTH",
    "FULL_MIN_GROWTH",
    "collect_young",
    "promote_loaded",
    "tune_gc",
    "watch_gc",
]

#: Collector thresholds of a started worker (or ingress). The first is a bound, not a
#: schedule: Python counts net allocations, and a worker working off a backlog keeps a few
#: hundred thousand decoded records alive in its buffers, so any lower bound made every young
#: collection scan them all (20-200 ms each, 5-9 % of the CPU in ``benchmarks/xcm.py``) only to
#: find them alive. Young objects are collected on a clock instead (:data:`GC_YOUNG_EVERY`).
GC_THRESHOLDS = (1_000_000, 10, 100)


#: Seconds between two collections of the young generations (0 and 1) of a started worker or
#: ingress (``OCSTREAM_GC_YOUNG_EVERY``).
#: What they hold is what the worker has in flight: a collection takes under a millisecond on
#: an idle worker and up to about 0.3 s in the middle of a large backlog (``docs/benchmarks.md``,
#: "Issue 14, fourth round"). Cycles made while processing are freed within this time.
GC_YOUNG_EVERY = env_seconds(os.environ, "OCSTREAM_GC_YOUNG_EVERY", positive=True) or 30.0


#: Per generation: collections, seconds spent in them and the longest one, since
#: :func:`watch_gc` (a worker's ``/metrics``: ``ocstream_gc_*``).
GC_STATS: dict[int, list[float]] = {generation: [0, 0.0, 0.0] for generation in range(3)}
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started[0]
    stats = GC_STATS[info["generation"]]
    stats[0] += 1
    stats[1] += took
    stats[2] = max(stats[2], took)


def watch_gc() -> None:
    """Count and time this process's collections in :data:`GC_STATS` (once)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def tune_gc() -> None:
    """Collect once, move everything alive to the permanent generation (``gc.freeze``: the
    start-up heap is never scanned again) and raise the thresholds to :data:`GC_THRESHOLDS`.
    Collections are timed from then on (:func:`watch_gc`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    watch_gc()


def promote_loaded() -> None:
    """Collect the young generations now, after something large and long-lived was loaded
    (a runtime decoder: 65,000 to 100,000 objects), in a process whose collector
    :func:`tune_gc` set up; elsewhere, nothing.

    The load has just held the event loop for a fraction of a second anyway. Left young, its
    objects would be scanned by the next clock collection (:func:`collect_young`) instead, in
    the middle of traffic: 55 to 65 ms, the slowest moment of a `benchmarks/e2e.py` step, where
    the clock's later collections take under 5 ms. Collected here, they move to the oldest
    generation, which only full collections scan. It may run in a thread (a decoder is built
    in one): a collection stops every thread alike."""
    if gc.get_threshold() == GC_THRESHOLDS:  # tune_gc ran in this process
        gc.collect(1)


#: Every this many clock ticks, :func:`collect_young` checks the oldest generation (see there).
FULL_CHECK_TICKS = 10

#: ... and runs a full collection when it has grown by more than this share since the last one
#: (Python's own rule), and by at least :data:`FULL_MIN_GROWTH` objects.
FULL_GROWTH = 0.25
FULL_MIN_GROWTH = 10_000


async def collect_young(every: float = GC_YOUNG_EVERY, full_check: int = FULL_CHECK_TICKS) -> None:
    """Collect generations 0 and 1 every ``every`` seconds, forever (a task of a worker or an
    ingress, after :func:`tune_gc`).

    What survives a young collection moves to the oldest generation, and a reference cycle
    among those objects that dies later is freed by a full collection only. Python runs one
    when the oldest generation has grown by a quarter since the last, but it checks that only
    when an allocation count trips a threshold, which :data:`GC_THRESHOLDS` keep out of reach;
    so the clock checks it instead (:data:`FULL_GROWTH`, :data:`FULL_MIN_GROWTH`), every
    ``full_check`` ticks (five minutes by default),
    counting the oldest generation's objects (a few milliseconds for a few hundred thousand).
    The frozen start-up heap is not counted, nor scanned."""
    ticks = 0
    settled: int | None = None  # objects in the oldest generation after the last full one
    while True:
        await asyncio.sleep(every)
        gc.collect(1)
        ticks += 1
        if ticks % full_check:
            continue
        old = len(gc.get_objects(generation=2))
        if settled is None:
            settled = old
        elif old - settled > max(settled * FULL_GROWTH, FULL_MIN_GROWTH):
            gc.collect()
            settled = len(gc.get_objects(generation=2))
