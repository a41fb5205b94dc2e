"""Table writes gathered per batch of records: one RocksDB write batch and one changelog write
per key and partition, however many records of the batch changed it.

faust writes a table change the moment it is made: a RocksDB put, a changelog record sent
through its producer buffer with a future and a callback, and one more RocksDB put for the
persisted changelog offset. The XCM matcher changes the same few keys several times per journey
(a journey's entry, the pending receipt written and removed again), so most of those writes are
superseded before anything reads them from the changelog.

:class:`TableBatch` sits between an agent and its tables for the span of one batch of records:

* reads see the batch's own writes first, then the partition's RocksDB database (one ``get``;
  faust's ``table.get`` checks ``in`` and then reads again). What a key held in RocksDB is
  read once per batch: a second read of it, and the flush's "was it stored before?" for a key
  the batch removed, take the bytes the first read found;
* writes wait in the batch, **encoded once** (the same bytes go to RocksDB and the changelog,
  as faust's recovery expects);
* :meth:`TableBatch.flush` writes what is left: per table and partition one RocksDB
  ``WriteBatch``, one changelog record per changed key (a key deleted in the batch that was
  not stored before the batch writes nothing at all), and the persisted changelog offset once,
  when the last of those records is in Redis.

The agent decides when a batch ends and must flush **before** it acknowledges the batch's
records: faust flushes the producer before it commits, so a committed offset never runs ahead
of the changelog records that cover it, as with faust's own writes. If the worker dies before
the flush, nothing of the batch was written nor acknowledged, and the next owner of the
partition processes the whole batch again.

Keys must belong to the partition of the record that writes them (the tables are partitioned
like the agent's topic), which is the rule faust's own tables follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, RecordMetadata

from .transport.local_state import write_partition
from .transport.wire import json_value

__all__ = ["TableBatch"]

_DELETED = object()
_UNREAD = object()


def _encoder(store: Any, kind: str, sample: Any, *fast: Any) -> Any:
    """The first of ``fast`` that encodes ``sample`` as the store does, else the store's own
    (slower) encoder. faust encodes a ``str`` table key as JSON, and JSON values with orjson."""
    own = getattr(store, f"_encode_{kind}")
    expected = own(sample)
    for candidate in fast:
        if candidate(sample) == expected:
            return candidate
    return own


def _no_database(partition: int) -> Any:
    raise TypeError("a memory store has no RocksDB database")


class _Table:
    """What the batch knows of one table: its store, encoders, and the writes of the batch."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.store = table.data
        self.changelog = table.changelog_topic.get_topic_name()
        self.memory = isinstance(self.store, MemoryStore)
        # Bound once: a read is a few attribute lookups shorter (it runs ~23 times a journey).
        self.db_for_partition: Callable[[int], Any] = getattr(
            self.store, "_db_for_partition", _no_database
        )
        self.encode_key = _encoder(self.store, "key", "chain|id", orjson.dumps, str.encode)
        self.encode_value = _encoder(
            self.store, "value", {"a": [1, "b", None], "c": {"d": 1.5}, 7: True}, json_value
        )
        #: partition -> key -> encoded value, or _DELETED
        self.writes: dict[int, dict[str, Any]] = {}
        #: partition -> key -> what the store held when the batch first read the key. Only
        #: this batch writes the partition, and only at its flush, so it holds until then.
        self.reads: dict[int, dict[str, bytes | None]] = {}

    def before(self, partition: int, key: str) -> bytes | None:
        """What ``key`` held before this batch: read once, then remembered until the flush."""
        reads = self.reads.setdefault(partition, {})
        raw = reads.get(key, _UNREAD)
        if raw is _UNREAD:
            raw = reads[key] = self.stored(partition, key)
        return raw  # type: ignore[return-value]

    def stored(self, partition: int, key: str) -> bytes | None:
        if self.memory:
            value = self.store.data.get(key)
            return None if value is None else self.encode_value(value)
        raw: bytes | None = self.db_for_partition(partition).get(self.encode_key(key))
        return raw

    def apply(self, partition: int, changes: list[tuple[str, bytes, bytes | None]]) -> None:
        """Store ``(key, encoded key, encoded value or None to delete)`` in the partition: one
        RocksDB write batch (faust's memory store, for tests, holds decoded values)."""
        if self.memory:
            for key, _, raw in changes:
                if raw is None:
                    self.store.data.pop(key, None)
                else:
                    self.store.data[key] = orjson.loads(raw)
            return
        write_partition(self.store, partition, ((encoded, raw) for _, encoded, raw in changes))


