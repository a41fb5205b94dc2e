"""XCM matching through real ``ocstream worker`` processes, against the transport's raw rate.

    python benchmarks/xcm.py [--redis URL] [--journeys N] [--workers 1 2] [--partitions P]
                             [--pending M] [--rounds R] [--standby-replicas K] [--seed S]
                             [--origins N] [--sends-by id chain] [--arrival shuffled|timed]
                             [--publish ahead|during] [--join] [--timeout S] [--keep DIR]
                             [--py-spy DIR]

Legs are synthetic but shaped like real ones (a reserve-transfer program, its bytes, the sender,
the events), so records weigh about what extracted legs weigh: 3.3 kB for a sent leg, 1.2 kB for
a relayed or a received one (3.4 and 1.4 kB for the recorded Asset Hub -> Interlay case). They
go straight into ``xcm-legs`` keyed as ``xcm_extract`` keys them (``ocstream/xcm/keys.py``: a sent
leg by a shard of its origin, the others by chain); extraction itself is not measured
(``benchmarks/decode.py`` covers decoding). ``--sends-by chain`` keys sent legs by their origin
instead, as extraction did before new journeys were spread; ``--sends-by id chain`` runs each
round's phases both ways. ``--origins 1`` makes every journey start at one busy parachain.

1. **Baseline** (same run): ``benchmarks/throughput.py``'s plain XREADGROUP+XACK loop over
   3 x N messages on P partitions (msg/s), the median of ``--baseline-repeats`` loops (5)
   before a round's journeys phases and as many after them: one loop lasts a tenth of a
   second or two, single loops a minute apart differed by up to 1.7 times on the 2-core
   development machine, and the medians before and after one round by up to 1.5 times.
2. **Journeys**: for each worker count, a fresh group runs that many workers; then N journeys
   (a sent leg from a parachain A to a parachain B among ten ``urn:ocn:polkadot`` parachains,
   half of them with a topic; the relayed leg at the relay; the received leg at B, reporting
   the topic or else the hash) are published as 3 x N leg records in a seeded random order.
   With ``--arrival timed``, the sent legs go first and the others once every send is matched
   (its ``xcm.sent`` is out), as chains produce them: a receipt's block comes after its send's,
   so the journey is indexed at its destination before the receipt arrives. Shuffled, most
   receipts and relayed legs arrive first and wait in the inbound and relay tables.
   By default (``--publish ahead``) the legs are published while the workers are stopped
   (``SIGSTOP``, for the half second or so that takes, well under the group's 3 s session
   timeout), and the clock starts as they resume (``SIGCONT``): the timed part is the workers
   working off a backlog, as the baseline's loop works off messages written before it starts.
   Publishing beside them (``--publish during``, the only way with ``--arrival timed``, and
   how every round before the thirty-sixth was measured) gives this script's CPU for it, about
   a tenth of what a one-worker run uses, and Redis's for taking it, to the timed part, where
   it competes with the workers for the two cores. The clock stops when
   ``xcm-notifications`` holds every journey's three
   notifications, as its sequence counters say (the notifications themselves are read and
   checked after the timed part: reading them during it took a fifth of a core from the
   workers). A run whose group changed generation inside the timed part says so. A small
   warm-up batch of journeys goes first, untimed. With
   ``--join``, one worker takes the warm-up alone and the others join after it: the group's
   assignment is then made with the warm-up's traffic on record, which the load-aware
   assignor weighs (``ocstream/transport/assignor.py``; compare with
   ``OCSTREAM_TRANSPORT_ASSIGNMENT=sticky``, faust's assignment by partition counts). The
   workers' leader weighs the traffic against its assignment and rebalances when it is uneven:
   every ``OCSTREAM_TRANSPORT_LOAD_FIRST_LOOK`` (10 s) until it has weighed
   ``_LOAD_SETTLE_RECORDS`` (1,000) records per partition, then every
   ``_LOAD_CHECK_INTERVAL`` (300 s; these are passed on to the workers;
   ``ocstream/transport/traffic.py``). A multi-worker run waits, after the
   warm-up, until the leader's gauge says the assignment has been weighed against that many
   (the default warm-up of 500 journeys gives about 1,300 per partition), and for the group
   to settle, before it times anything: it measures a group as it runs after its first
   seconds of traffic, with no look of the leader's rebalancing inside the timed part. With
   ``sticky``, or the interval set to 0, there is nothing to wait for.
3. **Memory per pending journey**: one worker; M sent legs with no receipt. Growth of the
   worker's RSS, of this run's Redis keys (by kind) and of the worker's data dir, over M.

Prints a table and the ratios (with ``--rounds R``, phases 1 and 2 run R times and the ratios are
medians of per-round ratios); also the CPU seconds the workers, Redis and this script used, which
vary less than wall time on a busy machine. From those, the *ceiling* of the 2-worker run: the
journeys/s at which every core of the machine would be busy at that run's CPU per journey (all
processes together). ``ceiling/j1`` is the best ``j2/j1`` the machine allows; ``j2/ceiling``
near 1 means the two workers are held back by the cores, not by how the work is split. How the
work is split shows in the busiest worker's share of the workers' CPU (0.5: an even split).
Exits 1 (with the workers' log tails) when something does not complete in ``--timeout``
seconds, or when notifications are missing. Keys live under fresh prefixes that are deleted
at the end; ``--keep DIR`` keeps the workers' logs and data. ``--py-spy DIR`` samples each
worker with py-spy during the timed part only, one file of collapsed stacks per worker and run
(``procs.start_py_spy`` says how to read them).
The default run takes about 2.5 minutes on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, cast

import orjson
import redis
from journeys import PARAS, build_journeys, shuffled  # benchmarks/ is this script's directory
from procs import (
    Incomplete,
    WorkerProc,
    cleanup,
    cpu_seconds,
    process_state,
    redis_bytes_in,
    redis_commands,
    redis_cpu,
    start_py_spy,
    stop_all,
    stop_py_spy,
    wait_for,
    wait_group,
    wait_traffic_settled,
)
from throughput import baseline, fill

from ocstream.transport import Keyspace, TopicWriter
from ocstream.transport.keys import is_changelog, parse_offset_field
from ocstream.transport.lag import group_lag
from ocstream.transport.settings import TransportSettings
from ocstream.transport.wire import entry_value

LEGS = "xcm-legs"
NOTIFICATIONS = "xcm-notifications"
DEAD_LETTERS = "xcm-dead-letters"


async def _publish(
    url: str, prefix: str, partitions: int, records: list[tuple[str, bytes]]
) -> None:
    async with TopicWriter.from_url(url, prefix=prefix, default_partitions=partitions) as writer:
        await writer.create_topic(LEGS, partitions)
        for start in range(0, len(records), 1000):
            await writer.send_many(LEGS, records[start : start + 1000])


def publish(url: str, prefix: str, partitions: int, records: list[tuple[str, bytes]]) -> None:
    asyncio.run(_publish(url, prefix, partitions, records))


# --- reading what came out -----------------------------------------------------------------------


class NotificationReader:
    """Reads ``xcm-notifications`` incrementally; distinct notification ids by type."""

    def __init__(self, client: redis.Redis, prefix: str, partitions: int) -> None:
        keys = Keyspace(prefix)
        self.client = client
        self.streams = [keys.stream(NOTIFICATIONS, p) for p in range(partitions)]
        self.last = {stream: "-" for stream in self.streams}
        self.ids: dict[str, set[str]] = {}
        self.entries = 0

    def poll(self) -> None:
        while True:
            pipe = self.client.pipeline(transaction=False)
            for stream in self.streams:
                pipe.xrange(stream, min=self.last[stream], count=5000)
            more = False
            for stream, entries in zip(self.streams, pipe.execute(), strict=True):
                if not entries:
                    continue
                more = more or len(entries) == 5000
                self.last[stream] = "(" + entries[-1][0].decode()
                for _, fields in entries:
                    note = orjson.loads(entry_value(fields) or b"{}")
                    self.ids.setdefault(note["type"], set()).add(note["id"])
                    self.entries += 1
            if not more:
                return

    def count(self, kind: str) -> int:
        return len(self.ids.get(kind, ()))

    def distinct(self) -> int:
        return sum(len(ids) for ids in self.ids.values())


def highwater(client: redis.Redis, prefix: str, topic: str, partitions: int) -> int:
    keys = Keyspace(prefix)
    return sum(
        int(v or 0) for v in client.mget([keys.sequence(topic, p) for p in range(partitions)])
    )


def changelog_records(client: redis.Redis, prefix: str) -> int:
    """Records written to every table changelog of the run (their sequence counters)."""
    return sum(changelog_by_table(client, prefix).values())


def changelog_by_table(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Records written to each table's changelog (``journeys``, ``seen``, ...)."""
    keys = list(client.scan_iter(match=prefix + "o:*-changelog:*", count=1000))
    counts: dict[str, int] = {}
    for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        found = re.search(rb"-xcm-(\w+)-changelog:", key)
        table = found.group(1).decode() if found else key.decode()
        counts[table] = counts.get(table, 0) + int(value or 0)
    return counts


