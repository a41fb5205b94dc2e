"""The faust side of benchmarks/throughput.py: one agent over a pre-filled topic.

Run by throughput.py as ``python benchapp.py worker`` with BENCH_* variables:
BENCH_MODE raw (bytes, no table), json (JSON records, no table) or table (JSON records that
update a table); BENCH_N messages to wait for; BENCH_BATCH > 1 makes the agent take batches with
``stream.take``. Prints ``RESULT <msgs/s>`` once BENCH_N messages were handled, then stops.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import faust

from ocstream.transport import TransportSettings

MODE = os.environ.get("BENCH_MODE", "raw")
N = int(os.environ["BENCH_N"])
BATCH = int(os.environ.get("BENCH_BATCH", "1"))
TOPIC = os.environ["BENCH_TOPIC"]

app = faust.App(
    f"bench-{MODE}-{os.getpid()}",
    broker=os.environ["BENCH_REDIS"],
    store="rocksdb://",
    topic_partitions=int(os.environ["BENCH_PARTITIONS"]),
    datadir=os.environ["BENCH_DATADIR"],
    web_enabled=False,
    broker_commit_interval=1.0,
    stream_recovery_delay=0.0,
    autodiscover=False,
)
app.transport_settings = TransportSettings(  # type: ignore[attr-defined]
    prefix=os.environ["BENCH_PREFIX"], initial_rebalance_delay=0, heartbeat_interval=0.2
)


class Event(faust.Record, serializer="json"):
    user: str
    n: int


if MODE == "raw":
    topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, value_serializer="raw")
else:
    topic = app.topic(TOPIC, key_type=bytes, value_type=Event)
counts = app.Table("counts", default=int) if MODE == "table" else None
state: dict[str, Any] = {"n": 0, "t0": None}


def _count(k: int) -> None:
    if state["t0"] is None:
        state["t0"] = time.perf_counter()
    state["n"] += k
    if state["n"] >= N:
        elapsed = time.perf_counter() - state["t0"]
        print(f"RESULT {N / elapsed:.0f}", flush=True)
        state["t0"] = float("inf")  # report once
        os.kill(os.getpid(), signal.SIGTERM)


@app.agent(topic)
async def consume(stream: Any) -> None:
    if BATCH > 1:
        async for values in stream.take(BATCH, within=0.05):
            if counts is not None:
                for value in values:
                    counts[value.user] += value.n
            _count(len(values))
    else:
        async for value in stream:
            if counts is not None:
                counts[value.user] += value.n
            _count(1)


if __name__ == "__main__":
    app.main()
