"""``StandbyApplier``: the changelog records of standby partitions go from the fetch straight into
the tables' RocksDB stores, before faust's getmany makes messages of them; what is not a standby
when it is fetched is left to faust (``ocstream/transport/drain.py``).

faust's real RocksDB store (ocstream's subclass) on disk and faust's own recovery sets; whole
workers with standbys run in ``tests/test_workers.py``. ``wait_next_records``, which hands the
fetch to the applier, runs here around a stand-in for the consumer it reads.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from ocstream.runtime import Table
from ocstream.transport.drain import StandbyApplier, wait_next_records
from ocstream.transport.metrics import METRICS
from ocstream.transport.wire import FetchedRecord, compress

CHANGELOG = "sa-journeys-changelog"


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = faust.App(
        "sa", broker="redis://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path), Table=Table
    )
    app.Table("journeys", default=None, key_type=str)
    return app


def record(offset: int, key: bytes | None, value: bytes | None) -> FetchedRecord:
    """A stream entry as the consumer fetches it (a tombstone has no value field)."""
    fields = {b"t": b"0"}
    if key is not None:
        fields[b"k"] = key
    if value is not None:
        fields[b"v"] = value
    return offset, fields


def stored(app: Any, partition: int, key: bytes) -> bytes | None:
    value: bytes | None = app.tables["journeys"].data._db_for_partition(partition).get(key)
    return value


def offset(app: Any, tp: TP) -> int | None:
    found: int | None = app.tables["journeys"].data.persisted_offset(tp)
    return found


def read_offsets() -> defaultdict[TP, int | None]:
    return defaultdict(lambda: None)  # as faust's consumer keeps them


def test_a_standbys_records_are_written_with_their_offset(app: Any) -> None:
    tp, active = TP(CHANGELOG, 1), TP(CHANGELOG, 2)
    app.tables.recovery.standby_tps.add(tp)
    app.tables.recovery.active_tps.add(active)
    compressed = compress(b'{"step":2,"pad":"' + b"x" * 600 + b'"}')
    fetched = {
        tp: [
            record(7, b'"a"', b'{"step":1}'),
            (8, {b"t": b"0", b"k": b'"b"', b"z": compressed}),
            record(9, b'"a"', None),  # a tombstone
        ],
        active: [record(0, b'"c"', b"1")],
    }
    reads = read_offsets()
    StandbyApplier(app).apply_fetched(fetched, reads)
    assert stored(app, 1, b'"a"') is None
    assert stored(app, 1, b'"b"') == b'{"step":2,"pad":"' + b"x" * 600 + b'"}'
    assert offset(app, tp) == 9
    assert reads[tp] == 9
    # The active partition's records stay in the fetch, for faust's getmany.
    assert list(fetched) == [active]
    assert reads[active] is None
    assert stored(app, 2, b'"c"') is None


def test_records_already_read_are_not_written_again(app: Any) -> None:
    tp = TP(CHANGELOG, 3)
    app.tables.recovery.standby_tps.add(tp)
    reads = read_offsets()
    reads[tp] = 5
    applier = StandbyApplier(app)
    fetched = {tp: [record(4, b'"old"', b"1"), record(5, b'"k"', b"2"), record(6, b'"k"', b"3")]}
    applier.apply_fetched(fetched, reads)
    assert stored(app, 3, b'"old"') is None
    assert stored(app, 3, b'"k"') == b"3"
    assert offset(app, tp) == 6
    assert reads[tp] == 6 and not fetched
    # A fetch holding only records below the read offset writes nothing, and moves nothing.
    applier.apply_fetched({tp: [record(2, b'"older"', b"1")]}, reads)
    assert stored(app, 3, b'"older"') is None
    assert offset(app, tp) == 6 and reads[tp] == 6


def test_a_keyless_record_is_skipped(app: Any) -> None:
    tp = TP(CHANGELOG, 6)
    app.tables.recovery.standby_tps.add(tp)
    reads = read_offsets()
    applied = METRICS.standby_records_applied
    StandbyApplier(app).apply_fetched({tp: [record(0, None, b"1"), record(1, b'"k"', b"2")]}, reads)
    assert stored(app, 6, b'"k"') == b"2"
    assert offset(app, tp) == 1
    assert METRICS.standby_records_applied - applied == 1  # what was written, not what came


@pytest.mark.parametrize("how", ["active", "active-and-standby", "revoked", "not-a-changelog"])
def test_what_is_not_a_standby_when_fetched_goes_fausts_way(app: Any, how: str) -> None:
    """A partition a rebalance made active or took away while the fetch was under way is
    left in the fetch: faust's getmany delivers it, or drops it for the new assignment."""
    tp = TP(CHANGELOG, 4) if how != "not-a-changelog" else TP("not-a-changelog", 4)
    recovery = app.tables.recovery
    if how == "active":
        recovery.active_tps.add(tp)
    elif how == "active-and-standby":
        recovery.active_tps.add(tp)  # active wins: faust's recovery applies it
        recovery.standby_tps.add(tp)
    fetched = {tp: [record(3, b'"k"', b'"v"')]}
    reads = read_offsets()
    StandbyApplier(app).apply_fetched(fetched, reads)
    assert list(fetched) == [tp] and len(fetched[tp]) == 1
    assert stored(app, 4, b'"k"') is None
    assert reads[tp] is None


