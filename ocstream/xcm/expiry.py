"""An index of the matcher's table entries by expiry, so that a sweep reads what expired
instead of every entry it holds.

Every entry the matcher keeps carries an ``expires`` time, and a sweep every minute has the
expired ones deleted (``docs/matching.md`` §5). Scanning every entry for that costs about
3 µs per entry on the development machine, and the tables hold a lot at a steady state: the
``seen`` table alone keeps two or three entries per journey for a day (``seen_ttl``), which at
100 journeys/s is about 20 million entries, a minute of CPU per sweep. The cost grew with what
is *kept*, not with what expires; this index makes it grow with what expires.

**Layout.** One RocksDB database per worker, next to its table stores, written in raw mode. A
key is ``partition (2 bytes) | table number (1) | expiry in ms (8, big-endian) | the entry's
encoded key``, with an empty value, so the entries of one table partition are ordered by expiry
and a sweep reads from the start of that range up to ``now``.

**Kept up to date by the writer.** The matcher's :class:`~ocstream.tablebatch.TableBatch`
hands each flush's writes to :meth:`ExpiryIndex.note` before they reach the table, so an entry
is indexed before it is stored. Nothing is removed on writes: an index entry whose table entry
was deleted or re-written with a later expiry is *stale*, and the sweep drops it when it comes
due (it reads the table entry and checks its expiry before reporting it). An entry that did
expire stays indexed until the sweep finds it gone, so a sweep record lost in a crash is sent
again by the next sweep.

**Rebuilt when the assignment changes.** Table partitions also change without the matcher
writing them: faust's recovery and standby replicas apply changelog records, and a partition
that moves away and back has missed writes. So the index vouches only for partitions it
*rebuilt* in the current consumer generation: at the first sweep after a rebalance, each
active partition's range is cleared and refilled by one scan of its stores (what every sweep
used to do). The index lives in the data directory but is never trusted across a restart,
so it is written without RocksDB's write-ahead log.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import rocksdict

from ocstream.runtime import unlogged_writes, write_buffer_manager

__all__ = ["ExpiryIndex"]

_HEAD = struct.Struct(">HBQ")  # partition, table number, expiry (ms)
_MAX_MS = 2**64 - 1


def _ms(seconds: float) -> int:
    return min(max(math.ceil(seconds * 1000), 0), _MAX_MS)


class ExpiryIndex:
    """See the module docstring. ``tables`` names the indexed tables; their order gives each
    its table number in the keys."""

    def __init__(self, path: str | Path, tables: Iterable[str]) -> None:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        manager = write_buffer_manager()
        if manager is not None:  # its memtables count with the tables' (ocstream/rocks.py)
            options.set_write_buffer_manager(manager)
        self.path = Path(path)
        self.db = rocksdict.Rdict(str(self.path), options=options)
        # Never trusted across a restart, so nothing it writes needs a write-ahead log.
        self.db.set_write_options(unlogged_writes())
        self.numbers = {name: number for number, name in enumerate(tables)}
        #: the partitions this index vouches for (rebuilt in the current generation)
        self.indexed: set[int] = set()
        self.generation: int | None = None

    def close(self) -> None:
        self.db.close()

    def key(self, partition: int, table: str, expires: float, raw_key: bytes) -> bytes:
        return _HEAD.pack(partition, self.numbers[table], _ms(expires)) + raw_key

    def note(self, entries: Iterable[tuple[str, int, bytes, float]]) -> None:
        """Index ``(table, partition, encoded key, expires)`` entries, in one write."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        count = 0
        for table, partition, raw_key, expires in entries:
            batch.put(self.key(partition, table, expires, raw_key), b"")
            count += 1
        if count:
            self.db.write(batch)

    def clear(self, partition: int) -> None:
        """Forget everything indexed for ``partition`` (before a rebuild)."""
        start = _HEAD.pack(partition, 0, 0)
        end = _HEAD.pack(partition + 1, 0, 0) if partition < 0xFFFF else b"\xff" * (_HEAD.size + 1)
        self.db.delete_range(start, end)
        self.indexed.discard(partition)

    def due(self, partition: int, table: str, now: float) -> Iterator[tuple[bytes, bytes]]:
        """``(index key, encoded table key)`` of the entries of one table partition indexed to
        expire at or before ``now``, earliest first (the caller checks each against the
        table: it may be stale)."""
        number = self.numbers[table]
        end = _HEAD.pack(partition, number, min(math.floor(now * 1000), _MAX_MS - 1) + 1)
        it = self.db.iter()
        it.seek(_HEAD.pack(partition, number, 0))
        while it.valid():
            key: bytes = it.key()
            if key >= end:
                break
            yield key, key[_HEAD.size :]
            it.next()

    def drop(self, keys: Iterable[bytes]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        count = 0
        for key in keys:
            batch.delete(key)
            count += 1
        if count:
            self.db.write(batch)
