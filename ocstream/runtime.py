"""faust's worker, table manager and RocksDB store, adjusted for a quick start and stop.

Measured on the 2-core machine (``benchmarks/worker_start.py``, ``docs/benchmarks.md``), a
worker spent most of its start and stop in places that do no work for ocstream:

* :class:`TableManager`: faust's table manager sleeps a fixed second before it registers the
  tables' changelogs, to leave agents time to create tables lazily. ocstream declares every table
  before the app starts (``topology/``), so there is nothing to wait for.
* :class:`RocksDBStore`: faust opens the RocksDB database of every assigned partition of every
  table on assignment (16 partitions x 7 tables = 112 databases, 20-50 ms each on this disk,
  most of it fsync). A partition whose database does not exist on disk holds no data, so this
  store skips opening it: the first access creates it (faust's store opens or creates a
  partition's database on any access to one it has not opened). A database that exists is
  opened on assignment as before, with faust's retries when another process holds its lock.
  faust also runs a full ``gc.collect()`` per table at every rebalance and at stop, to close
  the databases it drops (0.1 s on an empty worker, seconds once the runtime decoders are
  loaded): here a database is closed by dropping it, and the collection runs only when
  something else still holds one.
* :class:`App`: faust's ``Monitor`` sensor is called for every record in and out, every
  table read and write and every send, to keep statistics that only faust's own web views
  show; ocstream's ``/metrics`` does not read them (``ocstream/metrics.py``). The app keeps the
  monitor object (the consumer reports end offsets to it) but does not install it as a sensor.
* :class:`Worker`: mode's worker waits a fixed second before closing the event loop, after
  everything has stopped; a tenth of a second is enough for the last callbacks to run.

The worker also tunes Python's cyclic garbage collector once it has started
(``ocstream/gctune.py``).

:class:`Worker` also keeps faust's per-partition and recovery-table lines (``opening partition``,
the highwater and offset tables: hundreds of lines before ``Ready``) out of the log at ``info``
and above; ``-l debug`` shows them.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
from typing import Any

import faust
import rocksdict
from faust.stores.rocksdb import RocksDBOptions as _FaustRocksDBOptions
from faust.stores.rocksdb import Store as _FaustRocksDBStore
from faust.tables import TableManager as _FaustTableManager
from faust.types import TP
from yarl import URL

from .gctune import collect_young, tune_gc
from .looplag import watch_loop
from .rocks import BLOCK_CACHE_BYTES, MEMTABLE_BYTES

__all__ = [
    "QUIET_AT_INFO",
    "App",
    "RocksDBStore",
    "Table",
    "TableManager",
    "Worker",
]

#: Beginnings of faust's log messages shown only at ``-l debug`` (one per partition and table,
#: or multi-line tables of every changelog partition).
QUIET_AT_INFO = (
    "opening partition ",
    "closing db ",
    "Closing rocksdb on stop",
    "Executing _on_partitions_assigned",
    "generation id ",
    "Highwater for ",
    "%s offsets at start of reading",
)


class QuietAtInfo(logging.Filter):
    """Drops the messages of :data:`QUIET_AT_INFO` unless the root logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        message = record.msg if isinstance(record.msg, str) else ""
        if message.startswith("[^"):  # a faust service's name: "[^---Recovery]: ..."
            message = message.split("]: ", 1)[-1]
        return not message.startswith(QUIET_AT_INFO)


class App(faust.App):
    _event_class: Any = None

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)  # added by faust's on_init_dependencies
        return dependencies

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        # faust looks the event class up in the settings for every message consumed; it is
        # fixed once the app is configured.
        event_class = self._event_class
        if event_class is None:
            event_class = self._event_class = self.conf.Event
        return event_class(self, key, value, headers, message)


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(QuietAtInfo())

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        tune_gc()
        self.add_future(collect_young())
        self.add_future(watch_loop())

    async def _sentinel_task(self) -> None:
        # mode sleeps 1 s here before closing the loop, once every service has stopped.
        await asyncio.sleep(0.1)


class TableManager(_FaustTableManager):
    async def on_start(self) -> None:
        # faust's own on_start sleeps 1 s first; the tables are all declared already.
        await asyncio.sleep(0)
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


#: Size of each memtable's bloom filter, as a share of the write buffer (4 MB for the XCM
#: tables): 8 kB, about 16 bits per key for the 4,000 entries of a full memtable of matcher
#: entries.
MEMTABLE_BLOOM_RATIO = 0.002

#: Bits per key of the bloom filter in each table file (SST) RocksDB writes. faust's options
#: give 3, which lets about a fifth of the keys that are not in a file through to a search of
#: its index and a data block; 10 let about 1 % through, for 7 more bits per key on disk. Once
#: a partition's entries have left its memtables (the ``seen`` table alone holds millions),
#: most of the matcher's reads are such misses: 0.53-0.81 µs each with 10 bits and the shared
#: block cache against 1.56-2.27 µs before (``python benchmarks/table_reads.py``).
SST_BLOOM_BITS = 10


@functools.cache
def block_cache() -> rocksdict.Cache:
    """The process's shared block cache (:data:`~ocstream.rocks.BLOCK_CACHE_BYTES`), made on
    first use."""
    return rocksdict.Cache(BLOCK_CACHE_BYTES)


