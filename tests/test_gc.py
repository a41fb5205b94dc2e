"""The worker's garbage collector settings (``ocstream/gctune.py``): the start-up heap frozen,
allocation thresholds out of the way of a backlog's buffered records, and the young generations
collected on a clock, so that reference cycles are still freed. Each check runs in a child
Python: the collector's settings are process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_tune_gc_freezes_the_heap_and_sets_the_thresholds() -> None:
    out = run(
        """
        import gc
        from ocstream.gctune import GC_THRESHOLDS, tune_gc
        assert gc.get_freeze_count() == 0
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        print("ok")
        """
    )
    assert out.split() == ["ok"]


def test_a_bad_clock_setting_stops_the_worker_at_start_with_its_name() -> None:
    more_than_0 = "a duration in seconds, more than 0, not"
    for bad, what in (("0", more_than_0), ("-1", more_than_0), ("soon", "not a number:")):
        result = subprocess.run(
            [sys.executable, "-c", "import ocstream.runtime"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OCSTREAM_GC_YOUNG_EVERY": bad},
        )
        assert result.returncode != 0, bad
        assert f"OCSTREAM_GC_YOUNG_EVERY: {what} {bad!r}" in result.stderr, result.stderr[-2000:]


def test_cycles_are_freed_on_the_clock_not_by_allocation_counts() -> None:
    """With the worker's thresholds, allocating 200,000 objects that stay alive (a backlog in
    buffers) starts no collection; a cycle made meanwhile is freed by collect_young within its
    period, which collects generation 1 and so also the young objects before it."""
    out = run(
        """
        import asyncio, gc, weakref
        from ocstream.gctune import GC_STATS, collect_young, tune_gc

        collected = []
        gc.callbacks.append(lambda phase, info: phase == "stop" and collected.append(info))
        tune_gc()
        collected.clear()

        class Node:
            pass

        async def main():
            task = asyncio.create_task(collect_young(every=0.2))
            buffered = [{"leg": [i]} for i in range(200_000)]
            assert not collected, collected  # the thresholds let a backlog be
            a, b = Node(), Node()
            a.other, b.other = b, a
            gone = weakref.ref(a)
            del a, b
            assert gone() is not None  # a cycle waits for the collector
            for _ in range(50):
                await asyncio.sleep(0.05)
                if gone() is None:
                    break
            task.cancel()
            assert gone() is None, "the cycle was not freed"
            assert {info["generation"] for info in collected} == {1}, collected
            # and timed for /metrics (ocstream_gc_*)
            count, seconds, longest = GC_STATS[1]
            assert count == len(collected) and 0 < longest <= seconds, GC_STATS
            assert GC_STATS[0][0] == GC_STATS[2][0] == 0, GC_STATS
            print("ok", len(buffered), len(collected))

        asyncio.run(main())
        """
    )
    words = out.split()
    assert words[:2] == ["ok", "200000"] and int(words[2]) >= 1, out


def test_a_decoder_built_in_a_tuned_process_is_promoted_at_once(fixtures_dir: Path) -> None:
    """Building a runtime decoder (``DecoderCache.get_or_build``, in a thread as the worker and
    the ingress do) moves its objects out of the young generations right away, so that the
    clock's next collection does not scan them; in a process whose collector was not tuned
    (a tool, a test), it collects nothing."""
    metadata = fixtures_dir / "metadata" / "assethub-9430.scale"
    out = run(
        f"""
        import asyncio, gc
        from ocstream.gctune import tune_gc
        from ocstream.ingress.decode import DecoderCache

        raw = open({str(metadata)!r}, "rb").read()
        collected = []
        gc.callbacks.append(lambda phase, info: phase == "stop" and collected.append(info))
        gc.disable()  # the untuned case must not see Python's own collections
        DecoderCache().get_or_build("urn:ocn:polkadot:1000", 9430, raw)
        assert not collected, collected  # not tuned: nothing
        gc.enable()

        tune_gc()
        collected.clear()
        cache = DecoderCache()
        decoder = asyncio.run(
            asyncio.to_thread(cache.get_or_build, "urn:ocn:polkadot:1000", 9430, raw)
        )
        assert [info["generation"] for info in collected] == [1], collected
        young = {{id(o) for g in (0, 1) for o in gc.get_objects(generation=g)}}
        assert id(decoder) not in young and any(o is decoder for o in gc.get_objects(2))
        again = cache.get_or_build("urn:ocn:polkadot:1000", 9430, raw)
        assert again is decoder and len(collected) == 1, collected  # a hit builds nothing
        print("ok", len(gc.get_objects(generation=2)))
        """
    )
    words = out.split()
    assert words[0] == "ok" and int(words[1]) > 50_000, out


def test_the_clock_runs_a_full_collection_once_the_oldest_generation_has_grown() -> None:
    """Cycles that die after a young collection promoted them are freed by a full collection
    only, which the worker's thresholds never start: the clock starts one when the oldest
    generation has grown by more than a quarter since its first check, and not before."""
    out = run(
        """
        import asyncio, gc, weakref
        from ocstream.gctune import GC_STATS, collect_young, tune_gc

        class Node:
            pass

        def full() -> int:
            return int(GC_STATS[2][0])

        async def ticks(n: int) -> None:
            start = GC_STATS[1][0]
            while GC_STATS[1][0] < start + n:
                await asyncio.sleep(0.01)

        async def main():
            tune_gc()
            task = asyncio.create_task(collect_young(every=0.02, full_check=2))
            await ticks(3)  # the first check counted the oldest generation
            small = [Node() for _ in range(10)]  # growing a little starts nothing
            await ticks(4)
            assert full() == 0, GC_STATS
            nodes = [Node() for _ in range(50_000)]
            for a, b in zip(nodes[::2], nodes[1::2]):
                a.other, b.other = b, a
            gone = weakref.ref(nodes[0])
            gc.collect(1)  # alive at a young collection: promoted to the oldest generation
            del nodes, a, b
            assert gone() is not None  # only a full collection can free these cycles now
            await ticks(4)
            task.cancel()
            assert gone() is None, "the cycles in the oldest generation were not freed"
            assert full() == 1, GC_STATS
            print("ok", len(small))

        asyncio.run(main())
        """
    )
    assert out.split() == ["ok", "10"], out
