"""The ingress inside a worker: the single-machine (embedded) mode.

With no ``--redis``, ``ocstream worker --config F`` follows the networks of F itself, writing to
its embedded Redis, so one command runs the whole pipeline. It is the same
:class:`IngressService` that ``ocstream ingress`` runs, started and stopped with the worker.
"""

from __future__ import annotations

from typing import Any

from mode import Service

from .config import IngressConfig
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
