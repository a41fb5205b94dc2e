"""What a producer working off a backlog costs the other clients of its Redis, by the number of
records in a round trip, in one run.

    python benchmarks/backlog_writes.py [--redis URL] [--records N] [--sizes 5000 1000 ...]
                                        [--repeat P] [--value-bytes B] [--partitions P]

A round trip of the producer is one ``MULTI``/``EXEC`` (``writer.append_records``), and Redis
serves nobody else while it runs the transaction. This writes ``--records`` records the way a
worker catching up writes them: round trips of a given size, one after the other, each awaited,
over the ``--partitions`` (8) of a changelog, compacted, and as many of a plain topic, values of
``--value-bytes`` (hex of random bytes, which compresses about as well as the records' JSON:
values of 512 bytes or more are compressed on the way), keys drawn from 5,000. Meanwhile a
probe process sends ``PING`` every millisecond on its own connection and times each reply: what
another worker's fetch or commit waits for.

For each size (the order alternates between passes; the medians of ``--repeat`` passes are
printed): records written per second, the client's and Redis's CPU per record, and the probe's
p50 / p99 / largest wait. The first size is the baseline: the ratios are each size's figure
over the baseline's (below 1 for the probe: shorter waits).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import time
import uuid
from multiprocessing.connection import Connection

import redis
from procs import percentile, redis_cpu  # benchmarks/ is this script's directory

from ocstream.transport import scripts
from ocstream.transport.client import connect
from ocstream.transport.keys import Keyspace
from ocstream.transport.wire import Record
from ocstream.transport.writer import append_records

TOPICS = (("changelog", True), ("plain", False))


def probe(url: str, interval: float, stop: Connection, out: Connection) -> None:
    """PING every ``interval`` seconds until told to stop; send back the waits, in seconds."""
    client = redis.Redis.from_url(url)
    client.ping()
    out.send("ready")
    waits: list[float] = []
    while not stop.poll():
        start = time.perf_counter()
        client.ping()
        waits.append(time.perf_counter() - start)
        time.sleep(interval)
    out.send(waits)
    client.close()


async def one_pass(
    url: str, client: redis.asyncio.Redis, stats: redis.Redis, size: int, args: argparse.Namespace
) -> dict[str, float]:
    rnd = random.Random(size)
    keys = Keyspace(f"backlogbench-{uuid.uuid4().hex[:8]}:")
    # Hex of random bytes: values of 512 bytes or more are compressed on the way
    # (``wire.COMPRESS_MIN_BYTES``), and a repeated byte would shrink to nothing.
    items = [
        (
            TOPICS[n % 2][0],
            rnd.randrange(args.partitions),
            Record(
                b"key-%d" % rnd.randrange(5000),
                rnd.randbytes(args.value_bytes // 2).hex().encode(),
                1,
            ),
        )
        for n in range(args.records)
    ]
    compacted = {name for name, compact in TOPICS if compact}
    ctx = multiprocessing.get_context("spawn")
    stop_recv, stop_send = ctx.Pipe(duplex=False)
    out_recv, out_send = ctx.Pipe(duplex=False)
    prober = ctx.Process(target=probe, args=(url, 0.001, stop_recv, out_send))
    prober.start()
    assert out_recv.recv() == "ready"
    await asyncio.sleep(0.2)  # some waits before the backlog, as a floor
    server, own, wall = redis_cpu(stats), time.process_time(), time.perf_counter()
    for start in range(0, len(items), size):
        results = await append_records(client, keys, items[start : start + size], compacted)
        bad = [r for r in results if isinstance(r, BaseException)]
        if bad:
            raise SystemExit(f"a write failed: {bad[0]}")
    wall = time.perf_counter() - wall
    spent = (redis_cpu(stats) - server, time.process_time() - own)
    stop_send.send(True)
    waits: list[float] = out_recv.recv()
    prober.join()
    async for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
        await client.delete(key)
    return {
        "rate": args.records / wall,
        "redis_us": spent[0] * 1e6 / args.records,
        "client_us": spent[1] * 1e6 / args.records,
        "p50_ms": percentile(waits, 50) * 1e3,
        "p99_ms": percentile(waits, 99) * 1e3,
        "max_ms": max(waits) * 1e3,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 2000, 1000, 500])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--value-bytes", type=int, default=400)
    parser.add_argument("--partitions", type=int, default=8, help="per topic (two topics)")
    args = parser.parse_args()
    print(
        f"command: python benchmarks/backlog_writes.py --records {args.records} --sizes "
        f"{' '.join(map(str, args.sizes))} --repeat {args.repeat} --value-bytes {args.value_bytes} "
        f"--partitions {args.partitions}"
    )
    client = connect(args.redis)
    stats = redis.Redis.from_url(args.redis)
    figures: dict[int, list[dict[str, float]]] = {size: [] for size in args.sizes}
    try:
        await client.script_load(scripts.APPEND)
        for rep in range(args.repeat):
            order = args.sizes if rep % 2 == 0 else list(reversed(args.sizes))
            for size in order:
                figures[size].append(await one_pass(args.redis, client, stats, size, args))
    finally:
        await client.aclose()
        stats.close()
    names = ("rate", "client_us", "redis_us", "p50_ms", "p99_ms", "max_ms")
    medians = {
        size: {name: statistics.median(run[name] for run in runs) for name in names}
        for size, runs in figures.items()
    }
    print(
        f"{'records/round trip':>18} {'records/s':>10} {'client us/rec':>14} {'Redis us/rec':>13}"
        f" {'probe p50 ms':>13} {'p99 ms':>7} {'max ms':>7}"
    )
    for size, m in medians.items():
        print(
            f"{size:>18,} {m['rate']:>10,.0f} {m['client_us']:>14.2f} {m['redis_us']:>13.2f}"
            f" {m['p50_ms']:>13.3f} {m['p99_ms']:>7.2f} {m['max_ms']:>7.2f}"
        )
    base = medians[args.sizes[0]]
    for size in args.sizes[1:]:
        m = medians[size]
        ratios = " ".join(f"{name}={m[name] / base[name]:.2f}" for name in names)
        print(f"RATIOS {size}/{args.sizes[0]} {ratios}")


if __name__ == "__main__":
    asyncio.run(main())
