"""Numbers and names read straight from ``OCSTREAM_*`` environment variables.

Most settings go through :mod:`ocstream.settings` (options, environment, config file). A few are
read where they are used, once per process, because the module that needs them is imported
before any settings object exists: the matcher's durations and bounds, the transport's
compression, the garbage collector's clock. They all read through these helpers, so a bad value
fails the same way everywhere: a :class:`~ocstream.errors.SettingError` naming the variable and
the value, which the command line prints as one line.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from .errors import SettingError

__all__ = ["env_choice", "env_count", "env_number", "env_seconds"]


def env_number(environ: Mapping[str, str], name: str) -> float | None:
    """The number in the environment variable ``name``, None when it is not set; a
    :class:`~ocstream.errors.SettingError` for text that is not a number, and for NaN (which no
    limit can mean). Infinity is a number: a limit may mean "never"."""
    raw = environ.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise SettingError(f"{name}: not a number: {raw!r}")
    return value


def env_seconds(environ: Mapping[str, str], name: str, *, positive: bool = False) -> float | None:
    """:func:`env_number` for a duration: a :class:`~ocstream.errors.SettingError` for a negative
    one too, and for 0 when ``positive`` (a period, which 0 would turn into a busy loop)."""
    value = env_number(environ, name)
    if value is None:
        return None
    if positive and not value > 0:
        raise SettingError(f"{name}: a duration in seconds, more than 0, not {environ[name]!r}")
    if value < 0:
        raise SettingError(f"{name}: a duration in seconds, 0 or more, not {environ[name]!r}")
    return value + 0.0  # -0.0 is 0


def env_count(environ: Mapping[str, str], name: str, default: int) -> int:
    """A whole number, 0 or more, from ``name`` (``default`` when it is not set)."""
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise SettingError(f"{name}: a whole number, 0 or more, not {raw!r}")
    return value


def env_choice(
    environ: Mapping[str, str], name: str, choices: Collection[str], default: str
) -> str:
    """One of ``choices`` from ``name`` (``default`` when it is not set)."""
    value = environ.get(name, default)
    if value not in choices:
        names = " or ".join(sorted(choices))
        raise SettingError(f"{name}: {names}, not {value!r}")
    return value
