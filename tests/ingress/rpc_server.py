"""A Substrate JSON-RPC websocket server that serves recorded raw blocks, for ingress tests.

It speaks the real method names and subscription semantics (``chain_subscribeFinalizedHeads``
notifications, ``chain_getBlockHash``, ``chain_getBlock``, ``chain_getHeader``,
``state_getStorage`` of ``System.Events`` and of the items the test gives
(``state_getKeysPaged`` and ``state_queryStorageAt`` over them), ``state_getMetadata``,
``state_call`` ``Metadata_metadata_at_version``, ``state_getRuntimeVersion``, ``system_chain``,
``rpc_methods``). The test decides how far the chain is finalized (:meth:`finalize`) and can
drop every connection (:meth:`drop_connections`) or turn the server bad (``mode``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from aiohttp import WSMsgType, web

from ocstream.ingress.decode import _DIGEST_KINDS, Header
from ocstream.ingress.follower import SYSTEM_EVENTS_KEY, encode_compact
from ocstream.ingress.raw import RawBlock

DIGEST_TAGS = {kind: tag for tag, kind in _DIGEST_KINDS.items()}
POLKADOT_GENESIS = "0x91b171bb158e2d3848fa23a9f1c25182fb8e20313b2c1eb49219da7a70ce90c3"


def digest_log(item: Any) -> str:
    raw = bytes([DIGEST_TAGS[item.kind]])
    if item.kind != "RuntimeEnvironmentUpdated":
        if item.kind != "Other":
            raw += item.engine.encode("latin-1")
        raw += encode_compact(len(item.data)) + item.data
    return "0x" + raw.hex()


def header_json(header: Header) -> dict[str, Any]:
    return {
        "parentHash": header.parent_hash,
        "number": hex(header.number),
        "stateRoot": header.state_root,
        "extrinsicsRoot": header.extrinsics_root,
        "digest": {"logs": [digest_log(item) for item in header.digest]},
    }


def events_value(events: bytes | list[bytes]) -> bytes:
    if isinstance(events, bytes):
        return events
    return encode_compact(len(events)) + b"".join(events)


class RecordedChainServer:
    def __init__(
        self,
        blocks: Sequence[RawBlock],
        *,
        spec_version: int,
        metadata: bytes,
        chain: str = "Polkadot",
        genesis: str = POLKADOT_GENESIS,
        storage: dict[tuple[str, str], str] | None = None,
    ) -> None:
        self.blocks: dict[int, RawBlock] = {}
        self.by_hash: dict[str, RawBlock] = {}
        #: block hash -> (spec version, metadata): the runtime each block was recorded under
        self.runtime_of: dict[str, tuple[int, bytes]] = {}
        self.add_blocks(blocks, spec_version=spec_version, metadata=metadata)
        self.first = min(self.blocks)
        self.chain = chain
        self.genesis = genesis
        #: (key, block hash) -> value hex, served by state_getStorage besides System.Events
        self.storage = dict(storage or {})
        self.finalized = self.first - 1
        #: "ok", "garbage" (answers that are not JSON-RPC), "silent" (never answers) or
        #: "no-runtime-version" (``state_getRuntimeVersion`` answers null, which the follower
        #: does not expect: an error it does not handle itself)
        self.mode = "ok"
        self.requests: list[str] = []
        self._sockets: set[web.WebSocketResponse] = set()
        self._subscribers: dict[web.WebSocketResponse, str] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add_blocks(self, blocks: Sequence[RawBlock], *, spec_version: int, metadata: bytes) -> None:
        """More recorded blocks, of another runtime if need be (a runtime upgrade)."""
        for block in blocks:
            assert block.number is not None and block.hash is not None
            self.blocks[block.number] = block
            self.by_hash[block.hash] = block
            self.runtime_of[block.hash] = (spec_version, metadata)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/", self._websocket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/"
        return self.url

    async def stop(self) -> None:
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()

    async def drop_connections(self) -> None:
        for socket in list(self._sockets):
            await socket.close()

    async def finalize(self, number: int) -> None:
        """Advance finality to ``number`` and notify subscribers (one notification per head)."""
        number = min(number, max(self.blocks))
        while self.finalized < number:
            self.finalized = min(n for n in self.blocks if n > self.finalized)
            await self._notify(self.finalized)

    async def _notify(self, number: int) -> None:
        header = header_json(self.blocks[number].decoded_header)  # type: ignore[arg-type]
        for socket, sub_id in list(self._subscribers.items()):
            note = {
                "jsonrpc": "2.0",
                "method": "chain_finalizedHead",
                "params": {"subscription": sub_id, "result": header},
            }
            try:
                await socket.send_str(json.dumps(note))
            except ConnectionError:
                self._subscribers.pop(socket, None)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=0)
        await socket.prepare(request)
        self._sockets.add(socket)
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                call = json.loads(message.data)
                self.requests.append(call["method"])
                if self.mode == "silent":
                    continue
                if self.mode == "garbage":
                    await socket.send_str("<html>502 Bad Gateway</html>")
                    continue
                await self._answer(socket, call)
        finally:
            self._sockets.discard(socket)
            self._subscribers.pop(socket, None)
        return socket

    async def _answer(self, socket: web.WebSocketResponse, call: dict[str, Any]) -> None:
        method, params = call["method"], call.get("params", [])
        result: Any = None
        error: dict[str, Any] | None = None
        if method == "chain_subscribeFinalizedHeads":
            sub_id = f"sub-{id(socket)}"
            self._subscribers[socket] = sub_id
            await socket.send_str(
                json.dumps({"jsonrpc": "2.0", "id": call["id"], "result": sub_id})
            )
            if self.finalized >= self.first:
                await asyncio.sleep(0)
                await self._notify(self.finalized)
            return
        if method == "chain_getBlockHash":
            number = params[0] if params else self.finalized
            if number == 0:
                result = self.genesis
            elif number in self.blocks and number <= self.finalized:
                result = self.blocks[number].hash
        elif method in ("chain_getBlock", "chain_getHeader"):
            block = self.by_hash.get(params[0])
            if block is not None:
                header = header_json(block.decoded_header)  # type: ignore[arg-type]
                extrinsics = ["0x" + x.hex() for x in block.extrinsics]
                result = (
                    {"block": {"header": header, "extrinsics": extrinsics}, "justifications": None}
                    if method == "chain_getBlock"
                    else header
                )
        elif method == "state_getStorage":
            block = self.by_hash.get(params[1])
            if params[0] == SYSTEM_EVENTS_KEY and block is not None:
                result = "0x" + events_value(block.events).hex()
            else:
                result = self.storage.get((params[0], params[1]))
        elif method == "state_getKeysPaged":
            prefix, count, start, at = params
            keys = sorted(
                key
                for key, block_hash in self.storage
                if block_hash == at and key.startswith(prefix) and (start is None or key > start)
            )
            result = keys[:count]
        elif method == "state_queryStorageAt":
            keys, at = params
            result = [{"block": at, "changes": [[k, self.storage.get((k, at))] for k in keys]}]
        elif method == "state_getRuntimeVersion":
            spec, _ = self.runtime_of[params[0]]
            if self.mode != "no-runtime-version":
                result = {"specName": self.chain.lower(), "specVersion": spec}
        elif method == "state_call":
            # V14 runtimes have no Metadata_metadata_at_version, as on a real old node.
            error = {
                "code": -32000,
                "message": "Execution failed: Exported method "
                "Metadata_metadata_at_version is not found",
            }
        elif method == "state_getMetadata":
            _, metadata = self.runtime_of[params[0]]
            result = "0x" + metadata.hex()
        elif method == "system_chain":
            result = self.chain
        elif method == "rpc_methods":
            result = {
                "methods": [
                    "chain_getBlock",
                    "chain_getBlockHash",
                    "chain_getHeader",
                    "chain_subscribeFinalizedHeads",
                    "state_getMetadata",
                    "state_getRuntimeVersion",
                    "state_getKeysPaged",
                    "state_getStorage",
                    "state_queryStorageAt",
                    "system_chain",
                ]
            }
        elif method == "chain_unsubscribeFinalizedHeads":
            self._subscribers.pop(socket, None)
            result = True
        else:
            error = {"code": -32601, "message": "Method not found"}
        payload: dict[str, Any] = {"jsonrpc": "2.0", "id": call["id"]}
        if error is not None:
            payload["error"] = error
        else:
            payload["result"] = result
        await socket.send_str(json.dumps(payload))