def all_committed(client: redis.Redis, prefix: str) -> bool:
    """Whether every group committed everything written to the topics it reads
    (``ocstream.transport.lag``), and some group reads ``xcm-legs``: before the workers
    subscribe there is nothing to compare."""
    keys = Keyspace(prefix)
    legs_seen = False
    for group in cast(set[bytes], client.smembers(keys.groups)):
        lag = group_lag(client, keys, group.decode())
        if any(lag.values()):
            return False
        legs_seen = legs_seen or any(topic == LEGS for topic, _ in lag)
    return legs_seen


def trim_consumed(client: redis.Redis, prefix: str) -> None:
    """Remove what every consumer read from the run's topics (not the table changelogs): what
    retention leaves of finished journeys once its window has passed."""
    keys = Keyspace(prefix)
    committed: dict[tuple[str, int], int] = {}
    for group in client.scan_iter(match=prefix + "g:*:offsets", count=1000):
        for field, value in cast(dict[bytes, bytes], client.hgetall(group)).items():
            named = parse_offset_field(field)
            if named is not None:
                committed[named] = min(int(value), committed.get(named, int(value)))
    for (topic, partition), offset in committed.items():
        if is_changelog(topic):
            continue
        # Exact, as retention trims (scripts.py): redis-py's default is "~", which removes
        # whole nodes only and at most 10,000 entries a call, and left half the legs of a
        # 20,000-journey run in the figure.
        client.xtrim(keys.stream(topic, partition), minid=f"0-{offset + 1}", approximate=False)


def settle_tombstones(run: Run, what: str) -> int:
    """Wait up to 30 s for the workers to remove the tombstones every holder applied; returns
    how many are left (measured as they are when some stay)."""
    try:
        wait_for(lambda: tombstones_left(run.client, run.prefix) == 0, 30, what, interval=0.5)
    except Incomplete:
        pass
    return tombstones_left(run.client, run.prefix)


def tombstones_left(client: redis.Redis, prefix: str) -> int:
    """Changelog tombstones still in Redis, not counting each partition's newest entry (which
    stays whatever it is: faust's recovery reads up to it)."""
    left = 0
    for key in client.scan_iter(match=prefix + "tomb:*", count=1000):
        name = key.decode()[len(prefix) + len("tomb:") :]
        topic, _, partition = name.rpartition(":")
        last = client.xrevrange(Keyspace(prefix).stream(topic, int(partition)), count=1)
        newest = last[0][0] if last else None
        left += sum(1 for member in client.zrange(key, 0, -1) if member != newest)
    return left


