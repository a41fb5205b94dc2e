"""Reading an ExtendedBlock from the ``blocks`` topic: what the XCM agent pays per block before
extracting anything, in one run.

    python benchmarks/block_read.py [--seconds S]

Two recorded blocks, converted to ExtendedBlocks as the tests convert them and written as the
ingress writes them (``to_json_bytes``): Polkadot #26185925 (343 kB of JSON, 56 events, a
``ParaInherent.enter`` of 260 kB) and Polkadot Asset Hub #10260145 (67 kB, 38 events).

a. ``orjson.loads`` of the bytes: parsing alone, the floor;
b. ``ExtendedBlock.from_json_bytes``: parsing, validation and the JSON conventions;
c. the Python walk :func:`~ocstream.ingress.model.to_json_value` over every free-form value of
   the block (event fields, extrinsic arguments and errors): what ``from_json_bytes`` did to
   each of them until the values were checked in C (``_normalised``);
d. that check (``_normalised``) over the same values.

Prints per block the time of each, the ratios b/a and b/(b - d + c) (now against reading the
block with the walk, estimated as b with d's share replaced by c's), and c/d.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from ocstream.ingress.model import ExtendedBlock, _normalised, to_json_value
from ocstream.testing import block_from_decoded, fixtures_path

BLOCKS = (
    ("urn:ocn:polkadot:0", "decoded/polkadot/26185925.cbor"),
    ("urn:ocn:polkadot:1000", "decoded/assethub/10260145.cbor"),
)


def _each(fn: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    return [fn(v) for v in values]


def timed(fn: Callable[[], Any], seconds: float) -> float:
    """Seconds per call: the best of five slices of ``seconds / 5``."""
    best = float("inf")
    for _ in range(5):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 5 or calls < 3:
            fn()
            calls += 1
        best = min(best, elapsed / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per case")
    args = parser.parse_args()
    for network, path in BLOCKS:
        block = block_from_decoded(fixtures_path() / path, network=network)
        data = block.to_json_bytes()
        read = ExtendedBlock.from_json_bytes(data)
        assert read == block, "the block does not read back equal"
        values = [e.fields for e in read.events]
        values += [x.args for x in read.extrinsics] + [x.error for x in read.extrinsics]
        assert all(to_json_value(v) == v for v in values), "the recorded block is not normalised"

        a = timed(partial(orjson.loads, data), args.seconds)
        b = timed(partial(ExtendedBlock.from_json_bytes, data), args.seconds)
        c = timed(partial(_each, to_json_value, values), args.seconds)
        d = timed(partial(_each, _normalised, values), args.seconds)
        print(
            f"{path} ({len(data) / 1000:.0f} kB, {len(read.events)} events): "
            f"a orjson.loads {a * 1e3:.2f} ms, b from_json_bytes {b * 1e3:.2f} ms, "
            f"c the walk {c * 1e3:.2f} ms, d the check {d * 1e3:.2f} ms"
        )
        print(
            f"  RATIOS b/a {b / a:.2f}  b/(b-d+c) {b / (b - d + c):.2f}  c/d {c / d:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
