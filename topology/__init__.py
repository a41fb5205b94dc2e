"""The dataflow ocstream runs, declared on a faust app.

``declare(app)`` adds every topic, agent, table and page of the dataflow to ``app``;
``ocstream topology`` describes whatever it declared: the XCM dataflow of :mod:`topology.xcm`,
and the small demo of :mod:`topology.demo` (events counted per user in a table), a self-check of
the transport that its integration tests and benchmarks run.
"""

from __future__ import annotations

import os
from typing import Any

from . import delivery, demo, xcm

#: The parts of the dataflow, in declaration order.
PARTS = {"xcm": xcm.declare, "delivery": delivery.declare, "demo": demo.declare}


def declare(app: Any) -> None:
    """Declare the parts named in ``OCSTREAM_DATAFLOW`` (comma-separated; default: all).

    Running a part alone is for tests and benchmarks of one concern: the transport's tests run
    the demo alone, so that their timings and partition counts are those of that dataflow.
    """
    wanted = os.environ.get("OCSTREAM_DATAFLOW", "").strip()
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else list(PARTS)
    unknown = sorted(set(names) - PARTS.keys())
    if unknown:
        raise ValueError(f"OCSTREAM_DATAFLOW: unknown parts {unknown}; known: {sorted(PARTS)}")
    for name, declare_part in PARTS.items():
        if name in names:
            declare_part(app)


__all__ = ["declare"]
