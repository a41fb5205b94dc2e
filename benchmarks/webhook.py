"""Webhook delivery against a bare aiohttp client loop, in one run.

    python benchmarks/webhook.py [--redis URL] [--rounds K] [--notifications N] [--paced M]
                                 [--rate R] [--concurrency C] [--partitions P] [--no-worker]

A local aiohttp receiver runs in a subprocess (so it does not share the sender's core) and
records, for every POST, the notification id in the body and the arrival time (CLOCK_MONOTONIC,
the same clock in every process: the sender keeps each notification's publish time and the
latency is arrival − publish). Three senders deliver the same notification bodies to it:

a. a bare aiohttp client loop: C tasks POSTing the bodies (the baseline: no Redis, no signing);
b. ocstream's WebhookDispatcher with a ``whsec_`` secret (Standard Webhooks signing), fed by
   ``enqueue`` as the delivery agent would call it, with C POSTs in flight; every delivery goes
   through Redis (the at-most-once marker, the due set, the claim and the result scripts);
c. one real ``ocstream worker`` process (its own defaults: 64 POSTs in flight, a 0.5 s poll):
   the notifications are appended to the ``xcm-notifications`` topic with ``TopicWriter``
   (key: the journey id), and go the production way: the transport's consumer → the
   ``xcm_deliver`` agent → ``Delivery.deliver_many`` (the live subscriptions' filters, the
   websocket fan-out where someone listens) → ``WebhookDispatcher.enqueue_many`` → the POST.
   The run declares the two networks in the registry and creates the subscription (origin
   urn:ocn:polkadot:1000, destination urn:ocn:polkadot:2034, one signed webhook channel) with
   ``POST /subs``; the worker is started once, waited for (assigned partitions), warmed up, and
   stopped with SIGTERM at the end, on errors too.

Each sender runs two phases:

* throughput: N notifications published at once; notifications/s = N / (last arrival − first
  publish); c appends them 500 to a round trip;
* latency: M notifications published at R per second, one at a time; latency = arrival − publish
  (for b, the ``enqueue`` call; for c, the ``send_many`` call that appends the record), p50/p99.

The machine is shared and noisy, so a, b and c alternate for ``--rounds`` rounds; the script
prints each round, the medians and the medians of the per-round ratios b/a, c/a and c/b. Redis
keys live under fresh prefixes that are deleted at the end. A default run takes about a minute
(``--no-worker``: a and b only, about half a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from aiohttp import web
from procs import percentile, serve_printing_port  # benchmarks/ is this script's directory

from ocstream.ingress.registry import NetworkRecord, NetworkRegistry
from ocstream.sinks.webhook import WebhookDispatcher, WebhookSettings
from ocstream.transport import TopicWriter
from ocstream.transport.client import connect

# The process helpers of the tests: free ports, the fast group timeouts, a clean environment.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.workers import FAST_GROUP_ENV, free_port, ocstream_env  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ORIGIN = "urn:ocn:polkadot:1000"
DESTINATION = "urn:ocn:polkadot:2034"
NOTIFICATIONS = "xcm-notifications"


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

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(len(arrivals)))

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/count", count)
    app.router.add_post("/{tail:.*}", hook)
    serve_printing_port(app)


# -- senders

PublishMany = Callable[[list[dict[str, Any]]], Awaitable[None]]
#: notifications/s, latencies (s), CPU seconds per notification of the delivering process
Result = tuple[float, list[float], float]


def make_notifications(tag: str, n: int) -> list[dict[str, Any]]:
    """Notification-shaped bodies of about 1.3 kB, like a real xcm.sent (which subscription
    ``bench`` selects: origin Asset Hub, final destination 2034)."""
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
                        "from": ORIGIN,
                        "to": DESTINATION,
                        "type": "hrmp",
                        "relay": "urn:ocn:polkadot:0",
                    }
                ],
                "origin": {
                    "chainId": ORIGIN,
                    "blockNumber": str(4833171 + i),
                    "blockHash": "0x" + os.urandom(32).hex(),
                    "extrinsicId": f"{4833171 + i}-2",
                    "outcome": "Success",
                    "error": None,
                    "messageHash": "0x" + os.urandom(32).hex(),
                    "messageData": "0x" + os.urandom(120).hex(),
                    "event": {"section": "XcmpQueue", "method": "XcmpMessageSent", "tag": tag},
                },
                "destination": {"chainId": DESTINATION},
                "waypoint": {"chainId": ORIGIN, "legIndex": 0},
                "sender": {
                    "signer": {"id": "14DqgdKU6Zfh1UjdU4PYwpoHi2QTp37R6djehfbhXe9zoyQT"},
                    "extraSigners": [],
                },
            }
        )
    return out


def in_gathers(publish: Callable[[dict[str, Any]], Awaitable[None]]) -> PublishMany:
    """A ``publish_many`` that calls ``publish`` 50 at a time."""

    async def publish_many(items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), 50):
            await asyncio.gather(*(publish(x) for x in items[start : start + 50]))

    return publish_many


async def run_phases(
    publish_many: PublishMany,
    drained: Callable[[], Awaitable[None]],
    stats: Callable[[], Awaitable[dict[str, float]]],
    n: int,
    paced: int,
    rate: float,
    tag: str,
    cpu: Callable[[], float] = time.process_time,
) -> Result:
    # throughput: everything at once
    batch = make_notifications(tag + "-t", n)
    cpu0 = cpu()
    t0 = time.monotonic()
    await publish_many(batch)
    await drained()
    cpu_each = (cpu() - cpu0) / n
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
        await publish_many([item])
    await drained()
    arrivals = await stats()
    assert len(arrivals) == paced, f"{tag}: {len(arrivals)} of {paced} arrived"
    latencies = sorted(arrivals[i] - published[i] for i in published)
    return throughput, latencies, cpu_each


async def bench_bare(
    base: str, concurrency: int, n: int, paced: int, rate: float, stats: Any
) -> Result:
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
        return await run_phases(in_gathers(publish), queue.join, stats, n, paced, rate, "bare")
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await session.close()


async def bench_dispatcher(
    base: str, url: str, concurrency: int, n: int, paced: int, rate: float, stats: Any
) -> Result:
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
        return await run_phases(in_gathers(publish), drained, stats, n, paced, rate, "dispatcher")
    finally:
        await dispatcher.stop()
        failed = dispatcher.counters["failed_attempts"]
        if failed:
            print(f"  (dispatcher: {failed} failed attempts)")
        await client.aclose()
        delete_keys(url, prefix)


# -- c: a real worker


class WorkerFailed(Exception):
    """The worker died, or did not get ready or deliver in time."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delete_keys(url: str, prefix: str) -> None:
    sync = redis.Redis.from_url(url)
    try:
        batch = list(sync.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(batch), 1000):
            sync.delete(*batch[start : start + 1000])
    finally:
        sync.close()


