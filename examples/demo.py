"""Demo dataflow: ``demo-events`` -> agent ``count_events`` -> table ``demo-counts``.

An example of a dataflow declared on the app, and the transport's self-check: its integration
tests and benchmarks run it alone (``OCSTREAM_DATAFLOW=demo``), so that their timings and
partition counts are those of this small dataflow. It is not part of ocstream's production
graph. Each event adds ``n`` to its user's count; an event with ``delete`` removes the user
from the table (a tombstone in the changelog). The page ``/demo/counts/`` shows the counts
held by this worker's active partitions and how many events this process handled, which is what the
integration tests compare with what they produced.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

EVENTS_TOPIC = "demo-events"
COUNTS_TABLE = "demo-counts"


class Event(faust.Record, serializer="json"):
    user: str
    n: int = 1
    delete: bool = False


def declare(app: Any) -> None:
    events = app.topic(EVENTS_TOPIC, key_type=str, value_type=Event)
    counts = app.Table(COUNTS_TABLE, default=int, help="events counted per user")
    processed = {"events": 0}

    @app.agent(events, name="count_events")  # type: ignore[untyped-decorator]
    async def count_events(stream: Any) -> None:
        async for event in stream:
            if event.delete:
                if event.user in counts:
                    del counts[event.user]
            else:
                counts[event.user] += event.n
            processed["events"] += 1

    @app.page("/demo/counts/")
    class CountsView(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "counts": dict(counts.items()),
                    "processed_here": processed["events"],
                    "partitions": sorted(
                        tp.partition for tp in app.consumer.assignment() if tp.topic == EVENTS_TOPIC
                    ),
                    "generation": app.consumer_generation_id,
                }
            )
