"""What a direct feed (``ocstream/transport/direct.py``) needs of a faust app, for tests of the
feed and of the agents that take from it: faust's real flow control (mode's
``FlowControlEvent``) and the ``FeedMessage`` objects the drain loop makes of fetched records,
with a consumer that records what the feed asks of it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.types import TP
from mode.utils.queues import FlowControlEvent

from ocstream.transport.direct import FeedMessage


class RecordingConsumer:
    """What the feed asks of faust's consumer, recorded."""

    def __init__(self) -> None:
        self.unacked: set[Any] = set()
        self.acked: list[tuple[TP, int]] = []
        self.full: list[TP] = []
        self.drops: list[TP] = []

    def ack(self, message: Any) -> bool:
        if message.acked:  # faust's tests and sets the flag
            return False
        message.acked = True
        self.unacked.discard(message)
        self.acked.append((message.tp, message.offset))
        return True

    def on_buffer_full(self, tp: TP) -> None:
        self.full.append(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        self.drops.append(tp)


def feed_app(maxsize: int = 100, **extra: Any) -> Any:
    """An app with the flow active, generation 3, and ``extra`` attributes."""
    noop = SimpleNamespace(on_message_in=lambda *a: None, on_message_out=lambda *a: None)
    return SimpleNamespace(
        flow_control=FlowControlEvent(initially_suspended=False),
        consumer=RecordingConsumer(),
        consumer_generation_id=3,
        sensors=noop,
        conf=SimpleNamespace(stream_buffer_maxsize=maxsize),
        **extra,
    )


def fetched(
    value: bytes | None, headers: list[tuple[str, bytes]] | None = None, key: bytes = b"k"
) -> dict[bytes, bytes]:
    """A stream entry's fields as the consumer fetches them (``ocstream/transport/wire.py``:
    a long value compressed)."""
    from ocstream.transport.wire import Record

    flat = Record(key, value, 1_700_000_000_123, headers or []).fields()
    return {
        str(name).encode(): item if isinstance(item, bytes) else str(item).encode()
        for name, item in zip(flat[::2], flat[1::2], strict=True)
    }


def feed_message(
    topic: str,
    partition: int,
    offset: int,
    *,
    generation: int = 3,
    value: bytes = b"{}",
    headers: list[tuple[str, bytes]] | None = None,
) -> FeedMessage:
    """A message as the drain loop makes it of a fetched record of a direct feed's topic."""
    return FeedMessage(TP(topic, partition), offset, fetched(value, headers), generation)
