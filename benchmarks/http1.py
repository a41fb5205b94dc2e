"""The webhook HTTP client against aiohttp's, in one run.

    python benchmarks/http1.py [--posts N] [--concurrency C] [--rounds K] [--body BYTES]

A local aiohttp receiver runs in a subprocess (its own core) and answers every POST with 204.
Two clients POST the same N bodies of BYTES bytes to it, C at a time, over kept-alive
connections, with the headers a signed webhook carries:

a. ``aiohttp.ClientSession.post`` (what the dispatcher used before ``ocstream.sinks.http1``),
   reading the answer as the dispatcher did (``async with``, the body drained);
b. ``ocstream.sinks.http1.Http1Client.post``.

For each the script measures the CPU time of this (the sending) process per POST
(``time.process_time``) and POSTs per second of wall time. The machine is noisy, so a and b
alternate for K rounds; the script prints every round, the medians and the median of the
per-round ratios b/a (CPU per POST: lower is better) and b/a (POSTs/s: higher is better).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from procs import serve_printing_port  # benchmarks/ is this script's directory
from yarl import URL

from ocstream.sinks.http1 import Http1Client


def serve() -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    serve_printing_port(app)


Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


async def run(post: Post, url: str, body: bytes, n: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per POST, POSTs per second)."""
    headers = {
        "content-type": "application/json",
        "user-agent": "ocstream-bench",
        "webhook-id": "msg_01JBENCH",
        "webhook-timestamp": "1733300000",
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    }
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status = await post(f"{url}/hook/{left}", body, headers)
            if status != 204:
                raise RuntimeError(f"receiver answered {status}")

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / n * 1e6, n / wall


async def bench(args: argparse.Namespace, port: int) -> None:
    url = f"http://127.0.0.1:{port}"
    body = b'{"id": "x", "legs": [' + b"0," * (args.body // 2) + b"0]}"
    timeout = aiohttp.ClientTimeout(total=10)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
    )
    client = Http1Client()

    async def post_aiohttp(target: str, data: bytes, headers: dict[str, str]) -> int:
        async with session.post(
            URL(target, encoded=True), data=data, headers=headers, allow_redirects=False,
            timeout=timeout,
        ) as response:  # fmt: skip
            while await response.content.read(65536):
                pass
            return response.status

    async def post_http1(target: str, data: bytes, headers: dict[str, str]) -> int:
        status, _ = await client.post(URL(target, encoded=True), data, headers, 10.0)
        return status

    # Warm both (connections, code paths).
    await run(post_aiohttp, url, body, 500, args.concurrency)
    await run(post_http1, url, body, 500, args.concurrency)
    rows: list[tuple[float, float, float, float]] = []
    for round_ in range(args.rounds):
        a_cpu, a_rate = await run(post_aiohttp, url, body, args.posts, args.concurrency)
        b_cpu, b_rate = await run(post_http1, url, body, args.posts, args.concurrency)
        rows.append((a_cpu, a_rate, b_cpu, b_rate))
        print(
            f"round {round_ + 1}: a aiohttp {a_cpu:6.1f} µs CPU/POST {a_rate:7.0f} POST/s | "
            f"b http1 {b_cpu:6.1f} µs CPU/POST {b_rate:7.0f} POST/s | "
            f"b/a CPU {b_cpu / a_cpu:.2f} rate {b_rate / a_rate:.2f}",
            flush=True,
        )
    await session.close()
    await client.close()
    med = statistics.median
    print(
        f"medians: a {med(r[0] for r in rows):.1f} µs CPU/POST, {med(r[1] for r in rows):.0f} "
        f"POST/s; b {med(r[2] for r in rows):.1f} µs CPU/POST, {med(r[3] for r in rows):.0f} "
        f"POST/s; connections opened by b: {client.connections_opened}"
    )
    print(
        f"RATIO b/a CPU per POST {med(r[2] / r[0] for r in rows):.2f} (lower is better); "
        f"b/a POSTs/s {med(r[3] / r[1] for r in rows):.2f} (higher is better)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--body", type=int, default=1300)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    print(f"command: python benchmarks/http1.py {' '.join(sys.argv[1:])}".rstrip())
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        asyncio.run(bench(args, port))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
