"""ocstream's exceptions.

* :class:`OcstreamError` — base of everything ocstream raises on purpose.
  * :class:`ConfigError` — a configuration file, environment variable or option is invalid;
    the message names the source and the field.
    * :class:`SettingError` — an environment variable's value is not a number, or not one it
      can take (also a ``ValueError``).
  * :class:`ocstream.embedded.EmbeddedRedisError` — the embedded Redis could not start.
* :class:`ocstream.transport.TopicError` — a write a topic cannot take.
"""

from __future__ import annotations


class OcstreamError(Exception):
    """Base class of ocstream's errors."""


class ConfigError(OcstreamError):
    """Invalid configuration (file, environment or command line)."""


class SettingError(ConfigError, ValueError):
    """An environment variable whose value is not a number, or not one it can take. A
    ``ValueError`` too, as these checks always raised; a :class:`ConfigError`, so that the
    command line says it in one line."""
