"""Real ``ocstream worker`` processes for integration tests, and polling helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from ocstream.transport.keys import Keyspace
from ocstream.transport.wire import entry_value, id_to_offset
from ocstream.transport.writer import TopicWriter
from tests.streams import xrange

T = TypeVar("T")

HERE = Path(__file__).resolve().parent

#: Short timeouts so that failover happens within seconds in tests.
FAST_GROUP_ENV = {
    "OCSTREAM_TRANSPORT_SESSION_TIMEOUT": "3",
    "OCSTREAM_TRANSPORT_HEARTBEAT_INTERVAL": "0.2",
    "OCSTREAM_TRANSPORT_INITIAL_REBALANCE_DELAY": "0.5",
    "OCSTREAM_TRANSPORT_REBALANCE_TIMEOUT": "20",
}


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout.

    A predicate that returns None until it is done gives its result without the None."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError, redis.RedisError, ValueError) as exc:
            last = exc
        else:
            if last:
                return cast(T, last)
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def ocstream_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OCSTREAM_* setting, plus ``extra``: a child
    ``ocstream`` command sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCSTREAM_")}
    env.update(extra)
    return env


def run_worker_once(data_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m ocstream worker`` with no ``OCSTREAM_*`` setting but ``extra``, run to its
    end (for settings that stop it at start-up)."""
    return subprocess.run(
        [sys.executable, "-m", "ocstream", "worker", "--data-dir", str(data_dir)],
        env=ocstream_env(**extra), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: One sample of a ``/metrics`` text: name (a counter's with its ``_total``), labels, value.
Sample = tuple[str, dict[str, str], float]


def metric_samples(text: str) -> list[Sample]:
    """Every sample of a ``/metrics`` text, read with prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.name, sample.labels, float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def unlabelled(samples: list[Sample]) -> dict[str, float]:
    """The samples without labels, by name."""
    return {name: value for name, labels, value in samples if not labels}


class Worker:
    """One ``python -m ocstream worker`` process with its own data dir and port."""

    def __init__(
        self,
        name: str,
        root: Path,
        *,
        redis_url: str | None,
        prefix: str,
        app_id: str,
        partitions: int = 4,
        env: dict[str, str] | None = None,
        port: int | None = None,
        dataflow: str | None = "demo",
        loglevel: str = "info",
    ) -> None:
        self.name = name
        self.loglevel = loglevel
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{name}.log"
        self.port = port or free_port()
        self.redis_url = redis_url
        self.env = dict(os.environ)
        self.env.update(FAST_GROUP_ENV)
        self.env.update(
            {
                "OCSTREAM_TRANSPORT_PREFIX": prefix,
                "OCSTREAM_APP_ID": app_id,
                "OCSTREAM_PARTITIONS": str(partitions),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.pop("OCSTREAM_REDIS_URL", None)
        self.dataflow = dataflow
        # The transport's tests run the demo dataflow alone (None: the production dataflow,
        # without the demo).
        if dataflow is not None:
            self.env["OCSTREAM_DATAFLOW"] = dataflow
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        args = [sys.executable, "-m", "ocstream", "worker", "-l", self.loglevel]
        args += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.redis_url:
            args += ["--redis", self.redis_url]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
            return str(response.read().decode())

    def view(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/demo/counts/"
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.load(response))

    def wait_assigned(self, timeout: float = 60) -> dict[str, Any]:
        """Wait until the worker serves HTTP and owns a generation's assignment."""

        def ready() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
            if "demo" not in (self.dataflow or "").split(","):
                return self.group() or None  # no demo page: the worker's own metrics
            view = self.view()
            return view if view["generation"] > 0 else None

        found: dict[str, Any] | None = wait_for(
            ready, timeout, f"{self.name} to be assigned partitions"
        )
        assert found is not None  # wait_for returns only something truthy
        return found

    def group(self) -> dict[str, float]:
        """``ocstream_group_*`` of the worker's ``/metrics`` once it holds an assignment
        (generation and assigned partitions above 0), else {}."""
        found = {k: v for k, v in self.metrics().items() if k.startswith("ocstream_group_")}
        assigned = found.get("ocstream_group_assigned_partitions", 0) > 0
        return found if assigned and found.get("ocstream_group_generation", 0) > 0 else {}

    def samples(self) -> list[Sample]:
        """Every sample of the worker's ``/metrics`` (name, labels, value), from one request
        (so they are of one moment)."""
        return metric_samples(self.get("/metrics"))

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of the worker's ``/metrics``, by name, from one request."""
        return unlabelled(self.samples())

    def metric(self, name: str) -> float:
        """The value of the unlabelled sample ``name`` of the worker's ``/metrics``."""
        found = self.metrics()
        if name not in found:
            raise KeyError(f"{self.name}: no metric {name}")
        return found[name]

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} did not stop on SIGTERM:\n{self.log_tail()}"
            ) from exc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def produce(
    redis_url: str,
    prefix: str,
    count: int,
    *,
    users: int = 10,
    partitions: int = 4,
    rate: float = 0.0,
    delete: bool = False,
) -> subprocess.Popen[str]:
    """Start another process that produces ``count`` demo events through TopicWriter.

    It prints the offsets it got acknowledged, one ``ACK <offset count>`` line per batch, and
    ``DONE <count>`` at the end.
    """
    args = [sys.executable, str(HERE / "produce_events.py"), redis_url, prefix, str(count)]
    args += ["--users", str(users), "--partitions", str(partitions), "--rate", str(rate)]
    if delete:
        args.append("--delete")
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def produce_all(redis_url: str, prefix: str, count: int, **kwargs: Any) -> None:
    proc = produce(redis_url, prefix, count, **kwargs)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"DONE {count}" in out, out


