"""How long partitions stay unprocessed when a worker dies, in one run.

    python benchmarks/failover.py [--redis URL] [--session-timeout S] [--rounds N]

Two ``ocstream worker`` processes share 4 partitions while events flow at a steady rate. One is
stopped, and we time how long until the survivor writes to the table changelog of the stopped
worker's partitions again (the moment it is processing them):

* ``kill -9``: the group notices only when the session times out, so the session timeout is the
  floor; the ratio printed is takeover time / session timeout.
* graceful stop (SIGTERM): the worker commits and leaves at once; its time is the baseline the
  crash case is compared with.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.workers import Worker, produce, wait_for  # noqa: E402


def changelog_seqs(client: redis.Redis, prefix: str, app_id: str, parts: set[int]) -> int:
    keys = [f"{prefix}o:{app_id}-demo-counts-changelog:{p}" for p in sorted(parts)]
    return sum(int(v or 0) for v in client.mget(keys))


def one_round(url: str, session_timeout: float, how: str, root: Path) -> float:
    prefix, app_id = f"fo-{uuid.uuid4().hex[:6]}:", f"fo{uuid.uuid4().hex[:6]}"
    env = {"OCSTREAM_TRANSPORT_SESSION_TIMEOUT": str(session_timeout)}
    workers = [
        Worker(f"{how}-{n}", root, redis_url=url, prefix=prefix, app_id=app_id, env=env).start()
        for n in (1, 2)
    ]
    survivor, victim = workers
    client = redis.Redis.from_url(url)
    producer = produce(url, prefix, 200_000, users=200, rate=400)
    try:
        for w in workers:
            w.wait_assigned()
        wait_for(
            lambda: all(len(w.view()["partitions"]) == 2 for w in workers), 60, "a 2 + 2 split"
        )
        parts = set(victim.view()["partitions"])
        wait_for(lambda: victim.view()["processed_here"] > 200, 30, "the victim to be busy")
        if how == "kill":
            victim.kill()
        else:
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        before = changelog_seqs(client, prefix, app_id, parts)
        if how != "kill":
            victim.proc.wait(30)  # type: ignore[union-attr]
            before = changelog_seqs(client, prefix, app_id, parts)  # its last flush included
        while changelog_seqs(client, prefix, app_id, parts) <= before:
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"no takeover after 120 s:\n{survivor.log_tail()}")
            time.sleep(0.01)
        return time.monotonic() - t0
    finally:
        producer.kill()
        for w in workers:
            w.stop()
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--session-timeout", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results: dict[str, list[float]] = {"graceful": [], "kill": []}
        for i in range(args.rounds):
            for how in ("graceful", "kill"):
                seconds = one_round(args.redis, args.session_timeout, how, root / f"{how}{i}")
                results[how].append(seconds)
                print(f"round {i + 1}: {how:8s} takeover after {seconds:.2f} s", flush=True)
    graceful = min(results["graceful"])
    kill = min(results["kill"])
    print(
        f"RESULT kill -9 takeover {kill:.2f} s (session timeout {args.session_timeout:.1f} s, "
        f"ratio {kill / args.session_timeout:.2f}); graceful handoff {graceful:.2f} s; "
        f"kill/graceful = {kill / graceful:.1f}"
    )


if __name__ == "__main__":
    main()
