"""The ingress inside a worker: the single-machine (embedded) mode.

With no ``--redis``, ``ocstream worker --config F`` follows the networks of F itself, writing to
its embedded Redis, so one command runs the whole pipeline. It is the same
:class:`IngressService` that ``ocstream ingress`` runs, started and stopped with the worker.

In both modes the worker declares its config's networks in the registry at start and keeps them
declared (:func:`declare_networks`).
"""

from __future__ import annotations

import logging
from typing import Any

from mode import Service
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..transport.client import connect
from .config import IngressConfig
from .registry import NetworkRecord, NetworkRegistry
from .service import DEFAULT_REDECLARE_INTERVAL, DEFAULT_STALE_AFTER, IngressService

logger = logging.getLogger(__name__)


def attach_ingress(
    app: Any,
    config: IngressConfig,
    *,
    redis_url: str,
    prefix: str,
    partitions: int,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> IngressService:
    ingress = IngressService(
        config,
        redis_url=redis_url,
        prefix=prefix,
        partitions=partitions,
        stale_after=stale_after,
    )

    class WorkerIngress(Service):
        async def on_start(self) -> None:
            await ingress.start()

        async def on_stop(self) -> None:
            await ingress.stop()

    app.service(WorkerIngress)
    app.ingress = ingress
    return ingress


def declare_networks(
    app: Any,
    config: IngressConfig,
    *,
    redis_url: str,
    prefix: str,
    interval: float = DEFAULT_REDECLARE_INTERVAL,
) -> None:
    """Put the networks of the worker's config in the registry at start (when absent), so that
    subscriptions to them are accepted at once, before any ingress has reached the chain: in
    the distributed mode (the ingress runs elsewhere) and in the embedded mode alike. Then check
    again every ``interval`` seconds, so a Redis that lost its data gets them back without a
    restart. An ingress's record, with its tip, is never overwritten."""
    records = [NetworkRecord(id=n.id, relay=n.relay) for n in config.networks]

    class DeclareNetworks(Service):
        client: Redis | None = None

        async def on_start(self) -> None:
            self.client = connect(redis_url, name="ocstream-declare")
            registry = NetworkRegistry(self.client, prefix)
            try:
                await declare_all(registry, records)
            except RedisError as exc:  # the loop below tries again
                logger.warning("cannot declare the configured networks yet: %s", exc)

        @Service.task
        async def _redeclare(self) -> None:
            assert self.client is not None
            registry = NetworkRegistry(self.client, prefix)
            failing = False
            while not self.should_stop:
                await self.sleep(interval)
                try:
                    added = await declare_all(registry, records)
                except RedisError as exc:
                    if not failing:
                        logger.warning("cannot check the configured networks: %s", exc)
                    failing = True
                    continue
                failing = False
                if added:
                    logger.warning("re-declared %s: the registry had lost them", ", ".join(added))

        async def on_stop(self) -> None:
            if self.client is not None:
                await self.client.aclose()

    app.service(DeclareNetworks)


async def declare_all(registry: NetworkRegistry, records: list[NetworkRecord]) -> list[str]:
    """Declare each of ``records`` that is absent; returns the ids added."""
    return [record.id for record in records if await registry.declare(record)]
