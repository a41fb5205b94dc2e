"""How ``benchmarks/xcm.py`` decides that a run is over, against a real Redis.

The benchmark's timed part ends when ``xcm-notifications`` holds every journey's three
notifications by the topic's sequence counters (``wait_notified``), without reading them.
A notification written twice (a worker killed after its outputs were written) counts there
too, so the benchmark then reads the ids (``NotificationReader``) and, when some journey's
receipt is still missing, waits for the ids instead (``end_of_timed_part``, through
``wait_notes``). No benchmark run has produced such a duplicate, so that path is exercised
here, with notifications written by ocstream's own ``TopicWriter`` as the workers' producer
writes them.

By default the benchmark publishes the legs while its workers are stopped (``frozen``), and
starts the clock as they resume; the last test checks that with a real worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from ocstream.transport import TopicWriter

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PARTITIONS = 4


def _benchmark() -> ModuleType:
    """benchmarks/xcm.py, under a name of its own (``xcm`` would be ambiguous here)."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("xcm_benchmark", BENCHMARKS / "xcm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import does: dataclasses look their module up there.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _benchmark()


def note(journey: int, kind: str) -> tuple[str, bytes]:
    jid = f"j{journey:04d}"
    return jid, orjson.dumps({"type": kind, "id": f"{jid}:{kind}:0", "journeyId": jid})


def write(url: str, prefix: str, records: list[tuple[str, bytes]]) -> None:
    async def go() -> None:
        async with TopicWriter.from_url(
            url, prefix=prefix, default_partitions=PARTITIONS
        ) as writer:
            await writer.create_topic(bench.NOTIFICATIONS, PARTITIONS)
            await writer.send_many(bench.NOTIFICATIONS, records)

    asyncio.run(go())


KINDS = ("xcm.sent", "xcm.relayed", "xcm.received")


@pytest.fixture
def run(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    """A benchmark run with no workers (its keys go when it stops)."""
    made = bench.Run(redis_url, tmp_path, PARTITIONS, "t")
    yield made
    made.stop()


def test_the_count_ends_the_timed_part_and_the_ids_agree(run: Any) -> None:
    journeys = 5
    write(run.url, run.prefix, [note(j, kind) for j in range(journeys) for kind in KINDS])
    reader = bench.NotificationReader(run.client, run.prefix, PARTITIONS)
    cpu = bench.CpuMeter(run)
    _, (used, each, _) = bench.end_of_timed_part(run, reader, cpu, journeys, timeout=10)
    assert each == [] and set(used) == {"workers", "redis", "script"}  # a run without workers
    assert {kind: reader.count(kind) for kind in KINDS} == dict.fromkeys(KINDS, journeys)
    assert reader.entries == 3 * journeys


def test_a_count_short_of_its_target_times_out(run: Any) -> None:
    journeys = 3
    records = [note(j, kind) for j in range(journeys) for kind in KINDS]
    write(run.url, run.prefix, records[:-1])
    with pytest.raises(bench.Incomplete, match="9 notifications"):
        bench.wait_notified(run, PARTITIONS, 3 * journeys, timeout=0.5)
    write(run.url, run.prefix, records[-1:])
    bench.wait_notified(run, PARTITIONS, 3 * journeys, timeout=10)


def test_a_duplicate_makes_the_count_early_and_the_timed_part_waits_for_the_ids(
    run: Any,
) -> None:
    journeys = 4
    records = [note(j, kind) for j in range(journeys) for kind in KINDS]
    # The last journey's receipt is late; a duplicate of the first one's takes its place in
    # the count, which is complete as soon as these are written.
    late = records.pop()
    records.append(note(0, "xcm.received"))
    write(run.url, run.prefix, records)
    bench.wait_notified(run, PARTITIONS, 3 * journeys, timeout=10)

    # What the ids say then: one receipt short, and a timeout says how far each type got.
    reader = bench.NotificationReader(run.client, run.prefix, PARTITIONS)
    with pytest.raises(bench.Incomplete, match=r"3 of 4 xcm\.received") as failed:
        bench.wait_notes(run, reader, "xcm.received", journeys, timeout=0.5)
    assert "'xcm.sent': 4" in str(failed.value)

    # The timed part does not end on the count: it ends once the late receipt is written. The
    # receipt is written once the part has read the ids and found one missing (the reader holds
    # every entry written so far), so the part can only end by waiting for it.
    reader = bench.NotificationReader(run.client, run.prefix, PARTITIONS)
    seen_then: list[int] = []
    written: list[float] = []  # just before the late receipt is written

    def write_late() -> None:
        deadline = time.monotonic() + 10
        while reader.entries < 3 * journeys and time.monotonic() < deadline:
            time.sleep(0.01)  # polls a condition: the part's own read of the ids
        seen_then.append(reader.count("xcm.received"))
        written.append(time.perf_counter())
        write(run.url, run.prefix, [late])

    writer = threading.Thread(target=write_late)
    writer.start()
    try:
        end, _ = bench.end_of_timed_part(run, reader, bench.CpuMeter(run), journeys, timeout=10)
    finally:
        writer.join()
    assert seen_then == [journeys - 1]  # the part had taken the fallback when it was written
    assert end >= written[0]
    assert reader.count("xcm.received") == journeys
    assert reader.entries == 3 * journeys + 1


def test_legs_published_ahead_wait_for_the_workers_to_resume(run: Any) -> None:
    """``--publish ahead``: the legs go in while the workers are stopped, and the clock starts as
    they resume. The workers must really be stopped for the whole publish (their own process,
    not a wrapper), must take the legs once resumed, and the group must not have noticed."""
    journeys = bench.build_journeys(0, 20, 7, partitions=PARTITIONS)
    run.start(1, 60)
    [worker] = run.workers
    before = bench.metrics_of(run)
    assert before.generations and before.generations[0] > 0
    states: list[str] = []
    with bench.frozen(run):
        states.append(bench.process_state(worker.proc.pid))
        bench.publish(run.url, run.prefix, PARTITIONS, bench.shuffled(journeys, 7))
        states.append(bench.process_state(worker.proc.pid))
        # Nothing taken: the legs are all there, and not one notification is.
        assert bench.highwater(run.client, run.prefix, bench.LEGS, PARTITIONS) == 60
        assert bench.highwater(run.client, run.prefix, bench.NOTIFICATIONS, PARTITIONS) == 0
    assert states == ["T", "T"]
    assert bench.process_state(worker.proc.pid) != "T"
    bench.wait_notified(run, PARTITIONS, 60, timeout=60)
    reader = bench.NotificationReader(run.client, run.prefix, PARTITIONS)
    reader.poll()
    assert {kind: reader.count(kind) for kind in KINDS} == dict.fromkeys(KINDS, 20)
    assert bench.metrics_of(run).generations == before.generations
