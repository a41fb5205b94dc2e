"""Worker processes and waits for the benchmarks that run real ``ocstream worker`` processes
(``xcm.py``, ``e2e.py``): start, stop, read ``/metrics`` and ``/xcm/pending/``, wait for the group
to settle, CPU seconds of a process and of Redis, and deleting a run's keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from aiohttp import web

from ocstream.transport.settings import TransportSettings

# The process helpers of the tests: free ports, the fast group timeouts, a clean environment.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.workers import (  # noqa: E402
    FAST_GROUP_ENV,
    Sample,
    free_port,
    metric_samples,
    ocstream_env,
    unlabelled,
)

T = TypeVar("T")

#: Settings passed on from the benchmark's own environment to its workers and ingress
#: (``ocstream_env`` passes no other ``OCSTREAM_*``), so that a comparison runs in one checkout:
#: the record format, which every process of a run must share
#: (``OCSTREAM_TRANSPORT_COMPRESSION=zstd python benchmarks/xcm.py`` runs everything without the
#: compression dictionary), and how partitions are assigned (``OCSTREAM_TRANSPORT_ASSIGNMENT``,
#: ``_LOAD_CHECK_INTERVAL``, ``_LOAD_FIRST_LOOK``, ``_LOAD_SETTLE_RECORDS``,
#: ``_LOAD_UNEVEN_CHECKS``), the records of a producer's round trip
#: (``OCSTREAM_TRANSPORT_PRODUCE_BATCH_RECORDS``), the bounds of a matching batch
#: (``OCSTREAM_XCM_BATCH_RECORDS``, ``_SECONDS``), the tables without standby replicas
#: (``OCSTREAM_XCM_NO_STANDBY_TABLES``), and RocksDB's memory (``OCSTREAM_ROCKSDB_MEMTABLES_MB``,
#: ``_CACHE_MB``).
PASSED_SETTINGS = (
    "OCSTREAM_TRANSPORT_COMPRESSION",
    "OCSTREAM_TRANSPORT_COMPRESS_MIN_BYTES",
    "OCSTREAM_TRANSPORT_ASSIGNMENT",
    "OCSTREAM_TRANSPORT_LOAD_CHECK_INTERVAL",
    "OCSTREAM_TRANSPORT_LOAD_FIRST_LOOK",
    "OCSTREAM_TRANSPORT_LOAD_SETTLE_RECORDS",
    "OCSTREAM_TRANSPORT_LOAD_UNEVEN_CHECKS",
    "OCSTREAM_TRANSPORT_PRODUCE_BATCH_RECORDS",
    "OCSTREAM_XCM_BATCH_RECORDS",
    "OCSTREAM_XCM_BATCH_SECONDS",
    "OCSTREAM_XCM_NO_STANDBY_TABLES",
    "OCSTREAM_ROCKSDB_MEMTABLES_MB",
    "OCSTREAM_ROCKSDB_CACHE_MB",
)


def bench_env(**extra: str) -> dict[str, str]:
    """:func:`tests.workers.ocstream_env` with this run's :data:`PASSED_SETTINGS`, plus
    ``extra``."""
    passed = {name: os.environ[name] for name in PASSED_SETTINGS if name in os.environ}
    return ocstream_env(**passed, **extra)


REPO = Path(__file__).resolve().parent.parent


def serve_printing_port(app: web.Application) -> None:
    """Serve ``app`` on a free port of 127.0.0.1 until killed, once its port is printed on
    stdout (the parent process reads that line): the benchmarks' webhook receivers."""

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class Incomplete(Exception):
    """A phase did not complete in time (or a worker died)."""


