"""The hostile-input probes of issue 12 (points 5-11) against a real ``ocstream worker``.

    python scripts/probe_api_abuse.py [--tree DIR] [--json OUT]

Starts a private redis-server on a free port and one ``python -m ocstream worker`` with
``PYTHONPATH=DIR`` (default: this checkout), so the same probes can run against an older tree
for a before/after comparison. The worker gets write, read and admin tokens and short body and
header timeouts through the environment (an older tree ignores the settings it does not know).
Prints one line per probe (and writes them as JSON with ``--json``). Redis is killed at the end
for the outage probes; nothing else is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

REPO = Path(__file__).resolve().parents[1]
ORIGIN = "urn:ocn:polkadot:1000"
DESTINATION = "urn:ocn:polkadot:2032"
SIGNER = "5FHYYJ4QEnQDZwj7WRLYofy8rQQp7jZH291AYNcLyZ8UdQ7f"
SECRET = "whsec_c2VjcmV0LWtleS1ieXRlcw=="
WRITE, READ, ADMIN = "probe-write", "probe-read", "probe-admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sub(subscription_id: str, **changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": subscription_id,
        "origin": ORIGIN,
        "senders": [SIGNER],
        "destinations": [DESTINATION],
        "channels": [{"type": "webhook", "url": "https://example.org/hook"}],
    }
    value.update(changes)
    return value


class Probe:
    def __init__(self, base: str, pid: int, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.pid = pid
        self.session = session
        self.results: list[dict[str, Any]] = []

    def note(self, point: str, probe: str, outcome: str) -> None:
        print(f"{point:>4}  {probe:<58} {outcome}", flush=True)
        self.results.append({"point": point, "probe": probe, "outcome": outcome})

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = WRITE,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120,
        untyped: bool = False,
    ) -> tuple[int, str, bytes, float]:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        started = time.perf_counter()
        try:
            async with self.session.request(
                method,
                self.base + path,
                data=data,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout),
                skip_auto_headers=["Content-Type"] if untyped else None,
            ) as response:
                content = await response.read()
                kind = response.headers.get("Content-Type", "")
                return response.status, kind, content, time.perf_counter() - started
        except (TimeoutError, aiohttp.ClientError) as exc:
            return 0, type(exc).__name__, b"", time.perf_counter() - started


async def slow_headers(port: int, limit: float) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /subs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = time.monotonic()
    try:
        while time.monotonic() - started < limit:
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.5)
            except TimeoutError:
                writer.write(b"a")
                continue
            if not data:
                return f"closed by the server after {time.monotonic() - started:.1f} s"
        return f"still open after {limit:.0f} s"
    except ConnectionError:
        return f"reset by the server after {time.monotonic() - started:.1f} s"
    finally:
        writer.close()


async def slow_body(port: int, limit: float) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /subs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {WRITE}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(4096), limit)
        took = time.monotonic() - started
        status = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"
        return f"{status} after {took:.1f} s"
    except TimeoutError:
        return f"no answer after {limit:.0f} s"
    finally:
        writer.close()


async def probes(p: Probe, port: int, redis_url: str, prefix: str, kill_redis: Any) -> None:
    hook = {"type": "webhook", "url": "https://example.org/hook", "secret": SECRET}
    status, *_ = await p.call("POST", "/subs", sub("s1", channels=[hook, {"type": "websocket"}]))
    assert status == 201, status

    # 5. copy bomb
    bomb = [{"op": "copy", "from": "/senders", "path": "/senders/0"} for _ in range(22)]
    before = peak_rss_mb(p.pid)
    status, _, body, took = await p.call("PATCH", "/subs/s1", bomb)
    p.note(
        "5",
        "PATCH /subs/s1: 22 copy ops doubling /senders (1.3 KB)",
        f"{status} in {took:.1f} s, worker peak RSS {before:.0f} -> {peak_rss_mb(p.pid):.0f} MB",
    )

    # 6. secrets, read auth, Host, content type
    status, _, body, _ = await p.call("GET", "/subs", token=None)
    leaked = SECRET.encode() in body
    p.note(
        "6", "GET /subs without a token (write tokens set)", f"{status}, secret in body: {leaked}"
    )
    status, _, body, _ = await p.call("GET", "/subs/s1", token=READ)
    shown = (
        "secret in clear"
        if SECRET.encode() in body
        else ("hasSecret" if b"hasSecret" in body else "?")
    )
    p.note("6", "GET /subs/s1 with the read token", f"{status}, {shown}")
    try:
        async with p.session.ws_connect(p.base + "/ws/subs/s1") as ws:
            await ws.close()
        outcome = "handshake accepted"
    except aiohttp.WSServerHandshakeError as exc:
        outcome = f"handshake refused {exc.status}"
    p.note("6", "websocket /ws/subs/s1 without a token (read tokens set)", outcome)
    status, *_ = await p.call("GET", "/subs", token=READ, headers={"Host": "rebind.evil.example"})
    p.note("6", "GET /subs with Host: rebind.evil.example", str(status))
    status, *_ = await p.call("POST", "/subs", raw=orjson.dumps(sub("untyped")), untyped=True)
    p.note("6", "POST /subs without a Content-Type", str(status))

    # 7. error amplification
    flood = b"[" + b",".join([b"{}"] * ((1 << 20) // 3 - 1)) + b"]"
    before = peak_rss_mb(p.pid)
    status, _, body, took = await p.call(
        "POST", "/subs", raw=flood, headers={"Content-Type": "application/json"}
    )
    p.note(
        "7",
        "POST /subs: 1 MiB array of {}",
        f"{status}, {len(body):,} byte answer in {took:.1f} s, "
        f"peak RSS {before:.0f} -> {peak_rss_mb(p.pid):.0f} MB",
    )

    # 8. template recursion at write time
    chain = "{{#if type}}x" + "{{else if type}}y" * 500 + "{{/if}}"
    status, *_ = await p.call(
        "POST",
        "/subs",
        sub(
            "tpl", channels=[{"type": "webhook", "url": "https://example.org/h", "template": chain}]
        ),
    )
    p.note("8", "POST a webhook template of 500 chained {{else if}}", str(status))

    # 9. quotas
    created = 0
    for start in range(0, 1100, 100):
        batch = [sub(f"q{i}") for i in range(start, start + 100)]
        status, *_ = await p.call("POST", "/subs", batch)
        created += 100 if status == 201 else 0
    p.note("9", "POST 1,100 subscriptions from one client", f"{created:,} created")
    for start in range(0, 1100, 100):
        ids = ",".join(f"q{i}" for i in range(start, start + 100))
        for one in ids.split(","):
            await p.call("DELETE", f"/subs/{one}")
    sockets = []
    accepted = refused = 0
    query = {"origin": ORIGIN, "senders": "*", "destinations": [DESTINATION]}
    for _ in range(150):
        ws = await p.session.ws_connect(p.base + f"/ws/subs?access_token={READ}")
        sockets.append(ws)
        await ws.send_json(query)
        message = await ws.receive(timeout=10)
        if message.type == aiohttp.WSMsgType.TEXT and "id" in orjson.loads(message.data):
            accepted += 1
        else:
            refused += 1
    last = sockets[-1]
    close = last.close_code if last.closed else None
    for ws in sockets:
        await ws.close()
    p.note(
        "9",
        "150 ephemeral websockets from one address",
        f"{accepted} accepted, {refused} refused (close {close})",
    )

    # 10. slow clients
    p.note("10", "headers sent one byte every 0.5 s", await slow_headers(port, 40))
    p.note("10", "POST announcing 1000 body bytes, sending 1", await slow_body(port, 40))

    # 11. smaller points
    deep = b"[" * 900 + b'"xcm.sent"' + b"]" * 900
    status, *_ = await p.call(
        "PATCH",
        "/subs/s1",
        raw=b'[{"op": "add", "path": "/events", "value": ' + deep + b"}]",
        headers={"Content-Type": "application/json"},
    )
    p.note("11", "PATCH with a 900-deep value", str(status))
    status, kind, *_ = await p.call(
        "GET", "/admin/webhooks/dead-letters?offset=100000000000000000000", token=ADMIN
    )
    p.note("11", "GET dead letters ?offset=10^20 (admin)", f"{status} {kind.split(';')[0]}")
    status, kind, *_ = await p.call(
        "POST", "/admin/webhooks/s1/99999999999999999999/enable", token=ADMIN
    )
    p.note("11", "POST enable channel 10^20 (admin)", f"{status} {kind.split(';')[0]}")
    for method in ("OPTIONS", "TRACE"):
        status, kind, *_ = await p.call(method, "/subs")
        p.note("11", f"{method} /subs", f"{status} {kind.split(';')[0] or '(no type)'}")

    # 11. write cost with 5,000 subscriptions
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for i in range(5000):
        pipe.hset(f"{prefix}subs", f"bulk{i}", orjson.dumps(sub(f"bulk{i}")))
    pipe.incr(f"{prefix}subs:version")
    pipe.execute()
    await asyncio.sleep(3)  # the worker reloads them
    timings = []
    for n in range(100):
        value = [DESTINATION] if n % 2 else [DESTINATION, "urn:ocn:polkadot:0"]
        status, _, _, took = await p.call(
            "PATCH", "/subs/s1", [{"op": "replace", "path": "/destinations", "value": value}]
        )
        assert status == 200, status
        timings.append(took)
    timings.sort()
    p.note(
        "11",
        "100 PATCHes with 5,000 subscriptions stored",
        f"median {timings[50] * 1000:.1f} ms, p90 {timings[90] * 1000:.1f} ms",
    )

    # 11. Redis down
    kill_redis()
    status, kind, body, _ = await p.call("GET", "/networks", timeout=30)
    p.note("11", "GET /networks with Redis down", f"{status} {kind.split(';')[0] or '(no type)'}")
    try:
        async with p.session.ws_connect(p.base + f"/ws/subs?access_token={READ}") as ws:
            await ws.send_json(query)
            message = await ws.receive(timeout=60)
            text = message.data if message.type == aiohttp.WSMsgType.TEXT else str(message.type)
    except aiohttp.ClientError as exc:
        text = f"{type(exc).__name__}"
    p.note("11", "ephemeral websocket subscribe with Redis down", str(text)[:110])


async def main_async(tree: Path, out: Path | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="ocstream-probe-"))
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    prefix = "probe:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCSTREAM_")}
    env.update(
        PYTHONPATH=str(tree),
        PYTHONUNBUFFERED="1",
        OCSTREAM_TRANSPORT_PREFIX=prefix,
        OCSTREAM_APP_ID="probe",
        OCSTREAM_PARTITIONS="4",
        OCSTREAM_API_TOKENS=WRITE,
        OCSTREAM_READ_TOKENS=READ,
        OCSTREAM_ADMIN_TOKENS=ADMIN,
        OCSTREAM_HEADER_TIMEOUT="5",
        OCSTREAM_BODY_TIMEOUT="5",
    )
    worker = None
    log = (work / "worker.log").open("wb")
    try:
        for _ in range(50):
            try:
                redis.Redis.from_url(redis_url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        sys.path.insert(0, str(tree))
        from ocstream.ingress.registry import NetworkRecord, NetworkRegistry
        from ocstream.transport.client import connect

        client = connect(redis_url, name="probe")
        registry = NetworkRegistry(client, prefix)
        for urn in ("urn:ocn:polkadot:0", ORIGIN, DESTINATION):
            relay = None if urn.endswith(":0") else "urn:ocn:polkadot:0"
            await registry.put(NetworkRecord(id=urn, relay=relay, ss58_prefix=0))
        await client.aclose()
        worker = subprocess.Popen(
            [sys.executable, "-m", "ocstream", "worker", "--redis", redis_url, "--port", str(port),
             "--data-dir", str(work / "data")],
            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        # No connection limit: the websocket probe holds more than aiohttp's default 100.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            deadline = time.monotonic() + 90
            while True:
                try:
                    async with session.get(base + "/networks") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"the worker did not start; see {work / 'worker.log'}")
                await asyncio.sleep(0.3)
            probe = Probe(base, worker.pid, session)
            print(f"tree {tree}, worker pid {worker.pid}, Redis {redis_url}")

            def kill_redis() -> None:
                server.kill()
                server.wait()

            await probes(probe, port, redis_url, prefix, kill_redis)
        if out is not None:
            out.write_text(json.dumps(probe.results, indent=1))
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        server.kill()
        server.wait()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(main_async(args.tree.resolve(), args.json))


if __name__ == "__main__":
    main()
