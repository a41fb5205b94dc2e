"""The sweep reads an entry's expiry from its stored bytes (``topology.xcm._expires_of``)
instead of decoding every entry, and finds the expired entries through an index by expiry
(``ocstream/xcm/expiry.py``) instead of reading every entry of every table each minute; the
workers' side is ``tests/xcm/test_dataflow_workers.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from ocstream.ingress.decode import DecoderCache, RuntimeDecoder
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.expiry import ExpiryIndex
from ocstream.xcm.matching import expired_keys
from topology.xcm import _expires_of

from .sim import run
from .test_hops import _journey


def test_the_expiry_is_read_from_the_bytes_as_decoding_reads_it(
    fixtures_dir: Path,
    decoder_for: Callable[[str, str], RuntimeDecoder],
    routed_codec: XcmCodec,
    decoders: DecoderCache,
) -> None:
    blocks, _, _ = _journey(fixtures_dir, decoder_for, routed_codec, decoders, topic=None)
    checked = 0
    # Receipt first, then the rest: pending receipts, parked hop-outs, then ended journeys.
    for order in ([3, 2, 1, 0], [0, 1, 2, 3], [3, 0]):
        cluster = run(blocks, order, [])
        for stores in cluster.stores:
            for table, store in stores.items():
                for key, value in store.items():
                    raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
                    expected = value.get("expires") if isinstance(value, dict) else None
                    assert _expires_of(raw) == expected, (table, key)
                    for now in (0.0, 1e12):
                        fast = (_expires_of(raw) or now + 1) <= now
                        slow = bool(list(expired_keys(table, [(key, value)], now)))
                        assert fast == slow, (table, key, now)
                    checked += 1
    assert checked > 20


def test_values_that_name_expires_more_than_once_are_decoded() -> None:
    nested = {"leg": {"expires": 5}, "parked": [{"expires": 7}], "expires": 100.5}
    assert _expires_of(orjson.dumps(nested)) == 100.5
    first = {"expires": 3, "parked": [{"expires": 7}]}
    assert _expires_of(orjson.dumps(first)) == 3
    assert _expires_of(orjson.dumps({"leg": {"expires": 9}, "done": True})) is None
    assert _expires_of(orjson.dumps({"expires": None})) is None
    assert _expires_of(orjson.dumps({"expires": 1.5e9})) == 1.5e9
    assert _expires_of(orjson.dumps(["expires", 1])) is None
    assert _expires_of(b"12") is None


def test_the_expiry_index_yields_what_is_due_per_table_and_partition(tmp_path: Path) -> None:
    index = ExpiryIndex(tmp_path / "expiry", ["journeys", "seen"])
    try:
        index.note(
            [
                ("journeys", 3, b'"c|late"', 200.0),
                ("journeys", 3, b'"c|early"', 100.0),
                ("journeys", 3, b'"c|exact"', 150.0),
                ("journeys", 3, b'"c|just-after"', 150.0004),  # rounded up to the next ms
                ("seen", 3, b'"c|seen"', 50.0),
                ("journeys", 4, b'"d|other-partition"', 10.0),
                ("journeys", 0xFFFF, b'"e|last-partition"', 10.0),
            ]
        )
        due = [key for _, key in index.due(3, "journeys", 150.0)]
        assert due == [b'"c|early"', b'"c|exact"']
        assert [key for _, key in index.due(3, "seen", 150.0)] == [b'"c|seen"']
        assert [key for _, key in index.due(4, "journeys", 1e12)] == [b'"d|other-partition"']
        assert list(index.due(3, "journeys", 99.999)) == []
        # Dropped entries are gone; the rest stay.
        index.drop([ikey for ikey, _ in index.due(3, "journeys", 150.0)])
        assert [key for _, key in index.due(3, "journeys", 1e12)] == [
            b'"c|just-after"',
            b'"c|late"',
        ]
        # Clearing a partition (before its rebuild) leaves the others.
        index.indexed.update({3, 4, 0xFFFF})
        index.clear(3)
        assert list(index.due(3, "journeys", 1e12)) == list(index.due(3, "seen", 1e12)) == []
        assert index.indexed == {4, 0xFFFF}
        index.clear(0xFFFF)
        assert list(index.due(0xFFFF, "journeys", 1e12)) == []
        assert len(list(index.due(4, "journeys", 1e12))) == 1
    finally:
        index.close()
    # Reopened (a restart), it still holds what was written, but vouches for nothing.
    reopened = ExpiryIndex(tmp_path / "expiry", ["journeys", "seen"])
    try:
        assert reopened.indexed == set()
        assert len(list(reopened.due(4, "journeys", 1e12))) == 1
    finally:
        reopened.close()


def test_the_expiry_index_memtables_count_under_the_workers_bound(tmp_path: Path) -> None:
    """The expiry index's memtables count with the tables' under the worker's one bound
    (``OCSTREAM_ROCKSDB_MEMTABLES_MB``, ``ocstream.runtime.write_buffer_manager``): what it
    writes adds to the bound's usage."""
    from ocstream.runtime import write_buffer_manager

    manager = write_buffer_manager()
    assert manager is not None  # the default bound (256 MiB) is on in tests
    index = ExpiryIndex(tmp_path / "expiry", ["seen"])
    try:
        before = manager.get_usage()
        for start in range(0, 20_000, 1_000):
            index.note(
                ("seen", 0, b'"k%08d"' % n, 1_000.0 + n) for n in range(start, start + 1_000)
            )
        assert manager.get_usage() > before
    finally:
        index.close()
