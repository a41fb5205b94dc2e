"""The dataflow ocstream runs, declared on a faust app.

``declare(app)`` adds every topic, agent, table, timer and page of the dataflow to ``app``, and
what faust does not know about (the ingress writing ``blocks``, the delivery's webhooks,
websockets and log); ``ocstream topology`` describes whatever it declared: the XCM dataflow of
:mod:`topology.xcm` and the delivery of :mod:`topology.delivery`.

A worker's role (``--role``, ``OCSTREAM_ROLE``) picks the production parts it runs: ``all`` of
them, ``match`` (:mod:`topology.xcm`: extract and match, with their tables) or ``deliver``
(:mod:`topology.delivery`). Workers of different roles share one consumer group: each member
subscribes to the topics of its parts, and faust's assignor hands a topic's partitions only to
members that subscribe to it.

The example dataflows of ``examples/`` (the demo: events counted per user in a table, the
transport's self-check) are not part of it; ``OCSTREAM_DATAFLOW`` adds them by name.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ocstream.errors import ConfigError

from . import delivery, xcm


@dataclass(frozen=True, slots=True)
class DataflowSettings:
    """What the dataflow takes from the environment, read once (:func:`read_environment`): the
    parts to declare (``OCSTREAM_DATAFLOW``) and the XCM dataflow's settings."""

    parts: tuple[str, ...]
    xcm: xcm.XcmSettings


#: The parts of the production dataflow, in declaration order, each with how it is declared.
PARTS: dict[str, Callable[[Any, DataflowSettings], None]] = {
    "xcm": lambda app, settings: xcm.declare(app, settings.xcm),
    "delivery": lambda app, settings: delivery.declare(app),
}

#: The production parts each role runs.
ROLES: dict[str, tuple[str, ...]] = {
    "all": tuple(PARTS),
    "match": ("xcm",),
    "deliver": ("delivery",),
}

#: Example parts, declared only when ``OCSTREAM_DATAFLOW`` names them: name -> module.
EXAMPLES = {"demo": "examples.demo"}


def _example(name: str) -> Callable[[Any], None]:
    try:
        module = importlib.import_module(EXAMPLES[name])
    except ImportError as exc:
        raise ConfigError(
            f"OCSTREAM_DATAFLOW: the example {name!r} ({EXAMPLES[name]}) cannot be imported: "
            f"{exc}; the examples live in the repository (examples/), run from its root"
        ) from exc
    declare_part: Callable[[Any], None] = module.declare
    return declare_part


def read_environment(environ: Mapping[str, str] | None = None) -> DataflowSettings:
    """The parts named in ``OCSTREAM_DATAFLOW`` (comma-separated; default: the production
    parts, :data:`PARTS`) and the XCM settings (``OCSTREAM_XCM_*``), or a ``ConfigError`` /
    ``SettingError`` naming what is wrong. The command line calls this before it starts
    anything, an embedded Redis included, and declares the dataflow with what it got."""
    env = os.environ if environ is None else environ
    wanted = env.get("OCSTREAM_DATAFLOW", "").strip()
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else list(PARTS)
    unknown = sorted(set(names) - PARTS.keys() - EXAMPLES.keys())
    if unknown:
        known = sorted([*PARTS, *EXAMPLES])
        raise ConfigError(f"OCSTREAM_DATAFLOW: unknown parts {unknown}; known: {known}")
    return DataflowSettings(parts=tuple(names), xcm=xcm.XcmSettings.from_env(env))


def declare(app: Any, role: str = "all", settings: DataflowSettings | None = None) -> None:
    """Declare the parts of ``settings`` (default: :func:`read_environment` now), keeping of
    the production parts those of ``role`` (:data:`ROLES`).

    Running a part alone is for tests and benchmarks of one concern: the transport's tests run
    the demo alone, so that their timings and partition counts are those of that dataflow.
    """
    settings = settings or read_environment()
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; known: {sorted(ROLES)}")
    for name, declare_part in PARTS.items():
        if name in settings.parts and name in ROLES[role]:
            declare_part(app, settings)
    for name in EXAMPLES:
        if name in settings.parts:
            _example(name)(app)


__all__ = ["EXAMPLES", "PARTS", "ROLES", "DataflowSettings", "declare", "read_environment"]
