"""Redis Streams transport for faust-streaming.

Public pieces: :class:`Transport` (faust's driver, found through the ``faust.transports``
entry point for ``redis://`` and ``rediss://``), :class:`TopicWriter` (the producer helper for
writers outside faust), :class:`TransportSettings`, :class:`Keyspace` (the key layout) and
:data:`METRICS`.

Errors: :class:`TopicError` for writes a topic cannot take; Redis' own connection errors are
retried with backoff by every loop of the transport, never surfaced to agents.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import Transport
    from .keys import Keyspace
    from .metrics import METRICS, TransportMetrics
    from .settings import TransportSettings
    from .writer import TopicError, TopicWriter

# Imported on first use (PEP 562), so that reading the settings does not import faust.
_LAZY = {
    "Transport": ".driver",
    "Keyspace": ".keys",
    "METRICS": ".metrics",
    "TransportMetrics": ".metrics",
    "TransportSettings": ".settings",
    "TopicError": ".writer",
    "TopicWriter": ".writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "METRICS",
    "Keyspace",
    "TopicError",
    "TopicWriter",
    "Transport",
    "TransportMetrics",
    "TransportSettings",
]
