"""``ocstream/looplag.py``: the event loop's lag, as a worker and an ingress record it."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from ocstream import metrics
from ocstream.durations import Durations
from ocstream.looplag import LAG_BUCKETS, LOOP_LAG, watch_loop


async def test_a_held_loop_is_seen_as_lag() -> None:
    lags = Durations(LAG_BUCKETS)
    watcher = asyncio.create_task(watch_loop(every=0.01, into=lags))
    await asyncio.sleep(0.2)  # a loop with nothing to do: every wake-up on time, or nearly
    quiet = lags.count
    assert quiet >= 5 and lags.longest < 0.1, (quiet, lags.longest)
    time.sleep(0.3)  # a callback that holds the loop, as a large batch would
    await asyncio.sleep(0.05)
    watcher.cancel()
    assert 0.25 <= lags.longest < 1.0, lags.longest
    buckets = dict(lags.cumulative())
    # Counted once, in the bucket of 0.5 s and not in that of 0.25 s; everything else under.
    assert buckets["0.5"] - buckets["0.25"] == 1, buckets
    assert buckets["+Inf"] == lags.count > quiet
    counts = [count for _, count in lags.cumulative()]
    assert counts == sorted(counts)
    assert lags.total >= 0.25


def test_lags_beyond_the_last_bucket_and_early_wakeups() -> None:
    lags = Durations(buckets=(0.1, 1.0))
    lags.observe(-0.001)  # a timer a hair early counts as no lag
    lags.observe(0.1)  # on a bound: in that bucket, as Prometheus' "le" says
    lags.observe(7.0)
    assert lags.cumulative() == [("0.1", 2), ("1.0", 2), ("+Inf", 3)]
    assert lags.longest == 7.0 and lags.total == 7.1


def test_the_lag_is_on_metrics() -> None:
    LOOP_LAG.observe(0.02)
    families = {
        family.name: family
        for family in text_string_to_metric_families(
            metrics.render(metrics.loop_families, registry=None).decode()
        )
    }
    histogram = families["ocstream_event_loop_lag_seconds"]
    assert histogram.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    assert samples[("ocstream_event_loop_lag_seconds_count", None)] == LOOP_LAG.count >= 1
    assert samples[("ocstream_event_loop_lag_seconds_bucket", "+Inf")] == LOOP_LAG.count
    longest = families["ocstream_event_loop_lag_max_seconds"].samples[0].value
    assert longest == LOOP_LAG.longest >= 0.02