class ChildProc:
    """A child process writing to a log file; stopped with SIGTERM, killed after 30 s."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(children: list[WorkerProc]) -> None:
    """SIGTERM to every worker at once (they shut down in parallel), then wait for each."""
    for child in children:
        if child.alive():
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        child.stop()


class WorkerProc(ChildProc):
    """One ``python -m ocstream worker`` with its own data dir, port and log file."""

    def __init__(
        self,
        name: str,
        root: Path,
        *,
        url: str,
        prefix: str,
        app_id: str,
        partitions: int,
        standby_replicas: int | None = None,
        role: str = "all",
    ) -> None:
        self.name = name
        self.role = role
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{name}.log"
        self.port = free_port()
        self.url = url
        self.env = bench_env()
        self.env.update(FAST_GROUP_ENV)
        self.env.update(
            {
                "OCSTREAM_TRANSPORT_PREFIX": prefix,
                "OCSTREAM_APP_ID": app_id,
                "OCSTREAM_PARTITIONS": str(partitions),
                # Tombstones are removed once every holder applied them; the members report
                # how far they are every interval (docs/capacity.md).
                "OCSTREAM_TRANSPORT_RETENTION_INTERVAL": "2",
                # Ended journeys are kept 20 s instead of an hour, swept every 5 s, so that the
                # run can see what a journey leaves once its entries expired.
                "OCSTREAM_XCM_CLOSED_TTL": "20",
                "OCSTREAM_XCM_SWEEP_INTERVAL": "5",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if role != "all":
            self.env["OCSTREAM_ROLE"] = role
        self.config: Path | None = None
        if standby_replicas is not None:
            self.config = root / f"{name}.toml"
            self.config.write_text(f"[worker]\nstandby_replicas = {standby_replicas}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        args = [sys.executable, "-m", "ocstream", "worker", "-l", "info"]
        args += ["--port", str(self.port), "--data-dir", str(self.data_dir), "--redis", self.url]
        if self.config is not None:
            args += ["--config", str(self.config)]
        with self.log_path.open("ab") as log:
            # Own session: Ctrl-C reaches this script only, which then stops the workers.
            self.proc = subprocess.Popen(
                args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise Incomplete(f"worker {self.name} exited")

    def get(self, path: str, timeout: float = 10) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())

    def pending(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/xcm/pending/", timeout=60)))

    def metrics(self) -> dict[str, float]:
        """Samples without labels, by name."""
        return unlabelled(self.samples())

    def samples(self) -> list[Sample]:
        """Every sample of ``/metrics``: name, labels, value (prometheus_client's parser)."""
        return metric_samples(self.get("/metrics").decode())

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory now (``VmHWM``: its peak)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
        assert found, status
        return int(found.group(1)) * 1024

    def data_bytes(self) -> int:
        """Apparent size of the worker's data dir (its RocksDB tables)."""
        return sum(
            (Path(d) / f).stat().st_size for d, _, files in os.walk(self.data_dir) for f in files
        )


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    progress: Callable[[], str] | None = None,
) -> T:
    """``predicate()`` once it is true, looking every ``interval`` seconds; else
    :class:`Incomplete` after ``timeout``, naming ``what`` and the last result (or what
    ``progress()`` says then, when given: how far it got)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError, redis.RedisError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[no-any-return]
        time.sleep(interval)
    got = progress() if progress is not None else f"last: {last!r}"
    raise Incomplete(f"timed out after {timeout:.0f} s waiting for {what} ({got})")


def wait_group(workers: list[WorkerProc], timeout: float) -> None:
    """Every worker answers ``/xcm/pending/`` and holds partitions of one generation > 0 (twice,
    one second apart, so that a rebalance in progress is not mistaken for the end of one)."""

    def snapshot() -> tuple[float, ...] | None:
        gens = []
        for worker in workers:
            worker.check_alive()
            if worker.role != "deliver":  # a delivering worker has no XCM tables to show
                worker.pending()
            metrics = worker.metrics()
            if metrics["ocstream_group_assigned_partitions"] <= 0:
                return None
            gens.append(metrics["ocstream_group_generation"])
        return tuple(gens) if min(gens) > 0 and len(set(gens)) == 1 else None

    deadline = time.monotonic() + timeout
    while True:
        first = wait_for(snapshot, max(1.0, deadline - time.monotonic()), "the group to settle")
        time.sleep(1.0)
        if snapshot() == first:
            return
        if time.monotonic() > deadline:
            raise Incomplete("the group kept rebalancing")


REBALANCES = "ocstream_transport_traffic_rebalances_total"
WEIGHED = "ocstream_group_assignment_weighed_records"


def weighs_traffic(settings: TransportSettings | None = None) -> bool:
    """Whether the workers' leader weighs traffic, with their settings (default: this
    environment's, passed on): the load-aware assignment with a check interval above 0."""
    settings = settings or TransportSettings.from_env()
    return settings.assignment == "load" and settings.load_check_interval > 0


