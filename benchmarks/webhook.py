"""Webhook delivery against a bare aiohttp client loop, in one run.

    python benchmarks/webhook.py [--redis URL] [--rounds K] [--notifications N] [--paced M]
                                 [--rate R] [--concurrency C]

A local aiohttp receiver runs in a subprocess (so it does not share the sender's core) and
records, for every POST, the notification id in the body and the arrival time (CLOCK_MONOTONIC,
the same clock in both processes). Two senders post the same notification bodies to it with the
same concurrency C:

a. a bare aiohttp client loop: C tasks POSTing the bodies (the baseline: no Redis, no signing);
b. ocstream's WebhookDispatcher with a ``whsec_`` secret (Standard Webhooks signing), fed by
   ``enqueue`` as the delivery agent would call it; every delivery goes through Redis (the
   at-most-once marker, the due set, the claim and the result scripts).

Each sender runs two phases:

* throughput: N notifications published at once; notifications/s = N / (last arrival − first
  publish);
* latency: M notifications published at R per second; latency = arrival − publish, p50/p99.

The machine is shared and noisy, so a and b alternate for ``--rounds`` rounds; the script prints
each round, the medians and the medians of the per-round ratios b/a. Redis keys live under a
fresh prefix that is deleted at the end. A default run takes about half a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import redis
from aiohttp import web

from ocstream.sinks.webhook import WebhookDispatcher, WebhookSettings
from ocstream.transport.client import connect

# -- the receiver (subprocess)


def serve() -> None:
    arrivals: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        arrivals[orjson.loads(body)["id"]] = now
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        data = orjson.dumps(arrivals)
        arrivals.clear()
        return web.Response(body=data, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/stats", stats)
        app.router.add_post("/{tail:.*}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- senders

Publish = Callable[[list[dict[str, Any]]], Awaitable[dict[str, float]]]


def make_notifications(tag: str, n: int) -> list[dict[str, Any]]:
    """Notification-shaped bodies of about 1.3 kB, like a real xcm.sent."""
    out = []
    for i in range(n):
        journey = uuid.uuid4().hex
        out.append(
            {
                "id": f"{journey}:sent:0",
                "journeyId": journey,
                "type": "xcm.sent",
                "subscriptionId": "bench",
                "legs": [
                    {
                        "from": "urn:ocn:polkadot:1000",
                        "to": "urn:ocn:polkadot:2032",
                        "type": "hrmp",
                        "relay": "urn:ocn:polkadot:0",
                    }
                ],
                "origin": {
                    "chainId": "urn:ocn:polkadot:1000",
                    "blockNumber": str(4833171 + i),
                    "blockHash": "0x" + os.urandom(32).hex(),
                    "extrinsicId": f"{4833171 + i}-2",
                    "outcome": "Success",
                    "error": None,
                    "messageHash": "0x" + os.urandom(32).hex(),
                    "messageData": "0x" + os.urandom(120).hex(),
                    "event": {"section": "XcmpQueue", "method": "XcmpMessageSent", "tag": tag},
                },
                "destination": {"chainId": "urn:ocn:polkadot:2032"},
                "waypoint": {"chainId": "urn:ocn:polkadot:1000", "legIndex": 0},
                "sender": {
                    "signer": {"id": "14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQT"},
                    "extraSigners": [],
                },
            }
        )
    return out


async def run_phases(
    publish: Callable[[dict[str, Any]], Awaitable[None]],
    drained: Callable[[], Awaitable[None]],
    stats: Callable[[], Awaitable[dict[str, float]]],
    n: int,
    paced: int,
    rate: float,
    tag: str,
) -> tuple[float, list[float]]:
    # throughput: everything at once
    batch = make_notifications(tag + "-t", n)
    t0 = time.monotonic()
    for start in range(0, n, 50):
        await asyncio.gather(*(publish(x) for x in batch[start : start + 50]))
    await drained()
    arrivals = await stats()
    assert len(arrivals) == n, f"{tag}: {len(arrivals)} of {n} arrived"
    throughput = n / (max(arrivals.values()) - t0)
    # latency: a steady rate
    batch = make_notifications(tag + "-l", paced)
    published: dict[str, float] = {}
    start = time.monotonic()
    for i, item in enumerate(batch):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        published[item["id"]] = time.monotonic()
        await publish(item)
    await drained()
    arrivals = await stats()
    assert len(arrivals) == paced, f"{tag}: {len(arrivals)} of {paced} arrived"
    latencies = sorted(arrivals[i] - published[i] for i in published)
    return throughput, latencies


async def bench_bare(
    base: str, concurrency: int, n: int, paced: int, rate: float, stats: Any
) -> tuple[float, list[float]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    headers = {"content-type": "application/json"}

    async def worker() -> None:
        while True:
            body = await queue.get()
            try:
                async with session.post(f"{base}/hook/{uuid.uuid4().hex}", data=body) as r:
                    await r.read()
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]

    async def publish(item: dict[str, Any]) -> None:
        queue.put_nowait(orjson.dumps(item))

    try:
        session.headers.update(headers)
        return await run_phases(publish, queue.join, stats, n, paced, rate, "bare")
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await session.close()


async def bench_dispatcher(
    base: str, url: str, concurrency: int, n: int, paced: int, rate: float, stats: Any
) -> tuple[float, list[float]]:
    prefix = f"bench-wh-{uuid.uuid4().hex[:8]}:"
    client = connect(url, name="bench-webhook")
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    subscription = {
        "id": "bench",
        "channels": [{"type": "webhook", "url": f"{base}/hook", "secret": secret}],
    }
    settings = WebhookSettings(
        allow_private_targets=True, max_concurrency=concurrency, poll_interval=0.2
    )
    dispatcher = WebhookDispatcher(
        client, prefix, settings, get_subscription={"bench": subscription}.get
    )
    await dispatcher.start()
    expected = 0

    async def publish(item: dict[str, Any]) -> None:
        nonlocal expected
        expected += 1
        assert await dispatcher.enqueue("bench", 0, item)

    async def drained() -> None:
        while dispatcher.counters["delivered"] < expected:
            await asyncio.sleep(0.005)

    try:
        return await run_phases(publish, drained, stats, n, paced, rate, "dispatcher")
    finally:
        await dispatcher.stop()
        failed = dispatcher.counters["failed_attempts"]
        if failed:
            print(f"  (dispatcher: {failed} failed attempts)")
        await client.aclose()
        sync = redis.Redis.from_url(url)
        for key in sync.scan_iter(match=prefix + "*", count=1000):
            sync.delete(key)


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def amain(args: argparse.Namespace) -> None:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    rounds: list[tuple[tuple[float, list[float]], tuple[float, list[float]]]] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        stats_session = aiohttp.ClientSession()

        async def stats() -> dict[str, float]:
            async with stats_session.get(f"{base}/stats") as r:
                data: dict[str, float] = orjson.loads(await r.read())
                return data

        c, n, m, rate = args.concurrency, args.notifications, args.paced, args.rate
        print(
            f"{args.rounds} rounds of a then b: {n} notifications at once, then {m} at "
            f"{rate:g}/s; concurrency {c}; receiver in a subprocess on port {port}"
        )
        # warm up both paths (connections, script loading) before measuring
        await bench_bare(base, c, 200, 20, 200.0, stats)
        await bench_dispatcher(base, args.redis, c, 200, 20, 200.0, stats)
        for i in range(args.rounds):
            a = await bench_bare(base, c, n, m, rate, stats)
            b = await bench_dispatcher(base, args.redis, c, n, m, rate, stats)
            rounds.append((a, b))
            for label, (thr, lat) in (("a bare aiohttp", a), ("b dispatcher  ", b)):
                p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
                print(
                    f"round {i + 1}  {label} {thr:>8,.0f} notifications/s"
                    f"   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms"
                )
        await stats_session.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    summary = {}
    for key, index in (("a", 0), ("b", 1)):
        runs = [r[index] for r in rounds]
        summary[key] = (
            median([thr for thr, _ in runs]),
            median([percentile(lat, 50) for _, lat in runs]),
            median([percentile(lat, 99) for _, lat in runs]),
        )
    labels = {"a": "a  bare aiohttp client loop ", "b": "b  WebhookDispatcher, signed"}
    for key in ("a", "b"):
        thr, p50, p99 = summary[key]
        print(
            f"{labels[key]} {thr:>8,.0f} notifications/s   latency p50 {p50 * 1000:5.1f} ms"
            f"   p99 {p99 * 1000:5.1f} ms   (medians)"
        )
    thr_ratio = median([b[0] / a[0] for a, b in rounds])
    p50_ratio = median([percentile(b[1], 50) / percentile(a[1], 50) for a, b in rounds])
    p99_ratio = median([percentile(b[1], 99) / percentile(a[1], 99) for a, b in rounds])
    print(
        f"RATIOS throughput b/a={thr_ratio:.3f}  latency p50 b/a={p50_ratio:.2f}"
        f"  p99 b/a={p99_ratio:.2f}  (medians of the per-round ratios)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--notifications", type=int, default=3000)
    parser.add_argument("--paced", type=int, default=400, help="notifications in the latency phase")
    parser.add_argument("--rate", type=float, default=200.0, help="per second, latency phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
