"""A worker's state with every kind of metric present, and the set of metrics it exposes.

``tests/test_metrics.py`` renders ``/metrics`` for :func:`sample_app` and compares the metric
names, types and label names with ``tests/data/metrics_before.json``: what the hand-built
exposition text of the code before ``ocstream/metrics.py`` (commit 2069286) gave for the same
state. That file was written by running this module against that code, read-only:

    cd <this checkout>; PYTHONPATH=<checkout of 2069286>:. \
        python -m tests.metrics_sample > tests/data/metrics_before.json

(the ``__main__`` part calls the renderers that commit had: ``ocstream.web.render_metrics``,
``ocstream.ops.render_delivery_metrics`` and ``IngressMetrics.render``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from types import SimpleNamespace
from typing import Any

from ocstream.durations import Durations
from ocstream.stages import Backlog
from ocstream.transport.producer import ROUND_TRIP_BUCKETS

#: The engine's and the extractor's counter keys as topology/xcm.py counts them, dead letters
#: included (their kinds carry hyphens).
XCM_COUNTERS = {
    "blocks": 40,
    "legs_sent": 6,
    "legs_received": 5,
    "legs_relayed": 1,
    "sent": 6,
    "received": 4,
    "relayed": 1,
    "hop_in": 1,
    "hop_out": 1,
    "timeout": 2,
    "dead_letters_bad-block": 1,
    "dead_letters_unknown-runtime": 2,
}
DELIVERY_COUNTERS = {
    "delivered_xcm.sent": 6,
    "delivered_xcm.received": 4,
    "late": 1,
    "duplicates": 2,
}
WEBHOOK_GAUGES = {"due": 3, "due_now": 1, "in_flight": 0, "dead": 2, "active": 1}


class _TP(SimpleNamespace):
    topic: str
    partition: int

    def __hash__(self) -> int:  # type: ignore[override]  # a SimpleNamespace hashable as a TP
        return hash((self.topic, self.partition))

    def __lt__(self, other: _TP) -> bool:
        return (self.topic, self.partition) < (other.topic, other.partition)


class _Consumer:
    def __init__(self) -> None:
        self.tps = [_TP(topic="blocks", partition=0), _TP(topic="xcm-legs", partition=1)]
        self.group = SimpleNamespace(is_leader=True, assignment_weighed_records=1250.0)
        self._committed_offset = {self.tps[0]: 10}
        self._read_offset = {self.tps[1]: 4}

    def assignment(self) -> set[_TP]:
        return set(self.tps)

    def highwater(self, tp: _TP) -> int:
        return 25


class _Webhooks:
    def __init__(self) -> None:
        from ocstream.sinks.webhook import COUNTERS

        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.counters["delivered"] = 9
        self.counters["dead_letters"] = 2

    async def gauges(self) -> dict[str, int]:
        return dict(WEBHOOK_GAUGES)


class _Live:
    def persistent(self) -> list[str]:
        return ["a", "b"]

    def all(self) -> list[str]:
        return ["a", "b", "c"]


def _backlog() -> Backlog:
    """Delivery took 4 notifications and finished 2, and 3 more wait in its stream; extraction
    and matching waited 5 times, 0.125 s in all."""
    backlog = Backlog(waiting=lambda: 3)
    backlog.took(4)
    backlog.finished(2)
    backlog.waits, backlog.waited = 5, 0.125
    return backlog


def sample_app() -> Any:
    """An object with the attributes a worker's ``/metrics`` reads, all of them filled."""
    from ocstream.ingress.metrics import IngressMetrics

    ingress = SimpleNamespace(metrics=IngressMetrics())
    network = ingress.metrics.networks["urn:ocn:polkadot:0"]
    network.blocks_published = 12
    network.finalized_height = 30
    network.tip_height = 28
    network.decode_seconds = 0.25
    return SimpleNamespace(
        consumer=_Consumer(),
        consumer_generation_id=3,
        xcm_counters=Counter(XCM_COUNTERS),
        delivery=SimpleNamespace(counters=Counter(DELIVERY_COUNTERS)),
        webhooks=_Webhooks(),
        webhook_gauges=dict(WEBHOOK_GAUGES),
        subscriptions_live=_Live(),
        websocket_hub=SimpleNamespace(clients_by_type=lambda: {"ephemeral": 1, "persistent": 0}),
        ingress=ingress,
        delivery_backlog=_backlog(),
        producer=SimpleNamespace(
            outstanding=40, outstanding_peak=9_000, round_trips=_round_trips()
        ),
    )


def _round_trips() -> Durations:
    """Three write round trips of the producer: 2 ms, 4 ms and 30 ms."""
    durations = Durations(ROUND_TRIP_BUCKETS)
    for seconds in (0.002, 0.004, 0.03):
        durations.observe(seconds)
    return durations


_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE = re.compile(r"^([^\s{#]+)(?:\{([^}]*)\})? \S+$")


def metric_set(text: str) -> list[list[Any]]:
    """``[name, type, [label names]]`` of every sample line, sorted; read line by line, not
    with prometheus_client's parser, because the old text was not always valid (hyphens in
    names)."""
    types: dict[str, str] = {}
    found: set[tuple[str, str, tuple[str, ...]]] = set()
    for line in text.splitlines():
        if match := _TYPE.match(line):
            types[match[1]] = match[2]
        elif line and not line.startswith("#"):
            sample = _SAMPLE.match(line)
            assert sample, line
            labels = tuple(
                sorted(part.split("=", 1)[0] for part in (sample[2] or "").split(",") if part)
            )
            found.add((sample[1], types.get(sample[1], "untyped"), labels))
    return [[name, kind, list(labels)] for name, kind, labels in sorted(found)]


def _render_before(app: Any) -> str:  # pragma: no cover - runs against the old code only
    from ocstream import ops, web

    text: str = web.render_metrics(app)  # type: ignore[attr-defined]
    text += ops.render_delivery_metrics(app)  # type: ignore[attr-defined]
    text += app.ingress.metrics.render()
    return text


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(metric_set(_render_before(sample_app())), indent=1))
