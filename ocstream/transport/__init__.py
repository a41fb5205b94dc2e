"""Redis Streams transport for faust-streaming.

Public pieces: :class:`Transport` (faust's driver, found through the ``faust.transports``
entry point for ``redis://`` and ``rediss://``), :class:`TopicWriter` (the producer helper for
writers outside faust), :class:`TransportSettings`, :class:`Keyspace` (the key layout) and
:data:`METRICS`.

Errors: :class:`TopicError` for writes a topic cannot take; Redis' own connection errors are
retried with backoff by every loop of the transport, never surfaced to agents.
"""

from __future__ import annotations

from .driver import Transport
from .keys import Keyspace
from .metrics import METRICS, TransportMetrics
from .settings import TransportSettings
from .writer import TopicError, TopicWriter

__all__ = [
    "METRICS",
    "Keyspace",
    "TopicError",
    "TopicWriter",
    "Transport",
    "TransportMetrics",
    "TransportSettings",
]
