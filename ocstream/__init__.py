"""ocstream: XCM monitoring as a faust dataflow on Redis Streams.

Public API (kept honest by tests/test_public_api.py):

* :func:`build_app`, :class:`Settings`, :func:`load_settings`: the worker's faust app and its
  settings;
* :class:`TopicWriter`: the producer helper for writers outside faust;
* :class:`TransportSettings`: tunables of the Redis transport;
* :class:`EmbeddedRedis`: the private Redis of the single-machine mode;
* :class:`OcstreamError`, :class:`ConfigError`: errors (see :mod:`ocstream.errors`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .app import build_app
    from .embedded import EmbeddedRedis
    from .errors import ConfigError, OcstreamError
    from .settings import Settings, load_settings
    from .transport import TopicWriter, TransportSettings

__version__ = "0.1.0"

# Imported on first use (PEP 562): ``import ocstream`` stays cheap, so ``ocstream --help`` and
# ``--version`` do not pay for faust, aiohttp and the dataflow.
__getattr__ = lazy_exports(
    __name__,
    {
        "build_app": ".app",
        "EmbeddedRedis": ".embedded",
        "ConfigError": ".errors",
        "OcstreamError": ".errors",
        "Settings": ".settings",
        "load_settings": ".settings",
        "TopicWriter": ".transport",
        "TransportSettings": ".transport",
    },
)


__all__ = [
    "ConfigError",
    "EmbeddedRedis",
    "OcstreamError",
    "Settings",
    "TopicWriter",
    "TransportSettings",
    "__version__",
    "build_app",
    "load_settings",
]
