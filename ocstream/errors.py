"""ocstream's exceptions.

* :class:`OcstreamError` — base of everything ocstream raises on purpose.
  * :class:`ConfigError` — a configuration file, environment variable or option is invalid;
    the message names the source and the field.
  * :class:`ocstream.embedded.EmbeddedRedisError` — the embedded Redis could not start.
* :class:`ocstream.transport.TopicError` — a write a topic cannot take.
"""

from __future__ import annotations


class OcstreamError(Exception):
    """Base class of ocstream's errors."""


class ConfigError(OcstreamError):
    """Invalid configuration (file, environment or command line)."""
