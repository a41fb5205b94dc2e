"""``TableBatch``: what a batch writes to RocksDB and to the changelog.

The store is faust's real RocksDB store (ocstream's subclass) on disk; the producer records what
it is asked to send and resolves each send with an offset, as the Redis producer does once
Redis answered. Whole workers run the batch in ``tests/xcm/test_dataflow_workers.py`` and the
crash tests of ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
from faust.types import TP, RecordMetadata

from ocstream.runtime import Table
from ocstream.tablebatch import TableBatch


class RecordingProducer:
    """Keeps each send as (topic, key, value, partition) and answers with the next offset."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int]] = []
        self.futures: list[asyncio.Future[RecordMetadata]] = []

    async def send(
        self, topic: str, key: bytes, value: bytes | None, partition: int, ts: Any, headers: Any
    ) -> asyncio.Future[RecordMetadata]:
        self.sent.append((topic, key, value, partition))
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    def answer(self) -> None:
        for offset, fut in enumerate(self.futures):
            topic, _, _, partition = self.sent[offset]
            if not fut.done():
                fut.set_result(RecordMetadata(topic, partition, TP(topic, partition), offset, 0, 0))


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = faust.App(
        "tb", store="rocksdb://", datadir=str(tmp_path), broker="memory://", Table=Table
    )
    app.producer = RecordingProducer()  # type: ignore[misc]
    return app


async def test_a_batch_writes_each_key_once_and_what_it_removed_again_not_at_all(app: Any) -> None:
    journeys = app.Table("journeys", default=None, key_type=str)
    seen = app.Table("seen", default=None, key_type=str)
    batch = TableBatch(app, {"journeys": journeys, "seen": seen})
    producer: RecordingProducer = app.producer
    # What an earlier batch stored.
    first = batch.views(2)
    first["seen"]["old"] = 1
    await batch.flush()
    producer.answer()
    producer.sent.clear()
    producer.futures.clear()

    view = batch.views(2)
    view["journeys"]["a"] = {"step": 1}
    assert view["journeys"].get("a") == {"step": 1}  # the batch reads its own writes
    got = view["journeys"].get("a")
    got["step"] = 99  # a caller changing what it read changes nothing stored
    assert view["journeys"].get("a") == {"step": 1}
    view["journeys"]["a"] = {"step": 2}
    view["journeys"]["a"] = {"step": 3}
    view["seen"]["pending"] = True
    del view["seen"]["pending"]  # written and removed in the batch
    del view["seen"]["old"]  # stored before the batch: its removal must reach the changelog
    del view["seen"]["never"]
    assert view["seen"].get("pending") is None and view["seen"].get("old") is None
    await batch.flush()

    assert producer.sent == [
        ("tb-journeys-changelog", b'"a"', orjson.dumps({"step": 3}), 2),
        ("tb-seen-changelog", b'"old"', None, 2),
    ]
    # RocksDB holds what faust itself would have stored, readable through the table's store.
    assert journeys.data._db_for_partition(2).get(b'"a"') == orjson.dumps({"step": 3})
    assert seen.data._db_for_partition(2).get(b'"old"') is None
    assert batch.views(2)["journeys"].get("a") == {"step": 3}
    # The persisted changelog offset is written once the last record of the partition is in.
    tp = TP("tb-journeys-changelog", 2)
    assert journeys.data.persisted_offset(tp) is None
    producer.answer()
    await asyncio.sleep(0)
    assert journeys.data.persisted_offset(tp) == 0
    assert seen.data.persisted_offset(TP("tb-seen-changelog", 2)) == 1


async def test_partitions_are_apart(app: Any) -> None:
    table = app.Table("t", default=None, key_type=str)
    batch = TableBatch(app, {"t": table})
    batch.views(0)["t"]["k"] = "zero"
    batch.views(5)["t"]["k"] = "five"
    assert batch.views(0)["t"].get("k") == "zero"
    await batch.flush()
    assert sorted(p for *_, p in app.producer.sent) == [0, 5]
    assert table.data._db_for_partition(5).get(b'"k"') == b'"five"'
    assert batch.views(3)["t"].get("k") is None
