"""The faust ``Transport`` for ``redis://`` and ``rediss://`` broker URLs.

Registered on faust's ``faust.transports`` entry point (see pyproject.toml), so
``faust.App(..., broker="redis://host:6379/0")`` picks it by URL scheme.
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.exceptions import ImproperlyConfigured
from faust.transport import base

from .consumer import Consumer
from .producer import Producer
from .settings import TransportSettings


class Transport(base.Transport):
    """Redis Streams transport (at-least-once; ``exactly_once`` is refused)."""

    Consumer: ClassVar[type[Consumer]] = Consumer
    Producer: ClassVar[type[Producer]] = Producer
    driver_version = "ocstream-redis-1"
    default_port = 6379

    def __init__(self, url: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, app, *args, **kwargs)
        guarantee = getattr(app.conf.processing_guarantee, "value", app.conf.processing_guarantee)
        if guarantee == "exactly_once":
            raise ImproperlyConfigured(
                "The Redis transport is at-least-once: processing_guarantee='exactly_once' "
                "needs Kafka transactions, which Redis Streams do not have. Use "
                "'at_least_once' and make effects idempotent."
            )
        self.redis_url = str(self.url[0])
        self.settings = TransportSettings.for_app(app)