def redis_by_kind(client: redis.Redis, prefix: str) -> dict[str, int]:
    """``MEMORY USAGE`` of this run's keys, by what they hold (topic, table changelog, ...)."""
    keys = [key.decode() for key in client.scan_iter(match=prefix + "*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    out: dict[str, int] = {}
    for key, size in zip(keys, pipe.execute(), strict=True):
        rest = key[len(prefix) :]
        table = re.match(r"(?:t|ci|tomb):.*-xcm-(\w+)-changelog:\d+$", rest)
        if table:
            kind = f"{table.group(1)} table"
        elif rest.startswith(f"t:{LEGS}:"):
            kind = "xcm-legs topic"
        elif rest.startswith(f"t:{NOTIFICATIONS}:"):
            kind = "notifications topic"
        else:
            kind = "other"
        out[kind] = out.get(kind, 0) + int(size or 0)
    return out


def journey_value_sizes(client: redis.Redis, prefix: str, app_id: str, partitions: int) -> float:
    """Mean size of the values in the journeys table's changelog (bytes)."""
    keys = Keyspace(prefix)
    sizes = []
    for p in range(partitions):
        stream = keys.stream(f"{app_id}-xcm-journeys-changelog", p)
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, count=200))
        sizes += [len(entry_value(fields) or b"") for _, fields in entries]
    return sum(sizes) / max(1, len(sizes))


#: What :class:`CpuMeter` read: CPU seconds by process kind, each worker's, and the Redis
#: server's calls and microseconds by command.
CpuUse = tuple[dict[str, float], list[float], dict[str, tuple[int, float]]]


class CpuMeter:
    """CPU seconds spent by the workers (together and each: how the work was split), the Redis
    server (all of it) and this script."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.commands_before = redis_commands(run.client)
        self.start, self.start_each = self.read()

    def read(self) -> tuple[dict[str, float], list[float]]:
        each = [cpu_seconds(w.proc.pid) if w.proc else 0.0 for w in self.run.workers]
        own = os.times()
        totals = {
            "workers": sum(each),
            "redis": redis_cpu(self.run.client),
            "script": own.user + own.system,
        }
        return totals, each

    def used(self) -> tuple[dict[str, float], list[float]]:
        """Since this meter was made: the totals, and each worker's."""
        end, end_each = self.read()
        totals = {k: end[k] - self.start[k] for k in end}
        return totals, [e - s for e, s in zip(end_each, self.start_each, strict=True)]

    def reading(self) -> CpuUse:
        """:meth:`used` and :meth:`commands_used`, read together."""
        totals, each = self.used()
        return totals, each, self.commands_used()

    def commands_used(self) -> dict[str, tuple[int, float]]:
        """Since this meter was made: the Redis server's calls and microseconds by command."""
        used = {}
        for name, (calls, usec) in redis_commands(self.run.client).items():
            calls_before, usec_before = self.commands_before.get(name, (0, 0.0))
            if calls > calls_before:
                used[name] = (calls - calls_before, usec - usec_before)
        return used


#: The workers' transport counters that say how much reading a journey cost them.
READ_COUNTERS = {
    "ocstream_transport_records_fetched_total": "fetched",
    "ocstream_transport_standby_records_applied_total": "standby",
}


@dataclasses.dataclass
class WorkerMetrics:
    """What :func:`metrics_of` reads from the workers' ``/metrics``."""

    #: The workers' seconds of garbage collection so far, summed (``ocstream_gc_*``).
    gc_seconds: float = 0.0
    #: Their longest pause per generation.
    gc_pause: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0, 0.0])
    #: Their records fetched and standby records applied (:data:`READ_COUNTERS`), summed.
    reads: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(READ_COUNTERS.values(), 0.0)
    )
    #: The most records one worker's producer held queued at once since start.
    queued_peak: float = 0.0
    #: The longest write round trip of any of them since start, seconds.
    round_trip: float = 0.0
    #: Times their agents waited for the producer (``wait_room``), and the seconds they
    #: waited, summed.
    produce_waits: float = 0.0
    produce_wait_seconds: float = 0.0
    #: The group generation each worker holds, in the order of the run's workers.
    generations: list[int] = dataclasses.field(default_factory=list)


def metrics_of(run: Run) -> WorkerMetrics:
    """From one read of each worker's ``/metrics``: see :class:`WorkerMetrics`."""
    out = WorkerMetrics()
    for worker in run.workers:
        for name, labels, value in worker.samples():
            if name == "ocstream_gc_seconds_total":
                out.gc_seconds += value
            elif name == "ocstream_gc_pause_max_seconds":
                generation = int(labels["generation"])
                out.gc_pause[generation] = max(out.gc_pause[generation], value)
            elif name in READ_COUNTERS and not labels:
                out.reads[READ_COUNTERS[name]] += value
            elif name == "ocstream_transport_produce_queued_peak_records":
                out.queued_peak = max(out.queued_peak, value)
            elif name == "ocstream_transport_produce_round_trip_max_seconds":
                out.round_trip = max(out.round_trip, value)
            elif name == "ocstream_transport_produce_waits_total":
                out.produce_waits += value
            elif name == "ocstream_transport_produce_wait_seconds_total":
                out.produce_wait_seconds += value
            elif name == "ocstream_group_generation":
                out.generations.append(int(value))
    return out


def worker_pids(run: Run) -> list[tuple[str, int]]:
    """The run's workers as ``--py-spy`` names them: ``<run tag>-<worker>``, with their pids."""
    return [(f"{run.tag}-{w.name}", w.proc.pid) for w in run.workers if w.proc is not None]


