"""Record from a node, replay the file as a chain: the same blocks come out."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from ocstream.ingress.config import NetworkConfig
from ocstream.ingress.raw import load_v1_cbor
from ocstream.ingress.replay import RecordingError, ReplayNode, ReplaySubscription
from tests.ingress.rpc_server import RecordedChainServer
from tests.ingress.test_follower import FIRST, URN, Harness, numbers
from tests.workers import ocstream_env


async def test_record_then_replay_publishes_the_same_blocks(
    redis_url: str, prefix: str, fixtures_dir: Path, tmp_path: Path
) -> None:
    blocks = load_v1_cbor(fixtures_dir / "raw/v1/polkadot-17844552-20.cbor.bin")
    server = RecordedChainServer(
        blocks,
        spec_version=9430,
        metadata=(fixtures_dir / "metadata/polkadot-9430.scale").read_bytes(),
    )
    url = await server.start()
    await server.finalize(FIRST + 19)
    config = tmp_path / "net.toml"
    config.write_text(f'[[networks]]\nid = "{URN}"\nprovider = {{ type = "rpc", url = "{url}" }}\n')
    out = tmp_path / "polkadot.jsonl.gz"
    env = ocstream_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocstream",
        "record",
        "--config",
        str(config),
        "--network",
        URN,
        "--from",
        str(FIRST + 5),
        "--to",
        str(FIRST + 14),
        "--out",
        str(out),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    await server.stop()  # from here on, no node at all
    assert proc.returncode == 0, output.decode()
    assert f"recorded 10 blocks of {URN}" in output.decode()

    harness = Harness(redis_url, prefix, ["ws://127.0.0.1:1/"])
    harness.follower.network = NetworkConfig.model_validate(
        {"id": URN, "provider": {"type": "replay", "file": str(out), "rate": 200}}
    )
    harness.start()
    try:
        replayed = await harness.wait_published(10)
    finally:
        await harness.stop()
    assert numbers(replayed) == list(range(FIRST + 5, FIRST + 15))
    recorded = {b.number: b for b in blocks}
    for block in replayed:
        assert block.hash == recorded[block.number].hash
        assert len(block.extrinsics) == len(recorded[block.number].extrinsics)


async def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(RecordingError, match="not an ocstream-recording"):
        ReplayNode(bad, rate=1)
    with pytest.raises(RecordingError, match="not a readable recording"):
        ReplayNode(tmp_path / "missing.jsonl", rate=1)


async def test_a_slow_follower_gets_the_newest_due_head_so_the_replay_keeps_its_rate() -> None:
    """The schedule does not wait for the follower: one that takes 50 ms per head on a 100
    heads/s replay is handed the newest head due each time (it skips heads, and fetches the
    blocks in between itself), and still reaches the end."""
    heads = [{"number": hex(n)} for n in range(1, 21)]
    subscription = ReplaySubscription(heads, rate=100.0)
    seen: list[int] = []
    while not seen or seen[-1] < 20:
        seen.append(int((await subscription.next(timeout=5.0))["number"], 16))
        await asyncio.sleep(0.05)  # the follower processing the block
    assert seen == sorted(set(seen)), seen  # never backwards, never twice
    assert len(seen) < 20, seen  # heads were skipped rather than the schedule slipping
    # At the end, finality stalls on the last head.
    assert int((await subscription.next(timeout=0.2))["number"], 16) == 20