def publish_records(
    redis_url: str, prefix: str, topic: str, records: list[tuple[str, bytes]], partitions: int = 4
) -> None:
    """Append ``(key, value)`` records to ``topic`` (created with ``partitions`` if new), in
    batches of 1,000, as the ingress and the extract agent write them."""

    async def run() -> None:
        async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
            await writer.create_topic(topic, partitions)
            for start in range(0, len(records), 1000):
                await writer.send_many(topic, records[start : start + 1000])

    asyncio.run(run())


def changelog_partition(
    redis_url: str, prefix: str, app_id: str, partition: int
) -> tuple[dict[str, int], int]:
    """One partition of the demo table as its changelog holds it (the last value written per key),
    and the offset of the last record ever written to it (the stream keeps it when retention
    removes that record's tombstone)."""
    client = redis.Redis.from_url(redis_url)
    stream = Keyspace(prefix).stream(f"{app_id}-demo-counts-changelog", partition)
    table: dict[str, int] = {}
    for _, fields in xrange(client, stream):
        key = json.loads(fields[b"k"])
        value = entry_value(fields)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = json.loads(value)
    if not client.exists(stream):
        return table, -1
    return table, id_to_offset(client.xinfo_stream(stream)["last-generated-id"])


def changelog_counts(
    redis_url: str, prefix: str, app_id: str, partitions: int = 4
) -> dict[str, int]:
    """The demo table as its changelog in Redis holds it: the last value written per key."""
    table: dict[str, int] = {}
    for p in range(partitions):
        table.update(changelog_partition(redis_url, prefix, app_id, p)[0])
    return table


def group_assignment(redis_url: str, prefix: str, app_id: str) -> dict[int, dict[str, set[int]]]:
    """The partitions of each topic in each member's assignment of the group's stable
    generation (actives and standbys alike: the member fetches both), by the pid in the member
    id (``host-pid-random``)."""
    client = redis.Redis.from_url(redis_url)
    group = Keyspace(prefix).group(app_id)
    stable = int(client.hget(group.state, "stable_gen") or 0)
    members = cast(dict[bytes, bytes], client.hgetall(group.assignment(stable)))
    client.close()
    found: dict[int, dict[str, set[int]]] = {}
    for member, raw in members.items():
        pid = int(member.decode().rsplit("-", 2)[1])
        decoded = ConsumerProtocolMemberAssignment.decode(raw)
        found[pid] = {topic: set(partitions) for topic, partitions in decoded.assignment}
    return found


def committed_offsets(redis_url: str, prefix: str, app_id: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    raw = cast(dict[bytes, bytes], client.hgetall(f"{prefix}g:{app_id}:offsets"))
    return {k.decode().replace("\x1f", "/"): int(v) for k, v in raw.items()}


def highwaters(redis_url: str, prefix: str, topic: str, partitions: int = 4) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    return {
        f"{topic}/{p}": int(client.get(f"{prefix}o:{topic}:{p}") or 0) for p in range(partitions)
    }
