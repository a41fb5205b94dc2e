"""Produce demo events from a separate process, through ocstream's TopicWriter.

    python produce_events.py REDIS_URL PREFIX COUNT [--users U] [--partitions P] [--rate R]
                             [--delete]

Event i goes to user ``u{i % U}`` with n=1. With --rate, about R events a second. With
--delete, event i deletes user ``u{i % U}`` from the table instead.
Prints ``ACK <n>`` after each acknowledged batch and ``DONE <count>`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis

from ocstream.transport import TopicWriter


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("prefix")
    parser.add_argument("count", type=int)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--delete", action="store_true")
    args = parser.parse_args()
    batch = 100 if not args.rate else max(1, int(args.rate / 20))
    async with TopicWriter.from_url(args.redis_url, prefix=args.prefix) as writer:
        await writer.create_topic("demo-events", args.partitions)
        sent = 0
        t0 = time.monotonic()
        while sent < args.count:
            event = {"delete": True} if args.delete else {"n": 1}
            items = [
                (f"u{i % args.users}", json.dumps({"user": f"u{i % args.users}", **event}))
                for i in range(sent, min(args.count, sent + batch))
            ]
            while True:
                try:
                    await writer.send_many("demo-events", items)
                    break
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    # Redis restarting: this batch was not acknowledged, send it again
                    print(f"RETRY {exc}", flush=True)
                    await asyncio.sleep(0.2)
            sent += len(items)
            print(f"ACK {sent}", flush=True)
            if args.rate:
                ahead = sent / args.rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    print(f"DONE {sent}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
