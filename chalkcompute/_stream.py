"""The chunks of a generator call, for ``for`` and ``async for`` alike.

A stream made by calling a generator function owns its call: leaving the loop
(``break``, an exception, the iterator garbage-collected, :meth:`ChunkStream.close`)
cancels it at once, so its replica is free for the next call. A stream read from
a spawned call (``FunctionCall.iter``) does not: the call goes on, and another
reader may attach later::

    for chunk in countdown(10):      # cancelled on break
        if chunk == 3:
            break
    call = countdown.spawn(10)       # runs whoever reads it
    for chunk in FunctionCall.from_id(call.object_id):
        ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from chalkcompute._bridge import in_sdk_thread
from chalkcompute._client import CallHandle
from chalkcompute._events import CallEvent, Chunk, Done, Result

__all__ = ["ChunkStream"]


class _Progress(Protocol):
    """Who learns how far a stream was read (a FunctionCall resumes from there)."""

    next_chunk: int


def _cancel_and_wait(handle: CallHandle, timeout: float = 2.0) -> None:
    """Ctrl-C in a blocking caller: cancel its call, and wait (briefly) until the
    daemon has acted on it, so a script that exits at once does not leave it running."""
    handle.cancel()
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if type(handle.next_event(timeout=left)) is not Chunk:
                return
    except Exception:  # noqa: BLE001 - best effort: the cancel is on its way regardless
        pass


class ChunkStream:
    """The chunks of a generator call, for ``for`` and ``async for`` alike.

    ``owns_call``: closing the stream before its end cancels the call (a direct
    call); False for a stream read from a :class:`~chalkcompute.calls.FunctionCall`.
    """

    def __init__(self, handle: CallHandle | None,
                 start: Callable[[], Coroutine[Any, Any, CallHandle]] | None = None, *,
                 owns_call: bool = True, progress: _Progress | None = None) -> None:
        self._handle = handle
        self._start = start
        self._buffer: list = []
        self._pos = 0
        self._index = -1 if handle is None else handle.received
        self._done = False
        self._peeked: CallEvent | None = None
        self._owns_call = owns_call
        self._progress = progress

    @property
    def object_id(self) -> str:
        """The call's id (``"fc-..."``): ``FunctionCall.from_id(id)`` reads its chunks from
        anywhere. A blocking stream waits for the daemon's acceptance; an ``async for``
        stream knows it once its first chunk arrived."""
        h = self._handle
        if h is not None and h.call_id:
            return h.call_id
        if h is None or in_sdk_thread():
            raise RuntimeError("this stream's call id is known once its first chunk arrived: read one first")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("this stream's call id is known once its first chunk arrived: read one first "
                               "(async for), or take it before iterating in blocking code")
        if self._peeked is None and not self._done and self._pos >= len(self._buffer):
            self._peeked = h.next_event()  # acceptance comes before it; a final event names the call too
        if not h.call_id:  # refused before it became a call: say why
            h.raise_for(self._peeked if self._peeked is not None else h.next_event())
        return h.call_id

    def _take(self, event: CallEvent) -> bool:
        """Turn one event into buffered values; returns False at the end."""
        h = self._handle
        assert h is not None
        if type(event) is Chunk:
            self._buffer, self._pos = h.chunk_values(event), 0
            self._index = event.first_index + event.skip - 1
            return True
        self._done = True
        if type(event) is Done or type(event) is Result:
            return False
        h.raise_for(event)

    def _next_buffered(self) -> Any:
        value = self._buffer[self._pos]
        self._pos += 1
        self._index += 1
        self._handle.consumed_up_to(self._index, self._pos == len(self._buffer))  # type: ignore[union-attr]
        if self._progress is not None:
            self._progress.next_chunk = self._index + 1
        return value

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Any:
        if self._handle is None:
            raise TypeError("this stream was started with .aio(): iterate it with `async for`")
        while self._pos >= len(self._buffer):
            if self._done:
                raise StopIteration
            try:
                event, self._peeked = self._peeked or self._handle.next_event(), None
                if not self._take(event):
                    raise StopIteration
            except KeyboardInterrupt:
                self._done = True
                if self._owns_call:
                    _cancel_and_wait(self._handle)
                raise
        return self._next_buffered()

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        if self._handle is None:
            assert self._start is not None  # made by .aio(): it starts the call on first use
            self._handle = await self._start()
            self._index = self._handle.received
        while self._pos >= len(self._buffer):
            if self._done:
                raise StopAsyncIteration
            try:
                event = await self._handle.next_event_async()
            except asyncio.CancelledError:
                self.close()
                raise
            if not self._take(event):
                raise StopAsyncIteration
        return self._next_buffered()

    def close(self) -> None:
        """Stop reading: a call this stream owns is cancelled (its replica freed); one read
        from a FunctionCall goes on, and this stream stops following it."""
        h = self._handle
        if h is None or self._done:
            return
        self._done = True
        if h.finished:
            return
        if self._owns_call:
            h.cancel()
        else:
            h.detach()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter teardown
            pass