@contextlib.contextmanager
def frozen(run: Run) -> Iterator[None]:
    """The run's workers stopped (``SIGSTOP``) inside the block and resumed on the way out,
    as one would be by a long pause of its host. The block must last well under the group's
    session timeout (``OCSTREAM_TRANSPORT_SESSION_TIMEOUT``, 3 s for these workers), or the
    group would evict them; :func:`journeys_phase` checks that no generation moved."""
    pids = [w.proc.pid for w in run.workers if w.proc is not None]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # The signal is delivered on the way: a worker can run on for a moment after kill().
        wait_for(
            lambda: all(process_state(pid) == "T" for pid in pids), 10, "the workers to stop",
            interval=0.001,
        )  # fmt: skip
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


#: How a round's line says that the legs were published before its clock started.
AHEAD = ", the workers stopped, before the clock"


# --- phases --------------------------------------------------------------------------------------


class Run:
    """What a phase started, so that ``stop`` can always end it."""

    def __init__(
        self, url: str, root: Path, partitions: int, tag: str, standby: int | None = None
    ) -> None:
        token = uuid.uuid4().hex[:8]
        self.tag = tag
        self.standby = standby
        self.prefix = f"xcmbench-{token}:"
        self.app_id = f"xcmbench{tag}{token}"
        self.url = url
        self.root = root / f"{tag}-{token}"
        self.partitions = partitions
        self.workers: list[WorkerProc] = []
        self.client = redis.Redis.from_url(url)
        self.stopped = False
        #: ``--py-spy``: the samplers of the timed part (stopped with the run, if it ends first).
        self.samplers: list[subprocess.Popen[bytes]] = []

    def start(self, count: int, timeout: float) -> None:
        """Start ``count`` more workers and wait until the group settles with all of them."""
        first = len(self.workers)
        self.workers += [
            WorkerProc(
                f"w{n + 1}", self.root, url=self.url, prefix=self.prefix, app_id=self.app_id,
                partitions=self.partitions, standby_replicas=self.standby,
            ).start()
            for n in range(first, first + count)
        ]  # fmt: skip
        wait_group(self.workers, timeout)

    def check_alive(self) -> None:
        for worker in self.workers:
            worker.check_alive()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        stop_py_spy(self.samplers)
        stop_all(self.workers)
        cleanup(self.client, self.prefix)
        self.client.close()

    def tails(self) -> str:
        return "\n".join(
            f"--- {w.name} ({w.log_path}) last lines:\n{w.log_tail()}" for w in self.workers
        )


def wait_notes(
    run: Run, reader: NotificationReader, kind: str, target: int, timeout: float
) -> float:
    """When ``reader`` has seen ``target`` distinct notifications of ``kind`` (reading them as
    they come, every 20 ms, with the workers' liveness checked at each look)."""

    def reached() -> bool:
        run.check_alive()
        reader.poll()
        return reader.count(kind) >= target

    def progress() -> str:
        seen = {k: len(v) for k, v in reader.ids.items()}
        return f"{reader.count(kind):,} of {target:,} {kind}; distinct ids by type: {seen}"

    wait_for(reached, timeout, f"{target:,} {kind}", interval=0.02, progress=progress)
    return time.perf_counter()


def _is_sent(record: tuple[str, bytes]) -> bool:
    return bool(orjson.loads(record[1])["kind"] == "sent")


def wait_notified(run: Run, partitions: int, target: int, timeout: float) -> float:
    """When ``xcm-notifications`` holds ``target`` records, by its sequence counters: one
    ``MGET`` per look, where reading the notifications themselves (:func:`wait_notes`) cost
    this script and Redis a fifth of a core during the timed part, taken from the workers. A
    duplicate would count here too, so the caller checks the ids once this returns."""

    def written() -> bool:
        run.check_alive()
        return highwater(run.client, run.prefix, NOTIFICATIONS, partitions) >= target

    wait_for(written, timeout, f"{target:,} notifications", interval=0.02)
    return time.perf_counter()


def end_of_timed_part(
    run: Run, reader: NotificationReader, cpu: CpuMeter, journeys: int, timeout: float
) -> tuple[float, CpuUse]:
    """When every journey's three notifications are written (the late relayed ones included),
    and what the meter read then. The ids are read after that reading, which must not count
    what reading them costs; if a duplicate made the count early (some journey's
    ``xcm.received`` is still missing), the part ends when the ids are all there instead,
    and the meter is read again."""
    end = wait_notified(run, run.partitions, 3 * journeys, timeout)
    used = cpu.reading()
    reader.poll()
    if reader.count("xcm.received") < journeys:
        end = wait_notes(run, reader, "xcm.received", journeys, timeout)
        used = cpu.reading()
    return end, used


