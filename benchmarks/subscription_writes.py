"""What a subscription write costs the live view, with many subscriptions stored, in one run.

    python benchmarks/subscription_writes.py [--subscriptions N] [--writes W] [--redis URL]

Stores N subscriptions (5,000 by default: the persistent limit) under a fresh key prefix, then
makes W writes (a PATCH-like replace of one subscription, through the store's Lua script) and
after each brings a worker's live view up to date, three ways:

a. a full reload (``LiveSubscriptions.refresh``: ``HGETALL`` of every subscription, changed ones
   parsed again): what every write cost before, on every worker; the baseline;
b. the writing worker's incremental step (``LiveSubscriptions.apply`` with the JSON it wrote);
c. another worker's incremental step (``LiveSubscriptions.apply_ids``: ``HMGET`` of the ids the
   change message names).

Prints the mean time per write of each and the ratios a/b and a/c, and checks that the three
views end up identical. The prefix's keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import redis

from ocstream.subscriptions import LiveSubscriptions, Subscription, SubscriptionStore
from ocstream.subscriptions.store import SubscriptionLimits
from ocstream.transport.client import connect

ORIGIN = "urn:ocn:polkadot:1000"
DESTINATIONS = ["urn:ocn:polkadot:2032", "urn:ocn:polkadot:2034"]


def subscription(index: int, destination: str) -> Subscription:
    return Subscription.model_validate(
        {
            "id": f"bench-{index}",
            "origin": ORIGIN if index % 2 else "urn:ocn:polkadot:0",
            "senders": "*",
            "destinations": [destination],
            "channels": [{"type": "webhook", "url": f"https://example.org/hook/{index}"}],
        }
    )


async def run(url: str, count: int, writes: int) -> dict[str, Any]:
    prefix = f"bench-subs-{uuid.uuid4().hex[:8]}:"
    client = connect(url, name="bench-subscription-writes")
    limits = SubscriptionLimits(max_persistent=count, max_persistent_per_client=0)
    store = SubscriptionStore(client, prefix, limits)
    try:
        for start in range(0, count, 500):
            batch = [
                subscription(i, DESTINATIONS[0]) for i in range(start, min(count, start + 500))
            ]
            await store.create_many(batch)
        # Three views, loaded once and not started: only what this benchmark calls runs.
        views = [LiveSubscriptions(client, prefix) for _ in range(3)]
        for view in views:
            await view.refresh(force=True)
        timings = [0.0, 0.0, 0.0]
        for n in range(writes):
            index = (n * 7919) % count
            changed = subscription(index, DESTINATIONS[(n + 1) % 2])
            version = await store.replace(changed)
            raw = changed.to_json_bytes()
            started = time.perf_counter()
            await views[0].refresh()
            timings[0] += time.perf_counter() - started
            started = time.perf_counter()
            assert await views[1].apply(version, {changed.id: raw})
            timings[1] += time.perf_counter() - started
            started = time.perf_counter()
            assert await views[2].apply_ids(version, [changed.id])
            timings[2] += time.perf_counter() - started
        snapshots = [{s.id: s.to_json_bytes() for s in view.persistent()} for view in views]
        assert snapshots[0] == snapshots[1] == snapshots[2], "the views differ"
        assert all(view.version == version for view in views)
        by_origin = [
            sorted(s.id for s in view.persistent() if s.origin == ORIGIN) for view in views
        ]
        assert by_origin[0] == by_origin[1] == by_origin[2]
        return {"count": count, "writes": writes, "ms": [t / writes * 1000 for t in timings]}
    finally:
        await client.aclose()
        sync = redis.Redis.from_url(url)
        keys = list(sync.scan_iter(match=prefix + "*", count=1000))
        if keys:
            sync.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=5000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    result = asyncio.run(run(args.redis, args.subscriptions, args.writes))
    a, b, c = result["ms"]
    print(f"{result['count']:,} subscriptions stored, {result['writes']} writes")
    print(f"a  full reload after each write (before)   {a:8.3f} ms/write")
    print(f"b  writer's incremental apply              {b:8.3f} ms/write   a/b = {a / b:.0f}x")
    print(f"c  other worker's apply_ids (HMGET)        {c:8.3f} ms/write   a/c = {a / c:.0f}x")


if __name__ == "__main__":
    main()
