"""Table writes gathered per batch of records: one RocksDB write batch and one changelog write
per key and partition, however many records of the batch changed it.

faust writes a table change the moment it is made: a RocksDB put, a changelog record sent
through its producer buffer with a future and a callback, and one more RocksDB put for the
persisted changelog offset. The XCM matcher changes the same few keys several times per journey
(a journey's entry, the pending receipt written and removed again), so most of those writes are
superseded before anything reads them from the changelog.

:class:`TableBatch` sits between an agent and its tables for the span of one batch of records:

* reads see the batch's own writes first, then the partition's RocksDB database (one ``get``;
  faust's ``table.get`` checks ``in`` and then reads again);
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
from collections.abc import Mapping
from typing import Any

import orjson
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, RecordMetadata

__all__ = ["TableBatch"]

_DELETED = object()


def _encoder(store: Any, kind: str, sample: Any, *fast: Any) -> Any:
    """The first of ``fast`` that encodes ``sample`` as the store does, else the store's own
    (slower) encoder. faust encodes a ``str`` table key as JSON, and JSON values with orjson."""
    own = getattr(store, f"_encode_{kind}")
    expected = own(sample)
    for candidate in fast:
        if candidate(sample) == expected:
            return candidate
    return own


class _Table:
    """What the batch knows of one table: its store, encoders, and the writes of the batch."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.store = table.data
        self.changelog = table.changelog_topic.get_topic_name()
        self.memory = isinstance(self.store, MemoryStore)
        self.encode_key = _encoder(self.store, "key", "chain|id", orjson.dumps, str.encode)
        self.encode_value = _encoder(
            self.store,
            "value",
            {"a": [1, "b", None], "c": {"d": 1.5}},
            lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS),
        )
        #: partition -> key -> encoded value, or _DELETED
        self.writes: dict[int, dict[str, Any]] = {}

    def stored(self, partition: int, key: str) -> bytes | None:
        if self.memory:
            value = self.store.data.get(key)
            return None if value is None else self.encode_value(value)
        raw: bytes | None = self.store._db_for_partition(partition).get(self.encode_key(key))
        return raw


class _View:
    """One table on one partition, through the batch (the matcher's ``Store``)."""

    __slots__ = ("_table", "_partition", "_writes")

    def __init__(self, table: _Table, partition: int) -> None:
        self._table = table
        self._partition = partition
        self._writes = table.writes.setdefault(partition, {})

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._writes.get(key)
        if raw is None:
            raw = self._table.stored(self._partition, key)
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

    def __init__(self, app: Any, tables: Mapping[str, Any]) -> None:
        self.app = app
        self._tables = {name: _Table(table) for name, table in tables.items()}
        #: Counters for the benchmarks: changes the tables were asked for, records written.
        self.changes = 0
        self.written = 0

    def views(self, partition: int) -> dict[str, Any]:
        """The tables as seen from records of ``partition``."""
        return {name: _View(table, partition) for name, table in self._tables.items()}

    def pending(self) -> int:
        return sum(len(w) for t in self._tables.values() for w in t.writes.values())

    async def flush(self) -> None:
        """Write the batch to RocksDB and queue its changelog records (see the module doc)."""
        producer = self.app.producer
        for table in self._tables.values():
            for partition, writes in table.writes.items():
                if not writes:
                    continue
                self.changes += len(writes)
                last: asyncio.Future[RecordMetadata] | None = None
                if table.memory:
                    data = table.store.data
                    for key, raw in writes.items():
                        if raw is _DELETED:
                            if data.pop(key, None) is None:
                                continue
                            value = None
                        else:
                            data[key] = orjson.loads(raw)
                            value = raw
                        last = await producer.send(
                            table.changelog, table.encode_key(key), value, partition, None, None
                        )
                        self.written += 1
                else:
                    db = table.store._db_for_partition(partition)
                    batch = _write_batch()
                    for key, raw in writes.items():
                        encoded = table.encode_key(key)
                        if raw is _DELETED:
                            if db.get(encoded) is None:
                                continue  # written and removed within the batch: no trace
                            batch.delete(encoded)
                            value = None
                        else:
                            batch.put(encoded, raw)
                            value = raw
                        last = await producer.send(
                            table.changelog, encoded, value, partition, None, None
                        )
                        self.written += 1
                    db.write(batch)
                writes.clear()
                if last is not None:
                    last.add_done_callback(_persist_offset(table.store, table.changelog, partition))


def _write_batch() -> Any:
    import rocksdict

    return rocksdict.WriteBatch(raw_mode=True)


def _persist_offset(store: Any, topic: str, partition: int) -> Any:
    """A callback that records the changelog offset in the partition's database once the
    batch's last changelog record is in Redis (what faust does after every record)."""

    def done(fut: asyncio.Future[RecordMetadata]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        store.set_persisted_offset(TP(topic, partition), fut.result().offset)

    return done
