"""``StandbyApplier``: the changelog records of standby partitions go from the fetch straight into
the tables' RocksDB stores, and what a rebalance takes away before they are written is dropped,
not written (``ocstream/transport/drain.py``).

faust's real RocksDB store (ocstream's subclass) on disk and faust's own recovery sets; whole
workers with standbys run in ``tests/test_workers.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from ocstream.runtime import Table
from ocstream.transport.drain import StandbyApplier

CHANGELOG = "sa-journeys-changelog"


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = faust.App(
        "sa", broker="redis://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path), Table=Table
    )
    app.Table("journeys", default=None, key_type=str)
    app.consumer_generation_id = 3
    return app


def record(tp: TP, offset: int, key: bytes, value: bytes | None) -> Any:
    return ConsumerMessage(
        tp.topic, tp.partition, offset, 0.0, 0, [], key, value, None,
        len(key), len(value or b""), tp,
    )  # fmt: skip


def stored(app: Any, partition: int, key: bytes) -> bytes | None:
    value: bytes | None = app.tables["journeys"].data._db_for_partition(partition).get(key)
    return value


def offset(app: Any, tp: TP) -> int | None:
    found: int | None = app.tables["journeys"].data.persisted_offset(tp)
    return found


def test_a_standbys_records_are_written_with_their_offset(app: Any) -> None:
    tp = TP(CHANGELOG, 1)
    app.tables.recovery.standby_tps.add(tp)
    applier = StandbyApplier(app)
    assert applier.take(tp, record(tp, 7, b'"a"', b'{"step":1}'))
    assert applier.take(tp, record(tp, 8, b'"b"', b'{"step":2}'))
    assert applier.take(tp, record(tp, 9, b'"a"', None))  # a tombstone
    assert stored(app, 1, b'"b"') is None  # nothing before apply
    applier.apply()
    assert stored(app, 1, b'"a"') is None
    assert stored(app, 1, b'"b"') == b'{"step":2}'
    assert offset(app, tp) == 9


def test_an_active_partitions_records_go_fausts_way(app: Any) -> None:
    tp = TP(CHANGELOG, 2)
    app.tables.recovery.active_tps.add(tp)
    app.tables.recovery.standby_tps.add(tp)  # active wins: faust's recovery applies it
    applier = StandbyApplier(app)
    assert not applier.take(tp, record(tp, 0, b'"a"', b"1"))
    assert not applier.take(TP("not-a-changelog", 2), record(tp, 0, b'"a"', b"1"))


@pytest.mark.parametrize("rebalance", ["made-active", "revoked", "new-generation"])
def test_what_a_rebalance_moved_before_the_write_is_dropped(app: Any, rebalance: str) -> None:
    kept, moved = TP(CHANGELOG, 4), TP(CHANGELOG, 5)
    recovery = app.tables.recovery
    recovery.standby_tps.update({kept, moved})
    applier = StandbyApplier(app)
    assert applier.take(kept, record(kept, 3, b'"k"', b'"kept"'))
    assert applier.take(moved, record(moved, 6, b'"m"', b'"moved"'))
    if rebalance == "made-active":
        recovery.active_tps.add(moved)
    elif rebalance == "revoked":
        recovery.standby_tps.discard(moved)
    else:
        app.consumer_generation_id += 1
    applier.apply()
    # The moved partition's records are not written and its offset did not move, so whoever
    # recovers it reads them again from the changelog.
    assert stored(app, 5, b'"m"') is None
    assert offset(app, moved) is None
    if rebalance == "new-generation":  # everything taken in the old generation is dropped
        assert stored(app, 4, b'"k"') is None
        assert offset(app, kept) is None
    else:
        assert stored(app, 4, b'"k"') == b'"kept"'
        assert offset(app, kept) == 3
    # What is taken next starts afresh.
    assert applier.take(kept, record(kept, 4, b'"k2"', b'"again"'))
    applier.apply()
    assert stored(app, 4, b'"k2"') == b'"again"'
