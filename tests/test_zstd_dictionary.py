"""``scripts/zstd_dictionary.py``: sampling a run's values from Redis, training a dictionary
with the transport's id (the same samples give the same bytes), and checking it."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import redis
import zstandard

from ocstream.transport import TopicWriter, wire

from .conftest import SYSTEM_REDIS_URL

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "zstd_dictionary.py"
_spec = importlib.util.spec_from_file_location("zstd_dictionary", SCRIPT)
assert _spec is not None and _spec.loader is not None
SCRIPT_MODULE = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SCRIPT_MODULE)  # its sample-file format, read and written


def _values(count: int, seed: int) -> list[bytes]:
    """Leg-like JSON records: the same field names, different hex in each."""
    rng = random.Random(seed)
    return [
        orjson.dumps(
            {
                "kind": "sent",
                "origin": f"urn:ocn:polkadot:{rng.choice([1000, 2004, 2034])}",
                "messageHash": "0x" + rng.randbytes(32).hex(),
                "instructions": {"V4": [{"WithdrawAsset": [{"fun": {"Fungible": n}}]}]},
                "blockHash": "0x" + rng.randbytes(32).hex(),
                "blockNumber": str(rng.randrange(10**7)),
                "event": {"section": "XcmpQueue", "method": "XcmpMessageSent"},
            }
        )
        for n in range(count)
    ]


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


async def test_values_are_sampled_from_a_runs_streams(tmp_path: Path) -> None:
    redis_url = SYSTEM_REDIS_URL
    prefix = f"zdict-{uuid.uuid4().hex[:8]}:"
    values = _values(50, seed=1)
    async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
        await writer.create_topic("xcm-legs", 2)
        await writer.create_topic("blocks", 1)
        await writer.send_many("xcm-legs", [(b"k", value) for value in values])
        await writer.send("blocks", key=b"urn:ocn:polkadot:0", value=b'{"block": 1}')
    out = tmp_path / "values.bin"
    try:
        printed = _run(
            "sample", "--redis", redis_url, "--match", f"{prefix}*", "--seconds", "1",
            "--out", str(out),
        )  # fmt: skip
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
    assert printed.startswith("50 values"), printed
    assert sorted(SCRIPT_MODULE._read_values(out)) == sorted(
        values
    )  # decompressed; the block left out


def test_training_is_repeatable_and_the_dictionary_has_the_transports_id(tmp_path: Path) -> None:
    samples = tmp_path / "values.bin"
    SCRIPT_MODULE._write_values(samples, _values(2000, seed=2))
    first, second = tmp_path / "a.zdict", tmp_path / "b.zdict"
    printed = _run("train", "--samples", str(samples), "--size", "4096", "--out", str(first))
    _run("train", "--samples", str(samples), "--size", "4096", "--out", str(second))
    assert first.read_bytes() == second.read_bytes()
    made = zstandard.ZstdCompressionDict(first.read_bytes())
    assert made.dict_id() == wire.DICT_ID
    assert "held out, zstd + dictionary" in printed
    other = tmp_path / "other.bin"
    SCRIPT_MODULE._write_values(other, _values(300, seed=3))
    checked = _run("check", "--samples", str(other), "--dictionary", str(first))
    shares = [float(line.split(":")[1].split()[0]) for line in checked.splitlines()[1:]]
    assert len(shares) == 2 and shares[1] < shares[0], checked  # the dictionary helps
