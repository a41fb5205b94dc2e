"""The dataflow ocstream runs, declared on a faust app.

``declare(app)`` adds every topic, agent, table and page of the dataflow to ``app``;
``ocstream topology`` describes whatever it declared. Until the XCM agents land, the dataflow
is the small demo in :mod:`topology.demo` (events counted per user in a table), which the
transport's integration tests and benchmarks also run.
"""

from __future__ import annotations

from typing import Any

from . import demo


def declare(app: Any) -> None:
    demo.declare(app)


__all__ = ["declare"]