class BenchWorker:
    """One ``python -m ocstream worker`` on a fresh prefix, with a subscription whose webhook
    channel points at the receiver."""

    def __init__(self, url: str, base: str, partitions: int, root: Path) -> None:
        self.url = url
        self.base = base
        self.partitions = partitions
        self.root = root
        self.prefix = f"bench-whw-{uuid.uuid4().hex[:8]}:"
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = connect(url, name="bench-webhook-worker")
        self.writer = TopicWriter(self.client, prefix=self.prefix, default_partitions=partitions)
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        env = ocstream_env()
        env.update(FAST_GROUP_ENV)
        env.update(
            {
                "OCSTREAM_TRANSPORT_PREFIX": self.prefix,
                "OCSTREAM_APP_ID": f"bench-wh-{uuid.uuid4().hex[:6]}",
                "OCSTREAM_PARTITIONS": str(self.partitions),
                "OCSTREAM_WEBHOOK_ALLOW_PRIVATE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        args = [sys.executable, "-m", "ocstream", "worker", "-l", "info"]
        args += ["--redis", self.url, "--port", str(self.port)]
        args += ["--data-dir", str(self.root / "data")]
        with self.log_path.open("ab") as log:
            # Own session: Ctrl-C reaches this script only, which then stops the worker.
            self.proc = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise WorkerFailed(f"the worker exited:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def _get(self, path: str) -> tuple[int, bytes]:
        assert self.session is not None
        async with self.session.get(self.http + path) as response:
            return response.status, await response.read()

    async def metrics(self) -> dict[str, float]:
        _, body = await self._get("/metrics")
        found: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    found[name] = float(value)
                except ValueError:
                    pass
        return found

    async def ready(self, timeout: float = 60.0) -> None:
        """Networks declared, the worker up and assigned, the subscription created."""
        registry = NetworkRegistry(self.client, self.prefix)
        for urn in (ORIGIN, DESTINATION):
            await registry.declare(NetworkRecord(id=urn))
        await self.writer.create_topic(NOTIFICATIONS, self.partitions)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            self.check_alive()
            try:
                status, _ = await self._get("/health")
                if status == 200:
                    found = await self.metrics()
                    if found.get("ocstream_group_assigned_partitions", 0) > 0:
                        break
                    last = "no partitions assigned yet"
                else:
                    last = f"/health {status}"
            except (aiohttp.ClientError, OSError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise WorkerFailed(f"the worker was not ready in {timeout:.0f} s ({last!r})")
            await asyncio.sleep(0.2)
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        subscription = {
            "id": "bench",
            "origin": ORIGIN,
            "senders": "*",
            "destinations": [DESTINATION],
            "channels": [{"type": "webhook", "url": f"{self.base}/hook", "secret": secret}],
        }
        async with self.session.post(f"{self.http}/subs", json=subscription) as response:
            if response.status != 201:
                raise WorkerFailed(f"POST /subs: {response.status} {await response.text()}")

    async def bench(
        self, n: int, paced: int, rate: float, stats: Any, count: Any, tag: str = "worker"
    ) -> Result:
        expected = 0

        async def publish_many(items: list[dict[str, Any]]) -> None:
            nonlocal expected
            expected += len(items)
            records = []
            for item in items:
                body = {k: v for k, v in item.items() if k != "subscriptionId"}  # delivery adds it
                records.append((item["journeyId"], orjson.dumps(body)))
            for start in range(0, len(records), 500):
                await self.writer.send_many(NOTIFICATIONS, records[start : start + 500])

        async def drained() -> None:
            deadline = time.monotonic() + 60
            last = -1
            while True:
                got = await count()
                if got >= expected:
                    return
                if got != last:
                    last, deadline = got, time.monotonic() + 60  # progress: wait on
                self.check_alive()
                if time.monotonic() > deadline:
                    raise WorkerFailed(
                        f"{tag}: {got} of {expected} arrived, none for 60 s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.005)

        async def stats_and_reset() -> dict[str, float]:
            nonlocal expected
            expected = 0
            data: dict[str, float] = await stats()
            return data

        assert self.proc is not None
        pid = self.proc.pid
        return await run_phases(
            publish_many, drained, stats_and_reset, n, paced, rate, tag, lambda: cpu_seconds(pid)
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.client.aclose()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                print("  (the worker did not stop in 30 s after SIGTERM; killed)")
                self.proc.kill()
                self.proc.wait()
        delete_keys(self.url, self.prefix)


async def amain(args: argparse.Namespace) -> None:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    root = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    worker: BenchWorker | None = None
    rounds: list[dict[str, Result]] = []
    keys = ["a", "b"] if args.no_worker else ["a", "b", "c"]
    # SIGTERM cancels the run like Ctrl-C does (asyncio.run's own SIGINT handling), so the
    # finally below still stops the worker and deletes the keys.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    stats_session = aiohttp.ClientSession()
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"

        async def stats() -> dict[str, float]:
            async with stats_session.get(f"{base}/stats") as r:
                data: dict[str, float] = orjson.loads(await r.read())
                return data

        async def count() -> int:
            async with stats_session.get(f"{base}/count") as r:
                return int(await r.text())

        c, n, m, rate = args.concurrency, args.notifications, args.paced, args.rate
        print(
            f"{args.rounds} rounds of {', '.join(keys)}: {n} notifications at once, then {m} at "
            f"{rate:g}/s; concurrency {c}; receiver in a subprocess on port {port}"
        )
        if not args.no_worker:
            worker = BenchWorker(args.redis, base, args.partitions, root)
            worker.start()
            started = time.monotonic()
            await worker.ready()
            print(
                f"worker ready in {time.monotonic() - started:.1f} s "
                f"({args.partitions} partitions of {NOTIFICATIONS})"
            )
        # warm up every path (connections, script loading, the worker's live subscriptions)
        await bench_bare(base, c, 200, 20, 200.0, stats)
        await bench_dispatcher(base, args.redis, c, 200, 20, 200.0, stats)
        if worker is not None:
            await worker.bench(200, 20, 200.0, stats, count, "worker warm-up")
            # What the worker costs with nothing to deliver (timers, heartbeats, fetch waits).
            assert worker.proc is not None
            idle0 = cpu_seconds(worker.proc.pid)
            await asyncio.sleep(args.idle_seconds)
            idle = (cpu_seconds(worker.proc.pid) - idle0) / args.idle_seconds
            print(f"worker idle: {idle * 100:.2f}% of a core over {args.idle_seconds:g} s")
        labels = {"a": "a bare aiohttp", "b": "b dispatcher  ", "c": "c worker      "}
        for i in range(args.rounds):
            results: dict[str, Result] = {}
            results["a"] = await bench_bare(base, c, n, m, rate, stats)
            results["b"] = await bench_dispatcher(base, args.redis, c, n, m, rate, stats)
            if worker is not None:
                results["c"] = await worker.bench(n, m, rate, stats, count)
            rounds.append(results)
            for key in keys:
                thr, lat, cpu = results[key]
                p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
                print(
                    f"round {i + 1}  {labels[key]} {thr:>8,.0f} notifications/s"
                    f"   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   CPU {cpu * 1e6:5.0f} µs each"
                )
        if worker is not None:
            found = await worker.metrics()
            problems = {
                name: value
                for name in (
                    "oc_webhook_failed_attempts_total",
                    "oc_webhook_dropped_duplicates_total",
                    "oc_delivery_errors_total",
                )
                if (value := found.get(name, 0))
            }
            if problems:
                print(f"  (worker: {problems})")
    except WorkerFailed as exc:
        print(f"phase c failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    finally:
        await stats_session.close()
        if worker is not None:
            await worker.stop()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    summary = {}
    for key in keys:
        runs = [r[key] for r in rounds]
        summary[key] = (
            median([thr for thr, _, _ in runs]),
            median([percentile(lat, 50) for _, lat, _ in runs]),
            median([percentile(lat, 99) for _, lat, _ in runs]),
            median([cpu for _, _, cpu in runs]),
        )
    labels = {
        "a": "a  bare aiohttp client loop ",
        "b": "b  WebhookDispatcher, signed",
        "c": "c  worker: topic → webhook  ",
    }
    for key in keys:
        thr, p50, p99, cpu = summary[key]
        print(
            f"{labels[key]} {thr:>8,.0f} notifications/s   latency p50 {p50 * 1000:5.1f} ms"
            f"   p99 {p99 * 1000:5.1f} ms   CPU {cpu * 1e6:5.0f} µs each   (medians)"
        )

    def ratios(top: str, bottom: str) -> str:
        thr = median([r[top][0] / r[bottom][0] for r in rounds])
        p50 = median([percentile(r[top][1], 50) / percentile(r[bottom][1], 50) for r in rounds])
        p99 = median([percentile(r[top][1], 99) / percentile(r[bottom][1], 99) for r in rounds])
        return f"{top}/{bottom}: throughput {thr:.3f}  p50 {p50:.2f}  p99 {p99:.2f}"

    pairs = [("b", "a")] + ([] if args.no_worker else [("c", "a"), ("c", "b")])
    print("RATIOS " + "   ".join(ratios(*pair) for pair in pairs))
    print("       (medians of the per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--notifications", type=int, default=3000)
    parser.add_argument("--paced", type=int, default=400, help="notifications in the latency phase")
    parser.add_argument("--rate", type=float, default=200.0, help="per second, latency phase")
    parser.add_argument("--concurrency", type=int, default=64, help="POSTs in flight, a and b")
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of xcm-notifications (c)"
    )
    parser.add_argument("--no-worker", action="store_true", help="skip c (a and b only)")
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="how long the worker's idle CPU is measured"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    try:
        asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
