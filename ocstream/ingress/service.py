"""The ingress process: one follower per configured network, plus ``/health`` and ``/metrics``.

    ocstream ingress --config config/minimal.toml --redis redis://127.0.0.1:6379/0 --port 3001

Several ingress processes, each with its own networks, may share one Redis: they write the same
``blocks`` topic (key = network URN) through ``TopicWriter``, so offsets stay dense.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiohttp import web

from ..metrics import CONTENT_TYPE as metrics_content_type
from ..transport.client import connect
from ..transport.writer import TopicWriter
from .config import IngressConfig
from .decode import DecoderCache
from .follower import ChainFollower
from .metrics import IngressMetrics
from .registry import NetworkRegistry

logger = logging.getLogger(__name__)

BLOCKS_TOPIC = "blocks"


class IngressService:
    def __init__(
        self,
        config: IngressConfig,
        *,
        redis_url: str,
        prefix: str,
        partitions: int,
        watchdog: float = 60.0,
    ) -> None:
        self.config = config
        self.client = connect(redis_url, name="ocstream-ingress")
        self.writer = TopicWriter(self.client, prefix=prefix)
        self.registry = NetworkRegistry(self.client, prefix)
        self.metrics = IngressMetrics()
        self.decoders = DecoderCache()
        self.partitions = partitions
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
            )
            for network in config.networks
        ]

    async def health(self) -> dict[str, Any]:
        try:
            redis_ok = bool(await self.client.ping())
        except Exception as exc:  # any failure is an unhealthy answer, not a crash
            logger.warning("health: Redis does not answer: %s", exc)
            redis_ok = False
        networks = {
            urn: {
                "tip": m.tip_height,
                "finalized": m.finalized_height,
                "backlog": m.backlog,
                "published": m.blocks_published,
                "errors": m.errors,
                "reconnects": m.reconnects,
            }
            for urn, m in sorted(self.metrics.networks.items())
        }
        return {"status": "ok" if redis_ok else "degraded", "redis": redis_ok, "networks": networks}

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

    async def start(self) -> None:
        """Start one follower task per network."""
        await self.writer.create_topic(BLOCKS_TOPIC, self.partitions)
        self._tasks = [asyncio.create_task(f.run(), name=f"follow {f.urn}") for f in self.followers]
        logger.info("ingress: following %s", ", ".join(f.urn for f in self.followers))

    async def stop(self) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        await asyncio.gather(*getattr(self, "_tasks", []), return_exceptions=True)
        await self.client.aclose()

    async def run(self, address: str, port: int) -> None:
        """The ``ocstream ingress`` process: followers plus its own HTTP server, until SIGTERM."""
        runner = web.AppRunner(self.web_app())
        await runner.setup()
        await web.TCPSite(runner, address, port).start()
        logger.info("ingress: /health and /metrics on http://%s:%d", address, port)
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            logger.info("ingress: stopping")
            await runner.cleanup()
            await self.stop()
