"""Table reads once a partition's entries are on disk: ocstream's RocksDB options against the
ones it used before (faust's, with a bloom filter on the memtables), in one run.

    python benchmarks/table_reads.py [--keys N] [--files F] [--reads R] [--repeat P]

A worker's table partitions keep their newest entries in memtables; RocksDB writes them out to
table files (SSTs) as they fill (4 MB each: ``topology.xcm.ROCKSDB_OPTIONS``), and a worker that
runs for days holds most of its
entries there: at 100 journeys/s the ``seen`` table alone holds 20 to 26 million entries
(``docs/capacity.md``). Most of the matcher's reads look for a key that is not stored (a leg
not seen yet, a journey not indexed at this stop: 77 % of its reads in ``benchmarks/xcm.py``).

For each set of options (both with the XCM tables' ``ROCKSDB_OPTIONS``), a database like one
``seen`` partition is written through ``ocstream.runtime.RocksDBOptions.open`` (or the earlier
options): ``--keys`` entries with
``seen`` keys (JSON strings of ``chain|s:`` and 22 characters, as faust encodes a ``str``
key) and 25-byte values, in write batches of 500 as a worker's flush writes them, and flushed
out to ``--files`` table files (RocksDB may compact them on the way, as it would in a
worker). Then ``--reads`` lookups of keys that are not there, and as many of keys that are,
the best of ``--repeat`` passes each, in µs per lookup. The same lookups are made with
``key_may_exist`` too. Prints the ratios ``before / now`` (above 1: ocstream's options are
faster), and checks that every stored key is found and no other.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import rocksdict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faust.stores.rocksdb import RocksDBOptions as FaustRocksDBOptions  # noqa: E402

from ocstream.runtime import MEMTABLE_BLOOM_RATIO, RocksDBOptions  # noqa: E402
from topology.xcm import ROCKSDB_OPTIONS  # noqa: E402


class BeforeOptions(RocksDBOptions):
    """ocstream's options until the SST filter and the shared block cache: faust's table
    factory (3 bits per key, a filter per data block, a cache per database: the 8 MiB the XCM
    tables asked for), with the memtable filter ocstream added."""

    def as_options(self) -> Any:
        options = FaustRocksDBOptions.as_options(self)
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
        options.set_memtable_whole_key_filtering(True)
        return options


def seen_key(n: int, seed: int) -> bytes:
    """A ``seen`` key as the matcher makes it, JSON-encoded as faust stores a ``str`` key."""
    digest = hashlib.blake2b(f"{seed}:{n}".encode(), digest_size=16).digest()
    short = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return orjson.dumps(f"urn:ocn:polkadot:{2000 + n % 10}|s:{short}")


def fill(db: Any, keys: Sequence[bytes], files: int) -> None:
    """Write ``keys`` in batches of 500 and flush the memtable ``files`` times on the way."""
    value = orjson.dumps({"at": 1764892800.5, "expires": 1764979200.5})[:25].ljust(25)
    every = max(len(keys) // files, 1)
    for start in range(0, len(keys), 500):
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in keys[start : start + 500]:
            batch.put(key, value)
        db.write(batch)
        if (start + 500) // every != start // every:
            db.flush()
    db.flush()


def per_lookup(call: Callable[[bytes], Any], keys: Sequence[bytes], repeat: int) -> float:
    """µs per call of ``call`` over ``keys``, the best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for key in keys:
            call(key)
        best = min(best, time.perf_counter() - started)
    return best / len(keys) * 1e6


def measure(
    options: RocksDBOptions, stored: Sequence[bytes], absent: Sequence[bytes], args: Any
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ocstream-table-reads-") as tmp:
        db = options.open(Path(tmp) / "seen.db")
        try:
            started = time.perf_counter()
            fill(db, stored, args.files)
            written = time.perf_counter() - started
            present = random.Random(args.seed).sample(list(stored), min(args.reads, len(stored)))
            missing = absent[: args.reads]
            if any(db.get(key) is None for key in present):
                raise SystemExit("a stored key was not found")
            if any(db.get(key) is not None for key in missing):
                raise SystemExit("a key that was never stored was found")
            files = sum(1 for path in Path(tmp, "seen.db").glob("*.sst"))
            return {
                "miss": per_lookup(db.get, missing, args.repeat),
                "hit": per_lookup(db.get, present, args.repeat),
                "may_exist miss": per_lookup(db.key_may_exist, missing, args.repeat),
                "write s": written,
                "files": files,
            }
        finally:
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8, help="memtable flushes while filling")
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    stored = [seen_key(n, args.seed) for n in range(args.keys)]
    absent = [seen_key(n, args.seed + 1) for n in range(args.reads)]
    print(
        f"table reads: {args.keys:,} seen entries flushed {args.files} times, "
        f"{args.reads:,} lookups of absent and of stored keys, best of {args.repeat}"
    )
    results = {}
    tables: dict[str, Any] = dict(ROCKSDB_OPTIONS)  # the XCM tables' write buffers and cache
    for name, options in (("before", BeforeOptions(**tables)), ("now", RocksDBOptions(**tables))):
        results[name] = found = measure(options, stored, absent, args)
        print(
            f"  {name:>6}: miss {found['miss']:.2f} µs, hit {found['hit']:.2f} µs, "
            f"key_may_exist miss {found['may_exist miss']:.2f} µs "
            f"({found['files']:.0f} table files; written in {found['write s']:.1f} s)"
        )
    before, now = results["before"], results["now"]
    print(
        "RATIOS before/now "
        + " ".join(
            f"{name.replace(' ', '_')}={before[name] / now[name]:.2f}"
            for name in ("miss", "hit", "may_exist miss")
        )
    )


if __name__ == "__main__":
    main()
