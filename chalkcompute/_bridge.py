"""The one bridge between blocking and async code in the SDK.

Every SDK object is written once, async, and runs on the SDK's own event loop
(a daemon thread). This module gives it its two faces:

- :func:`run_sync` blocks the calling thread on an SDK coroutine (safe inside
  a user's running event loop: that is another loop); :func:`run_async` awaits
  one from any loop.
- :class:`Twin` is the one descriptor that turns a method into a blocking
  method with an ``.aio`` twin, in three flavours: a coroutine method
  (``Twin(coro_fn)``, or the ``@twin`` decorator), an async-generator method
  (``Twin(agen_fn, iterator=True)``, ``@twin_iterator``: a blocking iterator
  and an async one), and an explicit pair kept apart where the blocking path
  is measured faster (``Twin.pair(name, sync, async_)``, used by the warm
  call path, ``map`` and ``spawn``)::

      class Volume:
          @twin
          async def read_file(self, path: str) -> bytes: ...

      vol.read_file("a.txt")               # blocks
      await vol.read_file.aio("a.txt")     # never blocks the caller's loop

- :class:`Mailbox` is the one waiter: filled on the SDK loop, drained from any
  thread (blocking, with a timeout) or any event loop (awaiting). Call handles
  and map runs both wait on one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "Mailbox",
    "Twin",
    "in_sdk_thread",
    "new_event_loop",
    "on_new_loop",
    "on_sdk_loop",
    "run_async",
    "run_sync",
    "sdk_loop",
    "twin",
    "twin_iterator",
]


# -- the SDK loop ----------------------------------------------------------------------


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available: it halves the per-message cost of the streams."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _LoopThread:
    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self._run, name="chalkcompute-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_loop_lock = threading.Lock()
_loop_thread: _LoopThread | None = None
_loop_pid: int | None = None
_new_loop_hooks: list[Callable[[], None]] = []


def on_new_loop(hook: Callable[[], None]) -> None:
    """Run ``hook`` whenever a new SDK loop starts (first use, or in a forked child):
    objects bound to the old loop (clients, channels) must be forgotten then."""
    _new_loop_hooks.append(hook)


def sdk_loop() -> asyncio.AbstractEventLoop:
    global _loop_thread, _loop_pid
    with _loop_lock:
        if _loop_thread is None or _loop_pid != os.getpid():  # a forked child needs its own
            _loop_thread = _LoopThread()
            _loop_pid = os.getpid()
            for hook in _new_loop_hooks:
                hook()
        return _loop_thread.loop


def on_sdk_loop() -> bool:
    """True on the SDK's own event-loop thread, where nothing may block."""
    sdk_loop()
    assert _loop_thread is not None
    return threading.current_thread() is _loop_thread.thread


def in_sdk_thread() -> bool:
    """``on_sdk_loop`` without the lock, for the per-call path (the loop exists by then)."""
    t = _loop_thread
    return t is not None and threading.current_thread() is t.thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run an SDK coroutine from blocking code (any thread but the SDK's own)."""
    loop = sdk_loop()
    assert _loop_thread is not None
    if threading.current_thread() is _loop_thread.thread:
        coro.close()
        raise RuntimeError("a blocking chalkcompute call was made on the SDK's own event loop; use .aio")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await an SDK coroutine from the caller's event loop."""
    loop = sdk_loop()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


# -- the one waiter ----------------------------------------------------------------------


def _wake_all(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)


class _LoopWaker:
    """Wakes awaiting callers in other loops: one cross-thread call per loop per
    SDK-loop iteration, however many of their calls finished in it (measured:
    a map of 10,000 awaited inputs costs ~10x fewer wake-ups)."""

    def __init__(self) -> None:
        self.pending: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}

    def wake(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        # Always called on the SDK loop's thread.
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.setdefault(loop, []).append(fut)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for loop, futs in pending.items():
            try:
                loop.call_soon_threadsafe(_wake_all, futs)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass


_waker = _LoopWaker()


def _after_fork_in_child() -> None:
    # The child has no SDK loop thread: whatever the parent had pending is not ours.
    _waker.pending = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Mailbox(Generic[T]):
    """Items put on the SDK loop, taken by one consumer on any thread or loop.

        box: Mailbox[str] = Mailbox()
        box.put("x")                     # on the SDK loop
        box.get(timeout=5)               # blocking, from a user thread
        await box.get_async()            # from any other event loop
        box.take_all()                   # everything so far, waiting for at least one item
    """

    __slots__ = ("items", "lock", "sync_waiter", "async_waiter")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.lock = threading.Lock()
        self.sync_waiter: threading.Lock | None = None
        self.async_waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, item: T) -> None:
        with self.lock:
            self.items.append(item)
            waiter, self.sync_waiter = self.sync_waiter, None
            async_waiter, self.async_waiter = self.async_waiter, None
        if waiter is not None:
            waiter.release()
        if async_waiter is not None:
            _waker.wake(*async_waiter)

    def _wait_sync(self, timeout: float | None) -> bool:
        """Called with ``lock`` held and no items; False when ``timeout`` passed."""
        waiter = threading.Lock()
        waiter.acquire()
        self.sync_waiter = waiter
        self.lock.release()
        try:
            return waiter.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            self.lock.acquire()

    def get(self, timeout: float | None = None) -> T:
        """The next item; raises TimeoutError when none came within ``timeout`` seconds."""
        with self.lock:
            while not self.items:
                if not self._wait_sync(timeout):
                    raise TimeoutError
            return self.items.popleft()

    def take_all(self, timeout: float | None = None) -> deque[T]:
        """Everything that has arrived, waiting for at least one item."""
        with self.lock:
            while not self.items:
                if not self._wait_sync(timeout):
                    raise TimeoutError
            items, self.items = self.items, deque()
            return items

    async def _wait_async(self) -> bool:
        """True when an item is there; else parks the caller's loop until ``put``."""
        loop = asyncio.get_running_loop()
        with self.lock:
            if self.items:
                return True
            fut = loop.create_future()
            self.async_waiter = (loop, fut)
        await fut
        return False

    async def get_async(self) -> T:
        while True:
            if await self._wait_async():
                with self.lock:
                    if self.items:
                        return self.items.popleft()

    async def take_all_async(self) -> deque[T]:
        while True:
            if await self._wait_async():
                with self.lock:
                    if self.items:
                        items, self.items = self.items, deque()
                        return items


