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

The worker also tunes Python's cyclic garbage collector once it has started (:func:`tune_gc`).
Measured with ``benchmarks/xcm.py``, a busy worker spent about a quarter of its time in it:
every decoded record allocates hundreds of objects, so the default thresholds (700, 10, 10)
ran a full collection every few seconds over a heap of 250-350 thousand objects (runtime
metadata, faust's and aiohttp's own), 100-150 ms each. What the worker allocates while
processing is acyclic and freed by reference counting; the collector only has to find the
occasional cycle. So the start-up heap is frozen, and the young generations are collected on a
clock (:func:`collect_young`) rather than by allocation counts, which a backlog's buffered
records kept tripping (:data:`GC_THRESHOLDS`).

:class:`Worker` also keeps faust's per-partition and recovery-table lines (``opening partition``,
the highwater and offset tables: hundreds of lines before ``Ready``) out of the log at ``info``
and above; ``-l debug`` shows them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from typing import Any

import faust
from faust.stores.rocksdb import Store as _FaustRocksDBStore
from faust.tables import TableManager as _FaustTableManager
from faust.types import TP
from yarl import URL

__all__ = [
    "GC_STATS",
    "GC_THRESHOLDS",
    "GC_YOUNG_EVERY",
    "QUIET_AT_INFO",
    "App",
    "RocksDBStore",
    "Table",
    "TableManager",
    "Worker",
    "collect_young",
    "tune_gc",
    "watch_gc",
]

#: Collector thresholds of a started worker. The first is a bound, not a schedule: Python
#: counts net allocations, and a worker working off a backlog keeps a few hundred thousand
#: decoded records alive in its buffers, so any lower bound made every young collection scan
#: them all (20-200 ms each, 5-9 % of the CPU in ``benchmarks/xcm.py``) only to find them
#: alive. Young objects are collected on a clock instead (:data:`GC_YOUNG_EVERY`).
GC_THRESHOLDS = (1_000_000, 10, 100)


def _seconds(variable: str, default: str) -> float:
    """A positive number of seconds from the environment; anything else stops the process,
    naming the variable."""
    text = os.environ.get(variable, default)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{variable} must be a positive number of seconds, not {text!r}")
    return value


#: Seconds between two collections of the young generations (0 and 1) of a started worker
#: (``OCSTREAM_GC_YOUNG_EVERY``).
#: What they hold is what the worker has in flight: a collection takes under a millisecond on
#: an idle worker and up to about 0.3 s in the middle of a large backlog (``docs/benchmarks.md``,
#: "Issue 14, fourth round"). Cycles made while processing are freed within this time.
GC_YOUNG_EVERY = _seconds("OCSTREAM_GC_YOUNG_EVERY", "30")


#: Per generation: collections, seconds spent in them and the longest one, since
#: :func:`watch_gc` (a worker's ``/metrics``: ``ocstream_gc_*``).
GC_STATS: dict[int, list[float]] = {generation: [0, 0.0, 0.0] for generation in range(3)}
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started[0]
    stats = GC_STATS[info["generation"]]
    stats[0] += 1
    stats[1] += took
    stats[2] = max(stats[2], took)


def watch_gc() -> None:
    """Count and time this process's collections in :data:`GC_STATS` (once)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def tune_gc() -> None:
    """Collect once, move everything alive to the permanent generation (``gc.freeze``: the
    start-up heap is never scanned again) and raise the thresholds to :data:`GC_THRESHOLDS`.
    Collections are timed from then on (:func:`watch_gc`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    watch_gc()


async def collect_young(every: float = GC_YOUNG_EVERY) -> None:
    """Collect generations 0 and 1 every ``every`` seconds, forever (a worker's task, after
    :func:`tune_gc`). Full collections stay Python's, on its thresholds."""
    while True:
        await asyncio.sleep(every)
        gc.collect(1)


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


class RocksDBStore(_FaustRocksDBStore):
    async def assign_partitions(self, table: Any, tps: set[TP], generation_id: int = 0) -> None:
        self.rebalance_ack = True
        standby_tps = self.app.assignor.assigned_standbys()
        my_topics = table.changelog_topic.topics
        for tp in tps:
            if tp.topic in my_topics and tp not in standby_tps and self.rebalance_ack:
                if tp.partition not in self._dbs and not self.partition_path(tp.partition).exists():
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
        if tp.partition not in self._dbs and not self.partition_path(tp.partition).exists():
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
