"""The ingress process: one follower per configured network, plus ``/health`` and ``/metrics``.

    ocstream ingress --config config/minimal.toml --redis redis://127.0.0.1:6379/0 --port 3001

Several ingress processes, each with its own networks, may share one Redis: they write the same
``blocks`` topic (key = network URN) through ``TopicWriter``, so offsets stay dense.

Each follower runs under a supervisor that restarts it after an error it did not handle, and a
background loop puts back the topic, the network records and the runtime metadata when Redis
lost them. ``/health`` says ``down`` when Redis does not answer and ``degraded`` when a follower
is not following or has published nothing for ``stale_after`` seconds (``docs/ingress.md``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from ..gctune import collect_young, tune_gc
from ..looplag import watch_loop
from ..metrics import CONTENT_TYPE as metrics_content_type
from ..transport.client import Backoff, connect, request_client
from ..transport.writer import TopicWriter
from .config import IngressConfig
from .decode import DecoderCache
from .follower import ChainFollower
from .metrics import IngressMetrics
from .registry import NetworkRegistry

logger = logging.getLogger(__name__)

BLOCKS_TOPIC = "blocks"


#: Seconds without a published block after which a followed network is reported stale.
DEFAULT_STALE_AFTER = 120.0
#: Seconds between two checks that Redis still holds the topic, records and metadata.
DEFAULT_REDECLARE_INTERVAL = 5.0
#: Seconds /health waits for Redis before it answers "down".
HEALTH_TIMEOUT = 1.5


class IngressService:
    def __init__(
        self,
        config: IngressConfig,
        *,
        redis_url: str,
        prefix: str,
        partitions: int,
        watchdog: float = 60.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        redeclare_interval: float = DEFAULT_REDECLARE_INTERVAL,
        max_backoff: float = 30.0,
    ) -> None:
        self.config = config
        self.client = connect(redis_url, name="ocstream-ingress")
        # /health has its own small pool with short timeouts: a frozen Redis or a burst of
        # probes must not hold it up behind the followers' 30 s reads.
        self.health_client = request_client(
            redis_url, name="ocstream-ingress-health", max_connections=4
        )
        self.writer = TopicWriter(self.client, prefix=prefix, default_partitions=partitions)
        self.registry = NetworkRegistry(self.client, prefix)
        self.metrics = IngressMetrics()
        self.decoders = DecoderCache()
        self.partitions = partitions
        self.stale_after = stale_after
        self.redeclare_interval = redeclare_interval
        self.started = time.time()
        self.followers = [
            ChainFollower(
                network,
                writer=self.writer,
                registry=self.registry,
                decoders=self.decoders,
                metrics=self.metrics,
                topic=BLOCKS_TOPIC,
                watchdog=watchdog,
                max_backoff=max_backoff,
            )
            for network in config.networks
        ]
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []

    # -- health --------------------------------------------------------------------------------
    def network_health(self, now: float | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """Per network: what its follower does and how fresh its tip is; and, per network that
        is not fully healthy, the reason why."""
        now = time.time() if now is None else now
        networks: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for follower in self.followers:
            m = follower.metrics
            task = self._tasks.get(follower.urn)
            running = task is not None and not task.done()
            idle = round(now - follower.last_progress, 1)
            state = follower.state if running else "stopped"
            networks[follower.urn] = {
                "state": state,
                "tip": follower.record.tip_number if follower.record is not None else None,
                "finalized": m.finalized_height,
                "backlog": m.backlog,
                "published": m.blocks_published,
                "seconds_since_progress": idle,
                "errors": m.errors,
                "errors_by_step": dict(m.errors_by_step),
                "reconnects": m.reconnects,
                "last_error": follower.last_error,
            }
            if not running:
                reasons[follower.urn] = "its follower is not running"
            elif follower.last_error_at is not None and follower.last_error_at > (
                follower.last_progress
            ):
                # Failing, or back but with no block published since: not healthy yet.
                reasons[follower.urn] = (
                    f"follower {follower.state}, no block published since {follower.last_error}"
                )
            elif idle > self.stale_after:
                what = "no block published" if m.blocks_published else "no block published yet"
                reasons[follower.urn] = (
                    f"{what} for {idle:.0f}s (stale after {self.stale_after:g}s)"
                )
        return networks, reasons

    async def health(self) -> dict[str, Any]:
        """``status``: ``down`` when Redis does not answer within 1.5 s (nothing can be
        published), ``degraded`` when a follower is not following or its network is stale,
        else ``ok``."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                redis_ok = bool(await self.health_client.ping())
            redis_error = None
        except Exception as exc:  # any failure is an unhealthy answer, not a crash
            logger.warning("health: Redis does not answer: %s: %s", type(exc).__name__, exc)
            redis_ok, redis_error = False, f"{type(exc).__name__}: {exc}"
        networks, problems = self.network_health()
        reasons = [f"{urn}: {reason}" for urn, reason in problems.items()]
        if not redis_ok:
            reasons.insert(0, f"Redis does not answer ({redis_error})")
        status = "down" if not redis_ok else "degraded" if reasons else "ok"
        return {"status": status, "redis": redis_ok, "reasons": reasons, "networks": networks}

    def web_app(self) -> web.Application:
        async def health(request: web.Request) -> web.Response:
            body = await self.health()
            return web.json_response(body, status=200 if body["redis"] else 503)

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=self.metrics.render(), headers={"Content-Type": metrics_content_type}
            )

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
        return app

    # -- running -------------------------------------------------------------------------------
    async def _supervise(self, follower: ChainFollower) -> None:
        """Run ``follower`` forever: an error it does not handle itself (a bug, an unexpected
        answer) is logged with its traceback, counted (``step="crash"``), and the follower is
        started again after a backoff; it resumes from the stored tip."""
        backoff = Backoff(base=1.0, cap=30.0)
        while True:
            started = time.monotonic()
            try:
                await follower.run()
                raise RuntimeError("the follower returned")  # run() loops until cancelled
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                follower._failed("crash", exc)
                follower.state = "crashed"
                if time.monotonic() - started > 60:
                    backoff.reset()
                delay = backoff.next_delay()
                logger.exception(
                    "✗ %s: the follower crashed (%s: %s); restarting it in %.1fs",
                    follower.urn,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _keep_declared(self) -> None:
        """Every ``redeclare_interval`` seconds, put back what a Redis that lost its data no
        longer has: the ``blocks`` topic, each network's record (with the tip this process
        published last) and its runtime metadata. Only missing keys are written."""
        failing = False
        while True:
            try:
                await self.writer.create_topic(BLOCKS_TOPIC, self.partitions)
                for follower in self.followers:
                    await follower.restore()
                if failing:
                    logger.info("ingress: Redis answers again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning(
                        "ingress: cannot check the registry: %s: %s", type(exc).__name__, exc
                    )
                failing = True
            await asyncio.sleep(self.redeclare_interval)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("ingress: task %s ended: %r", task.get_name(), task.exception())

    async def start(self) -> None:
        """Start one supervised follower task per network, and the re-declaration loop."""
        try:
            await self.writer.create_topic(BLOCKS_TOPIC, self.partitions)
        except RedisError as exc:  # the followers wait for Redis; so does the re-declaration
            logger.warning("ingress: Redis does not answer at start: %s", exc)
        for follower in self.followers:
            task = asyncio.create_task(self._supervise(follower), name=f"follow {follower.urn}")
            task.add_done_callback(self._on_task_done)
            self._tasks[follower.urn] = task
        declare = asyncio.create_task(self._keep_declared(), name="ingress re-declare")
        declare.add_done_callback(self._on_task_done)
        self._background = [declare]
        logger.info("ingress: following %s", ", ".join(f.urn for f in self.followers))

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()
        await self.health_client.aclose()

    async def run(self, address: str, port: int) -> None:
        """The ``ocstream ingress`` process: followers plus its own HTTP server, until SIGTERM."""
        runner = web.AppRunner(self.web_app())
        await runner.setup()
        await web.TCPSite(runner, address, port).start()
        logger.info("ingress: /health and /metrics on http://%s:%d", address, port)
        await self.start()
        # The worker's collector policy (``ocstream/gctune.py``). Under Python's own
        # thresholds, building each runtime's decoders ran full collections over the ones
        # built before: 12 chains took twice as long to start (``benchmarks/ingress.py``).
        tune_gc()
        collector = asyncio.create_task(collect_young(), name="ingress gc clock")
        watcher = asyncio.create_task(watch_loop(), name="ingress loop lag")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            logger.info("ingress: stopping")
            collector.cancel()
            watcher.cancel()
            await runner.cleanup()
            await self.stop()
