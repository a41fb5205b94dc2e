"""HTTP views the worker serves next to faust's own.

``/metrics`` is the Prometheus text exposition of the transport's counters and of this worker's
place in its group. The XCM and API metrics will join it.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from .transport import METRICS

COUNTER_HELP = {
    "records_produced": "Records appended to topics by this process.",
    "produce_retries": "Produce batches retried after a Redis error.",
    "records_fetched": "Records fetched from topic partitions.",
    "fetch_errors": "Fetches that failed with a Redis error.",
    "commits": "Offset commits attempted.",
    "commits_fenced": "Offset commits refused because the generation moved on.",
    "rebalances": "Assignments taken by this process.",
    "retention_trimmed": "Entries removed by retention.",
    "retention_trimmed_uncommitted": "Entries removed by retention before a group committed them.",
    "tombstones_removed": "Changelog tombstones removed after their retention.",
}


def render_metrics(app: Any) -> str:
    lines: list[str] = []
    for name, value in METRICS.as_dict().items():
        metric = f"ocstream_transport_{name}_total"
        lines += [
            f"# HELP {metric} {COUNTER_HELP.get(name, name)}",
            f"# TYPE {metric} counter",
            f"{metric} {value}",
        ]
    consumer = app.consumer
    group = getattr(consumer, "group", None)
    gauges = {
        "ocstream_group_generation": ("Generation this worker holds.", app.consumer_generation_id),
        "ocstream_group_assigned_partitions": (
            "Topic partitions assigned to this worker.",
            len(consumer.assignment()),
        ),
        "ocstream_group_leader": (
            "1 if this worker holds the group's leader lease.",
            int(bool(group and group.is_leader)),
        ),
    }
    for metric, (text, value) in gauges.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


def register_views(app: Any) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.text(render_metrics(self.app), content_type="text/plain; version=0.0.4")
