"""Event decoding speed: ocstream's cached cyscale decoders against pure scalecodec, in one run.

    python benchmarks/decode.py [--seconds S] [--baseline-dir DIR] [--no-install]

Decodes the ``System.Events`` value of the real Polkadot block #19772575 (81 events,
``raw/sidecar/polkadot-19772575.json``, metadata ``polkadot-1000001.scale``) over and over:

a. pure scalecodec 1.2.12 (py-scale-codec), ``create_scale_object(...).decode()``: the baseline;
b. ocstream's compiled decoder, plain values (``RuntimeDecoder.decode_event_values``);
c. ocstream's ``RuntimeDecoder.decode_events``: b plus the ExtendedBlock contract (JSON
   normalisation and one ``Event`` model per event), what the ingress pays per block.

Prints events/s for each and the ratios b/a and c/a, and checks that a and b decode the same
events (same pallets, names and values once both are normalised to the JSON conventions).

cyscale and scalecodec both install a module named ``scalecodec``, so they cannot share an
environment: the baseline is installed with pip into ``--baseline-dir`` (default
``build/scalecodec-baseline``, once) and runs in a child Python with that directory first on its
path. The decoder under test is built once, as the ingress's DecoderCache does, and not timed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ocstream.ingress.decode import DecoderCache
from ocstream.ingress.model import to_json_value
from ocstream.ingress.raw import load_sidecar_json

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("OCSTREAM_FIXTURES", REPO / "tests" / "fixtures"))
BLOCK = "raw/sidecar/polkadot-19772575.json"
NETWORK = "urn:ocn:polkadot:0"
BASELINE_VERSION = "1.2.12"

# Runs in the child Python whose `scalecodec` is py-scale-codec. Prints one JSON line.
BASELINE_SCRIPT = r"""
import json, sys, time
import scalecodec
from scalecodec.base import RuntimeConfigurationObject, ScaleBytes
from scalecodec.type_registry import load_type_registry_preset

metadata_path, events_hex, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rc = RuntimeConfigurationObject(implements_scale_info=True)
rc.update_type_registry(load_type_registry_preset("core"))
t0 = time.perf_counter()
metadata = rc.create_scale_object(
    "MetadataVersioned", data=ScaleBytes(open(metadata_path, "rb").read())
)
metadata.decode()
rc.add_portable_registry(metadata)
build = time.perf_counter() - t0
events_type = (
    metadata.get_metadata_pallet("System").get_storage_function("Events").get_value_type_string()
)
raw = bytes.fromhex(events_hex[2:])

def decode():
    return rc.create_scale_object(events_type, data=ScaleBytes(raw), metadata=metadata).decode()

values = decode()
best, runs, deadline = float("inf"), 0, time.perf_counter() + seconds
while time.perf_counter() < deadline or runs < 3:
    t0 = time.perf_counter()
    decode()
    best = min(best, time.perf_counter() - t0)
    runs += 1
print(json.dumps({
    "module": scalecodec.__file__,
    "build_s": build,
    "events": len(values),
    "best_s": best,
    "runs": runs,
    "values": [[v["module_id"], v["event_id"], v["attributes"]] for v in values],
}, default=repr))
"""


def install_baseline(directory: Path) -> None:
    print(f"installing scalecodec=={BASELINE_VERSION} into {directory} (once) ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(directory),
            f"scalecodec=={BASELINE_VERSION}",
        ],
        check=True,
    )


def run_baseline(directory: Path, metadata: Path, events_hex: str, seconds: float) -> Any:
    env = {**os.environ, "PYTHONPATH": str(directory)}
    out = subprocess.run(
        [sys.executable, "-c", BASELINE_SCRIPT, str(metadata), events_hex, str(seconds)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = orjson.loads(out.strip().splitlines()[-1])
    # The child must have imported py-scale-codec, not cyscale from the venv.
    if not str(result["module"]).startswith(str(directory)):
        raise SystemExit(f"the baseline imported {result['module']}, not py-scale-codec")
    return result


def best_time(decode: Callable[[], object], seconds: float) -> tuple[float, int]:
    """The fastest of as many runs as fit in ``seconds`` (after one warm-up run)."""
    decode()
    best, runs = float("inf"), 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or runs < 3:
        t0 = time.perf_counter()
        decode()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per case")
    parser.add_argument("--baseline-dir", type=Path, default=REPO / "build" / "scalecodec-baseline")
    parser.add_argument("--no-install", action="store_true", help="fail if the baseline is absent")
    args = parser.parse_args()

    raw = load_sidecar_json(FIXTURES / BLOCK)
    assert isinstance(raw.events, bytes) and raw.metadata and raw.spec_version
    metadata = FIXTURES / raw.metadata
    events: bytes = raw.events
    events_hex = "0x" + events.hex()

    if not (args.baseline_dir / "scalecodec" / "base.py").is_file():
        if args.no_install:
            raise SystemExit(f"no py-scale-codec in {args.baseline_dir}")
        install_baseline(args.baseline_dir)

    cache = DecoderCache()
    t0 = time.perf_counter()
    decoder = cache.get_or_build(NETWORK, raw.spec_version, metadata.read_bytes)
    build = time.perf_counter() - t0

    base = run_baseline(args.baseline_dir, metadata, events_hex, args.seconds)
    values_best, values_runs = best_time(lambda: decoder.decode_event_values(events), args.seconds)
    models_best, models_runs = best_time(lambda: decoder.decode_events(events), args.seconds)

    count = base["events"]
    ours = decoder.decode_event_values(raw.events)
    same_names = [(v[0], v[1]) for v in base["values"]] == [
        (v["module_id"], v["event_id"]) for v in ours
    ]
    same_values = sum(
        to_json_value(b[2]) == to_json_value(o["attributes"])
        for b, o in zip(base["values"], ours, strict=True)
    )

    a = count / base["best_s"]
    b = count / values_best
    c = count / models_best
    print(f"Polkadot #{raw.number}: {count} events, metadata {raw.metadata}")
    print(f"decoder build: py-scale-codec {base['build_s']:.2f} s, ocstream/cyscale {build:.2f} s")
    print(f"a  pure scalecodec {BASELINE_VERSION}              {a:>11,.0f} events/s")
    print(f"b  ocstream compiled decoder, values  {b:>11,.0f} events/s   b/a = {b / a:.1f}x")
    print(f"c  ocstream decode_events, models     {c:>11,.0f} events/s   c/a = {c / a:.1f}x")
    print(f"same events: {'yes' if same_names else 'NO'}; identical values: {same_values}/{count}")
    print(f"RATIOS b/a={b / a:.1f} c/a={c / a:.1f} (target >= 50)")


if __name__ == "__main__":
    main()
