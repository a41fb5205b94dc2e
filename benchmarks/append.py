"""Redis's and the client's CPU per record written, for the producer's round trips in one
``MULTI``/``EXEC`` transaction (what the transport sends) against a plain pipeline (what it sent
before), in one run.

    python benchmarks/append.py [--redis URL] [--rounds N] [--repeat P]

A round trip is what a busy worker's producer writes: 8 partitions of 60 records each (values
of 300 bytes, keys from 5,000), through ``writer.append_records``' script calls, for a plain
topic and for a changelog (compacted: the script also keeps the compaction index). Each shape
runs ``--rounds`` round trips, in ``--repeat`` alternating passes (the machine drifts); the
medians are printed. Redis's CPU is read from ``INFO cpu`` before and after (so run it on a
Redis nothing else is busy with), the client's with ``time.process_time``. The ratios are
pipeline / transaction: above 1, the transaction costs less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid

import redis
from procs import redis_cpu  # benchmarks/ is this script's directory

from ocstream.transport import scripts
from ocstream.transport.client import connect
from ocstream.transport.keys import Keyspace
from ocstream.transport.wire import Record
from ocstream.transport.writer import _append_call

PARTITIONS, PER_PARTITION = 8, 60


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"command: python benchmarks/append.py --rounds {args.rounds} --repeat {args.repeat}")
    client = connect(args.redis)
    server_stats = redis.Redis.from_url(args.redis)  # INFO cpu, read between the passes
    rnd = random.Random(1)
    prefix = f"appendbench-{uuid.uuid4().hex[:8]}:"
    records = args.rounds * PARTITIONS * PER_PARTITION
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        await client.script_load(scripts.APPEND)
        for rep in range(args.repeat):
            for topic, compact in (("plain", False), ("changelog", True)):
                for how in ("transaction", "pipeline"):
                    keys = Keyspace(f"{prefix}{rep}:{how}:")
                    rounds = [
                        [
                            _append_call(
                                keys,
                                topic,
                                p,
                                [
                                    Record(
                                        key=b"key-%d" % rnd.randrange(5000),
                                        value=os.urandom(150).hex().encode(),
                                        timestamp_ms=1,
                                    )
                                    for _ in range(PER_PARTITION)
                                ],
                                compact,
                            )
                            for p in range(PARTITIONS)
                        ]
                        for _ in range(args.rounds)
                    ]
                    atomic = how == "transaction"
                    server, own = redis_cpu(server_stats), time.process_time()
                    for calls in rounds:
                        replies = await scripts.run_pipelined(client, calls, atomic=atomic)
                        bad = [r for r in replies if isinstance(r, BaseException)]
                        if bad:
                            raise SystemExit(f"a write failed: {bad[0]}")
                    spent = (redis_cpu(server_stats) - server, time.process_time() - own)
                    figures.setdefault((topic, how), []).append(
                        (spent[0] * 1e6 / records, spent[1] * 1e6 / records)
                    )
                    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                        await client.delete(key)
        print(f"{'topic':<10} {'round trip':<12} {'Redis us/record':>16} {'client us/record':>17}")
        medians: dict[tuple[str, str], tuple[float, float]] = {}
        for (topic, how), runs in figures.items():
            medians[topic, how] = (
                statistics.median(r for r, _ in runs),
                statistics.median(c for _, c in runs),
            )
            redis_us, client_us = medians[topic, how]
            print(f"{topic:<10} {how:<12} {redis_us:16.2f} {client_us:17.2f}")
        ratios = " ".join(
            f"{topic}_{side}={medians[topic, 'pipeline'][n] / medians[topic, 'transaction'][n]:.2f}"
            for topic in ("plain", "changelog")
            for n, side in enumerate(("redis", "client"))
        )
        print(f"RATIOS pipeline/transaction {ratios} (CPU per record)")
    finally:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await client.aclose()
        server_stats.close()


if __name__ == "__main__":
    asyncio.run(main())
