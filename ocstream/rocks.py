"""The RocksDB settings a worker reads from the environment when this module is imported (the
command line imports it before it starts anything, so a bad value stops it with one line;
``ocstream/envvars.py``). Kept apart from ``ocstream/runtime.py``, which imports faust."""

from __future__ import annotations

import os

from .envvars import env_count

__all__ = ["BLOCK_CACHE_BYTES", "MEMTABLE_BYTES"]

#: One block cache (bytes) for every table database of the process,
#: ``OCSTREAM_ROCKSDB_CACHE_MB`` (256 by default). faust gives each database a cache of its own
#: (the XCM tables asked for 8 MiB each, ``topology.xcm.ROCKSDB_OPTIONS``), and a worker opens
#: one per table and partition (6 tables x 16 partitions, twice that with standbys): up to 768
#: MiB or more, growing with the partitions a worker holds. Blocks enter the cache as table files
#: are read, so it fills only as far as the tables are read from disk.
BLOCK_CACHE_BYTES = env_count(os.environ, "OCSTREAM_ROCKSDB_CACHE_MB", 256) * 1024 * 1024

#: The most memory (bytes) that the memtables of all of a worker's table databases (and of its
#: expiry index, ``ocstream/xcm/expiry.py``) hold together, ``OCSTREAM_ROCKSDB_MEMTABLES_MB`` (0:
#: no bound beyond each database's own: 2 memtables of 4 MB for the XCM tables,
#: ``topology.xcm.ROCKSDB_OPTIONS``). Past it RocksDB writes the memtable of the database being
#: written out to a table file. Without it a worker's memtables grew with the databases it held:
#: up to 768 MB for the 96 databases of 16 partitions, twice that with standbys
#: (``python benchmarks/table_memory.py``).
MEMTABLE_BYTES = env_count(os.environ, "OCSTREAM_ROCKSDB_MEMTABLES_MB", 256) * 1024 * 1024
