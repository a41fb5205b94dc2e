"""Queueing a table batch's changelog records: one ``send`` each, or one ``queue_many`` per
partition, in one run on real Redis.

    python benchmarks/changelog.py [--redis URL] [--records N] [--rounds R]

A table flush (``ocstream/tablebatch.py``) hands the producer the changed keys of each
partition; a journey of ``benchmarks/xcm.py`` makes about 14 of them. The records here are
shaped like the matcher's smaller table values (a quoted key, a 70-byte JSON value), 200 per
partition batch over 8 partitions, flushed to Redis every 2,000, as a busy worker's flushes
come.

* **send**: what the flush did before, ``await producer.send(...)`` per record (a coroutine,
  a timestamp, a future, and in the flusher a ``RecordMetadata`` for each);
* **many**: ``producer.queue_many(topic, partition, records)``, one future for the last.

Each round times both on the same producer, alternating. Printed: the CPU of this process
(queueing, the producer's writes and their replies) per record, medians of the rounds, and the
ratio many/send. Redis's own CPU is the same for both (the same script calls) and is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import faust

from ocstream.transport.settings import TransportSettings

PARTITIONS = 8
PER_BATCH = 200
FLUSH_EVERY = 10  # partition batches between producer flushes


async def _round(producer: Any, topic: str, records: int, mode: str) -> float:
    items = [
        (f'"urn:ocn:polkadot:2034|{i:032x}"'.encode(), b'{"expires":1764000000000,"n":%d}' % i)
        for i in range(PER_BATCH)
    ]
    batches = max(1, records // PER_BATCH)
    start = time.process_time()
    for b in range(batches):
        partition = b % PARTITIONS
        if mode == "send":
            for key, value in items:
                await producer.send(topic, key, value, partition, None, None)
        else:
            producer.queue_many(topic, partition, items)
        if b % FLUSH_EVERY == FLUSH_EVERY - 1:
            await producer.flush()
    await producer.flush()
    return (time.process_time() - start) / (batches * PER_BATCH)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--records", type=int, default=40_000, help="per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    prefix = f"bench-changelog-{uuid.uuid4().hex[:8]}:"
    app = faust.App("bench-changelog", broker=args.redis, store="memory://")
    app.transport_settings = TransportSettings(prefix=prefix)  # type: ignore[attr-defined]
    producer = app.producer
    await producer.start()
    print(f"command: python benchmarks/changelog.py {' '.join(argv)}")
    print(
        f"parameters: records={args.records} per path and round, {PER_BATCH} per partition "
        f"batch, {PARTITIONS} partitions, rounds={args.rounds}; Python {sys.version.split()[0]}"
    )
    try:
        times: dict[str, list[float]] = {"send": [], "many": []}
        for r in range(args.rounds):
            topic = f"changelog-{r}"
            await producer.create_topic(topic, PARTITIONS, 1, compacting=True)
            for mode in ("send", "many"):
                times[mode].append(await _round(producer, topic, args.records, mode))
            print(
                f"round {r + 1}: send {times['send'][-1] * 1e6:.2f} us/record, "
                f"many {times['many'][-1] * 1e6:.2f} us/record"
            )
        send, many = statistics.median(times["send"]), statistics.median(times["many"])
        print(f"median: send {send * 1e6:.2f} us/record, many {many * 1e6:.2f} us/record")
        print(f"RATIOS many/send={many / send:.2f} (CPU of this process per record)")
    finally:
        client = producer.client  # type: ignore[attr-defined]  # ocstream's producer
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
