"""Make the zstd dictionary the transport compresses record values with
(``ocstream/transport/records.zdict``; ``docs/transport.md``, "Compressed values").

    python scripts/zstd_dictionary.py sample --match 'bench-e2e-*' --out /tmp/values.bin
    python scripts/zstd_dictionary.py train --samples /tmp/values.bin [--out FILE]
    python scripts/zstd_dictionary.py check --samples /tmp/other-values.bin [--dictionary FILE]

``sample`` reads, once a second, the entries added to every stream whose key matches
``--match`` (a Redis glob: run it next to ``python benchmarks/e2e.py``, whose chains are made
of the recorded blocks in ``tests/fixtures``), and keeps the values of the records that are
not blocks: legs, table changelogs, notifications, as the transport wrote them (decompressed).
It stops after ``--seconds`` or ``--values``.

``train`` trains a dictionary on the first half of the samples (zstd's COVER trainer, one
thread, so the same samples give the same dictionary), with the fixed id :data:`DICT_ID`, and
prints what it does to the other half, against zstd without a dictionary. ``check`` prints the
same for any samples and dictionary (for instance, the ``xcm.py`` benchmark's synthetic legs,
which the dictionary never saw).

Values of blocks are left out: they are tens of kilobytes, compress well without help, and
would fill the samples.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

import redis
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocstream.transport import wire  # noqa: E402

DEFAULT_OUT = Path(wire.__file__).with_name("records.zdict")


def _write_values(path: Path, values: list[bytes]) -> None:
    with path.open("wb") as out:
        for value in values:
            out.write(struct.pack(">I", len(value)))
            out.write(value)


def _read_values(path: Path) -> list[bytes]:
    data = path.read_bytes()
    values, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from(">I", data, at)
        values.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return values


def sample(args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(args.redis)
    last: dict[bytes, bytes] = {}
    kinds: dict[str, int] = {}
    values: list[bytes] = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and len(values) < args.values:
        for key in client.scan_iter(match=args.match, count=1000, _type="stream"):
            if b"blocks" in key:
                continue
            start = b"(" + last[key] if key in last else b"-"
            for entry_id, fields in client.xrange(key, min=start, count=5000):
                last[key] = entry_id
                value = wire.entry_value(fields)
                if value:
                    values.append(value)
                    kind = key.decode().rsplit(":", 2)[-2].rsplit("-", 1)[-1]
                    kinds[kind] = kinds.get(kind, 0) + 1
        time.sleep(1.0)
    _write_values(Path(args.out), values)
    print(f"{len(values)} values, {sum(map(len, values)):,} bytes, to {args.out}; by kind {kinds}")
    return 0 if values else 1


def _report(label: str, values: list[bytes], dictionary: zstandard.ZstdCompressionDict) -> None:
    plain = zstandard.ZstdCompressor(level=wire.COMPRESS_LEVEL)
    with_dict = zstandard.ZstdCompressor(level=wire.COMPRESS_LEVEL, dict_data=dictionary)
    raw = sum(map(len, values))
    for name, compressor in (("zstd", plain), ("zstd + dictionary", with_dict)):
        started = time.process_time()
        packed = sum(len(compressor.compress(v)) for v in values)
        took = (time.process_time() - started) / len(values) * 1e6
        print(f"  {label}, {name:18s}: {packed / raw:.3f} of {raw:,} bytes, {took:.2f} µs a value")


def train(args: argparse.Namespace) -> int:
    values = _read_values(Path(args.samples))
    random.Random(1).shuffle(values)
    half = len(values) // 2
    learn, held_out = values[:half], values[half:]
    dictionary = zstandard.train_dictionary(
        args.size, learn, dict_id=wire.DICT_ID, level=wire.COMPRESS_LEVEL, threads=1
    )
    Path(args.out).write_bytes(dictionary.as_bytes())
    print(f"{args.out}: {len(dictionary.as_bytes()):,} bytes, id {dictionary.dict_id()}")
    print(f"trained on {len(learn):,} values; on the {len(held_out):,} others:")
    _report("held out", held_out, dictionary)
    return 0


def check(args: argparse.Namespace) -> int:
    values = _read_values(Path(args.samples))
    dictionary = zstandard.ZstdCompressionDict(Path(args.dictionary).read_bytes())
    print(f"{args.dictionary}: id {dictionary.dict_id()}; {len(values):,} values:")
    _report(Path(args.samples).name, values, dictionary)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("sample", help="collect record values from a running benchmark")
    take.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    take.add_argument("--match", required=True, help="Redis glob of the stream keys")
    take.add_argument("--seconds", type=float, default=120.0)
    take.add_argument("--values", type=int, default=100_000)
    take.add_argument("--out", required=True)
    make = commands.add_parser("train", help="train the dictionary on collected values")
    make.add_argument("--samples", required=True)
    make.add_argument("--size", type=int, default=16_384, help="bytes of dictionary")
    make.add_argument("--out", default=str(DEFAULT_OUT))
    test = commands.add_parser("check", help="what a dictionary does to other values")
    test.add_argument("--samples", required=True)
    test.add_argument("--dictionary", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    return {"sample": sample, "train": train, "check": check}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
