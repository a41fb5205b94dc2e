"""A JSON-RPC client for Substrate nodes over one websocket (aiohttp).

Requests and subscriptions share the connection; responses are matched by id, notifications
by subscription id. When the connection drops, every pending request fails with
:class:`RpcConnectionError` and every subscription ends with it, so the follower above can
reconnect (to the same or the next url) and resume from its stored tip::

    async with RpcClient("ws://127.0.0.1:9944") as node:
        genesis = await node.request("chain_getBlockHash", [0])
        async for header in await node.subscribe(
            "chain_subscribeFinalizedHeads", [], "chain_unsubscribeFinalizedHeads"
        ):
            ...
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from ..errors import OcstreamError


class RpcError(OcstreamError):
    """The node answered a request with a JSON-RPC error."""

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        super().__init__(f"{method}: node error {self.code}: {message}")


class RpcConnectionError(OcstreamError):
    """The connection failed, closed, timed out, or the node spoke something else than JSON-RPC."""


class Subscription:
    """Notifications of one subscription, as an async iterator."""

    def __init__(self, client: RpcClient, sub_id: Any, unsubscribe: str) -> None:
        self.client = client
        self.id = sub_id
        self.unsubscribe_method = unsubscribe
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def next(self, timeout: float) -> Any:
        """The next notification; RpcConnectionError if none comes within ``timeout``."""
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError as exc:
            raise RpcConnectionError(f"no notification for {timeout:.0f}s") from exc
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self.client._subscriptions.pop(self.id, None)
        if self.client.connected:
            try:
                await self.client.request(self.unsubscribe_method, [self.id])
            except (RpcError, RpcConnectionError):
                pass


class RpcClient:
    def __init__(self, url: str, *, request_timeout: float = 30.0) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._subscriptions: dict[Any, Subscription] = {}
        # Notifications that arrive before the subscribe call's own response is processed.
        self._early: dict[Any, list[Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self, timeout: float = 10.0) -> RpcClient:
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(
                self.url,
                timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                max_msg_size=64 * 1024 * 1024,
                heartbeat=30.0,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._session.close()
            raise RpcConnectionError(f"{self.url}: cannot connect: {exc}") from exc
        self._reader = asyncio.create_task(self._read(), name=f"rpc-reader {self.url}")
        return self

    async def __aenter__(self) -> RpcClient:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            # asyncio.wait, not await: the reader's own cancellation must not be raised here,
            # and a cancellation of the task closing us must not be swallowed.
            await asyncio.wait([self._reader])
        if self._session is not None:
            await self._session.close()
        self._fail_all(RpcConnectionError(f"{self.url}: closed"))

    async def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        if not self.connected:
            raise RpcConnectionError(f"{self.url}: not connected")
        assert self._ws is not None
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, future)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        try:
            # Text frames: Substrate nodes (jsonrpsee) expect JSON-RPC as text.
            await self._ws.send_str(orjson.dumps(payload).decode())
            return await asyncio.wait_for(future, self.request_timeout)
        except TimeoutError as exc:
            raise RpcConnectionError(
                f"{self.url}: {method} got no answer in {self.request_timeout:.0f}s"
            ) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise RpcConnectionError(f"{self.url}: {method}: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    async def subscribe(self, method: str, params: Sequence[Any], unsubscribe: str) -> Subscription:
        sub_id = await self.request(method, params)
        subscription = Subscription(self, sub_id, unsubscribe)
        self._subscriptions[sub_id] = subscription
        for item in self._early.pop(sub_id, []):
            subscription.queue.put_nowait(item)
        return subscription

    async def _read(self) -> None:
        assert self._ws is not None
        error: BaseException = RpcConnectionError(f"{self.url}: connection closed")
        try:
            async for message in self._ws:
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._dispatch(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    error = RpcConnectionError(f"{self.url}: {self._ws.exception()}")
                    break
        except RpcConnectionError as exc:
            error = exc
            await self._ws.close()
        finally:
            self._fail_all(error)

    def _dispatch(self, data: str | bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RpcConnectionError(f"{self.url}: not JSON: {str(data)[:80]!r}") from exc
        if not isinstance(message, dict):
            raise RpcConnectionError(f"{self.url}: not a JSON-RPC message: {str(data)[:80]!r}")
        if "id" in message and message.get("id") is not None:
            entry = self._pending.get(message["id"])
            if entry is None:
                return  # answer to a request that timed out
            method, future = entry
            if future.done():
                return
            if "error" in message:
                future.set_exception(RpcError(method, message["error"]))
            else:
                future.set_result(message.get("result"))
            return
        params = message.get("params")
        if isinstance(params, dict) and "subscription" in params:
            sub_id = params["subscription"]
            subscription = self._subscriptions.get(sub_id)
            if subscription is None:
                self._early.setdefault(sub_id, []).append(params.get("result"))
            else:
                subscription.queue.put_nowait(params.get("result"))

    def _fail_all(self, error: BaseException) -> None:
        for _, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for subscription in list(self._subscriptions.values()):
            subscription.queue.put_nowait(error)
        self._subscriptions.clear()
