"""Record compression: zstd with the shipped dictionary against zstd alone, in one run.

    python benchmarks/compression.py [--journeys N] [--repeat R]

Three sets of values, as the transport writes them:

* **recorded legs**: every leg that extraction finds in the 15 recorded cases of
  ``tests/fixtures/cases`` (HRMP, UMP, DMP, hops, failed receipts; v1 and head runtimes), the
  records ``xcm_extract`` writes to ``xcm-legs``. The dictionary was not trained on them
  (``scripts/zstd_dictionary.py``: it was trained on the e2e benchmark's Asset Hub -> relay
  journeys);
* **synthetic legs**: the three legs of ``--journeys`` journeys of ``benchmarks/journeys.py``
  (what ``benchmarks/xcm.py`` publishes), between ten parachains;
* **recorded blocks**: the same cases' blocks as the ingress publishes them (above
  ``wire.DICT_MAX_BYTES``, so they are compressed without the dictionary either way).

For each set and codec (``zstd``, the baseline; ``zstd-dict``, the default; ``zlib``): what the
``z`` field holds as a share of the values' bytes, and the µs to compress and to decompress a
value (the best of ``--repeat`` passes), through ``ocstream.transport.wire`` as a worker calls
it. Prints the ratios ``zstd-dict / zstd`` for bytes and both times, and checks that every value
comes back as it was written.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from journeys import journey_legs  # noqa: E402  benchmarks/ is this script's directory

from ocstream.ingress.decode import DecoderCache  # noqa: E402
from ocstream.testing import blocks_from_case, fixtures_path  # noqa: E402
from ocstream.transport import wire  # noqa: E402
from ocstream.xcm.codec import XcmCodec  # noqa: E402
from ocstream.xcm.extract import extract  # noqa: E402
from ocstream.xcm.legs import leg_record  # noqa: E402

CODECS = ("zstd", "zstd-dict", "zlib")
RELAY_METADATA = "polkadot-1005001.scale"


def recorded() -> tuple[list[bytes], list[bytes]]:
    """The legs and the blocks of every recorded case."""
    fixtures = fixtures_path()
    decoders = DecoderCache()

    def codec_of(network: str, metadata_file: str) -> XcmCodec:
        spec = int(metadata_file.removesuffix(".scale").rsplit("-", 1)[1])
        path = fixtures / "metadata" / metadata_file
        return XcmCodec(decoders.get_or_build(network, spec, path.read_bytes))

    relay = codec_of("urn:ocn:polkadot:0", RELAY_METADATA)
    legs: list[bytes] = []
    blocks: list[bytes] = []
    for case_path in sorted((fixtures / "cases").glob("*.json")):
        case = orjson.loads(case_path.read_bytes())
        found = blocks_from_case(case_path, decoders=decoders)
        for entry, block in zip(case["blocks"], found, strict=True):
            metadata = entry.get("metadata")
            codec = codec_of(entry["chain"], metadata.rsplit("/", 1)[-1]) if metadata else relay
            legs += [leg_record(leg) for leg in extract(block, codec).legs]
            blocks.append(block.to_json_bytes())
    return legs, blocks


def synthetic(journeys: int) -> list[bytes]:
    rng = random.Random(1)
    return [value for j in range(journeys) for _, value in journey_legs(j, rng)]


def _best(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure(values: list[bytes], codec: str, repeat: int) -> tuple[float, float, float]:
    """(compressed bytes / bytes, µs to compress a value, µs to decompress one)."""
    packed = [wire.compress(value, codec) for value in values]
    for value, frame in zip(values, packed, strict=True):
        if wire.decompress(frame) != value:
            raise SystemExit(f"{codec}: a value did not come back as it was written")
    compress_s = _best(repeat, lambda: [wire.compress(v, codec) for v in values])
    decompress_s = _best(repeat, lambda: [wire.decompress(p) for p in packed])
    share = sum(map(len, packed)) / sum(map(len, values))
    return share, compress_s / len(values) * 1e6, decompress_s / len(values) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--journeys", type=int, default=2000, help="synthetic journeys")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best one counts")
    args = parser.parse_args()
    legs, blocks = recorded()
    sets = {
        "recorded legs": legs,
        "synthetic legs": synthetic(args.journeys),
        "recorded blocks": blocks,
    }
    print(f"command: python benchmarks/compression.py --journeys {args.journeys}")
    limit = f"{wire.DICT_MAX_BYTES:,} B"
    print(f"level {wire.COMPRESS_LEVEL}; dictionary {wire.DICT_ID:#x}, for values up to {limit}")
    print(f"{'values':16s} {'count':>6s} {'mean B':>8s}  {'codec':10s} {'share':>6s} "
          f"{'µs in':>7s} {'µs out':>7s}")  # fmt: skip
    ratios: list[str] = []
    for name, values in sets.items():
        mean = sum(map(len, values)) / len(values)
        results = {codec: measure(values, codec, args.repeat) for codec in CODECS}
        for codec, (share, took_in, took_out) in results.items():
            print(f"{name:16s} {len(values):6d} {mean:8.0f}  {codec:10s} {share:6.3f} "
                  f"{took_in:7.2f} {took_out:7.2f}")  # fmt: skip
        base, new = results["zstd"], results["zstd-dict"]
        key = name.replace(" ", "_")
        ratios += [
            f"{key}.bytes={new[0] / base[0]:.2f}",
            f"{key}.compress={new[1] / base[1]:.2f}",
            f"{key}.decompress={new[2] / base[2]:.2f}",
        ]
    print("RATIOS zstd-dict/zstd " + " ".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
