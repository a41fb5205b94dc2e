"""Recording what a node answered, and serving a recording as a chain.

``ocstream record --config F --network URN --from N --to M --out FILE`` follows blocks N..M the
way the ingress does and saves every JSON-RPC answer it needed (blocks, events, storage values,
runtime versions, metadata) in a JSON-lines file. A network whose provider is
``{type = "replay", file = FILE, rate = 10}`` is then followed from that file instead of a node:
the same requests get the same answers, and finalized heads arrive at ``rate`` blocks per
second. Users reproduce an incident offline with it; benchmarks run without a node.

File format (one JSON object per line): a header
``{"format": "ocstream-recording", "version": 1, "network": …, "from": N, "to": M}``, then one
``{"method": …, "params": […], "result": …}`` (or ``"error"``) per distinct request.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from ..errors import OcstreamError
from .rpc import RpcClient, RpcConnectionError, RpcError

FORMAT = "ocstream-recording"


class RecordingError(OcstreamError):
    """A recording file cannot be read."""


def _call_key(method: str, params: Sequence[Any]) -> str:
    return method + orjson.dumps(list(params)).decode()


class RecordingClient:
    """Wraps a live RpcClient and keeps every answer it gets."""

    def __init__(self, node: RpcClient) -> None:
        self.node = node
        self.url = node.url
        self.answers: dict[str, dict[str, Any]] = {}

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        entry: dict[str, Any] = {"method": method, "params": list(params)}
        try:
            result = await self.node.request(method, params)
        except RpcError as exc:
            entry["error"] = {"code": exc.code, "message": str(exc)}
            self.answers[_call_key(method, params)] = entry
            raise
        entry["result"] = result
        self.answers[_call_key(method, params)] = entry
        return result

    async def subscribe(self, method: str, params: Sequence[Any], unsubscribe: str) -> Any:
        return await self.node.subscribe(method, params, unsubscribe)

    def write(self, out: IO[bytes], header: dict[str, Any]) -> None:
        out.write(orjson.dumps({"format": FORMAT, "version": 1, **header}) + b"\n")
        for entry in self.answers.values():
            out.write(orjson.dumps(entry) + b"\n")


def _open(path: Path, mode: str) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "b")  # type: ignore[return-value]
    return path.open(mode + "b")


def load_recording(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    path = Path(path)
    try:
        with _open(path, "r") as fh:
            lines = [orjson.loads(line) for line in fh if line.strip()]
    except (OSError, orjson.JSONDecodeError, EOFError) as exc:
        raise RecordingError(f"{path}: not a readable recording: {exc}") from exc
    if not lines or lines[0].get("format") != FORMAT:
        raise RecordingError(f"{path}: not an {FORMAT} file")
    answers = {_call_key(e["method"], e["params"]): e for e in lines[1:]}
    return lines[0], answers


class ReplaySubscription:
    """Finalized heads on a fixed schedule: head ``i`` is due ``(i + 1) / rate`` seconds after
    the first call. The schedule does not slip when the follower is slow: a late call gets the
    newest head that is due (the follower then fetches the blocks in between, as it does when
    a node's finality jumps), so the offered rate is the asked one, and a follower that cannot
    keep up falls behind instead of slowing the chain down."""

    def __init__(self, heads: list[Any], rate: float) -> None:
        self.heads = heads
        self.rate = rate
        self.position = 0
        self.started: float | None = None

    async def next(self, timeout: float) -> Any:
        if self.position < len(self.heads):
            loop = asyncio.get_running_loop()
            if self.started is None:
                self.started = loop.time()
            due = self.started + (self.position + 1) / self.rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            # Every head due by now: hand out the newest of them.
            elapsed = loop.time() - self.started
            newest = min(len(self.heads), max(self.position + 1, int(elapsed * self.rate)))
            head = self.heads[newest - 1]
            self.position = newest
            return head
        # The recording is over: finality "stalls" on its last head, which is re-announced
        # so the watchdog does not take the end of a replay for a dead node.
        await asyncio.sleep(min(1.0, timeout / 2))
        return self.heads[-1]


class ReplayNode:
    """Answers the follower's requests from a recording, like a node would."""

    def __init__(self, path: str | Path, rate: float) -> None:
        self.url = f"replay:{path}"
        self.header, self.answers = load_recording(path)
        self.rate = rate
        blocks = [
            (int(e["result"]["block"]["header"]["number"], 16), e["result"]["block"]["header"])
            for e in self.answers.values()
            if e["method"] == "chain_getBlock" and e.get("result")
        ]
        self.heads = [header for _, header in sorted(blocks, key=lambda item: item[0])]
        if not self.heads:
            raise RecordingError(f"{path}: the recording holds no block")

    async def __aenter__(self) -> ReplayNode:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        entry = self.answers.get(_call_key(method, params))
        if entry is None:
            raise RpcConnectionError(f"{self.url}: {method}{list(params)} is not in the recording")
        if "error" in entry:
            raise RpcError(method, entry["error"])
        return entry.get("result")

    async def subscribe(self, method: str, params: Sequence[Any], unsubscribe: str) -> Any:
        if method != "chain_subscribeFinalizedHeads":
            raise RpcError(method, {"code": -32601, "message": "not in a recording"})
        return ReplaySubscription(self.heads, self.rate)
