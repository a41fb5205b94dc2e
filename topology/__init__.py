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
from collections.abc import Callable
from typing import Any

from ocstream.errors import ConfigError

from . import delivery, xcm

#: The parts of the production dataflow, in declaration order.
PARTS: dict[str, Callable[[Any], None]] = {"xcm": xcm.declare, "delivery": delivery.declare}

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


def declare(app: Any, role: str = "all") -> None:
    """Declare the parts named in ``OCSTREAM_DATAFLOW`` (comma-separated; default: the
    production parts, :data:`PARTS`), keeping of the production parts those of ``role``
    (:data:`ROLES`).

    Running a part alone is for tests and benchmarks of one concern: the transport's tests run
    the demo alone, so that their timings and partition counts are those of that dataflow.
    """
    wanted = os.environ.get("OCSTREAM_DATAFLOW", "").strip()
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else list(PARTS)
    unknown = sorted(set(names) - PARTS.keys() - EXAMPLES.keys())
    if unknown:
        known = sorted([*PARTS, *EXAMPLES])
        raise ConfigError(f"OCSTREAM_DATAFLOW: unknown parts {unknown}; known: {known}")
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; known: {sorted(ROLES)}")
    for name, declare_part in PARTS.items():
        if name in names and name in ROLES[role]:
            declare_part(app)
    for name in EXAMPLES:
        if name in names:
            _example(name)(app)


__all__ = ["EXAMPLES", "PARTS", "ROLES", "declare"]
