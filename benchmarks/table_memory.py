"""A worker's memtables, bounded and not, in one run.

    python benchmarks/table_memory.py [--databases D] [--megabytes M] [--bound MB] [--rate R]

A worker holds a RocksDB database per table and partition (six tables: 96 databases for 16
partitions, twice that with standbys). Each database keeps what is written to it in memtables
until one fills (the XCM tables' write buffer, ``topology.xcm.ROCKSDB_OPTIONS``: 4 MB, up to 2
of them), so without a bound a worker's memtables grow with the number of databases it holds:
up to 96 x 8 MB. ``OCSTREAM_ROCKSDB_MEMTABLES_MB`` bounds all of a process's memtables together
(``ocstream/rocks.py``).

For each setting (``0``, no bound, the baseline; ``--bound``, 256 by default as in a worker), a
fresh process opens ``--databases`` databases through ``ocstream.runtime.RocksDBOptions``, with
the XCM tables' options, and
writes ``--megabytes`` of 1 kB values to them in turn, in write batches of 100 as a flush of the
matcher writes them, at most ``--rate`` MB/s (RocksDB writes memtables out on background
threads, and a writer far faster than a worker outruns them), then reads every 50th key back. It
prints the process's resident memory before and after, the memtables' usage as the bound's
manager counts it, the table files written, the time the writes took and the process's CPU (its
threads' and RocksDB's background threads', the time of the child's imports included). Ratios:
memory growth and CPU, bounded over unbounded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, resource, sys, tempfile, time
from pathlib import Path
import rocksdict
from ocstream.runtime import RocksDBOptions, write_buffer_manager
from topology.xcm import ROCKSDB_OPTIONS

def rss_mib():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

databases, megabytes, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
with tempfile.TemporaryDirectory(prefix="ocstream-table-memory-") as tmp:
    options = RocksDBOptions(**ROCKSDB_OPTIONS)
    dbs = [options.open(Path(tmp) / f"{n}.db") for n in range(databases)]
    before = rss_mib()
    value = os.urandom(1000)
    count = megabytes * 1000
    started = time.perf_counter()
    for start in range(0, count, 100):
        batch = rocksdict.WriteBatch(raw_mode=True)
        for n in range(start, min(start + 100, count)):
            batch.put(b"key-%09d" % n, value)
        dbs[(start // 100) % databases].write(batch)
        ahead = (start + 100) / 1000 / rate - (time.perf_counter() - started)
        if ahead > 0:  # no faster than --rate MB/s
            time.sleep(ahead)
    written = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread's, RocksDB's flushes too
    for n in range(0, count, 50):
        if dbs[(n // 100) % databases].get(b"key-%09d" % n) != value:
            raise SystemExit(f"key {n} did not read back")
    manager = write_buffer_manager()
    print(json.dumps({
        "before": before,
        "after": rss_mib(),
        "memtables": None if manager is None else manager.get_usage() / 2**20,
        "files": sum(1 for _ in Path(tmp).glob("*/*.sst")),
        "seconds": written,
        "cpu": usage.ru_utime + usage.ru_stime,
    }))
    for db in dbs:
        db.close()
"""


def run(bound: int, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "OCSTREAM_ROCKSDB_MEMTABLES_MB": str(bound), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.databases), str(args.megabytes), str(args.rate)],
        env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the writer failed: {done.stderr[-2000:]}")
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", type=int, default=96)
    parser.add_argument("--megabytes", type=int, default=1000)
    parser.add_argument("--bound", type=int, default=256, help="MB, as a worker's default")
    parser.add_argument(
        "--rate", type=float, default=100.0,
        help="MB/s written at most (a worker matching 100 journeys/s writes roughly 1 to 2)",
    )  # fmt: skip
    args = parser.parse_args()
    print(
        f"table memory: {args.megabytes} MB of 1 kB values written to {args.databases} "
        f"databases in turn, at most {args.rate:g} MB/s, in a fresh process per setting"
    )
    results = {}
    for bound in (0, args.bound):
        results[bound] = found = run(bound, args)
        memtables = "-" if found["memtables"] is None else f"{found['memtables']:.0f} MiB"
        print(
            f"  bound {bound or 'none':>5}: resident {found['before']:.0f} -> "
            f"{found['after']:.0f} MiB, memtables {memtables}, {found['files']:.0f} table "
            f"files, writes {found['seconds']:.2f} s, CPU {found['cpu']:.2f} s"
        )
    unbounded, bounded = results[0], results[args.bound]
    growth = (bounded["after"] - bounded["before"]) / (unbounded["after"] - unbounded["before"])
    print(
        f"RATIOS bounded/unbounded memory_growth={growth:.2f} "
        f"cpu={bounded['cpu'] / unbounded['cpu']:.2f}"
    )


if __name__ == "__main__":
    main()