class _Consumer:
    """What ``wait_next_records`` reads of the transport's consumer, around a fetch that
    ``fetch`` gives: the real applier, the app's real tables."""

    def __init__(self, app: Any, fetch: Any, *, stop_flow_while_fetching: bool = False) -> None:
        self.app = app
        self.fetch = fetch
        self.stop_flow_while_fetching = stop_flow_while_fetching
        self.flow_active = True
        self.not_waiting_next_records = asyncio.Event()  # set, never awaited: faust's flag
        self.standby_applier = StandbyApplier(app)
        self._read_offset = read_offsets()
        self.fetched_with: list[Any] = []

    def _get_active_partitions(self) -> set[TP]:
        return {TP(CHANGELOG, 1), TP(CHANGELOG, 2)}

    async def _getmany(self, *, active_partitions: Any, timeout: float) -> Any:
        self.fetched_with.append(active_partitions)
        if self.stop_flow_while_fetching:
            self.flow_active = False  # a rebalance began while XREAD waited
        return self.fetch


def _standby_and_active(app: Any) -> tuple[TP, TP, dict[TP, list[FetchedRecord]]]:
    tp, active = TP(CHANGELOG, 1), TP(CHANGELOG, 2)
    app.tables.recovery.standby_tps.add(tp)
    app.tables.recovery.active_tps.add(active)
    fetched = {tp: [record(3, b'"a"', b"1")], active: [record(4, b'"c"', b"2")]}
    return tp, active, fetched


async def test_a_fetch_gives_its_standby_records_to_the_applier_and_the_rest_to_faust(
    app: Any,
) -> None:
    tp, active, fetched = _standby_and_active(app)
    consumer = _Consumer(app, fetched)
    records, partitions = await wait_next_records(consumer, timeout=1.0)
    assert partitions == consumer._get_active_partitions() == consumer.fetched_with[0]
    assert list(records) == [active]
    assert stored(app, 1, b'"a"') == b"1" and offset(app, tp) == 3


async def test_with_flow_stopped_during_the_fetch_nothing_is_written(app: Any) -> None:
    """faust's getmany drops a fetch made while flow stopped and seeks back: the standby's
    records must not be written ahead of that (they would be fetched and written again)."""
    tp, active, fetched = _standby_and_active(app)
    consumer = _Consumer(app, fetched, stop_flow_while_fetching=True)
    records, _ = await wait_next_records(consumer, timeout=1.0)
    assert set(records) == {tp, active}
    assert stored(app, 1, b'"a"') is None and offset(app, tp) is None
    assert consumer._read_offset[tp] is None
