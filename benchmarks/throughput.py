"""Consumer throughput of the Redis transport against a plain redis-py loop, in one run.

    python benchmarks/throughput.py [--redis URL] [--messages N] [--partitions P]

Fills one topic with N JSON messages over P partitions (through ocstream's TopicWriter), then
reads all of them with:

a. a plain redis-py asyncio XREADGROUP + XACK loop (hiredis parser): the baseline;
b. a faust agent on ocstream's transport reading raw bytes;
c. a faust agent reading JSON records and updating a table (changelog writes included);
d. a faust agent reading raw bytes in ``stream.take`` batches.

(faust refuses table updates inside ``stream.take``: a table needs the current event to find the
partition, so the table case runs per event.)

Prints msgs/s for each and the ratios b/a, c/a (d/a, e/a). Keys live under a fresh prefix that
is deleted at the end; nothing else on the Redis is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import orjson
import redis
import redis.asyncio as aioredis

from ocstream.transport import Keyspace, TopicWriter

HERE = Path(__file__).resolve().parent


async def fill(url: str, prefix: str, topic: str, n: int, partitions: int) -> float:
    async with TopicWriter.from_url(url, prefix=prefix) as writer:
        await writer.create_topic(topic, partitions)
        t0 = time.perf_counter()
        chunk = 2000
        for start in range(0, n, chunk):
            items = [
                (f"user{i % 1000}", orjson.dumps({"user": f"user{i % 1000}", "n": 1}))
                for i in range(start, min(n, start + chunk))
            ]
            await writer.send_many(topic, items)
        return n / (time.perf_counter() - t0)


async def baseline(url: str, prefix: str, topic: str, n: int, partitions: int) -> float:
    client = aioredis.Redis.from_url(url)
    keys = Keyspace(prefix)
    streams: dict[Any, Any] = {keys.stream(topic, p): ">" for p in range(partitions)}
    for stream in streams:
        await client.xgroup_create(stream, "baseline", id="0")
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        reply = cast(
            list[tuple[bytes, list[tuple[bytes, Any]]]],
            await client.xreadgroup("baseline", "c1", streams, count=500, block=1000),
        )
        for name, entries in reply:
            ids = []
            for entry_id, _fields in entries:
                ids.append(entry_id)
            seen += len(ids)
            await client.xack(name, "baseline", *ids)
    elapsed = time.perf_counter() - t0
    await client.aclose()
    return n / elapsed


def faust_run(
    url: str, prefix: str, topic: str, n: int, partitions: int, mode: str, batch: int
) -> float:
    with tempfile.TemporaryDirectory() as datadir:
        env = dict(
            os.environ,
            BENCH_MODE=mode,
            BENCH_N=str(n),
            BENCH_BATCH=str(batch),
            BENCH_TOPIC=topic,
            BENCH_REDIS=url,
            BENCH_PREFIX=prefix,
            BENCH_PARTITIONS=str(partitions),
            BENCH_DATADIR=datadir,
        )
        proc = subprocess.run(
            [sys.executable, str(HERE / "benchapp.py"), "worker", "-l", "warn"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    # faust routes stdout through its logger, so the line may be on either stream.
    found = re.search(r"RESULT (\d+)", proc.stdout + proc.stderr)
    if found:
        return float(found.group(1))
    raise RuntimeError(f"bench worker ({mode}) gave no result:\n{proc.stdout}\n{proc.stderr}")


def cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500, help="stream.take size for d")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    topic = "bench"
    n, parts = args.messages, args.partitions
    try:
        rate = asyncio.run(fill(args.redis, prefix, topic, n, parts))
        print(f"filled {n} messages over {parts} partitions ({rate:,.0f} msg/s via TopicWriter)")
        results = {"a": asyncio.run(baseline(args.redis, prefix, topic, n, parts))}
        print(f"a  plain XREADGROUP+XACK (hiredis)     {results['a']:>10,.0f} msg/s")
        runs = [
            ("b", "raw", 1, "faust agent, raw bytes          "),
            ("c", "table", 1, "faust agent, JSON + table update"),
            ("d", "raw", args.batch, "faust agent, raw, stream.take   "),
        ]
        for name, mode, batch, label in runs:
            results[name] = faust_run(args.redis, prefix, topic, n, parts, mode, batch)
            ratio = results[name] / results["a"]
            print(f"{name}  {label}  {results[name]:>10,.0f} msg/s   {name}/a = {ratio:.3f}")
        print(
            f"RATIOS b/a={results['b'] / results['a']:.3f} c/a={results['c'] / results['a']:.3f}"
            f" d/a={results['d'] / results['a']:.3f}"
            "  (prototype: b/a about 0.054, c/a about 0.011)"
        )
    finally:
        cleanup(args.redis, prefix)


if __name__ == "__main__":
    main()
