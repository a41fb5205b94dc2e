"""Client CPU per Redis round trip: ocstream's transport client against redis-py's own asyncio
client, in one run.

    python benchmarks/redis_client.py [--redis URL] [--calls N] [--repeat P]

Both clients talk to the same server with the same socket timeout (30 s) and hiredis installed.
ocstream's (``ocstream.transport.client.connect``) packs commands with hiredis, takes replies
that have already arrived without a timer, and writes a command without redis-py's
``asyncio.wait_for`` task (``docs/benchmarks.md``, "Issue 14, twenty-eighth round"). Three
shapes of traffic, each ``--calls`` times, the better of ``--repeat`` alternating passes:

* ``GET``: one command, one round trip (a worker's reads of the registry, the group's state);
* ``script``: a pipeline of one script call (``run_pipelined``, as the webhook dispatcher
  writes a result that came alone);
* ``script x100``: a pipeline of 100 script calls (a producer's or dispatcher's batch), per
  call;
* ``xread x300``: an XREAD of 300 stream entries of a changelog record's size, per entry, made
  into ``(offset, fields)`` records as the consumer's fetch does. ocstream's client reads the
  reply through the consumer's callback (``wire.fetched_streams``, twenty-ninth round); the
  other two through redis-py's parse, then ``id_to_offset`` per entry (before that round).

A third client, ``wait_for``, is ocstream's with redis-py's own write put back: what the
transport used before the twenty-eighth round. Prints the client's CPU (``time.process_time``)
and wall time per call, and the ratios redis-py / ocstream and wait_for / ocstream of the CPU
(above 1: ocstream's client spends less). The server's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from ocstream.transport.client import connect
from ocstream.transport.scripts import LuaScript, run_pipelined
from ocstream.transport.wire import fetched_streams, id_to_offset

SCRIPT = LuaScript("return redis.call('GET', KEYS[1])")
KEY = "ocbench:redis_client"
STREAM = "ocbench:redis_client:stream"
ENTRIES = 300


def records_before(parse: Callable[..., Any]) -> Callable[..., Any]:
    """An XREAD callback that makes the consumer's records as before the twenty-ninth round:
    the client's own ``parse`` (redis-py's), then :func:`id_to_offset` per entry."""

    def records(response: Any, **options: Any) -> Any:
        return [
            (key, [(id_to_offset(entry_id), fields) for entry_id, fields in entries])
            for key, entries in parse(response, **options)
        ]

    return records


async def per_call(run: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """Client CPU and wall time per call, in µs."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await run()
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


def wait_for_sends(client: aioredis.Redis) -> aioredis.Redis:
    """ocstream's client as it was before the twenty-eighth round: every write through
    redis-py's own ``send_packed_command`` (its ``wait_for`` task)."""
    pool = client.connection_pool
    ours = pool.connection_class
    pool.connection_class = type(
        f"WaitFor{ours.__name__}",
        (ours,),
        {"send_packed_command": AbstractConnection.send_packed_command},
    )
    return client


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    clients = {
        "redis-py": aioredis.Redis.from_url(args.redis, socket_timeout=30.0),
        "ocstream": connect(args.redis),
        "wait_for": wait_for_sends(connect(args.redis)),
    }
    # How each client makes a fetch's records: the consumer's callback, and before it
    # redis-py's own parse followed by id_to_offset per entry.
    clients["ocstream"].set_response_callback("XREAD", fetched_streams)
    for name in ("redis-py", "wait_for"):
        parse = clients[name].response_callbacks["XREAD"]
        clients[name].set_response_callback("XREAD", records_before(parse))
    print(f"command: python benchmarks/redis_client.py --calls {args.calls} --repeat {args.repeat}")
    try:
        for client in clients.values():
            await client.set(KEY, b"v" * 100)
            await client.script_load(SCRIPT.source)
        fill = clients["redis-py"].pipeline(transaction=False)
        for seq in range(1, ENTRIES + 1):
            fields = {"k": b"outbound:%d" % seq, "v": b"{" + b"x" * 150 + b"}", "h": b""}
            fill.xadd(STREAM, fields, id=f"0-{seq}")  # type: ignore[arg-type]
        await fill.execute()

        def shapes(client: Any) -> dict[str, tuple[Callable[[], Awaitable[Any]], int, int]]:
            """name -> (one call, calls per run, script calls in one call)"""
            one: list[tuple[LuaScript, list[str], list[Any]]] = [(SCRIPT, [KEY], [])]
            hundred = one * 100
            return {
                "GET": (lambda: client.get(KEY), args.calls, 1),
                "script": (lambda: run_pipelined(client, one), args.calls, 1),
                "script x100": (
                    lambda: run_pipelined(client, hundred),
                    max(1, args.calls // 100),
                    100,
                ),
                "xread x300": (
                    lambda: client.xread({STREAM: "0-0"}, count=ENTRIES),
                    max(1, args.calls // 10),
                    ENTRIES,
                ),
            }

        best: dict[tuple[str, str], tuple[float, float]] = {}
        for _ in range(args.repeat):
            for name, client in clients.items():  # alternating passes: the machine drifts
                for shape, (run, calls, per) in shapes(client).items():
                    await run()  # connected, scripts cached
                    cpu, wall = await per_call(run, calls)
                    cpu, wall = cpu / per, wall / per
                    previous = best.get((name, shape))
                    if previous is None or cpu < previous[0]:
                        best[name, shape] = (cpu, wall)

        print(f"{'shape':<12} {'client':<9} {'CPU us/call':>12} {'wall us/call':>13}")
        shapes_ = ("GET", "script", "script x100", "xread x300")
        for shape in shapes_:
            for name in clients:
                cpu, wall = best[name, shape]
                print(f"{shape:<12} {name:<9} {cpu:12.2f} {wall:13.2f}")
        for baseline in ("redis-py", "wait_for"):
            ratios = " ".join(
                f"{shape.replace(' ', '')}="
                f"{best[baseline, shape][0] / best['ocstream', shape][0]:.2f}"
                for shape in shapes_
            )
            print(f"RATIOS {baseline}/ocstream {ratios} (CPU per call)")
    finally:
        for client in clients.values():
            await client.delete(KEY, STREAM)
            await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
