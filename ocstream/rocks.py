"""The RocksDB settings a worker reads from the environment when this module is imported (the
command line imports it before it starts anything, so a bad value stops it with one line;
``ocstream/envvars.py``). Kept apart from ``ocstream/runtime.py``, which imports faust."""

from __future__ import annotations

import os

from .envvars import env_count

__all__ = ["BLOCK_CACHE_BYTES", "MEMTABLE_BYTES"]

#: One block cache (bytes) for every table database of the process,
#: ``OCSTREAM_ROCKSDB_CACHE_MB`` (256 by default). faust gives each database a cache of its own,
#: of up to 2 GiB, and a worker opens one per table and partition (6 tables x 16 partitions):
#: memory that no setting bounded. Blocks enter the cache as table files are read, so it fills
#: only as far as the tables are read from disk.
BLOCK_CACHE_BYTES = env_count(os.environ, "OCSTREAM_ROCKSDB_CACHE_MB", 256) * 1024 * 1024

#: The most memory (bytes) that the memtables of all of a worker's table databases (and of its
#: expiry index, ``ocstream/xcm/expiry.py``) hold together, ``OCSTREAM_ROCKSDB_MEMTABLES_MB`` (0:
#: no bound beyond faust's own, 3 memtables of 64 MB per database). Past it RocksDB writes the
#: memtable of the database being written out to a table file. Without it a worker's memory grew
#: with every write until each database's memtable filled: towards 6 GB for the 96 databases of 16
#: partitions, and more with standbys (``python benchmarks/table_memory.py``).
MEMTABLE_BYTES = env_count(os.environ, "OCSTREAM_ROCKSDB_MEMTABLES_MB", 256) * 1024 * 1024
