"""Probe how a checkout of ocstream behaves under Redis faults (issue 12, points 1-4, and issue 13
point 2), with a Redis of its own and real ``ocstream`` processes; prints one line per probe.

    python scripts/probe_redis_faults.py [--code DIR] [--only p1,p2,...]

``--code`` is the checkout whose ``ocstream`` runs in the child processes (default: this one),
so the same probes measure an older version: ``git archive`` it into a directory and pass that.
The probes themselves use this checkout's test helpers (``tests/``). Needs the recorded
fixtures (``OCSTREAM_FIXTURES`` or ``tests/fixtures``) and the machine's ``redis-server``.

p1  ingress, 3 chains producing blocks; Redis stopped with SIGTERM then with kill -9, 4 s each,
    restarted on its AOF: blocks in the topic per network (expected 20 each), duplicates,
    gaps, /health during the outage and at the end.
p2  worker, Redis frozen with SIGSTOP: /health and POST /subs, status and seconds.
p3  worker, 300 concurrent GET /health: answers by status, "Too many connections" answers.
p4  worker with a network config on --redis, Redis FLUSHALLed, then restarted empty: seconds
    until the configured networks are back in the registry (or not within 20 s).
p5  embedded worker (no --redis) whose chains are not reached: POST /subs once Ready, /health.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from ocstream.testing import fixtures_path  # noqa: E402
from ocstream.transport.wire import entry_value  # noqa: E402
from tests.ingress.rpc_server import RecordedChainServer  # noqa: E402
from tests.own_redis import kill_redis, start_redis, wipe  # noqa: E402
from tests.test_redis_faults import network_config  # noqa: E402
from tests.workers import Worker, free_port, ocstream_env, wait_for  # noqa: E402

FIRST = 17844552
NETWORKS = ["urn:ocn:polkadot:0", "urn:ocn:kusama:0", "urn:ocn:westend:0"]
SUB = {
    "origin": "urn:ocn:polkadot:0",
    "senders": "*",
    "destinations": ["urn:ocn:polkadot:1000"],
    "channels": [{"type": "log"}],
}


def worker(root: Path, code: Path, redis_url: str | None, config: Path) -> Worker:
    w = Worker(
        "w",
        root,
        redis_url=redis_url,
        prefix="probe:",
        app_id="probe",
        env={"OCSTREAM_CONFIG_FILE": str(config), "PYTHONPATH": str(code)},
    )
    w.start()
    w.wait_assigned()
    wait_for(lambda: "[^Worker]: Ready" in w.log_text(), 60, "Ready")
    return w


async def request(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int | str, str, float]:
    started = time.monotonic()
    try:
        async with session.request(method, url, json=body) as response:
            return response.status, await response.text(), time.monotonic() - started
    except Exception as exc:
        return type(exc).__name__, "", time.monotonic() - started


def status_of(text: str) -> str:
    try:
        return str(json.loads(text).get("status"))
    except (ValueError, AttributeError):
        return text[:60]


async def p1(root: Path, code: Path) -> str:
    from ocstream.ingress.model import ExtendedBlock
    from ocstream.ingress.raw import load_v1_cbor
    from ocstream.transport import Keyspace

    blocks = load_v1_cbor(fixtures_path() / "raw/v1/polkadot-17844552-20.cbor.bin")
    metadata = (fixtures_path() / "metadata/polkadot-9430.scale").read_bytes()
    chains = [RecordedChainServer(blocks, spec_version=9430, metadata=metadata) for _ in NETWORKS]
    config = root / "ingress.toml"
    text = ""
    for urn, chain in zip(NETWORKS, chains, strict=True):
        await chain.start()
        await chain.finalize(FIRST)
        text += f'[[networks]]\nid = "{urn}"\nprovider = {{ type = "rpc", url = "{chain.url}" }}\n'
    config.write_text(text)
    redis_dir = root / "redis"
    server = start_redis(redis_dir)
    port, url = server.port, server.url
    http = free_port()
    log = (root / "ingress.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ocstream", "ingress", "--config", str(config), "--redis", url),
        *("--port", str(http)),
        env=ocstream_env(OCSTREAM_TRANSPORT_PREFIX="probe:", PYTHONPATH=str(code)),
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    during: list[str] = []
    keys = Keyspace("probe:")
    client = redis.Redis.from_url(url)

    def first_blocks() -> bool:  # every network has published its first block (#FIRST)
        count = int(client.hget(keys.topics, "blocks") or 0)
        found = {f[b"k"] for p in range(count) for _, f in client.xrange(keys.stream("blocks", p))}
        return len(found) == len(NETWORKS)

    await asyncio.to_thread(wait_for, first_blocks, 60, "the first block of every network")
    client.close()
    timeout = aiohttp.ClientTimeout(total=130)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        number = FIRST
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _ in range(3):
                number += 1
                for chain in chains:
                    await chain.finalize(number)
                await asyncio.sleep(0.3)
            number += 1
            for chain in chains:
                await chain.finalize(number)
            await asyncio.sleep(0.02)
            await asyncio.to_thread(kill_redis, server, sig)
            for _ in range(4):
                await asyncio.sleep(1.0)
                number += 1
                for chain in chains:
                    await chain.finalize(number)
            status, body, took = await request(session, "GET", f"http://127.0.0.1:{http}/health")
            during.append(f"{status} {status_of(body)} ({took:.1f}s)")
            server = await asyncio.to_thread(start_redis, redis_dir, port)
        while number < FIRST + 19:
            number += 1
            for chain in chains:
                await chain.finalize(number)
            await asyncio.sleep(0.2)
        await asyncio.sleep(15)  # time to catch up
        status, body, _ = await request(session, "GET", f"http://127.0.0.1:{http}/health")
        after = f"{status} {status_of(body)}"
    client = redis.Redis.from_url(url)
    seen: dict[str, list[int]] = {urn: [] for urn in NETWORKS}
    for p in range(int(client.hget(keys.topics, "blocks") or 0)):
        for _, fields in client.xrange(keys.stream("blocks", p)):
            urn = fields[b"k"].decode()
            seen[urn].append(ExtendedBlock.from_json_bytes(entry_value(fields)).number)
    client.close()
    alive = proc.returncode is None
    if alive:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    log.close()
    for chain in chains:
        await chain.stop()
    server.stop()
    expected = set(range(FIRST, FIRST + 20))
    parts = []
    for urn in NETWORKS:
        numbers = seen[urn]
        dups = len(numbers) - len(set(numbers))
        missing = len(expected - set(numbers))
        ordered = numbers == sorted(numbers)
        parts.append(
            f"{urn.split(':')[2]} {len(set(numbers))}/20 dup={dups} missing={missing}"
            f"{'' if ordered else ' OUT-OF-ORDER'}"
        )
    text = (root / "ingress.log").read_text(errors="replace")
    logged = text.count("Redis")
    if os.environ.get("PROBE_LOG"):
        print(text[-int(os.environ["PROBE_LOG"]) :])
    return (
        f"p1 ingress outage: {'; '.join(parts)}; /health during outages: {during}; "
        f"after: {after}; process alive: {alive}; log lines naming Redis: {logged}"
    )


async def p2(root: Path, code: Path) -> str:
    server = start_redis(root / "redis")
    w = worker(root, code, server.url, network_config(root))
    base = f"http://127.0.0.1:{w.port}"
    os.kill(server.pid, signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150)) as session:
            (hs, hb, ht), (ps, pb, pt) = await asyncio.gather(
                request(session, "GET", f"{base}/health"),
                request(session, "POST", f"{base}/subs", {"id": "frozen", **SUB}),
            )
    finally:
        os.kill(server.pid, signal.SIGCONT)
        w.stop()
        server.stop()
    return (
        f"p2 frozen Redis: /health {hs} {status_of(hb)} in {ht:.1f}s; "
        f"POST /subs {ps} in {pt:.1f}s {pb[:80]!r}"
    )


async def p3(root: Path, code: Path) -> str:
    server = start_redis(root / "redis")
    w = worker(root, code, server.url, network_config(root))
    base = f"http://127.0.0.1:{w.port}"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as session:
            answers = await asyncio.gather(
                *(request(session, "GET", f"{base}/health") for _ in range(300))
            )
    finally:
        w.stop()
        server.stop()
    counts = Counter(f"{s} {status_of(b)}" for s, b, _ in answers)
    too_many = sum("Too many connections" in b for _, b, _ in answers)
    slowest = max(t for _, _, t in answers)
    return (
        f"p3 300 concurrent /health: {dict(counts)}; 'Too many connections': {too_many}; "
        f"slowest {slowest:.2f}s"
    )


async def p4(root: Path, code: Path) -> str:
    server = start_redis(root / "redis")
    w = worker(root, code, server.url, network_config(root))
    client = redis.Redis.from_url(server.url)

    def back(within: float) -> str:
        started = time.monotonic()
        while time.monotonic() - started < within:
            if len(client.hkeys("probe:networks")) == 2:
                return f"back after {time.monotonic() - started:.1f}s"
            time.sleep(0.1)
        return f"not back within {within:g}s"

    try:
        client.flushall()
        flushed = back(20)
        port = server.port
        client.close()
        kill_redis(server, signal.SIGKILL)
        wipe(server.data_dir)
        server = start_redis(server.data_dir, port)
        client = redis.Redis.from_url(server.url)
        restarted = back(20)
        alive = w.alive()
    finally:
        client.close()
        w.stop()
        server.stop()
    return (
        f"p4 Redis back empty: after FLUSHALL networks {flushed}; after an empty restart "
        f"{restarted}; worker alive: {alive}"
    )


async def p5(root: Path, code: Path) -> str:
    w = worker(root, code, None, network_config(root))
    base = f"http://127.0.0.1:{w.port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            ps, pb, _ = await request(session, "POST", f"{base}/subs", {"id": "first", **SUB})
            hs, hb, _ = await request(session, "GET", f"{base}/health")
    finally:
        w.stop()
    reasons = json.loads(hb).get("reasons") if hs == 200 else None
    return (
        f"p5 embedded, chains not reached: POST /subs {ps} {pb[:70]!r}; /health {hs} "
        f"{status_of(hb)} reasons={reasons}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=HERE)
    parser.add_argument("--only", default="p1,p2,p3,p4,p5")
    args = parser.parse_args()
    code = args.code.resolve()
    print(f"code: {code}")
    probes = {"p1": p1, "p2": p2, "p3": p3, "p4": p4, "p5": p5}
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"probe-{name}-") as root:
            print(await probes[name](Path(root), code), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