def wait_traffic_settled(workers: list[WorkerProc], tag: str, *, looks: int = 6) -> None:
    """Wait until the leader has weighed its assignment against enough of the warm-up's
    traffic to trust it (``load_settle_records`` per partition: its gauge), rebalancing on the way
    if it found it uneven, then for the group to settle: the timed part measures a group as it
    runs after its first seconds of traffic, and no look of the leader's rebalances inside it.
    The leader looks every ``load_first_look`` seconds until then; after ``looks`` of them the
    warm-up was too small (said so, not waited for further)."""
    settings = TransportSettings.from_env()
    if not weighs_traffic(settings):
        return
    settle = settings.load_settle_records

    def weighed() -> float:
        return max(w.metrics().get(WEIGHED, 0.0) for w in workers)

    timeout = min(settings.load_first_look, settings.load_check_interval) * looks + 5
    try:
        wait_for(lambda: weighed() >= settle, timeout, "a settled assignment", interval=0.5)
    except Incomplete:
        print(
            f"  ({tag}: the assignment was weighed against {weighed():.0f} records per "
            f"partition within {timeout:.0f} s, below {settle}: the leader may still "
            "rebalance in the timed part; a larger --warmup avoids it)"
        )
    wait_group(workers, 60)
    rebalances = sum(w.metrics().get(REBALANCES, 0) for w in workers)
    print(
        f"  ({tag}: assignment weighed against {weighed():.0f} records per partition; "
        f"{rebalances:.0f} rebalance(s) on traffic)"
    )


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state letter first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_state(pid: int) -> str:
    """The state letter of a process (``T``: stopped by a signal)."""
    return _stat(pid)[0]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (``q`` from 1 to 99; NaN when there are none)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_bytes_in(client: redis.Redis) -> int:
    """Bytes the server has received from its clients so far (``INFO stats``)."""
    return int(client.info("stats")["total_net_input_bytes"])


def redis_commands(client: redis.Redis) -> dict[str, tuple[int, float]]:
    """The server's calls and microseconds so far, by command (``INFO commandstats``). A script's
    time includes the commands it calls, which are counted under their own names too."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
        for name, v in stats.items()
    }


def cleanup(client: redis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def start_py_spy(
    directory: str | None, targets: list[tuple[str, int]]
) -> list[subprocess.Popen[bytes]]:
    """With a directory (the harnesses' ``--py-spy DIR``): one ``py-spy record`` per ``(name,
    pid)``, sampling that process at 100 Hz from now until :func:`stop_py_spy`, into
    ``DIR/<name>-<HHMMSS>.raw`` (collapsed stacks, idle time left out). py-spy is not one of the
    project's dependencies (``pip install py-spy``). It takes a sample whenever the process is
    not idle, waiting for a core included: with more busy processes than cores its counts
    overstate CPU, so compare shares within one file, not counts across runs."""
    if directory is None:
        return []
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%H%M%S")
    return [
        subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-r", "100", "-f", "raw", "--nonblocking",
             "-o", str(out / f"{name}-{stamp}.raw")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for name, pid in targets
    ]  # fmt: skip


def stop_py_spy(samplers: list[subprocess.Popen[bytes]]) -> None:
    """End the samplers :func:`start_py_spy` started; each writes its file as it ends."""
    for proc in samplers:
        proc.send_signal(signal.SIGINT)
    for proc in samplers:
        proc.wait(30)
