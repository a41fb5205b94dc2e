"""Counting the tasks a piece of code creates on the running event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def counting_tasks() -> Iterator[Callable[[], int]]:
    """Within the block, every task the running loop creates is counted; the block gets a
    function that returns the count so far. The loop's own task factory (if any) still makes
    the tasks, and is put back afterwards."""
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    created = 0

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal created
        created += 1
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        yield lambda: created
    finally:
        loop.set_task_factory(factory)