# -- the one twin descriptor -------------------------------------------------------------


class Twin:
    """``obj.name(...)`` blocks; ``obj.name.aio(...)`` is its async twin.

    Flavours (see the module docstring): a coroutine method, an async-generator
    method (``iterator=True``), or an explicit ``sync``/``async_`` pair of plain
    functions taking the object first (``Twin.pair``). With ``on_class`` the
    twin binds to the class, as a classmethod does (``Container.from_id``).
    """

    def __init__(self, async_fn: Callable[..., Any] | None = None, *, iterator: bool = False,
                 sync: Callable[..., Any] | None = None, name: str | None = None,
                 on_class: bool = False) -> None:
        self.async_fn, self.iterator, self.sync, self.on_class = async_fn, iterator, sync, on_class
        shown = sync if sync is not None else async_fn
        if shown is None:
            raise TypeError("Twin needs an async function, or a sync and async pair")
        functools.update_wrapper(self, shown)
        self.__name__ = self.__qualname__ = name or shown.__name__
        sig = inspect.signature(shown)
        # What help() shows: the signature without the bound first parameter.
        self.signature = sig.replace(parameters=list(sig.parameters.values())[1:])

    @classmethod
    def pair(cls, name: str, sync: Callable[..., Any], async_: Callable[..., Any], *,
             on_class: bool = False) -> Twin:
        """Two paths kept apart (the blocking one avoids a loop hop): ``sync(obj, ...)``
        and ``async_(obj, ...)`` (a coroutine to await, or an async iterator)."""
        return cls(async_, sync=sync, name=name, on_class=on_class)

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Unbound use, as with a plain method: ``RemoteFunction.map(rf, xs)``."""
        return self.__get__(obj, type(obj))(*args, **kwargs)

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        target = objtype if self.on_class else obj
        if target is None:
            return self
        blocking, aio = self._faces(target)
        blocking.__doc__ = self.__doc__
        blocking.__signature__ = self.signature  # type: ignore[attr-defined]
        blocking.__name__ = blocking.__qualname__ = aio.__name__ = self.__name__
        aio.__doc__ = f"Async twin of ``{self.__name__}``: await it (``async for`` over an iterator)."
        blocking.aio = aio  # type: ignore[attr-defined]
        return blocking

    def _faces(self, target: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
        if self.sync is not None:
            sync, async_ = self.sync, self.async_fn
            assert async_ is not None

            def blocking(*args: Any, **kwargs: Any) -> Any:
                return sync(target, *args, **kwargs)

            def aio(*args: Any, **kwargs: Any) -> Any:
                return async_(target, *args, **kwargs)

            return blocking, aio
        assert self.async_fn is not None
        fn = functools.partial(self.async_fn, target)
        if self.iterator:
            return _iter_faces(fn)

        def blocking_call(*args: Any, **kwargs: Any) -> Any:
            return run_sync(fn(*args, **kwargs))

        async def aio_call(*args: Any, **kwargs: Any) -> Any:
            return await run_async(fn(*args, **kwargs))

        return blocking_call, aio_call


def _iter_faces(agen_fn: Callable[..., AsyncGenerator[Any, None]]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A blocking iterator and an async one over an async generator run on the SDK loop."""

    def blocking(*args: Any, **kwargs: Any) -> Iterator[Any]:
        agen = agen_fn(*args, **kwargs)
        try:
            while True:
                try:
                    item: Any = run_sync(_next(agen))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            run_sync(agen.aclose())

    async def aio(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        agen = agen_fn(*args, **kwargs)
        try:
            while True:
                try:
                    item: Any = await run_async(_next(agen))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await run_async(agen.aclose())

    return blocking, aio


async def _next(agen: AsyncGenerator[Any, None]) -> Any:
    return await agen.__anext__()


def twin(async_fn: Callable[..., Any]) -> Twin:
    """Decorator: an ``async def`` method with a blocking face and ``.aio``."""
    return Twin(async_fn)


def twin_iterator(agen_fn: Callable[..., Any]) -> Twin:
    """Decorator: an async-generator method with a blocking iterator face and ``.aio``."""
    return Twin(agen_fn, iterator=True)
