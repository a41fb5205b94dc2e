"""Redis Streams transport for faust-streaming.

Public pieces: :class:`Transport` (faust's driver, found through the ``faust.transports``
entry point for ``redis://`` and ``rediss://``), :class:`TopicWriter` (the producer helper for
writers outside faust), :class:`TransportSettings`, :class:`Keyspace` (the key layout) and
:data:`METRICS`.

Errors: :class:`TopicError` for writes a topic cannot take; Redis' own connection errors are
retried with backoff by every loop of the transport, never surfaced to agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .driver import Transport
    from .keys import Keyspace
    from .metrics import METRICS, TransportMetrics
    from .settings import TransportSettings
    from .writer import TopicError, TopicWriter

# Imported on first use (PEP 562), so that reading the settings does not import faust.
__getattr__ = lazy_exports(
    __name__,
    {
        "Transport": ".driver",
        "Keyspace": ".keys",
        "METRICS": ".metrics",
        "TransportMetrics": ".metrics",
        "TransportSettings": ".settings",
        "TopicError": ".writer",
        "TopicWriter": ".writer",
    },
)


__all__ = [
    "METRICS",
    "Keyspace",
    "TopicError",
    "TopicWriter",
    "Transport",
    "TransportMetrics",
    "TransportSettings",
]
