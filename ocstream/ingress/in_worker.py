"""The ingress inside a worker: the single-machine (embedded) mode.

With no ``--redis``, ``ocstream worker --config F`` follows the networks of F itself, writing to
its embedded Redis, so one command runs the whole pipeline. It is the same
:class:`IngressService` that ``ocstream ingress`` runs, started and stopped with the worker.
"""

from __future__ import annotations

from typing import Any

from mode import Service

from ..transport.client import connect
from .config import IngressConfig
from .registry import NetworkRecord, NetworkRegistry
from .service import IngressService


def attach_ingress(
    app: Any, config: IngressConfig, *, redis_url: str, prefix: str, partitions: int
) -> IngressService:
    ingress = IngressService(config, redis_url=redis_url, prefix=prefix, partitions=partitions)

    class WorkerIngress(Service):
        async def on_start(self) -> None:
            await ingress.start()

        async def on_stop(self) -> None:
            await ingress.stop()

    app.service(WorkerIngress)
    app.ingress = ingress
    return ingress


def declare_networks(app: Any, config: IngressConfig, *, redis_url: str, prefix: str) -> None:
    """A worker on a shared Redis with a network config: the ingress runs elsewhere, but the
    networks the config declares are put in the registry at start (when absent), so that
    subscriptions to them are accepted before the ingress has published anything."""
    records = [NetworkRecord(id=n.id, relay=n.relay) for n in config.networks]

    class DeclareNetworks(Service):
        async def on_start(self) -> None:
            client = connect(redis_url, name="ocstream-declare")
            try:
                registry = NetworkRegistry(client, prefix)
                for record in records:
                    await registry.declare(record)
            finally:
                await client.aclose()

    app.service(DeclareNetworks)
