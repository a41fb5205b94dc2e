"""What a sweep costs with the expiry index against a scan of every entry, as tables grow.

    python benchmarks/sweep.py [--kept N ...] [--due D] [--rounds R]

The matcher's tables keep entries for up to a day (``seen`` entries, ``seen_ttl``) and a sweep
runs every minute. This fills one RocksDB table partition, in raw mode as faust's store opens
it, with N entries that are kept (shaped like ``seen`` entries: a leg identity and an expiry a
day away) and D that are due (shaped like journey entries, 1.2 kB), and times, in the same run:

* **scan**: what every sweep did before the index: read every entry and parse its expiry
  (``topology.xcm._expires_of``);
* **index**: what a sweep does now (``ocstream/xcm/expiry.py``): read the index from the start
  of the partition's range up to now, look each entry up in the table and check its expiry;
* **write cost**: what indexing the entries costs when they are written (once per write,
  counted per entry), which the scan did not pay.

Prints, for each N, milliseconds per sweep for both and their ratio, and the write cost per
entry; the ratio grows with N, since the scan reads N + D entries and the index D. At 100
journeys/s the ``seen`` table alone keeps about 20 million entries.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
import rocksdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ocstream.xcm.expiry import ExpiryIndex  # noqa: E402
from topology.xcm import _expires_of  # noqa: E402

NOW = 1_800_000_000.0
PARTITION = 3
JOURNEY = {"id": "j" * 64, "stops": ["urn:ocn:polkadot:2034"] * 3, "blob": "ab" * 500}


def fill(path: Path, index: ExpiryIndex, kept: int, due: int) -> float:
    """Write the entries (and index them, timing that part); returns seconds spent indexing."""
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    db = rocksdict.Rdict(str(path), options=options)
    indexing = 0.0
    chunk = 10_000
    for start in range(0, kept + due, chunk):
        batch = rocksdict.WriteBatch(raw_mode=True)
        entries = []
        for i in range(start, min(start + chunk, kept + due)):
            if i < kept:
                key = orjson.dumps(f"urn:ocn:polkadot:1000|rcv:urn:ocn:polkadot:1000|0x{i:064x}|7")
                value = orjson.dumps({"expires": NOW + 86_400 + i % 3600})
            else:
                key = orjson.dumps(f"urn:ocn:polkadot:1000|0x{i:064x}")
                value = orjson.dumps({**JOURNEY, "expires": NOW - 1 - i % 60})
            batch.put(key, value)
            entries.append((key, value))
        db.write(batch)
        began = time.perf_counter()
        index.note(
            ("seen", PARTITION, key, expires)
            for key, value in entries
            if (expires := _expires_of(value)) is not None
        )
        indexing += time.perf_counter() - began
    db.close()
    return indexing


def scan(db: rocksdict.Rdict) -> int:
    found = 0
    for _, raw in db.items():
        expires = _expires_of(raw)
        if expires is not None and expires <= NOW:
            found += 1
    return found


def indexed(db: rocksdict.Rdict, index: ExpiryIndex) -> int:
    found = 0
    for _, raw_key in index.due(PARTITION, "seen", NOW):
        raw = db.get(raw_key)
        expires = _expires_of(raw) if raw is not None else None
        if expires is not None and expires <= NOW:
            found += 1
    return found


def best_of(rounds: int, run: Callable[[], int]) -> tuple[float, int]:
    times, found = [], 0
    for _ in range(rounds):
        began = time.perf_counter()
        found = run()
        times.append(time.perf_counter() - began)
    return min(times), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kept", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--due", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"command: python benchmarks/sweep.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"parameters: kept={args.kept} due={args.due} rounds={args.rounds} (best of)")
    print("| kept | due | scan ms/sweep | index ms/sweep | scan/index | index write µs/entry |")
    print("|---|---|---|---|---|---|")
    for kept in args.kept:
        root = Path(tempfile.mkdtemp(prefix="sweepbench-"))
        try:
            index = ExpiryIndex(root / "index", ["seen"])
            indexing = fill(root / "table", index, kept, args.due)
            options = rocksdict.Options(raw_mode=True)
            db = rocksdict.Rdict(str(root / "table"), options=options)
            scan_s, scan_found = best_of(args.rounds, partial(scan, db))
            index_s, index_found = best_of(args.rounds, partial(indexed, db, index))
            assert scan_found == index_found == args.due, (scan_found, index_found)
            db.close()
            index.close()
            write_us = indexing / (kept + args.due) * 1e6
            print(
                f"| {kept:,} | {args.due:,} | {scan_s * 1000:,.1f} | {index_s * 1000:,.1f} | "
                f"{scan_s / index_s:,.1f} | {write_us:.2f} |"
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