def journeys_phase(
    args: argparse.Namespace, workers: int, root: Path, runs: list[Run], sends_by: str = "id"
) -> dict[str, Any]:
    run = Run(args.redis, root, args.partitions, f"j{workers}", args.standby_replicas)
    runs.append(run)
    keying = {"origins": args.origins, "partitions": args.partitions, "sends_by": sends_by}
    warm = build_journeys(0, args.warmup, args.seed + 1000, **keying)
    measured = build_journeys(args.warmup, args.journeys, args.seed, **keying)
    records = shuffled(measured, args.seed)
    # --join: one worker takes the warm-up alone and the others join after it, so the group's
    # last assignment is made with the warm-up's traffic on record (``assignor.py``), as after
    # a scale-out or a rolling restart; without it, every worker starts on an empty group.
    joining = workers - 1 if args.join else 0
    run.start(workers - joining, args.timeout)
    reader = NotificationReader(run.client, run.prefix, args.partitions)
    if warm:
        publish(run.url, run.prefix, args.partitions, shuffled(warm, args.seed + 1000))
        wait_notes(run, reader, "xcm.received", len(warm), args.timeout)
    if joining:
        wait_for(
            lambda: all_committed(run.client, run.prefix), args.timeout, "the warm-up committed",
            interval=0.2,
        )  # fmt: skip
        run.start(joining, args.timeout)
    if workers > 1:
        wait_traffic_settled(run.workers, run.tag)
    # As chains produce them (--arrival timed): a journey's send is in an earlier block than its
    # relayed leg and its receipt, so its index records reach the destination first.
    sends: list[tuple[str, bytes]] = []
    later: list[tuple[str, bytes]] = []
    if args.arrival == "timed":
        for record in records:
            (sends if _is_sent(record) else later).append(record)
    before = metrics_of(run)
    bytes_in = redis_bytes_in(run.client)
    # --publish ahead: the legs go in while the workers are stopped, and the clock starts as
    # they resume: the timed part is the workers' (and Redis's) work on a backlog, as the
    # baseline's loop works off messages written before it starts, and this script's CPU for
    # publishing (a tenth of the one-worker run's) is not taken from them.
    ahead = args.publish == "ahead"
    with frozen(run) if ahead else contextlib.nullcontext():
        if ahead:
            t0 = time.perf_counter()
            publish(run.url, run.prefix, args.partitions, records)
            published = time.perf_counter() - t0
        run.samplers = start_py_spy(args.py_spy, worker_pids(run))
        cpu = CpuMeter(run)
        t0 = time.perf_counter()
    if not ahead:
        if args.arrival == "timed":
            publish(run.url, run.prefix, args.partitions, sends)
            wait_notes(run, reader, "xcm.sent", len(warm) + len(sends), args.timeout)
            publish(run.url, run.prefix, args.partitions, later)
        else:
            publish(run.url, run.prefix, args.partitions, records)
        published = time.perf_counter() - t0
    total = len(warm) + args.journeys
    t1, (cpu_used, cpu_each, by_command) = end_of_timed_part(run, reader, cpu, total, args.timeout)
    stop_py_spy(run.samplers)
    elapsed = t1 - t0
    after = metrics_of(run)
    reads = {k: v - before.reads[k] for k, v in after.reads.items()}
    if after.generations != before.generations:
        print(
            f"  ({run.tag}: the group's generations moved in the timed part, "
            f"{before.generations} -> {after.generations}: it includes a rebalance)"
        )

    # Late relayed notifications (a relayed leg after its receipt) may still be on their way.
    wait_notes(run, reader, "xcm.relayed", total, 30)
    wait_for(
        lambda: all_committed(run.client, run.prefix), args.timeout, "every record committed",
        interval=0.2,
    )  # fmt: skip
    changelog = [-1]

    def changelog_settled() -> bool:
        previous, changelog[0] = changelog[0], changelog_records(run.client, run.prefix)
        return previous == changelog[0]

    wait_for(changelog_settled, 30, "the changelogs to settle", interval=0.5)
    written = redis_bytes_in(run.client) - bytes_in
    held = sum(redis_by_kind(run.client, run.prefix).values())
    trim_consumed(run.client, run.prefix)
    settle_tombstones(run, "old tombstones to go")
    kept = redis_by_kind(run.client, run.prefix)
    views = [w.pending() for w in run.workers]

    def swept() -> bool:
        sizes = [w.pending()["tables"] for w in run.workers]
        return all(t["journeys"] == 0 and t["outbound"] == 0 for t in sizes)

    wait_for(swept, 90, "the ended journeys to be swept", interval=1.0)
    left = settle_tombstones(run, "the sweep's tombstones to go")
    final = redis_by_kind(run.client, run.prefix)
    counters: dict[str, int] = {}
    for view in views:
        for name, value in view["counters"].items():
            counters[name] = counters.get(name, 0) + value
    return {
        "workers": workers,
        "sends_by": sends_by,
        "busiest": max(cpu_each) / sum(cpu_each) if sum(cpu_each) else 0.0,
        "elapsed": elapsed,
        "journeys": args.journeys,
        "published": published,
        "journeys_s": args.journeys / elapsed,
        "legs_s": 3 * args.journeys / elapsed,
        "records": highwater(run.client, run.prefix, LEGS, args.partitions),
        "notes": {k: len(v) for k, v in sorted(reader.ids.items())},
        "duplicates": reader.entries - reader.distinct(),
        "expected_notes": 3 * total,
        "dead_letters": highwater(run.client, run.prefix, DEAD_LETTERS, args.partitions),
        "pending": sum(v["pending_journeys"] for v in views),
        "counters": counters,
        "cpu": cpu_used,
        "commands": by_command,
        "changelog": changelog[0],
        "changelog_tables": changelog_by_table(run.client, run.prefix),
        "bytes_in": written / args.journeys,
        "held": held / total,
        "kept": sum(kept.values()) / total,
        "kept_kinds": {k: v / total for k, v in kept.items()},
        "final": sum(final.values()) / total,
        "tombstones_left": left,
        "final_kinds": {k: v / total for k, v in final.items() if v},
        "peak_rss": max(w.rss_bytes("VmHWM") for w in run.workers),
        "gc_seconds": after.gc_seconds - before.gc_seconds,
        "gc_pause": after.gc_pause,
        "reads": {k: v / args.journeys for k, v in reads.items()},
        "queued_peak": after.queued_peak,
        "round_trip": after.round_trip,
        "produce_waits": after.produce_waits - before.produce_waits,
        "produce_wait_seconds": after.produce_wait_seconds - before.produce_wait_seconds,
    }


