"""A first run: the worker says when it has no networks, and its log at ``-l info`` is short.

Real worker processes, on the embedded Redis (the README's first command) and on the machine's
Redis. The worker's start and stop times are measured by ``benchmarks/worker_start.py``, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from ocstream.cli import NO_NETWORKS, _alone_in_its_group
from ocstream.runtime import QUIET_AT_INFO
from ocstream.settings import load_settings
from tests.workers import Worker, wait_for


def lines_before_ready(worker: Worker) -> list[str]:
    lines = cast(
        list[str],  # the predicate's truthy result: the log's lines
        wait_for(
            lambda: (
                (text := worker.log_text()) and "[^Worker]: Ready" in text and text.splitlines()
            ),
            60,
            f"{worker.name} to log Ready",
        ),
    )
    return lines[: next(i for i, line in enumerate(lines) if "[^Worker]: Ready" in line)]


def test_an_embedded_worker_without_networks_says_so_once(tmp_path: Path) -> None:
    worker = Worker("alone", tmp_path, redis_url=None, prefix="ocs:", app_id="ocstream")
    worker.start()
    try:
        worker.wait_assigned()
        said = [line for line in lines_before_ready(worker) if NO_NETWORKS in line]
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert len(said) == 1, worker.log_tail()
    assert "WARNING" in said[0]  # shown at faust's default level (warn) too
    assert "config/" in NO_NETWORKS and '"Try it offline"' in NO_NETWORKS
    assert "Try it offline" in (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_a_worker_with_networks_or_a_shared_redis_does_not(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    # On a shared Redis the chains are followed by `ocstream ingress`, elsewhere: nothing to say.
    # The Redis of ``prefix`` (each version in turn), whose keys the fixture deletes afterwards.
    worker = Worker("shared", tmp_path, redis_url=redis_url, prefix=prefix, app_id="t1st")
    worker.start()
    try:
        worker.wait_assigned()
        lines = lines_before_ready(worker)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert not [line for line in lines if "no networks to follow" in line]


def test_info_leaves_out_fausts_per_partition_lines_and_debug_keeps_them(tmp_path: Path) -> None:
    # The whole dataflow: 7 tables x 16 partitions, whose recovery tables faust logs line by line.
    common = {"redis_url": None, "prefix": "ocs:", "app_id": "ocstream", "partitions": 16}
    info = Worker("info", tmp_path, dataflow=None, **common)  # type: ignore[arg-type]
    debug = Worker("debug", tmp_path, dataflow=None, loglevel="debug", **common)  # type: ignore[arg-type]
    texts = {}
    for worker in (info, debug):
        worker.start()
        try:
            lines = lines_before_ready(worker)
        finally:
            assert worker.stop() == 0, worker.log_tail()
        texts[worker.name] = lines
    # Nothing was written, so no partition of the 7 tables got a RocksDB database: faust used
    # to open (and create) all 112 at assignment, which was most of the start's time.
    assert list((tmp_path / "info" / "faust").rglob("*.db")) == []
    quiet = [line for line in texts["info"] if any(q in line for q in QUIET_AT_INFO)]
    assert quiet == []
    assert "offsets at start of reading" not in "\n".join(texts["info"])
    # What the info log leaves out is still there at debug: the recovery's offset tables.
    assert "offsets at start of reading" in "\n".join(texts["debug"])
    assert len(texts["info"]) < 120, len(texts["info"])  # was 418 lines before Ready


def test_on_the_embedded_redis_the_group_does_not_wait_for_more_members() -> None:
    # Nobody else can join a private Redis; an explicit setting is kept.
    alone = _alone_in_its_group(load_settings({}, {}))
    assert alone.transport.initial_rebalance_delay == 0
    assert load_settings({}, {}).transport.initial_rebalance_delay == 1.0
    env = {"OCSTREAM_TRANSPORT_INITIAL_REBALANCE_DELAY": "2.5"}
    assert _alone_in_its_group(load_settings({}, env)).transport.initial_rebalance_delay == 2.5
