"""Running model work off the event loop: bounded admission and thread-to-stream bridging."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from tviz.errors import ResourceExhausted

T = TypeVar("T")


class Limiter:
    """At most `concurrency` jobs run and at most `max_queue` wait; the rest are refused."""

    def __init__(self, concurrency: int, max_queue: int, what: str = "server") -> None:
        self._sem = asyncio.Semaphore(concurrency)
        self._waiting = 0
        self._running = 0
        self.max_queue = max_queue
        self.what = what

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._sem.locked() and self._waiting >= self.max_queue:
            raise ResourceExhausted(
                f"{self.what} busy: {self._running} running and {self._waiting} queued; retry later"
            )
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._sem.release()


class StreamClosed(Exception):
    """Raised inside the worker when the consumer went away (client cancelled)."""


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def run_in_thread(
    executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any
) -> T:
    """Like asyncio.to_thread, on a given executor, keeping the context variables."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(executor, lambda: ctx.run(fn, *args))


async def stream_from_thread(
    executor: concurrent.futures.Executor,
    work: Callable[[Callable[[T], None]], None],
    maxsize: int = 4,
) -> AsyncIterator[T]:
    """Run `work(emit)` in a thread and yield what it emits, with back-pressure.

    `emit` blocks the worker while `maxsize` items wait for the consumer. When the consumer
    stops early (the client cancelled), the next `emit` raises StreamClosed in the worker,
    which ends the model work instead of computing for nobody.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
    closed = False

    def put(item: object) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                future.result(timeout=0.2)
                return
            except concurrent.futures.TimeoutError:
                if closed:
                    future.cancel()
                    raise StreamClosed from None

    def emit(item: T) -> None:
        if closed:
            raise StreamClosed
        put(item)

    def run() -> None:
        try:
            work(emit)
            put(_DONE)
        except StreamClosed:
            pass
        except BaseException as exc:  # handed to the consumer, which re-raises it
            with contextlib.suppress(StreamClosed):
                put(_Failure(exc))

    ctx = contextvars.copy_context()
    job = loop.run_in_executor(executor, lambda: ctx.run(run))
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        closed = True
        while not queue.empty():  # unblock a worker waiting on a full queue
            queue.get_nowait()
        await asyncio.shield(job)
