"""Tests for ocstream.embedded: real redis-server processes, no mocks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ocstream.embedded import EmbeddedRedis, EmbeddedRedisError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 15.0

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG"
)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process; zombies count as dead (they hold no port or files)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as srv:
        yield srv


def client_for(srv: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(srv.url, decode_responses=True, socket_timeout=5)


def test_starts_and_answers_ping(server: EmbeddedRedis) -> None:
    assert server.running
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.port > 0
    with client_for(server) as client:
        assert client.ping() is True


def test_version_is_6_2(server: EmbeddedRedis) -> None:
    assert server.version.startswith("6.2")
    with client_for(server) as client:
        assert client.info("server")["redis_version"] == server.version


def test_config_is_as_specified(server: EmbeddedRedis) -> None:
    with client_for(server) as client:
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        assert Path(client.config_get("dir")["dir"]) == server.data_dir


def test_aof_is_on_and_written(server: EmbeddedRedis) -> None:
    aof = server.data_dir / "appendonly.aof"
    with client_for(server) as client:
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("aof-probe-key", "aof-probe-value")

    def written() -> bool:
        return aof.is_file() and b"aof-probe-value" in aof.read_bytes()

    # The AOF write happens before the reply is sent, but an fsync backlog can postpone
    # it by up to two seconds, hence the bounded poll.
    assert wait_until(written), f"{aof} lacks the written value"


def test_data_survives_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with EmbeddedRedis(data_dir) as first:
        with client_for(first) as client:
            client.set("survivor", "42")
            client.xadd("stream", {"field": "value"})
    assert not first.running

    # A second instance on the same directory can only know the data through AOF replay.
    with EmbeddedRedis(data_dir) as second:
        with client_for(second) as client:
            assert client.get("survivor") == "42"
            entries = client.xrange("stream")
            assert [fields for _, fields in entries] == [{"field": "value"}]

    # Restarting the very same object works too.
    second.start()
    try:
        with client_for(second) as client:
            assert client.get("survivor") == "42"
    finally:
        second.stop()


@linux_only
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    srv = EmbeddedRedis(tmp_path / "redis").start()
    pid = srv.pid
    assert pid_alive(pid)
    srv.stop()
    assert not srv.running
    assert not pid_alive(pid)
    srv.stop()  # idempotent
    with pytest.raises(EmbeddedRedisError):
        _ = srv.url
    # The SHUTDOWN command (not a signal) stopped it, and Redis fsynced the AOF on the way.
    log = srv.log_path.read_text()
    assert "Calling fsync() on the AOF file" in log
    assert "Received SIGTERM" not in log


def test_fixed_port_in_use_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        srv = EmbeddedRedis(tmp_path / "redis", port=port)
        with pytest.raises(EmbeddedRedisError, match="Address already in use"):
            srv.start()
        assert not srv.running


CHILD_SCRIPT = """
import sys, threading
from ocstream.embedded import EmbeddedRedis
server = EmbeddedRedis(sys.argv[1]).start()
print(server.pid, flush=True)
if sys.argv[2] == "hang":
    threading.Event().wait()
"""


def run_child(data_dir: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(data_dir), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.strip():
        child.kill()
        child.wait()
        pytest.fail("child did not report the embedded Redis pid")
    return child, int(line)


@linux_only
def test_sigkill_of_parent_takes_redis_down(tmp_path: Path) -> None:
    child, redis_pid = run_child(tmp_path / "redis", "hang")
    try:
        assert pid_alive(redis_pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=DEADLINE_S)
        assert wait_until(lambda: not pid_alive(redis_pid)), "orphaned redis-server survived"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if pid_alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)


@linux_only
def test_normal_interpreter_exit_stops_redis(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    child, redis_pid = run_child(data_dir, "exit")
    try:
        assert child.wait(timeout=DEADLINE_S) == 0
        assert wait_until(lambda: not pid_alive(redis_pid))
        # The atexit hook's SHUTDOWN, not the parent-death SIGTERM, stopped the server.
        log = (data_dir / "redis.log").read_text()
        assert "User requested shutdown" in log
        assert "Received SIGTERM" not in log
    finally:
        if pid_alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)


def test_missing_binary_raises(tmp_path: Path) -> None:
    srv = EmbeddedRedis(tmp_path / "redis", binary=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(EmbeddedRedisError, match="not found"):
        srv.start()
    assert not srv.running


def test_non_executable_binary_raises(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("not a program\n")
    fake.chmod(0o644)
    with pytest.raises(EmbeddedRedisError, match="not executable"):
        EmbeddedRedis(tmp_path / "redis", binary=str(fake)).start()


def test_binary_that_exits_raises(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedRedisError, match="exited with status 3"):
        EmbeddedRedis(tmp_path / "redis", binary=str(fake)).start(timeout=5)


def test_invalid_appendfsync_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(tmp_path, appendfsync="sometimes")
