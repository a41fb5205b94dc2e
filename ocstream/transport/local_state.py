"""A member's local table stores, as changelog tombstone removal needs them.

Tombstones (deletions) in a compacted changelog are removed once every member holding the
partition has applied them (``retention.remove_tombstones``). Two things make that safe:

* **Reports.** Every ``retention_interval`` each member writes, for the changelog partitions it
  holds (active or standby), the offset below which its store has applied the changelog:
  faust's persisted offset + 1, which faust's RocksDB store keeps next to the data and updates
  with every batch applied and every changelog record sent. The leader removes a tombstone only
  when every holder of the current generation reported an offset past it.
* **Floors.** Removing a tombstone raises the partition's floor (hash ``tombfloor``) to just
  past it. A member that takes the partition later, with a store persisted below the floor
  (stopped for a while, or it held the partition generations ago), may have missed that
  deletion: replaying the changelog from its local offset would keep the deleted key, because
  the key's earlier values were compacted away and its tombstone is gone. Before faust's
  recovery reads the persisted offsets, :func:`discard_stale` deletes such a store, and faust
  recovers the partition from the changelog's start, where the deleted key no longer appears.

A store that persists no offset (faust's ``memory://``) never vouches for a partition, so a
partition held by one keeps its tombstones; ocstream's workers use RocksDB.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import Any

import rocksdict
from faust.stores.rocksdb import Store as FaustRocksDBStore
from faust.types import TP
from mode import get_logger
from redis.asyncio import Redis

from .keys import Keyspace, offset_field

logger = get_logger(__name__)


def write_partition(
    store: FaustRocksDBStore,
    partition: int,
    changes: Iterable[tuple[bytes, bytes | None]],
    offset: int | None = None,
) -> None:
    """Write ``(encoded key, encoded value or None to delete)`` pairs to one partition of a
    RocksDB store in one write batch, with the persisted changelog offset when ``offset`` is
    given (atomically with the data, which faust's own ``apply_changelog_batch`` is not)."""
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in changes:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    if offset is not None:
        batch.put(store.offset_key, str(offset).encode())
    store._db_for_partition(partition).write(batch)


def changelog_tables(app: Any) -> dict[str, Any]:
    """The app's tables by the name of their changelog topic."""
    return {table.changelog_topic.get_topic_name(): table for table in app.tables.values()}


def flush_changelog_buffers(app: Any) -> None:
    """Apply the changelog records faust's recovery holds in memory. A standby applies them
    only by 1,000 per table, so on a quiet partition its store, and the position it reports,
    would lag until more traffic came, and so would the removal of tombstones."""
    recovery = app.tables.recovery
    if any(recovery.buffers.values()):
        recovery.flush_buffers()


def applied_positions(app: Any, tps: Iterable[TP]) -> dict[str, int]:
    """For each changelog partition in ``tps`` whose store persisted an offset: the offset below
    which it has applied the changelog, keyed like committed offsets (``topic\\x1fpartition``)."""
    tables = changelog_tables(app)
    positions: dict[str, int] = {}
    for tp in tps:
        table = tables.get(tp.topic)
        if table is None:
            continue
        persisted = table.persisted_offset(tp)
        if persisted is not None:
            positions[offset_field(tp.topic, tp.partition)] = int(persisted) + 1
    return positions


async def discard_stale(app: Any, client: Redis, keys: Keyspace, tps: Iterable[TP]) -> list[TP]:
    """Discard the local store of every changelog partition in ``tps`` persisted below its
    floor, so that faust recovers it from the start of the changelog. Returns those partitions.

    Call before faust reads the persisted offsets, i.e. before ``on_partitions_assigned``.
    """
    tables = changelog_tables(app)
    wanted = sorted(tp for tp in tps if tp.topic in tables)
    if not wanted:
        return []
    floors = await client.hmget(
        keys.tombstone_floors, [offset_field(tp.topic, tp.partition) for tp in wanted]
    )
    discarded = []
    for tp, raw in zip(wanted, floors, strict=True):
        if raw is None:
            continue
        floor = int(raw)
        table = tables[tp.topic]
        persisted = table.persisted_offset(tp)
        if persisted is None or int(persisted) + 1 >= floor:
            continue
        if not discard_partition(table.data, tp.partition):
            logger.error(
                "Table %s partition %d: the local store (offset %d) is older than removed "
                "tombstones (floor %d) and a %s cannot be discarded: deleted keys may reappear",
                table.name,
                tp.partition,
                persisted,
                floor,
                type(table.data).__name__,
            )
            continue
        logger.warning(
            "Table %s partition %d: local store at offset %d is older than removed tombstones "
            "(floor %d): discarded, recovering from the changelog",
            table.name,
            tp.partition,
            persisted,
            floor,
        )
        discarded.append(tp)
    return discarded


def discard_partition(store: Any, partition: int) -> bool:
    """Close and delete one partition's RocksDB database; the next access creates it empty.
    Returns False for a store that is not faust's RocksDB store (it cannot be discarded here)."""
    if not isinstance(store, FaustRocksDBStore):
        return False
    db = store._dbs.pop(partition, None)
    if db is not None:
        close = getattr(db, "close", None)  # rocksdict closes on request, python-rocksdb on GC
        if close is not None:
            close()
        del db
    shutil.rmtree(store.partition_path(partition), ignore_errors=True)
    return True
