"""The dataflow ocstream runs, declared on a faust app.

``declare(app)`` adds every topic, agent, table and page of the dataflow to ``app``;
``ocstream topology`` describes whatever it declared: the XCM dataflow of :mod:`topology.xcm`,
and the small demo of :mod:`topology.demo` (events counted per user in a table), a self-check of
the transport that its integration tests and benchmarks run.
"""

from __future__ import annotations

from typing import Any

from . import delivery, demo, xcm


def declare(app: Any) -> None:
    xcm.declare(app)
    delivery.declare(app)
    demo.declare(app)


__all__ = ["declare"]