def memory_phase(args: argparse.Namespace, root: Path, runs: list[Run]) -> dict[str, Any]:
    run = Run(args.redis, root, args.partitions, "mem", args.standby_replicas)
    runs.append(run)
    warm_n = min(1000, max(1, args.pending // 10))
    seed = args.seed + 2000
    everything = build_journeys(0, warm_n + args.pending, seed, partitions=run.partitions)
    sent_only = [legs[0] for legs in everything]
    warm, measured = sent_only[:warm_n], sent_only[warm_n:]
    run.start(1, args.timeout)
    [worker] = run.workers

    def handled(target: int) -> bool:
        worker.check_alive()
        return worker.metrics().get("oc_xcm_sent_total", 0) >= target

    def settled(target: int) -> None:
        wait_for(lambda: handled(target), args.timeout, f"{target} sent legs", interval=0.2)
        wait_for(
            lambda: all_committed(run.client, run.prefix),
            args.timeout, "every xcm-legs record committed", interval=0.2,
        )  # fmt: skip
        wait_for(
            lambda: worker.pending()["pending_journeys"] >= target,
            args.timeout, f"{target} pending journeys", interval=1.0,
        )  # fmt: skip
        time.sleep(1.0)  # the last changelog and offset flushes

    publish(run.url, run.prefix, args.partitions, warm)
    settled(warm_n)
    before: dict[str, Any] = {
        "rss": worker.rss_bytes(),
        "redis": redis_by_kind(run.client, run.prefix),
        "used": int(run.client.info("memory")["used_memory"]),
        "disk": worker.data_bytes(),
    }
    t0 = time.perf_counter()
    publish(run.url, run.prefix, args.partitions, measured)
    settled(warm_n + args.pending)
    elapsed = time.perf_counter() - t0
    after: dict[str, Any] = {
        "rss": worker.rss_bytes(),
        "redis": redis_by_kind(run.client, run.prefix),
        "used": int(run.client.info("memory")["used_memory"]),
        "disk": worker.data_bytes(),
    }
    t_view = time.perf_counter()
    view = worker.pending()
    view_s = time.perf_counter() - t_view
    m = args.pending
    redis_kinds = {k: (after["redis"][k] - before["redis"][k]) / m for k in after["redis"]}
    return {
        "pending": view["pending_journeys"],
        "tables": view["tables"],
        "sent_s": m / elapsed,
        "rss": (after["rss"] - before["rss"]) / m,
        "rss_total": after["rss"],
        "redis": sum(redis_kinds.values()),
        "redis_kinds": redis_kinds,
        "used": (after["used"] - before["used"]) / m,
        "disk": (after["disk"] - before["disk"]) / m,
        "view_s": view_s,
        "journey_value": journey_value_sizes(run.client, run.prefix, run.app_id, args.partitions),
    }


# --- main ----------------------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def kb(value: float) -> str:
    return f"{value / 1000:.2f} kB"


def label(sends_by: str) -> str:
    """How a phase's figures are tagged: nothing for sent legs keyed as extraction keys them."""
    return "" if sends_by == "id" else f"[sends by {sends_by}]"


def busiest_commands(result: dict[str, Any], top: int = 8) -> str:
    """The commands that took the Redis server's time in the timed part, per journey: calls and
    microseconds. ``evalsha`` is the scripts, and includes the commands they call. ``exec``
    (a producer's round trip is one transaction) is left out: its time is that of the scripts
    it runs."""
    per = result["journeys"]
    commands = {name: stats for name, stats in result["commands"].items() if name != "exec"}
    busiest = sorted(commands.items(), key=lambda item: -item[1][1])[:top]
    return ", ".join(
        f"{name} {calls / per:.1f}× {usec / per:.1f} µs" for name, (calls, usec) in busiest
    )


def ratios(args: argparse.Namespace, results: list[dict[str, Any]], tag: str) -> list[str]:
    """The RATIOS of the phases of one keying of sent legs (``tag``): medians over rounds of
    per-round ratios (same baseline, same minutes of machine noise)."""
    median = statistics.median
    parts = []
    for count in args.workers:
        mine = [r for r in results if r["workers"] == count]
        parts.append(f"j{count}{tag}={median(r['journeys_s'] for r in mine):,.0f} journeys/s")
        parts.append(f"j{count}/a{tag}={median(r['journeys_s'] / r['raw'] for r in mine):.4f}")
    if 1 in args.workers and 2 in args.workers:
        by_round = {(r["round"], r["workers"]): r["journeys_s"] for r in results}
        two = [r for r in results if r["workers"] == 2]
        per_round = [by_round[(n, 2)] / by_round[(n, 1)] for n in range(1, args.rounds + 1)]
        parts.append(f"j2/j1{tag}={median(per_round):.2f}")
        if args.rounds > 1:
            parts.append(f"(j2/j1 by round: {', '.join(f'{x:.2f}' for x in per_round)})")
        parts.append(f"busiest-of-2-share{tag}={median(r['busiest'] for r in two):.2f}")
        # What the machine allows: every core busy at the CPU per journey the 2-worker run spent
        # (workers, Redis and this script together). j2 at that ceiling means the pair is
        # limited by the cores, not by how the work is split between them.
        cores = os.cpu_count() or 1
        ceilings = [cores * args.journeys / sum(r["cpu"].values()) for r in two]
        limits = [c / by_round[(n, 1)] for n, c in enumerate(ceilings, 1)]
        reached = [by_round[(n, 2)] / c for n, c in enumerate(ceilings, 1)]
        parts.append(
            f"ceiling(j2, {cores} cores){tag}={median(ceilings):,.0f} journeys/s "
            f"ceiling/j1={median(limits):.2f} j2/ceiling={median(reached):.2f}"
        )
    for count in args.workers:
        mine = [r for r in results if r["workers"] == count]
        parts.append(f"bytes_in/journey(j{count}){tag}={median(r['bytes_in'] for r in mine):,.0f}")
        parts.append(f"kept/journey(j{count}){tag}={median(r['kept'] for r in mine):,.0f}")
        parts.append(f"swept/journey(j{count}){tag}={median(r['final'] for r in mine):,.0f}")
    return parts


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--journeys", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--pending", type=int, default=20_000, help="0 skips the memory phase")
    parser.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="untimed journeys first (enough for the leader to settle its assignment)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat baseline + journeys")
    parser.add_argument(
        "--baseline-repeats",
        type=int,
        default=5,
        help="raw loops before and after each round; a is the median of both",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the workers' logs and data dirs here")
    parser.add_argument(
        "--py-spy", metavar="DIR",
        help="sample each worker with py-spy (installed apart) during the timed part only, into "
        "DIR/<run>-<worker>-<time>.raw",
    )  # fmt: skip
    parser.add_argument(
        "--standby-replicas", type=int, help="the workers' standby_replicas (default: theirs, 1)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per wait")
    parser.add_argument(
        "--origins", type=int, default=len(PARAS), choices=range(1, len(PARAS) + 1),
        metavar=f"1..{len(PARAS)}", help="journeys start at the first N parachains only "
        f"(default all {len(PARAS)}; 1: one busy origin)",
    )  # fmt: skip
    parser.add_argument(
        "--sends-by", nargs="+", choices=["id", "chain"], default=["id"],
        help="how sent legs are keyed: id (a shard of the origin, as extraction keys them), "
        "chain (the origin, as before new journeys were spread); both: each round runs each",
    )  # fmt: skip
    parser.add_argument(
        "--join", action="store_true",
        help="start one worker for the warm-up and the others after it (the last assignment "
        "then weighs the warm-up's traffic; OCSTREAM_TRANSPORT_ASSIGNMENT=sticky: it does not)",
    )  # fmt: skip
    parser.add_argument(
        "--arrival", choices=["shuffled", "timed"], default="shuffled",
        help="shuffled: every leg published at once in a random order (receipts mostly before "
        "their journey's index); timed: the sends first, the rest once every send is matched",
    )  # fmt: skip
    parser.add_argument(
        "--publish", choices=["ahead", "during"], default=None,
        help="ahead (default when shuffled): the legs are published while the workers are "
        "stopped, and the clock starts as they resume; during (always with --arrival timed): "
        "the clock starts at the first publish, which runs beside the workers",
    )  # fmt: skip
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.publish is None:
        args.publish = "during" if args.arrival == "timed" else "ahead"
    elif args.publish == "ahead" and args.arrival == "timed":
        parser.error("--arrival timed publishes after the sends are matched: --publish during")
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    client = redis.Redis.from_url(args.redis)
    version = client.info("server")["redis_version"]
    client.close()
    print("command: python benchmarks/xcm.py " + shlex.join(sys.argv[1:]))
    standby = "default (1)" if args.standby_replicas is None else args.standby_replicas
    transport = TransportSettings.from_env()  # the workers get this environment's settings
    print(
        f"parameters: journeys={args.journeys} (3 legs each, half with a topic, "
        f"{len(PARAS)} parachains, from {args.origins} of them, sent legs keyed by "
        f"{'/'.join(args.sends_by)}), warm-up={args.warmup}, workers={args.workers}, "
        f"partitions={args.partitions}, pending={args.pending}, seed={args.seed}, "
        f"rounds={args.rounds}, arrival={args.arrival}, publish={args.publish}, join={args.join}, "
        f"assignment={transport.assignment}, load check={transport.load_check_interval:g} s "
        f"(first looks {transport.load_first_look:g} s, settled at "
        f"{transport.load_settle_records} records per partition), "
        f"standby replicas={standby}; "
        f"Python {sys.version.split()[0]}, Redis {version}, {os.cpu_count()} cores",
        flush=True,
    )
    runs: list[Run] = []
    results: list[dict[str, Any]] = []
    if args.keep:
        root = Path(args.keep).absolute()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="xcmbench-"))
    raws: list[float] = []
    raw_prefix = f"xcmbench-raw-{uuid.uuid4().hex[:8]}:"
    raw_client = redis.Redis.from_url(args.redis)
    try:
        n_raw = 3 * args.journeys

        def raw_loops(round_: int, when: str) -> list[float]:
            loops, fills = [], []
            for _ in range(args.baseline_repeats):
                fills.append(
                    asyncio.run(fill(args.redis, raw_prefix, "raw", n_raw, args.partitions))
                )
                loops.append(
                    asyncio.run(baseline(args.redis, raw_prefix, "raw", n_raw, args.partitions))
                )
                cleanup(raw_client, raw_prefix)
            print(
                f"round {round_}: a {when} raw XREADGROUP+XACK, {n_raw:,} msgs  "
                f"{statistics.median(loops):>10,.0f} msg/s   (median of {len(loops)}: "
                f"{', '.join(f'{x:,.0f}' for x in loops)}; filled at "
                f"{statistics.median(fills):,.0f} msg/s via TopicWriter)",
                flush=True,
            )
            return loops

        for round_ in range(1, args.rounds + 1):
            before = raw_loops(round_, "before")
            round_results = []
            for mode, count in [(m, c) for m in args.sends_by for c in args.workers]:
                result = journeys_phase(args, count, root, runs, mode)
                runs[-1].stop()
                result["round"] = round_
                round_results.append(result)
                print(
                    f"round {round_}: j{count}{label(mode)} {count} worker(s): "
                    f"{result['journeys_s']:>6,.0f} journeys/s {result['legs_s']:>6,.0f} legs/s "
                    f"in {result['elapsed']:.2f} s (published in {result['published']:.2f} s"
                    f"{AHEAD if args.publish == 'ahead' else ''})",
                    flush=True,
                )
            # The machine's speed drifts by minutes (the loops before and after a round have
            # differed by 1.5 times): a is measured on both sides of the phases it divides.
            after = raw_loops(round_, "after")
            raw = statistics.median(before + after)
            raws.append(raw)
            loops = len(before) + len(after)
            print(f"round {round_}: a = {raw:,.0f} msg/s (median of all {loops})", flush=True)
            for result in round_results:
                result["raw"] = raw
            results.extend(round_results)
        memory = memory_phase(args, root, runs) if args.pending > 0 else None
        if runs:
            runs[-1].stop()
    except Incomplete as exc:
        print(f"INCOMPLETE: {exc}", file=sys.stderr)
        if runs:
            print(runs[-1].tails(), file=sys.stderr)
            print(
                f"(logs under {root}{'' if args.keep else ', deleted now; --keep DIR keeps them'})"
            )
        return 1
    finally:
        for run in runs:
            run.stop()
        cleanup(raw_client, raw_prefix)
        raw_client.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(
        "round  workers  sends by  journeys/s    legs/s  records/s  elapsed s  j/a      "
        "CPU s: workers  redis  script  (ms CPU per journey)  busiest worker's CPU share"
    )
    for r in results:
        cpu = r["cpu"]
        per = 1000 * sum(cpu.values()) / args.journeys
        print(
            f"{r['round']:>5}  {r['workers']:>7}  {r['sends_by']:>8}  {r['journeys_s']:>10,.0f}"
            f"  {r['legs_s']:>8,.0f}  {r['records'] / r['elapsed']:>9,.0f}  {r['elapsed']:>9.2f}"
            f"  {r['journeys_s'] / r['raw']:.4f}  {cpu['workers']:>14.1f}  {cpu['redis']:>5.1f}"
            f"  {cpu['script']:>6.1f}  ({per:.2f})  {r['busiest']:.2f}"
        )
    problems = []
    for r in results:
        note = ", ".join(f"{k} {v}" for k, v in r["notes"].items())
        kept = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["kept_kinds"].items()))
        by_table = ", ".join(
            f"{table} {n / (r['expected_notes'] / 3):.1f}"
            for table, n in sorted(r["changelog_tables"].items())
        )
        print(
            f"  round {r['round']}, {r['workers']} worker(s){label(r['sends_by'])}: "
            f"notifications {note} "
            f"(expected {r['expected_notes']:,} with the warm-up), re-emitted {r['duplicates']}, "
            f"dead letters {r['dead_letters']}, "
            f"pending after {r['pending']}, xcm-legs records {r['records']:,}, changelog records "
            f"{r['changelog']:,} ({r['changelog'] / (r['expected_notes'] / 3):.1f} per journey: "
            f"{by_table}), "
            f"peak worker RSS {r['peak_rss'] / 2**20:.0f} MiB, garbage collection "
            f"{r['gc_seconds']:.2f} s of the workers' CPU (longest pause since start, "
            f"generations 0/1/2: {'/'.join(f'{p * 1000:.0f}' for p in r['gc_pause'])} ms), "
            f"per journey in the timed part: {r['reads']['fetched']:.1f} records fetched, "
            f"{r['reads']['standby']:.1f} applied by standbys; since the workers started, the "
            f"most records a worker's producer held queued at once {r['queued_peak']:,.0f}, "
            f"its longest write round trip {r['round_trip'] * 1000:.0f} ms; agents waited for "
            f"their producer "
            f"{r['produce_waits']:,.0f} times in the timed part, {r['produce_wait_seconds']:.2f} s "
            f"in all\n"
            f"    Redis: {r['bytes_in']:,.0f} bytes received per journey; the run's keys hold "
            f"{r['held']:,.0f} bytes per journey, {r['kept']:,.0f} once the consumed topic "
            f"entries are trimmed ({kept}), {r['final']:,.0f} once ended journeys are swept "
            f"({', '.join(f'{k} {v:,.0f}' for k, v in sorted(r['final_kinds'].items()))}); "
            f"{r['tombstones_left']} tombstones not removed yet\n"
            f"    Redis commands per journey in the timed part, by server time: "
            f"{busiest_commands(r)}\n"
            f"    engine counters: {dict(sorted(r['counters'].items()))}"
        )
        if r["dead_letters"] or r["pending"] or sum(r["notes"].values()) != r["expected_notes"]:
            problems.append(f"{r['workers']} worker(s){label(r['sends_by'])}")
    if memory is not None:
        kinds = ", ".join(
            f"{k} {kb(v)}" for k, v in sorted(memory["redis_kinds"].items(), key=lambda i: -i[1])
        )
        print(
            f"memory per pending journey ({args.pending:,} sent legs, 1 worker, "
            f"{memory['pending']:,} pending, ingested at {memory['sent_s']:,.0f} sent legs/s):\n"
            f"  worker RSS {kb(memory['rss'])} (RSS {memory['rss_total'] / 2**20:.0f} MiB at the "
            f"end); RocksDB data dir {kb(memory['disk'])}\n"
            f"  Redis keys of the run {kb(memory['redis'])}: {kinds}\n"
            f"  Redis used_memory (whole server) {kb(memory['used'])}\n"
            f"  tables at the end: {memory['tables']}; a journeys value is "
            f"{memory['journey_value']:,.0f} bytes; GET /xcm/pending/ took {memory['view_s']:.2f} s"
        )
    # Ratios within a round (same baseline, same minutes of machine noise); medians over rounds.
    median = statistics.median
    parts = [f"a={median(raws):,.0f} msg/s"]
    for mode in args.sends_by:
        parts.extend(ratios(args, [r for r in results if r["sends_by"] == mode], label(mode)))
    if memory is not None:
        parts.append(f"rss/journey={kb(memory['rss'])} redis/journey={kb(memory['redis'])}")
    print("RATIOS " + " ".join(parts))
    if problems:
        print(f"UNEXPECTED notifications, dead letters or pending journeys: {problems}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