class _View:
    """One table on one partition, through the batch (the matcher's ``Store``)."""

    __slots__ = ("_table", "_partition", "_writes", "_reads")

    def __init__(self, table: _Table, partition: int) -> None:
        self._table = table
        self._partition = partition
        # The table's own dicts for the partition, which its flush empties but keeps.
        self._writes = table.writes.setdefault(partition, {})
        self._reads = table.reads.setdefault(partition, {})

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._writes.get(key)
        if raw is None:
            raw = self._reads.get(key, _UNREAD)
            if raw is _UNREAD:  # what the store held before the batch, remembered until the flush
                raw = self._reads[key] = self._table.stored(self._partition, key)
        elif raw is _DELETED:
            raw = None
        # Decoded on every read: callers may change what they get, and the batch must not.
        return default if raw is None else orjson.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self._writes[key] = self._table.encode_value(value)

    def __delitem__(self, key: str) -> None:
        self._writes[key] = _DELETED


class TableBatch:
    """The tables of one agent, written per batch; see the module docstring."""

    def __init__(
        self,
        app: Any,
        tables: Mapping[str, Any],
        on_write: Callable[[str, int, list[tuple[bytes, bytes | None]]], None] | None = None,
    ) -> None:
        """``on_write(table name, partition, [(encoded key, encoded value or None)])`` sees
        each RocksDB partition's writes of a flush just before they are stored (the XCM
        matcher's expiry index, ``ocstream/xcm/expiry.py``)."""
        self.app = app
        self._tables = {name: _Table(table) for name, table in tables.items()}
        self._on_write = on_write

    def views(self, partition: int) -> dict[str, Any]:
        """The tables as seen from records of ``partition``."""
        return {name: _View(table, partition) for name, table in self._tables.items()}

    async def flush(self) -> None:
        """Write the batch to RocksDB and queue its changelog records (see the module doc)."""
        producer = self.app.producer
        for name, table in self._tables.items():
            batches = []
            for partition, writes in table.writes.items():
                # A key removed that was not stored before the batch leaves no trace.
                changes = [
                    (key, table.encode_key(key), None if raw is _DELETED else raw)
                    for key, raw in writes.items()
                    if raw is not _DELETED or table.before(partition, key) is not None
                ]
                writes.clear()
                if changes:
                    batches.append((partition, changes))
            # What was read holds until the writes below: the next batch reads again.
            for reads in table.reads.values():
                reads.clear()
            for partition, changes in batches:
                if self._on_write is not None and not table.memory:
                    self._on_write(name, partition, [(encoded, raw) for _, encoded, raw in changes])
                table.apply(partition, changes)
                # One future for the partition's records, the last one's (ocstream's producer).
                last = producer.queue_many(
                    table.changelog, partition, [(encoded, raw) for _, encoded, raw in changes]
                )
                last.add_done_callback(_persist_offset(table.store, table.changelog, partition))


def _persist_offset(store: Any, topic: str, partition: int) -> Any:
    """A callback that records the changelog offset in the partition's database once the
    batch's last changelog record is in Redis (what faust does after every record)."""

    def done(fut: asyncio.Future[RecordMetadata]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        store.set_persisted_offset(TP(topic, partition), fut.result().offset)

    return done
