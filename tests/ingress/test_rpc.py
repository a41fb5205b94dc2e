"""The JSON-RPC client against a real aiohttp websocket server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from ocstream.ingress.rpc import RpcClient, RpcConnectionError, RpcError

Handler = Callable[[web.WebSocketResponse, dict[str, Any]], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        async def ws(request: web.Request) -> web.WebSocketResponse:
            socket = web.WebSocketResponse()
            await socket.prepare(request)
            async for message in socket:
                if message.type == WSMsgType.TEXT or message.type == WSMsgType.BINARY:
                    await handler(socket, json.loads(message.data))
            return socket

        app = web.Application()
        app.router.add_get("/", ws)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"ws://127.0.0.1:{port}/"

    yield start
    for runner in runners:
        await runner.cleanup()


def reply(request: dict[str, Any], result: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result})


async def test_requests_errors_and_subscriptions(serve: Any) -> None:
    async def handler(socket: web.WebSocketResponse, request: dict[str, Any]) -> None:
        method = request["method"]
        if method == "chain_getBlockHash":
            await socket.send_str(reply(request, f"0x{request['params'][0]:064x}"))
        elif method == "chain_subscribeFinalizedHeads":
            # A notification before the subscription's own answer must not be lost.
            note = {"subscription": "s1", "result": {"number": "0x1"}}
            await socket.send_str(json.dumps({"jsonrpc": "2.0", "params": note}))
            await socket.send_str(reply(request, "s1"))
            for n in (2, 3):
                note = {"subscription": "s1", "result": {"number": hex(n)}}
                await socket.send_str(json.dumps({"jsonrpc": "2.0", "params": note}))
        else:
            error = {"code": -32601, "message": "Method not found"}
            await socket.send_str(
                json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error})
            )

    url = await serve(handler)
    async with RpcClient(url) as node:
        assert await node.request("chain_getBlockHash", [5]) == "0x" + "0" * 63 + "5"
        with pytest.raises(RpcError, match="Method not found"):
            await node.request("nope")
        sub = await node.subscribe(
            "chain_subscribeFinalizedHeads", [], "chain_unsubscribeFinalizedHeads"
        )
        numbers = [int((await sub.next(5))["number"], 16) for _ in range(3)]
        assert numbers == [1, 2, 3]


async def test_a_dropped_connection_fails_requests_and_ends_subscriptions(serve: Any) -> None:
    async def handler(socket: web.WebSocketResponse, request: dict[str, Any]) -> None:
        if request["method"] == "sub":
            await socket.send_str(reply(request, "s"))
        else:
            await socket.close()  # hang up instead of answering

    url = await serve(handler)
    async with RpcClient(url) as node:
        sub = await node.subscribe("sub", [], "unsub")
        with pytest.raises(RpcConnectionError):
            await node.request("anything")
        with pytest.raises(RpcConnectionError):
            await sub.next(5)
        assert not node.connected


async def test_garbage_and_silence_become_connection_errors(serve: Any) -> None:
    async def garbage(socket: web.WebSocketResponse, request: dict[str, Any]) -> None:
        await socket.send_str("<html>not json-rpc</html>")

    async with RpcClient(await serve(garbage)) as node:
        with pytest.raises(RpcConnectionError, match="not JSON"):
            await node.request("system_chain")

    async def silent(socket: web.WebSocketResponse, request: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    async with RpcClient(await serve(silent), request_timeout=0.3) as node:
        with pytest.raises(RpcConnectionError, match="no answer"):
            await node.request("system_chain")
    with pytest.raises(RpcConnectionError, match="cannot connect"):
        await RpcClient("ws://127.0.0.1:1/").connect()
