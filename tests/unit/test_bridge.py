"""The SDK's one bridge: twins (coroutine, iterator, pair, class-bound) and the Mailbox waiter."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from chalkcompute._bridge import Mailbox, Twin, run_sync, sdk_loop, twin, twin_iterator

pytestmark = pytest.mark.timeout(30)


class Thing:
    def __init__(self) -> None:
        self.closed = False

    @twin
    async def double(self, x: int) -> int:
        """Twice x."""
        await asyncio.sleep(0)
        return 2 * x

    @twin_iterator
    async def count(self, n: int):
        try:
            for i in range(n):
                yield i
        finally:
            self.closed = True

    def _name_sync(self, suffix: str = "") -> str:
        return "sync" + suffix

    async def _name_async(self, suffix: str = "") -> str:
        return "async" + suffix

    name = Twin.pair("name", _name_sync, _name_async)

    @classmethod
    def _make_sync(cls) -> Thing:
        return cls()

    @classmethod
    async def _make_async(cls) -> Thing:
        return cls()

    make = Twin.pair("make", _make_sync.__func__, _make_async.__func__, on_class=True)


def test_coroutine_twin_blocks_and_awaits():
    t = Thing()
    assert t.double(4) == 8
    assert asyncio.run(t.double.aio(5)) == 10
    assert t.double.__doc__ == "Twice x."
    assert list(inspect.signature(t.double).parameters) == ["x"]


def test_pair_and_class_bound_twins():
    t = Thing()
    assert t.name("!") == "sync!"
    assert asyncio.run(t.name.aio("?")) == "async?"
    assert Thing.name(t) == "sync"  # unbound use, as with a plain method
    assert isinstance(Thing.make(), Thing)
    assert isinstance(asyncio.run(Thing.make.aio()), Thing)


def test_iterator_twin_closed_early_runs_its_finally():
    t = Thing()
    it = t.count(10)
    assert next(it) == 0 and next(it) == 1
    it.close()
    assert t.closed

    async def take_two():
        out = []
        async for i in t.count.aio(10):
            out.append(i)
            if len(out) == 2:
                break
        return out

    t.closed = False
    assert asyncio.run(take_two()) == [0, 1]
    assert list(t.count(3)) == [0, 1, 2]


def test_aio_never_blocks_the_callers_loop():
    ticks = []
    gate = threading.Event()

    async def slow() -> str:
        await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        return "done"

    class Slow:
        go = Twin(lambda self: slow())

    async def main():
        async def ticker():
            for i in range(3):
                ticks.append(i)
                await asyncio.sleep(0)
            gate.set()

        result, _ = await asyncio.gather(Slow().go.aio(), ticker())
        return result

    assert asyncio.run(main()) == "done"
    assert ticks == [0, 1, 2]


def test_mailbox_from_a_thread_with_timeout():
    box: Mailbox[int] = Mailbox()
    with pytest.raises(TimeoutError):
        box.get(timeout=0.01)
    loop = sdk_loop()
    loop.call_soon_threadsafe(box.put, 1)
    assert box.get(timeout=5) == 1
    for i in (2, 3):
        loop.call_soon_threadsafe(box.put, i)
    got: list[int] = []
    while len(got) < 2:
        got.extend(box.take_all(timeout=5))
    assert got == [2, 3]


def test_mailbox_from_another_loop():
    box: Mailbox[str] = Mailbox()

    async def fill():
        box.put("a")
        box.put("b")

    async def main():
        sdk_loop().call_soon_threadsafe(lambda: asyncio.ensure_future(fill()))
        first = await box.get_async()
        rest = await box.take_all_async() if not box.items else list(box.take_all())
        return [first, *rest]

    assert asyncio.run(main()) == ["a", "b"]


def test_run_sync_refuses_the_sdk_loop_itself():
    async def inner():
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="use .aio"):
            run_sync(coro)
        return True

    assert run_sync(inner())
