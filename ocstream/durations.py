"""Durations kept as Prometheus histograms count them, in the process that measures them: the
event loop's lags (:mod:`ocstream.looplag`) and the producer's write round trips
(``ocstream/transport/producer.py``); :mod:`ocstream.metrics` renders them. No lock: each is
updated from its process's event loop only. Imports nothing heavy.
"""

from __future__ import annotations

import bisect

__all__ = ["Durations"]


class Durations:
    """Durations seen so far: a cumulative histogram, their sum and the longest."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: beyond every bound
        self.total = 0.0
        self.longest = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        if seconds > self.longest:
            self.longest = seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, durations at or under it)`` per bucket, ``+Inf`` last, as Prometheus
        histograms count."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
