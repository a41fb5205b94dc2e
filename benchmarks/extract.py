"""What a worker pays per block before matching: reading the block, extracting its legs.

    python benchmarks/extract.py [--per-block 50] [--repeat 50]

Builds the synthetic chains of ``benchmarks/e2e.py`` (``e2e_chain.py``: one real UMP teleport of
the fixtures, Asset Hub -> Polkadot, repeated ``--per-block`` times per block), decodes their
blocks through the follower's own fetch path, and times, for the busiest Asset Hub block (the
sends) and the busiest relay block (the receipts), what ``xcm_extract`` does with each:

* *parse*: ``ExtendedBlock.from_json_bytes`` of the block's bytes as the topic holds them,
  under the ingress's ``normalised`` header as the worker reads them, and (*unvouched*) as it
  reads a block from another producer, each value checked against the JSON conventions;
* *extract*: ``ocstream.xcm.extract.extract`` with the sender of each send, as the worker calls
  it (``BlockSenders`` per block, each sender dumped), and without;
* *records*: ``leg_record`` of every leg.

The baseline, in the same run, is ``orjson.loads`` of the same bytes: the least any reader of the
block pays. Each figure is the best of 5 runs of ``--repeat`` calls; the ratios to the baseline
close the output.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from e2e_chain import ASSET_HUB, RELAY, SPEC_VERSION, Synthesizer, network_config

from ocstream.ingress.decode import DecoderCache
from ocstream.ingress.follower import ChainFollower
from ocstream.ingress.model import ExtendedBlock
from ocstream.ingress.replay import ReplayNode
from ocstream.testing import fixtures_path
from ocstream.xcm.codec import XcmCodec
from ocstream.xcm.extract import extract
from ocstream.xcm.legs import leg_record
from ocstream.xcm.sender import BlockSenders


def best_ms(call: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            call()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1000


async def busiest_blocks(per_block: int) -> tuple[dict[str, ExtendedBlock], DecoderCache]:
    """The Asset Hub block and the relay block with the most journeys, decoded."""
    decoders = DecoderCache()
    found: dict[str, ExtendedBlock] = {}
    with tempfile.TemporaryDirectory() as directory:
        segment = Synthesizer(fixtures_path()).segment(Path(directory), "x", 2, per_block, lead=1)
        for network, path in segment.files.items():
            follower = ChainFollower(
                network_config(network, path, 1.0), writer=None, registry=None, decoders=decoders
            )
            node = ReplayNode(path, 1.0)
            for number in range(segment.first[network], segment.last[network] + 1):
                block = await follower.fetch(node, number)
                size = len(block.extrinsics) + len(block.events)
                current = found.get(network)
                if current is None or size > len(current.extrinsics) + len(current.events):
                    found[network] = block
    return found, decoders


def measure(name: str, block: ExtendedBlock, decoder: Any, repeat: int) -> str:
    """Print one block's figures; returns its ratios."""
    raw = block.to_json_bytes()
    codec, prefix = XcmCodec(decoder), decoder.ss58_prefix

    parsed = ExtendedBlock.from_json_bytes(raw)

    def with_senders() -> Any:
        """What the worker does for a block: its senders found through one ``BlockSenders``."""
        senders = BlockSenders(parsed, ss58_prefix=prefix)
        return extract(parsed, codec, ss58_prefix=prefix, sender_of=senders.as_json)

    legs = with_senders().legs
    baseline = best_ms(lambda: orjson.loads(raw), repeat)
    parse = best_ms(lambda: ExtendedBlock.from_json_bytes(raw, normalised=True), repeat)
    unvouched = best_ms(lambda: ExtendedBlock.from_json_bytes(raw), repeat)
    with_sender = best_ms(with_senders, repeat)
    without = best_ms(lambda: extract(parsed, codec, ss58_prefix=prefix), repeat)
    records = best_ms(lambda: [leg_record(leg) for leg in legs], repeat)
    print(
        f"{name}: {len(raw) / 1000:.0f} kB, {len(block.events)} events, {len(legs)} legs: "
        f"orjson.loads {baseline:.2f} ms, parse {parse:.2f} ms ({unvouched:.2f} unvouched), "
        f"extract {with_sender:.2f} ms "
        f"({without:.2f} without senders), leg records {records:.2f} ms"
    )
    total = parse + with_sender + records
    return (
        f"{block.network.rsplit(':', 1)[1]}: parse/loads={parse / baseline:.2f} "
        f"unvouched/loads={unvouched / baseline:.2f} "
        f"(parse+extract+records)/loads={total / baseline:.2f} "
        f"per leg {total / max(1, len(legs)) * 1000:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-block", type=int, default=50, help="journeys per block")
    parser.add_argument("--repeat", type=int, default=50, help="calls per timed run")
    args = parser.parse_args()
    print("command: python benchmarks/extract.py " + " ".join(sys.argv[1:]))
    blocks, decoders = asyncio.run(busiest_blocks(args.per_block))
    ratios = []
    for name, network in (("Asset Hub (sends)", ASSET_HUB), ("relay (receipts)", RELAY)):
        decoder = decoders.get(network, SPEC_VERSION)
        assert decoder is not None
        ratios.append(measure(name, blocks[network], decoder, args.repeat))
    print("RATIOS " + "  ".join(ratios))


if __name__ == "__main__":
    main()
