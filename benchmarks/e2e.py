"""Load through the whole pipeline: replayed chains -> ingress -> workers -> webhook receiver.

    python benchmarks/e2e.py [--redis URL] [--rates 10,50,100,125,150,175,200,250,300,350]
                             [--seconds 15] [--block-rate 2] [--workers 1,2] [--partitions 4]
                             [--split] [--batch-records N] [--batch-seconds S]
                             [--quick] [--check] [--keep DIR] [--py-spy DIR]

**Traffic.** Two synthetic chains, Polkadot Asset Hub (para 1000) and the Polkadot relay, made
by ``benchmarks/e2e_chain.py`` from one real UMP teleport of the fixtures (Asset Hub #4818937
-> Polkadot #17773282, both runtime 9430): every Asset Hub block carries K copies of the real
transfer (extrinsic, events, ``UpwardMessages`` entry), each made unique by its own 32-byte
account, and the relay block two blocks later carries their K executions (5 balance events and
``MessageQueue.Processed`` each) next to the block's real 45 kB ``ParaInherent.enter``. Before
anything runs, the first blocks are decoded through the follower's fetch path and extracted with
``ocstream.xcm.extract``: each journey must come out as one sent and one received leg with its
own hash (``--check`` stops there).

**Pipeline.** Per worker count (``--workers 1,2``), on a fresh Redis key prefix and app id:
N real ``ocstream worker`` processes (the short group timeouts of ``tests/workers.py``,
``OCSTREAM_WEBHOOK_ALLOW_PRIVATE=1``, ``--partitions`` partitions), a webhook receiver in a
subprocess (aiohttp, checks every request's Standard Webhooks signature, records the arrival
time), one subscription made with ``POST /subs`` (origin Asset Hub, destination the relay,
``"events": "*"``, a signed webhook channel). Then, for each rate, one real ``ocstream
ingress`` process follows the two chains from ``replay`` providers: ``--seconds`` worth of blocks at
``--block-rate`` blocks/s per chain, K = rate / block rate journeys per block. The next rate
starts when every journey of this one was delivered; the rates stop rising after the first one
that is not kept up with. A small untimed warm-up step comes first; with several workers it
lasts long enough for :data:`SETTLE_JOURNEYS`, and the run then waits until the leader has
weighed its assignment against them (and rebalanced if it found it uneven), before the timed
steps. Each measured step's chains
begin with :data:`LEAD_SECONDS` of quiet blocks, without journeys: the step's new ingress
builds its runtime decoders on its first block, which a deployed ingress did long before.

Blocks and legs are keyed by chain, so this traffic's extraction and matching live in two
partitions: the relay's and Asset Hub's. The workers are started one after the other, so that
faust's sticky assignor hands the second one the lower half of the partitions; with 4 partitions
that puts the two chains on different workers (the script prints who got which). A fixed block
rate with more journeys per block, rather than more blocks, is how real chains get busier; it
also keeps the replay's pacing error small (below).

With ``--split``, each run's workers run ``--role match`` and one more worker runs ``--role
deliver`` (``docs/deploy.md``), so that delivery and its POSTs take place beside matching
instead of between its batches.

**Figures per step** (a journey is its UMP transfer; each gives an ``xcm.sent`` and an
``xcm.received`` POST):

* *offered*: K x the rate at which the ingress published the relay blocks that carry receipts,
  from their ``t`` field in the ``blocks`` topic (the ingress's wall clock, in ms, right before
  the XADD). The replay paces heads by sleeping 1/rate after each block is processed, so the
  real rate is a little below the nominal one, and well below it when the ingress is the
  bottleneck;
* *delivered*: journeys whose ``xcm.received`` arrived, over the time from the first to the last
  such arrival plus one block interval. A pipeline that keeps up delivers at the offered rate; one
  that falls behind delivers at its capacity, and its latency grows during the step;
* *latency*: webhook arrival (receiver's ``time.time()``) minus the publish time of the block
  that holds the leg: the relay block for ``xcm.received``, the Asset Hub block for ``xcm.sent``;
  p50 and p99; also the p99 of the blocks after the step's first :data:`SETTLE` seconds (each
  step starts its own ingress, whose start-up competes for the cores at first), and the step's
  three slowest blocks;
* *backlog*: journeys of the step's relay blocks but the last, not yet delivered when the last
  one was published; *drain*: from that publish to the last arrival; *lag*: records the group
  had not committed at that moment, per topic (``blocks``/``xcm-legs``/``xcm-notifications``);
* memory: peak RSS (``VmHWM``) of the ingress and of each worker, Redis ``used_memory`` (the
  whole server) at the end of the step; the bytes Redis received per journey during the step
  (``total_net_input_bytes``: the ingress's blocks, the workers' records and webhook
  bookkeeping, this script's own reads); CPU milliseconds per journey of the workers, the
  ingress and Redis (the whole server: other users of it count too); the most records one
  worker's producer held queued at once since the run's workers started (the largest of the
  workers' ``ocstream_transport_produce_queued_peak_records``: what a burst of blocks left
  waiting for Redis), and the longest write round trip of any worker since they started
  (``ocstream_transport_produce_round_trip_max_seconds``);
* *p99 / block CPU*: the receipts' p99 over K x the workers' CPU per journey, which is the CPU
  the workers spend on one block's journeys (sends and receipts; an Asset Hub block and a relay
  block come together). The same run gives both, so the ratio does not move with the
  machine's speed as the p99 does. Near 1, the last receipt of a block waits for the workers'
  CPU of that block's journeys and for little else. Above 1, it also waits for something else:
  hops, the ingress, Redis, other processes on the cores. Below 1, the workers overlap, as
  ``--split`` lets them.

A step is *kept up with* when every journey was delivered (within ``--drain-timeout``), the
median ``xcm.received`` latency of its last third of relay blocks is at most 0.5 s above that
of its first third (*growth*: a pipeline that falls behind by a fraction f of the offered rate
adds f x the elapsed time), and delivered >= 0.95 x offered. The *sustained* rate of a worker
count is the highest offered rate of a step kept up with; the script prints it for each worker
count, and the 2-worker / 1-worker ratios of the sustained and of the highest delivered rates.
It also counts, per run, missing and duplicate notifications (more than one POST per journey and
type), bad signatures and wrong outcomes, and exits 1 if there are any.

Everything started is stopped and every key of the run's prefixes deleted at the end, on errors
and on Ctrl-C too. ``--py-spy DIR`` samples the workers and the ingress of each step with
py-spy, from the step's first block until its CPU is read (``procs.start_py_spy`` says how to
read the files). The default run takes 5 to 7 minutes on the 2-core development machine
(the figures and their reading are in ``docs/load.md``); ``--quick`` (rates 10 and 40, 6 s
each, which do not saturate anything) about 70 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import orjson
import redis
from e2e_chain import ASSET_HUB, LAG, RELAY, Segment, Synthesizer, check_segment
from procs import (  # benchmarks/ is this script's directory
    ChildProc,
    Incomplete,
    WorkerProc,
    bench_env,
    cleanup,
    cpu_seconds,
    percentile,
    redis_bytes_in,
    redis_cpu,
    serve_printing_port,
    start_py_spy,
    stop_all,
    stop_py_spy,
    wait_for,
    wait_group,
    wait_traffic_settled,
    weighs_traffic,
)

from ocstream.ingress.registry import NetworkRecord
from ocstream.sinks.webhook import DeliveryIds
from ocstream.testing import fixtures_path
from ocstream.transport import Keyspace
from ocstream.transport.lag import group_lag
from ocstream.transport.wire import entry_value, partition_for_key

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.workers import Sample, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUBSCRIPTION = "bench-e2e"
#: The topics whose lag a step reports (the workers' group reads them all).
LAG_TOPICS = ("blocks", "xcm-legs", "xcm-notifications")
MiB = 2**20
#: Seconds the median latency may grow from a step's first third to its last third.
GROWTH_LIMIT = 0.5


# --- the webhook receiver (a subprocess) ---------------------------------------------------------


def serve() -> None:
    """Answer 204 to every POST and record it; ``GET /take`` hands the records over and forgets
    them, ``GET /count`` tells how many of each type arrived since the start."""
    from aiohttp import web
    from standardwebhooks import Webhook, WebhookVerificationError

    verifier = Webhook(os.environ["BENCH_E2E_SECRET"])
    records: list[list[Any]] = []
    counts: Counter[str] = Counter()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        try:
            verifier.verify(body, dict(request.headers))
            signed = True
        except WebhookVerificationError:
            signed = False
        note = orjson.loads(body)
        origin, waypoint = note.get("origin") or {}, note.get("waypoint") or {}
        records.append(
            [
                arrived,
                note.get("type"),
                origin.get("messageHash"),
                (note.get("destination") or {}).get("blockNumber"),
                waypoint.get("outcome"),
                signed,
                note.get("subscriptionId"),
                request.headers.get("webhook-id"),
            ]
        )
        counts[str(note.get("type"))] += 1
        return web.Response(status=204)

    async def take(request: web.Request) -> web.Response:
        data = orjson.dumps(records)
        records.clear()
        return web.Response(body=data, content_type="application/json")

    async def count(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(counts), content_type="application/json")

    app = web.Application()
    app.router.add_get("/take", take)
    app.router.add_get("/count", count)
    app.router.add_post("/{tail:.*}", hook)
    serve_printing_port(app)


class Receiver:
    def __init__(self, secret: str) -> None:
        env = dict(os.environ, BENCH_E2E_SECRET=secret)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return orjson.loads(response.read())

    def take(self) -> list[list[Any]]:
        return list(self._get("/take"))

    def counts(self) -> dict[str, int]:
        return dict(self._get("/count"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- processes -----------------------------------------------------------------------------------


def rss_peak(pid: int) -> int:
    found = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found.group(1)) * 1024 if found else 0


class Ingress(ChildProc):
    """One ``ocstream ingress`` process following a segment's two recordings at ``rate``."""

    def __init__(self, run: Run, segment: Segment, rate: float, name: str) -> None:
        self.segment = segment
        self.port = free_port()
        self.log_path = run.root / f"ingress-{name}.log"
        config = run.root / f"ingress-{name}.toml"
        lines = []
        for network, path in segment.files.items():
            lines += ["[[networks]]", f'id = "{network}"']
            if network != RELAY:
                lines.append(f'relay = "{RELAY}"')
            lines += [f'provider = {{ type = "replay", file = "{path}", rate = {rate!r} }}', ""]
        config.write_text("\n".join(lines))
        self.args = [sys.executable, "-m", "ocstream", "ingress", "-l", "info"]
        self.args += ["--config", str(config), "--redis", run.url, "--port", str(self.port)]
        self.env = bench_env(
            OCSTREAM_TRANSPORT_PREFIX=run.prefix,
            OCSTREAM_PARTITIONS=str(run.partitions),
            PYTHONUNBUFFERED="1",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Ingress:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise Incomplete(f"the ingress exited:\n{self.log_tail()}")

    def tips(self) -> dict[str, int | None]:
        url = f"http://127.0.0.1:{self.port}/health"
        with urllib.request.urlopen(url, timeout=10) as response:
            networks = json.load(response)["networks"]
        return {urn: networks.get(urn, {}).get("tip") for urn in self.segment.files}

    def published_first(self) -> bool:
        self.check_alive()
        tips = self.tips()
        return all((tips[urn] or 0) >= self.segment.first[urn] for urn in self.segment.files)

    def published_all(self) -> bool:
        self.check_alive()
        tips = self.tips()
        return all(tips[urn] == self.segment.last[urn] for urn in self.segment.files)


#: Each live worker's ``/metrics`` samples by worker name: metric name, labels, value.
Scrape = dict[str, list[Sample]]


@dataclass
class Run:
    """One worker count: its prefix, app id, processes and the records it received."""

    url: str
    workers_n: int
    partitions: int
    root: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: list[WorkerProc] = field(default_factory=list)
    ingress: Ingress | None = None
    #: ``--py-spy``: the samplers of the step under way (stopped with the run, if it ends first).
    samplers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    records: list[list[Any]] = field(default_factory=list)
    #: The segments replayed so far, and whether each was delivered in full.
    done: list[tuple[Segment, bool]] = field(default_factory=list)
    stopped: bool = False
    #: ``--split``: the workers run ``--role match`` and one more runs ``--role deliver``.
    split: bool = False
    #: Extra environment of the workers.
    worker_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix = f"bench-e2e-{self.token}:"
        self.app_id = f"benche2e{self.workers_n}w{self.token}"
        self.root = self.root / f"w{self.workers_n}-{self.token}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.client = redis.Redis.from_url(self.url)
        self.keys = Keyspace(self.prefix)
        self.read_ids: dict[str, str] = {}
        self.published: dict[tuple[str, int], float] = {}

    def start_workers(self, timeout: float) -> None:
        for network in (RELAY, ASSET_HUB):
            record = NetworkRecord(id=network, relay=None if network == RELAY else RELAY)
            self.client.hsetnx(f"{self.prefix}networks", network, record.model_dump_json())
        roles = ["match"] * self.workers_n + ["deliver"] if self.split else ["all"] * self.workers_n
        for n, role in enumerate(roles):
            worker = WorkerProc(
                f"w{n + 1}", self.root, url=self.url, prefix=self.prefix, app_id=self.app_id,
                partitions=self.partitions, role=role,
            )  # fmt: skip
            worker.env["OCSTREAM_WEBHOOK_ALLOW_PRIVATE"] = "1"
            worker.env.update(self.worker_env)
            self.workers.append(worker.start())
            # One at a time: faust's sticky assignor then hands the newcomer the lower half of
            # the partitions, which puts the two chains on different workers (see owners()).
            wait_group(self.workers, timeout)

    def subscribe(self, receiver: Receiver, secret: str) -> None:
        body = {
            "id": SUBSCRIPTION,
            "origin": ASSET_HUB,
            "senders": "*",
            "destinations": [RELAY],
            "events": "*",
            "channels": [{"type": "webhook", "url": f"{receiver.url}/hook", "secret": secret}],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.workers[0].port}/subs",
            json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 201:
                raise Incomplete(f"POST /subs: {response.status} {response.read()!r}")

    def owners(self) -> str:
        """Which worker reads each chain's partition of ``blocks`` (and so of ``xcm-legs``,
        keyed by chain too): only two partitions carry this traffic's blocks."""
        parts = []
        for network in (ASSET_HUB, RELAY):
            p = partition_for_key(network.encode(), self.partitions)
            owner = [
                w.name
                for w in self.workers
                if f'ocstream_consumer_lag_records{{topic="blocks",partition="{p}"}}' in w.metrics()
            ]
            parts.append(f"{network} -> blocks/{p} on {', '.join(owner) or '?'}")
        return "; ".join(parts)

    def lag(self) -> dict[str, int]:
        """Records not yet committed by the group, per topic (``ocstream.transport.lag``): what
        an operator sees as the group's lag. (The workers' own ``ocstream_consumer_lag_records``
        counts records not yet fetched; a worker fetches ahead into its buffers, so it stays
        near 0 under a backlog.)"""
        out: Counter[str] = Counter()
        for (topic, _), n in group_lag(self.client, self.keys, self.app_id, LAG_TOPICS).items():
            out[topic] += n
        return dict(out)

    def read_published(self) -> None:
        """Publish times (``t``, ms) of the chains' blocks appended since the last call."""
        for network in (ASSET_HUB, RELAY):
            stream = self.keys.stream(
                "blocks", partition_for_key(network.encode(), self.partitions)
            )
            while True:
                start = self.read_ids.get(stream, "-")
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    self.client.xrange(stream, min=start, count=50),
                )
                if not entries:
                    break
                for _, fields in entries:
                    if fields.get(b"k") != network.encode():
                        continue
                    number = re.search(rb'"number":(\d+)', (entry_value(fields) or b"")[:400])
                    assert number, "a block without a number"
                    self.published[(network, int(number.group(1)))] = int(fields[b"t"]) / 1000
                self.read_ids[stream] = "(" + entries[-1][0].decode()

    def notified(self) -> dict[str, float]:
        """When each ``xcm.received`` notification was written (``t``, s), by message hash."""
        out: dict[str, float] = {}
        for p in range(self.partitions):
            stream = self.keys.stream("xcm-notifications", p)
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(stream))
            for _, fields in entries:
                note = orjson.loads(entry_value(fields) or b"{}")
                if note.get("type") != "xcm.received":
                    continue
                message_hash = (note.get("destination") or {}).get("messageHash")
                if isinstance(message_hash, str):
                    written = int(fields[b"t"]) / 1000
                    out[message_hash] = min(written, out.get(message_hash, written))
        return out

    def scrape(self) -> Scrape:
        """Each live worker's ``/metrics`` samples, one request per worker."""
        return {w.name: w.samples() for w in self.workers if w.alive()}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: each worker (by name), all workers, the Redis server."""
        out = {w.name: cpu_seconds(w.proc.pid) for w in self.workers if w.alive() and w.proc}
        return {**out, "workers": sum(out.values()), "redis": redis_cpu(self.client)}

    def check_alive(self) -> None:
        for worker in self.workers:
            if not worker.alive():
                raise Incomplete(f"worker {worker.name} exited:\n{worker.log_tail()}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        stop_py_spy(self.samplers)
        if self.ingress is not None:
            self.ingress.stop()
        stop_all(self.workers)
        cleanup(self.client, self.prefix)
        self.client.close()

    def tails(self) -> str:
        out = [f"--- {w.name} ({w.log_path}):\n{w.log_tail()}" for w in self.workers]
        if self.ingress is not None:
            out.append(f"--- ingress ({self.ingress.log_path}):\n{self.ingress.log_tail()}")
        return "\n".join(out)


# --- one step ------------------------------------------------------------------------------------


@dataclass
class Step:
    workers: int
    nominal: float  # journeys/s asked for
    per_block: int
    block_rate: float
    journeys: int
    offered: float = 0.0
    delivered: float = 0.0
    received: int = 0
    p50: float = 0.0
    p99: float = 0.0
    sent_p50: float = 0.0
    sent_p99: float = 0.0
    #: Where the xcm.received latency goes: block published -> notification in
    #: xcm-notifications (extraction and matching), then -> webhook arrival (delivery).
    matched_p50: float = 0.0
    matched_p99: float = 0.0
    delivery_p50: float = 0.0
    delivery_p99: float = 0.0
    queued_p50: float = 0.0
    queued_p99: float = 0.0
    posted_p50: float = 0.0
    posted_p99: float = 0.0
    #: The slowest blocks: (seconds since the step's first block, chain, slowest latency in it).
    slowest: list[tuple[float, str, float]] = field(default_factory=list)
    #: p99 of the blocks published after the step's first SETTLE seconds (received, sent).
    settled_p99: tuple[float, float] = (0.0, 0.0)
    backlog: int = 0
    drain: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    rss_ingress: int = 0
    rss_workers: list[int] = field(default_factory=list)
    redis_used: int = 0
    #: Bytes Redis received per journey (``total_net_input_bytes``, the whole server: the
    #: ingress's blocks, the workers' records, webhook bookkeeping, this script's reads).
    redis_in: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    #: Per worker, the step's event loop wake-ups (every 50 ms) and how many came later than
    #: each of LAG_BOUNDS (``ocstream_event_loop_lag_seconds``, ``ocstream/looplag.py``).
    loop_lag: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The most records one worker's producer held queued at once, since the workers started
    #: (``ocstream_transport_produce_queued_peak_records``, the largest of the workers).
    queued_peak: float = 0.0
    #: The longest write round trip of any worker since the workers started, seconds
    #: (``ocstream_transport_produce_round_trip_max_seconds``).
    round_trip: float = 0.0
    growth: float = float("nan")
    kept_up: bool = False
    drained: bool = True


def loop_lags(
    scraped: Scrape,
) -> dict[str, dict[str, float]]:
    """Each worker's event loop lag histogram so far (``ocstream_event_loop_lag_seconds``):
    wake-ups at or under each bucket's bound, ``+Inf`` for all."""
    return {
        worker: {
            labels["le"]: value
            for name, labels, value in samples
            if name == "ocstream_event_loop_lag_seconds_bucket"
        }
        for worker, samples in scraped.items()
    }


def largest(scraped: Scrape, metric: str) -> float:
    """The largest of the workers' values of the unlabelled series ``metric`` (0 if none has
    it): e.g. the most records one worker's producer held queued at once since it started."""
    return max(
        (value for samples in scraped.values() for name, _, value in samples if name == metric),
        default=0.0,
    )


#: Seconds at the start of a step left out of the "settled" p99 (the ingress is starting).
SETTLE = 5.0

#: Seconds of quiet blocks (no journeys) that each measured step's chains begin with: the
#: step's new ingress builds its decoders on its first block, and a deployed ingress has
#: done that long before the traffic a latency figure is about.
LEAD_SECONDS = 2.0
#: Journeys in the warm-up of a run with several workers, at least: with 4 partitions they give
#: the leader about 1,250 records per partition to weigh, past ``load_settle_records`` (1,000).
SETTLE_JOURNEYS = 500


def run_step(
    run: Run,
    receiver: Receiver,
    segment: Segment,
    step: Step,
    name: str,
    expected: Counter[str],
    drain_timeout: float,
    py_spy: str | None = None,
) -> Step:
    """One step: its chains published, every notification awaited, the figures taken. With
    ``py_spy`` (``--py-spy DIR``), the workers and the ingress are sampled from the step's
    first block until its CPU is read."""
    ingress = Ingress(run, segment, step.block_rate, name)
    run.ingress = ingress
    try:
        ingress.start()

        # CPU is counted from the first block on: the ingress's start (imports, reading the
        # recordings, building the decoders) is not per-journey work.
        def started() -> bool:
            run.check_alive()
            return ingress.published_first()

        def finished() -> bool:
            run.check_alive()
            # Publish times are read as the blocks come: a long step's first blocks may be
            # trimmed from the topic by retention before the step ends.
            run.read_published()
            return ingress.published_all()

        wait_for(started, 60, f"the ingress to start publishing {name}", interval=0.02)
        tag = f"w{run.workers_n}-{name}"
        targets = [(f"{tag}-{w.name}", w.proc.pid) for w in run.workers if w.proc]
        run.samplers = start_py_spy(py_spy, [*targets, (f"{tag}-ingress", ingress.pid)])
        cpu0, ingress_cpu0 = run.cpu(), cpu_seconds(ingress.pid)
        bytes_in0 = redis_bytes_in(run.client)
        lags0 = loop_lags(run.scrape())
        timeout = 60 + 3 * segment.blocks / step.block_rate
        wait_for(finished, timeout, f"the ingress to publish {name}", interval=0.1)
        step.lag = run.lag()
        step.rss_ingress = rss_peak(ingress.pid)
        ingress_cpu = cpu_seconds(ingress.pid) - ingress_cpu0
    finally:
        ingress.stop()
        run.ingress = None
    expected["xcm.sent"] += step.journeys
    expected["xcm.received"] += step.journeys

    def delivered() -> bool:
        run.check_alive()
        counts = receiver.counts()
        return all(counts.get(kind, 0) >= n for kind, n in expected.items())

    try:
        wait_for(delivered, drain_timeout, f"every notification of {name}", interval=0.1)
    except Incomplete:
        step.drained = False
    if step.drained:
        time.sleep(0.5)  # a duplicate would come right after
    cpu1 = run.cpu()
    stop_py_spy(run.samplers)
    step.cpu = {k: (cpu1[k] - cpu0[k]) * 1000 / step.journeys for k in cpu1}
    step.redis_in = (redis_bytes_in(run.client) - bytes_in0) / step.journeys
    scraped = run.scrape()  # once: loop lags and the producer's peak
    for worker, lags in loop_lags(scraped).items():
        before = lags0.get(worker, {})
        wakeups = lags.get("+Inf", 0) - before.get("+Inf", 0)
        step.loop_lag[worker] = {"wakeups": wakeups} | {
            bound: wakeups - (lags.get(bound, 0) - before.get(bound, 0)) for bound in LAG_BOUNDS
        }
    step.cpu["ingress"] = ingress_cpu * 1000 / step.journeys
    step.queued_peak = largest(scraped, "ocstream_transport_produce_queued_peak_records")
    step.round_trip = largest(scraped, "ocstream_transport_produce_round_trip_max_seconds")
    step.rss_workers = [rss_peak(w.proc.pid) for w in run.workers if w.proc]
    step.redis_used = int(run.client.info("memory")["used_memory"])
    records = receiver.take()
    run.records += records
    run.read_published()
    run.done.append((segment, step.drained))

    hashes = {j.hash: j for j in segment.journeys}
    first_arrival: dict[tuple[str, str], float] = {}
    queued_at: dict[str, float] = {}  # xcm.received, by hash: when its webhook was queued
    for arrived, kind, message_hash, *_, delivery_id in records:
        if message_hash in hashes:
            key = (kind, message_hash)
            if arrived < first_arrival.get(key, float("inf")):
                first_arrival[key] = arrived
                if kind == "xcm.received" and delivery_id:
                    queued_at[message_hash] = DeliveryIds.timestamp_ms(delivery_id) / 1000
    receipts = range(segment.first[RELAY] + segment.lead + LAG, segment.last[RELAY] + 1)
    times = [run.published[(RELAY, n)] for n in receipts]
    interval = (times[-1] - times[0]) / max(1, len(times) - 1)
    step.offered = segment.per_block / interval if interval > 0 else float("nan")
    received, sent = [], []
    matched, delivery, queueing, posting = [], [], [], []
    notified = run.notified()
    arrivals = []
    by_block: dict[int, list[float]] = {}
    by_sent_block: dict[int, list[float]] = {}
    for j in segment.journeys:
        got = first_arrival.get(("xcm.received", j.hash))
        if got is not None:
            arrivals.append(got)
            received.append(got - run.published[(RELAY, j.received_block)])
            written = notified.get(j.hash)
            if written is not None:
                matched.append(written - run.published[(RELAY, j.received_block)])
                delivery.append(got - written)
                queued = queued_at.get(j.hash)
                if queued is not None:
                    queueing.append(queued - written)
                    posting.append(got - queued)
            by_block.setdefault(j.received_block, []).append(received[-1])
        got = first_arrival.get(("xcm.sent", j.hash))
        if got is not None:
            sent.append(got - run.published[(ASSET_HUB, j.sent_block)])
            by_sent_block.setdefault(j.sent_block, []).append(sent[-1])
    step.received = len(arrivals)
    if arrivals:
        span = max(arrivals) - min(arrivals) + interval
        step.delivered = len(arrivals) / span
        # Journeys of the blocks before the last one, not delivered when the last was published.
        early = {
            j.hash for j in segment.journeys if run.published[(RELAY, j.received_block)] < times[-1]
        }
        step.backlog = sum(
            1 for h in early if first_arrival.get(("xcm.received", h), float("inf")) > times[-1]
        )
        step.drain = max(arrivals) - times[-1]
    step.p50, step.p99 = percentile(received, 50), percentile(received, 99)
    # Where a p99 comes from: one slow moment (a few blocks) or every block.
    start = min(run.published[(ASSET_HUB, min(by_sent_block))], times[0]) if by_sent_block else 0
    worst = [
        (run.published[(chain, n)] - start, "AH" if chain == ASSET_HUB else "relay", max(lat))
        for chain, blocks in ((ASSET_HUB, by_sent_block), (RELAY, by_block))
        for n, lat in blocks.items()
    ]
    step.slowest = sorted(worst, key=lambda w: -w[2])[:3]
    # Each step starts its own ingress process, whose start-up (imports, decoders from the
    # metadata) shares the cores with the workers during the step's first seconds.
    late = [
        [x for n, lat in blocks.items() if run.published[(chain, n)] - start >= SETTLE for x in lat]
        for chain, blocks in ((RELAY, by_block), (ASSET_HUB, by_sent_block))
    ]
    step.settled_p99 = (percentile(late[0], 99), percentile(late[1], 99))
    step.sent_p50, step.sent_p99 = percentile(sent, 50), percentile(sent, 99)
    step.matched_p50, step.matched_p99 = percentile(matched, 50), percentile(matched, 99)
    step.delivery_p50, step.delivery_p99 = percentile(delivery, 50), percentile(delivery, 99)
    step.queued_p50, step.queued_p99 = percentile(queueing, 50), percentile(queueing, 99)
    step.posted_p50, step.posted_p99 = percentile(posting, 50), percentile(posting, 99)
    # A pipeline that keeps up has the same latency at the end of a step as at its start; one
    # that falls behind by a fraction f of the offered rate adds f x the elapsed time.
    third = max(1, len(receipts) // 3)
    head = [x for n in receipts[:third] for x in by_block.get(n, [])]
    tail = [x for n in receipts[-third:] for x in by_block.get(n, [])]
    if head and tail:
        step.growth = statistics.median(tail) - statistics.median(head)
    step.kept_up = (
        step.drained
        and step.received == step.journeys
        and step.growth <= GROWTH_LIMIT
        and step.delivered >= 0.95 * step.offered
    )
    return step


#: Bucket bounds of the workers' loop lag histogram that a step line reports.
LAG_BOUNDS = ("0.05", "0.1", "0.25")


def loop_lag(step: Step) -> str:
    """``w1 3/1/0 of 600``: the step's wake-ups of each worker's loop watcher later than
    each of :data:`LAG_BOUNDS`, of all of them."""
    return ", ".join(
        f"{name} {'/'.join(f'{lags[b]:.0f}' for b in LAG_BOUNDS)} of {lags['wakeups']:.0f}"
        for name, lags in sorted(step.loop_lag.items())
    )


def worker_cpu(step: Step) -> str:
    """``6.84`` for one worker, ``6.84 (w1 4.12, w2 2.72)`` for several: two decimals, so
    that alternating runs can tell a change of a few percent (the CPU counts in 10 ms ticks,
    a thousandth of a millisecond per journey over a step)."""
    names = sorted(k for k in step.cpu if re.fullmatch(r"w\d+", k))
    split = ", ".join(f"{k} {step.cpu[k]:.2f}" for k in names)
    return f"{step.cpu['workers']:.2f}" + (f" ({split})" if len(names) > 1 else "")


def block_cpu_ratio(step: Step) -> float:
    """The receipts' p99 over the workers' CPU for one block's journeys (see the module
    docstring, *p99 / block CPU*)."""
    block_cpu = step.per_block * step.cpu.get("workers", float("nan")) / 1000
    return step.p99 / block_cpu if block_cpu > 0 else float("nan")


def step_line(step: Step, label: str) -> str:
    lag = "/".join(str(step.lag.get(t, 0)) for t in LAG_TOPICS)
    verdict = "kept up" if step.kept_up else "FELL BEHIND"
    if not step.drained:
        verdict += f" (not drained: {step.received}/{step.journeys} delivered)"
    return (
        f"{label}: {step.workers} worker(s), {step.nominal:g}/s asked "
        f"(K={step.per_block} x {step.block_rate:.2f} blocks/s): offered {step.offered:.1f}/s, "
        f"delivered {step.delivered:.1f}/s; received p50 {step.p50:.2f} s p99 {step.p99:.2f} s "
        f"(growth {step.growth:+.2f} s; block to notification p50 {step.matched_p50:.2f} s "
        f"p99 {step.matched_p99:.2f} s, notification to webhook p50 {step.delivery_p50:.2f} s "
        f"p99 {step.delivery_p99:.2f} s: to its webhook queue p50 {step.queued_p50:.2f} s "
        f"p99 {step.queued_p99:.2f} s, queue to webhook p50 {step.posted_p50:.2f} s "
        f"p99 {step.posted_p99:.2f} s), sent p50 {step.sent_p50:.2f} s "
        f"p99 {step.sent_p99:.2f} s; after the first {SETTLE:g} s: received p99 "
        f"{step.settled_p99[0]:.2f} s, sent p99 {step.settled_p99[1]:.2f} s; slowest blocks "
        f"{', '.join(f'{c} +{at:.1f} s {lat:.2f} s' for at, c, lat in step.slowest)}; "
        f"backlog {step.backlog}, "
        f"drain {step.drain:.2f} s, lag blocks/legs/notes {lag}; peak RSS ingress "
        f"{step.rss_ingress / MiB:.0f} MiB, workers "
        f"{'+'.join(f'{r / MiB:.0f}' for r in step.rss_workers)} MiB; Redis "
        f"{step.redis_used / MiB:.0f} MiB, received {step.redis_in / 1000:.1f} kB/journey; "
        f"event loop held over "
        f"{'/'.join(f'{float(b) * 1000:.0f}' for b in LAG_BOUNDS)} ms: {loop_lag(step)}; "
        f"producer held queued at most {step.queued_peak:,.0f} records, longest write round "
        f"trip {step.round_trip * 1000:.0f} ms; "
        f"CPU ms/journey workers {worker_cpu(step)} "
        f"ingress {step.cpu['ingress']:.2f} redis {step.cpu['redis']:.2f}; received p99 / "
        f"block CPU {block_cpu_ratio(step):.2f} -> {verdict}"
    )


def correctness(run: Run) -> dict[str, int]:
    """Over the whole run: missing and duplicate notifications, bad signatures, wrong outcomes
    or blocks, notifications of journeys this run did not make. Journeys of a step that was not
    drained (saturated, the run stopped with a backlog) are counted apart, as ``undelivered``."""
    journeys = {j.hash: j for segment, _ in run.done for j in segment.journeys}
    late = {j.hash for segment, drained in run.done if not drained for j in segment.journeys}
    by_key: Counter[tuple[str, str]] = Counter()
    out = Counter({"bad_signature": 0, "wrong_outcome": 0, "wrong_block": 0, "unknown": 0})
    for _, kind, message_hash, dest_block, outcome, signed, subscription, _ in run.records:
        if message_hash not in journeys or subscription != SUBSCRIPTION:
            out["unknown"] += 1
            continue
        by_key[(kind, message_hash)] += 1
        out["bad_signature"] += 0 if signed else 1
        if kind == "xcm.received":
            out["wrong_outcome"] += 0 if outcome == "Success" else 1
            out["wrong_block"] += int(dest_block != str(journeys[message_hash].received_block))
    for kind in ("xcm.sent", "xcm.received"):
        missing = [h for h in journeys if by_key[(kind, h)] == 0]
        out[f"missing_{kind}"] = sum(1 for h in missing if h not in late)
        out[f"undelivered_{kind}"] = sum(1 for h in missing if h in late)
        out[f"duplicate_{kind}"] = sum(n - 1 for (k, _), n in by_key.items() if k == kind and n > 1)
    out["other_types"] = sum(
        n for (k, _), n in by_key.items() if k not in ("xcm.sent", "xcm.received")
    )
    return dict(out)


# --- main ----------------------------------------------------------------------------------------


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_list(text: str, kind: type) -> list[Any]:
    return [kind(x) for x in text.replace(" ", "").split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--rates", default="10,50,100,125,150,175,200,250,300,350", help="journeys/s, rising"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="of traffic per rate")
    parser.add_argument("--block-rate", type=float, default=2.0, help="blocks/s per chain")
    parser.add_argument("--workers", default="1,2", help="worker counts, one run each")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--batch-records", type=int, help="the workers' OCSTREAM_XCM_BATCH_RECORDS (default 500)"
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        help="the workers' OCSTREAM_XCM_BATCH_SECONDS (default 0.05)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="the workers run --role match, and one more worker runs --role deliver",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed traffic")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to wait for a step's last POST"
    )
    parser.add_argument(
        "--fixtures", type=Path, help="default: $OCSTREAM_FIXTURES or tests/fixtures"
    )
    parser.add_argument("--quick", action="store_true", help="rates 10,40, 6 s each: a smoke run")
    parser.add_argument("--check", action="store_true", help="only make and check the chains")
    parser.add_argument("--keep", metavar="DIR", help="keep recordings and logs here")
    parser.add_argument(
        "--py-spy", metavar="DIR",
        help="sample the workers and the ingress with py-spy (installed apart) during each "
        "step, from its first block until its CPU is read: DIR/w<N>-<step>-<process>-<time>.raw",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=120, help="seconds for workers to start")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if args.quick:
        args.rates, args.seconds, args.warmup = "10,40", 6.0, 2.0
        args.drain_timeout = min(args.drain_timeout, 30.0)
    rates = parse_list(args.rates, float)
    counts = parse_list(args.workers, int)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)

    root = Path(args.keep).absolute() if args.keep else Path(tempfile.mkdtemp(prefix="e2ebench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return bench(args, rates, counts, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def bench(args: argparse.Namespace, rates: list[float], counts: list[int], root: Path) -> int:
    """Make the chains, then one run per worker count; prints as it goes; the exit status."""
    # With several workers the warm-up also has to give the leader enough traffic to settle
    # its assignment (wait_traffic_settled): about 1,250 records per partition here. It runs
    # at 100 journeys/s at least then, so that a low first rate does not make it long.
    warmup, warm_rate = args.warmup, rates[0]
    if max(counts) > 1 and weighs_traffic():
        warm_rate = max(warm_rate, 100.0)
        warmup = max(warmup, SETTLE_JOURNEYS / warm_rate)
    client = redis.Redis.from_url(args.redis)
    version = client.info("server")["redis_version"]
    client.close()
    print(("command: python benchmarks/e2e.py " + shlex.join(sys.argv[1:])).rstrip())
    print(
        f"parameters: rates={rates} journeys/s, {args.seconds:g} s each, block rate "
        f"{args.block_rate:g}/s per chain, workers={counts}, partitions={args.partitions}, "
        f"warm-up {warmup:g} s at {warm_rate:g}/s; Python {sys.version.split()[0]}, "
        f"Redis {version}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    # Chains: one warm-up segment and one per rate, generated once, replayed for each run.
    synth = Synthesizer(args.fixtures or fixtures_path())
    recordings = root / "recordings"
    recordings.mkdir(exist_ok=True)
    plan: list[tuple[str, float, Segment]] = []
    for index, rate in enumerate([warm_rate, *rates]):
        per_block = max(1, round(rate / args.block_rate))
        block_rate = rate / per_block
        seconds = warmup if index == 0 else args.seconds
        blocks = max(2, round(seconds * block_rate))
        name = "warmup" if index == 0 else f"rate{rate:g}"
        lead = 0 if index == 0 else max(1, round(LEAD_SECONDS * block_rate))
        plan.append((name, rate, synth.segment(recordings, name, blocks, per_block, lead)))
    journeys = {j.hash: j for _, _, s in plan for j in s.journeys}
    print(
        f"chains: {len(journeys):,} journeys in {sum(s.blocks for _, _, s in plan)} blocks per "
        f"chain ({sum(p.stat().st_size for _, _, s in plan for p in s.files.values()) / MiB:.0f} "
        f"MiB of recordings)",
        flush=True,
    )
    print("check: " + asyncio.run(check_segment(plan[1][2])), flush=True)
    print("check: " + asyncio.run(check_segment(plan[-1][2], blocks=LAG + 1)), flush=True)
    if args.check:
        return 0

    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver: Receiver | None = None
    runs: list[Run] = []
    results: dict[int, list[Step]] = {}
    problems: dict[int, dict[str, int]] = {}
    try:
        receiver = Receiver(secret)
        for count in counts:
            run = Run(args.redis, count, args.partitions, root, split=args.split)
            if args.batch_records is not None:
                run.worker_env["OCSTREAM_XCM_BATCH_RECORDS"] = str(args.batch_records)
            if args.batch_seconds is not None:
                run.worker_env["OCSTREAM_XCM_BATCH_SECONDS"] = str(args.batch_seconds)
            runs.append(run)
            used0 = int(run.client.info("memory")["used_memory"])
            started = time.monotonic()
            run.start_workers(args.timeout)
            run.subscribe(receiver, secret)
            print(
                f"{count} worker(s){' (--role match) + 1 --role deliver' if args.split else ''} "
                f"ready in {time.monotonic() - started:.1f} s; {run.owners()}",
                flush=True,
            )
            # The receiver's counts are since its start, over every run.
            before = receiver.counts()
            expected = Counter({k: before.get(k, 0) for k in ("xcm.sent", "xcm.received")})
            receiver.take()
            results[count] = []
            for name, rate, segment in plan:
                step = Step(
                    workers=count,
                    nominal=rate,
                    per_block=segment.per_block,
                    block_rate=rate / segment.per_block,
                    journeys=len(segment.journeys),
                )
                run_step(
                    run, receiver, segment, step, name, expected, args.drain_timeout, args.py_spy
                )
                label = "warm-up" if name == "warmup" else f"rate {rate:g}"
                print(step_line(step, label), flush=True)
                if name == "warmup":
                    if not step.drained:
                        raise Incomplete(f"the warm-up was not delivered:\n{run.tails()}")
                    if count > 1:
                        # The group was dealt before any traffic: the leader's looks at the
                        # warm-up's traffic may rebalance it, which the timed steps should
                        # not measure (docs/transport.md, "Assignment weighed by traffic").
                        wait_traffic_settled(run.workers, f"{count} workers")
                    continue
                results[count].append(step)
                if not step.kept_up:
                    break  # saturated: higher rates would only queue more
            problems[count] = correctness(run)
            print(
                f"  {count} worker(s): Redis used_memory {used0 / MiB:.0f} -> "
                f"{int(run.client.info('memory')['used_memory']) / MiB:.0f} MiB; "
                f"notifications: {problems[count]}",
                flush=True,
            )
            run.stop()
    except Incomplete as exc:
        print(f"INCOMPLETE: {exc}", file=sys.stderr)
        if runs:
            print(runs[-1].tails(), file=sys.stderr)
        return 1
    finally:
        for run in runs:
            run.stop()
        if receiver is not None:
            receiver.stop()

    print()
    print(
        "| workers | asked /s | K x blocks/s | offered /s | delivered /s | received p50 s | "
        "p99 s | growth s | sent p50 s | p99 s | backlog | drain s | peak RSS ingress / workers "
        "MiB | Redis MiB | Redis in kB/journey | CPU ms/journey workers + ingress + redis | "
        "p99 / block CPU | kept up |"
    )
    print("|" + "---|" * 18)
    for count, steps in results.items():
        for s in steps:
            print(
                f"| {count} | {s.nominal:g} | {s.per_block} x {s.block_rate:.2f} | "
                f"{s.offered:.1f} | {s.delivered:.1f} | {s.p50:.2f} | {s.p99:.2f} | "
                f"{s.growth:+.2f} | {s.sent_p50:.2f} | {s.sent_p99:.2f} | {s.backlog} | "
                f"{s.drain:.2f} | "
                f"{s.rss_ingress / MiB:.0f} / {'+'.join(f'{r / MiB:.0f}' for r in s.rss_workers)}"
                f" | {s.redis_used / MiB:.0f} | {s.redis_in / 1000:.1f} | "
                f"{worker_cpu(s)} + {s.cpu['ingress']:.2f} + "
                f"{s.cpu['redis']:.2f} | {block_cpu_ratio(s):.2f} | "
                f"{'yes' if s.kept_up else 'no'} |"
            )
    sustained: dict[int, float] = {}
    capacity: dict[int, float] = {}
    for count, steps in results.items():
        sustained[count] = max([s.offered for s in steps if s.kept_up], default=0.0)
        capacity[count] = max([s.delivered for s in steps], default=0.0)
        print(
            f"SUSTAINED {count} worker(s): {sustained[count]:.1f} journeys/s (the highest offered "
            f"rate kept up with); highest delivered rate {capacity[count]:.1f} journeys/s"
        )
    if 1 in sustained and 2 in sustained and sustained[1] > 0 and capacity[1] > 0:
        print(
            f"RATIO 2 workers / 1 worker: sustained {sustained[2] / sustained[1]:.2f}, "
            f"highest delivered {capacity[2] / capacity[1]:.2f}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    bad = {
        c: {k: v for k, v in p.items() if v and not k.startswith("undelivered")}
        for c, p in problems.items()
    }
    bad = {c: p for c, p in bad.items() if p}
    if bad:
        print(f"UNEXPECTED notifications: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
