"""Following many chains at once: CPU share of one core and head-to-publish latency.

    python benchmarks/ingress.py [--redis URL] [--chains 12] [--rate 10] [--rounds 3]
                                 [--gc default tuned]

A recording of 20 real Polkadot blocks (raw SCALE, metadata V14) is made once from the tests'
recorded-chain JSON-RPC server (``ocstream record``'s code path). Then N networks replay it at
RATE blocks/s each. Every block is fetched from the replay, decoded with the cached cyscale
decoders, and appended to the ``blocks`` topic on a real Redis, all in this one process. The
script measures:

* CPU share: process CPU time / wall time, as a fraction of one core;
* publish latency: from a finalized head's notification to the XADD of its block, p50 and p99.

Both are measured in the steady state: each round first starts the N chains once (each
network's first block waits for its runtime's decoders to be built, a one-time cost reported
apart as the start-up), then measures 1 and N chains with those decoders built, each on a
fresh key prefix.

The baseline, in the same run, is one chain alone. The ratios printed are CPU(N) / (N × CPU(1))
(below 1: work shared across chains, such as one decoder per runtime) and p99(N) / p99(1)
(the latency cost of N chains on one event loop).

**Garbage collector policies** (``--gc``). ``default`` is Python's own collector settings;
``tuned`` is what ``ocstream ingress`` sets once it has started (``ocstream/gctune.py``: the
start-up heap frozen, young generations collected on a clock, each runtime's decoders moved
out of the young generations when they are built). The collector's settings are process-wide,
so each round runs each policy in a child process of its own, the policies alternating; with
both, the script also prints tuned / default for CPU and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from procs import percentile  # noqa: E402  (benchmarks/ is this script's directory)

from ocstream.gctune import collect_young, tune_gc  # noqa: E402
from ocstream.ingress.config import NetworkConfig  # noqa: E402
from ocstream.ingress.decode import DecoderCache  # noqa: E402
from ocstream.ingress.follower import ChainFollower, record  # noqa: E402
from ocstream.ingress.metrics import IngressMetrics  # noqa: E402
from ocstream.ingress.raw import load_v1_cbor  # noqa: E402
from ocstream.ingress.registry import NetworkRegistry  # noqa: E402
from ocstream.transport import TopicWriter  # noqa: E402
from tests.ingress.rpc_server import RecordedChainServer  # noqa: E402

FIXTURES = Path(os.environ.get("OCSTREAM_FIXTURES", REPO / "tests" / "fixtures"))
BLOCKS = 20


async def make_recording(fixtures: Path, out: Path) -> None:
    blocks = load_v1_cbor(fixtures / "raw/v1/polkadot-17844552-20.cbor.bin")
    metadata = (fixtures / "metadata/polkadot-9430.scale").read_bytes()
    server = RecordedChainServer(blocks, spec_version=9430, metadata=metadata)
    url = await server.start()
    first, last = blocks[0].number, blocks[-1].number
    assert first is not None and last is not None, "recorded blocks have numbers"
    await server.finalize(last)
    network = NetworkConfig.model_validate(
        {"id": "urn:ocn:polkadot:0", "provider": {"type": "rpc", "url": url}}
    )
    await record(network, first, last, out)
    await server.stop()


async def one_round(
    redis_url: str, recording: Path, chains: int, rate: float, decoders: DecoderCache
) -> dict[str, float]:
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"bench-ingress-{uuid.uuid4().hex[:6]}:"
    writer = TopicWriter(client, prefix=prefix)
    registry = NetworkRegistry(client, prefix)
    metrics = IngressMetrics()
    await writer.create_topic("blocks", 16)
    followers = [
        ChainFollower(
            NetworkConfig.model_validate(
                {
                    "id": f"urn:ocn:bench{n}:0",  # each a relay chain of its own, as recorded
                    "provider": {"type": "replay", "file": str(recording), "rate": rate},
                }
            ),
            writer=writer,
            registry=registry,
            decoders=decoders,
            metrics=metrics,
        )
        for n in range(chains)
    ]
    tasks = [asyncio.create_task(f.run()) for f in followers]
    # Warm-up: each network's first block waits for its runtime's decoders to be built, a
    # one-time cost per (network, spec version), reported apart from the steady state.
    started = time.perf_counter()
    while any(metrics.networks[f.urn].blocks_published < 1 for f in followers):
        await asyncio.sleep(0.01)
    warmup = time.perf_counter() - started
    for m in metrics.networks.values():
        m.publish_latencies.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while sum(m.blocks_published for m in metrics.networks.values()) < chains * BLOCKS:
        await asyncio.sleep(0.01)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(x for m in metrics.networks.values() for x in m.publish_latencies)
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        await client.delete(key)
    await client.aclose()
    return {
        "cpu_share": cpu / wall,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "blocks": float(len(latencies)),
        "warmup": warmup,
    }


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


async def child(args: argparse.Namespace) -> None:
    """One round under one collector policy; prints the figures as JSON: the start-up of N
    chains (their decoders built), then both chain counts in the steady state, with the
    decoders the start-up built."""
    clock = None
    if args.child == "tuned":
        tune_gc()
        clock = asyncio.create_task(collect_young())
    decoders = DecoderCache(max_entries=args.chains + 1)
    start = await one_round(args.redis, args.recording, args.chains, args.rate, decoders)
    out: dict[str, Any] = {"start": start["warmup"]}
    for chains in (1, args.chains):
        out[str(chains)] = await one_round(args.redis, args.recording, chains, args.rate, decoders)
    if clock is not None:
        clock.cancel()
    print(json.dumps(out))


def run_child(args: argparse.Namespace, policy: str, recording: Path) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", policy, "--recording", str(recording),
        "--redis", args.redis, "--chains", str(args.chains), "--rate", str(args.rate),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {policy} round failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--chains", type=int, default=12)
    parser.add_argument("--rate", type=float, default=10.0, help="blocks/s per chain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument(
        "--gc", nargs="+", choices=("default", "tuned"), default=["default", "tuned"],
        help="collector policies, each round runs each in a child process",
    )  # fmt: skip
    parser.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    parser.add_argument("--recording", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        await child(args)
        return
    results: dict[tuple[str, int], list[dict[str, float]]] = {
        (policy, chains): [] for policy in args.gc for chains in (1, args.chains)
    }
    starts: dict[str, list[float]] = {policy: [] for policy in args.gc}
    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "polkadot.jsonl"
        await make_recording(args.fixtures, recording)
        for n in range(args.rounds):
            order = args.gc if n % 2 == 0 else list(reversed(args.gc))
            for policy in order:
                figures = run_child(args, policy, recording)
                starts[policy].append(figures["start"])
                for chains in (1, args.chains):
                    results[(policy, chains)].append(figures[str(chains)])
    for policy in args.gc:
        print(
            f"{policy:>7} gc: start-up of {args.chains} chains (each one's decoders built, its"
            f" first block published) {statistics.median(starts[policy]):.2f} s"
        )
    for (policy, chains), rounds in results.items():
        print(
            f"{policy:>7} gc, {chains:3d} chain(s) at {args.rate:g} blocks/s:"
            f" CPU {median_of(rounds, 'cpu_share'):.1%} of one core,"
            f" publish latency p50 {median_of(rounds, 'p50') * 1000:.1f} ms"
            f" p99 {median_of(rounds, 'p99') * 1000:.1f} ms"
            f" ({int(median_of(rounds, 'blocks'))} blocks measured per round)"
        )
    for policy in args.gc:
        one, many = results[(policy, 1)], results[(policy, args.chains)]
        cpu_ratio = median_of(many, "cpu_share") / (args.chains * median_of(one, "cpu_share"))
        p99_ratio = median_of(many, "p99") / median_of(one, "p99")
        print(
            f"RATIOS {policy} gc: cpu({args.chains})/({args.chains}*cpu(1))={cpu_ratio:.2f}"
            f" p99({args.chains})/p99(1)={p99_ratio:.2f}"
        )
    if len(args.gc) == 2:
        start = statistics.median(starts["tuned"]) / statistics.median(starts["default"])
        print(f"RATIOS tuned/default: start-up of {args.chains} chains={start:.2f}")
        for chains in (1, args.chains):
            tuned, default = results[("tuned", chains)], results[("default", chains)]
            print(
                f"RATIOS tuned/default, {chains} chain(s):"
                f" cpu={median_of(tuned, 'cpu_share') / median_of(default, 'cpu_share'):.2f}"
                f" p99={median_of(tuned, 'p99') / median_of(default, 'p99'):.2f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