@functools.cache
def write_buffer_manager() -> rocksdict.WriteBufferManager | None:
    """The process's bound on all its databases' memtables
    (:data:`~ocstream.rocks.MEMTABLE_BYTES`), made on first use; None when it is 0. Writers do
    not stall when it is reached: the database written to writes its memtable out."""
    return rocksdict.WriteBufferManager(MEMTABLE_BYTES, False) if MEMTABLE_BYTES else None


class RocksDBOptions(_FaustRocksDBOptions):
    """faust's RocksDB options, with a bloom filter of whole keys on each memtable, a stronger
    filter in table files (:data:`SST_BLOOM_BITS`), one block cache for the whole process
    (:data:`~ocstream.rocks.BLOCK_CACHE_BYTES`), and writes that skip RocksDB's write-ahead log.

    * **The filter.** A worker's table partitions hold their recent entries in memtables, and
      most of the matcher's store reads look for a key that is not there (a leg not seen yet,
      a journey not indexed at this stop): 70 % of them in ``benchmarks/xcm.py``. Without a
      filter such a read walks the memtable's skip list to the end; with it, a miss usually
      stops at the filter (``docs/benchmarks.md``, "Issue 14, seventh round").
    * **No write-ahead log**, as Kafka Streams' RocksDB stores: a table's changelog in Redis is
      what makes its writes durable, and the log only doubled them (a write batch costs about
      half as much without it). A closed database (a stop, a revoke) writes its memtables out
      first; a killed worker loses its memtables, data and persisted changelog offset alike
      (the offset is a key of the same database), so the database reopens as it was at an
      earlier offset, and faust's recovery replays the changelog from there. A store thrown
      that far back behind a removed tombstone is discarded by
      ``local_state.discard_stale`` and recovered from the changelog's start."""

    def as_options(self) -> Any:
        options = super().as_options()
        if self.use_rocksdict:
            options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
            options.set_memtable_whole_key_filtering(True)
            table = rocksdict.BlockBasedOptions()
            table.set_bloom_filter(SST_BLOOM_BITS, False)
            table.set_block_cache(block_cache())
            table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            options.set_block_based_table_factory(table)
            manager = write_buffer_manager()
            if manager is not None:
                options.set_write_buffer_manager(manager)
        return options

    def open(self, path: Any, *, read_only: bool = False) -> Any:
        db = super().open(path, read_only=read_only)
        if self.use_rocksdict:
            db.set_write_options(unlogged_writes())
        return db


def unlogged_writes() -> rocksdict.WriteOptions:
    """Write options without RocksDB's write-ahead log."""
    writes = rocksdict.WriteOptions()
    # A property in rocksdict, though its stubs declare a method.
    writes.disable_wal = True  # type: ignore[method-assign,assignment]
    return writes


class RocksDBStore(_FaustRocksDBStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = RocksDBOptions(
            **(self.options or {}), use_rocksdict=self.use_rocksdict
        )

    def has_database(self, partition: int) -> bool:
        """Whether ``partition`` has a database, open or on disk. One without holds nothing,
        and any access to it through faust's store (``_db_for_partition``) would create it."""
        return partition in self._dbs or self.partition_path(partition).exists()

    async def assign_partitions(self, table: Any, tps: set[TP], generation_id: int = 0) -> None:
        self.rebalance_ack = True
        standby_tps = self.app.assignor.assigned_standbys()
        my_topics = table.changelog_topic.topics
        for tp in tps:
            if tp.topic in my_topics and tp not in standby_tps and self.rebalance_ack:
                if not self.has_database(tp.partition):
                    continue  # nothing stored yet: the first write creates it
                await self._try_open_db_for_partition(tp.partition, generation_id=generation_id)
                await asyncio.sleep(0)

    def revoke_partitions(self, table: Any, tps: set[TP]) -> None:
        dropped = []
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                db = self._dbs.pop(tp.partition, None)
                if db is not None:
                    self.logger.info(f"closing db {tp.topic} partition {tp.partition}")
                    dropped.append(db)
        db = None  # the loop's last reference: _release counts the others
        _release(dropped)

    async def stop(self) -> None:
        self.logger.info("Closing rocksdb on stop")
        dropped = list(self._dbs.values())
        self._dbs.clear()
        _release(dropped)

    def persisted_offset(self, tp: TP) -> int | None:
        if not self.has_database(tp.partition):
            return None  # what a fresh database would answer, without creating one
        offset: int | None = super().persisted_offset(tp)
        return offset


def _release(dbs: list[Any]) -> None:
    """Close the databases in ``dbs`` by dropping them. faust runs a full ``gc.collect()`` for
    this after every table's revoke and stop: seconds in a worker whose heap holds the runtime
    decoders (1.5-3.4 s per table at stop were measured on the loaded machine). Dropping the last
    reference closes a database at once, so the collection runs only when something else still
    refers to one (a cycle, an iterator), which would keep its lock."""
    held = False
    for db in dbs:
        # References: the list, the loop variable and getrefcount's own argument.
        if sys.getrefcount(db) > 3:
            held = True
    dbs.clear()
    if held:
        gc.collect()


class Table(faust.Table[Any, Any]):
    """faust's table, with :class:`RocksDBStore` for ``rocksdb://`` stores."""

    def _new_store_by_url(self, url: str | URL) -> Any:
        if URL(str(url)).scheme != "rocksdb":
            return super()._new_store_by_url(url)
        return RocksDBStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )
