"""A scaling group's HTTP data path: the replica pool (chalkd/groups/pool.py) and the proxy
(chalkd/groups/proxy.py), against real local HTTP servers (aiohttp apps in the test's loop, or in a
subprocess where a replica must die for real).

Each test runs its own event loop (asyncio.run) under a timeout; waits are on events, never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from chalkd.groups.pool import Backend, ReplicaPool

pytestmark = pytest.mark.timeout(30)


def arun(coro_fn: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(main())


def ready_pool(*ids: str) -> ReplicaPool:
    pool = ReplicaPool("web")
    for i, id in enumerate(ids):
        pool.add(Backend(id, "127.0.0.1", 10000 + i))
        pool.set_ready(id, True)
    return pool


# -- the pool -------------------------------------------------------------------------------------------------

def test_acquire_picks_the_least_outstanding_ready_backend() -> None:
    pool = ready_pool("a", "b", "c")
    a, b, c = (pool.get(x) for x in "abc")
    held = [pool.acquire() for _ in range(3)]  # one each
    assert sorted(x.id for x in held if x) == ["a", "b", "c"]
    pool.release(b)  # type: ignore[arg-type]
    # b has 0, the others 1: b, and again b until it has as many as the others.
    got = pool.acquire()
    assert got is b
    assert (a.outstanding, b.outstanding, c.outstanding) == (1, 1, 1)  # type: ignore[union-attr]
    assert pool.in_flight == 3


def test_ties_rotate_round_robin() -> None:
    pool = ready_pool("a", "b", "c")
    seen = []
    for _ in range(9):
        got = pool.acquire()
        assert got is not None
        seen.append(got.id)
        pool.release(got)  # every pick is a tie (all at 0)
    assert seen.count("a") == seen.count("b") == seen.count("c") == 3
    assert all(seen[i] != seen[i + 1] for i in range(8))
    assert pool.in_flight == 0


def test_only_ready_backends_are_picked_and_exclude_is_honoured() -> None:
    pool = ReplicaPool("web")
    pool.add(Backend("s", "127.0.0.1", 1))  # starting
    pool.add(Backend("r", "127.0.0.1", 2))
    pool.add(Backend("u", "127.0.0.1", 3))
    pool.set_ready("r", True)
    pool.set_ready("u", False)
    assert pool.ready_count == 1
    for _ in range(3):
        got = pool.acquire()
        assert got is not None and got.id == "r"
    assert pool.acquire(exclude=frozenset({"r"})) is None
    pool.report_failure("r", "connection refused")
    assert pool.get("r").state == "unready"  # type: ignore[union-attr]
    assert pool.acquire() is None


def test_add_refuses_a_duplicate_or_an_unknown_state() -> None:
    pool = ready_pool("a")
    with pytest.raises(ValueError, match="'a' is already in the pool"):
        pool.add(Backend("a", "127.0.0.1", 1))
    with pytest.raises(ValueError, match="state must be one of"):
        pool.add(Backend("b", "127.0.0.1", 1, state="up"))


def test_removing_a_busy_backend_keeps_the_counts_right() -> None:
    pool = ready_pool("a", "b")
    a = pool.acquire()
    assert a is not None
    pool.remove(a.id)
    assert pool.ready_count == 1 and pool.get(a.id) is None
    pool.release(a)
    assert pool.in_flight == 0
    pool.remove("nobody")  # no error


def test_drain_stops_routing_and_waits_for_in_flight_requests() -> None:
    async def body() -> None:
        pool = ready_pool("old", "new")
        old = pool.get("old")
        first, second = pool.acquire(), pool.acquire()
        assert {first.id, second.id} == {"old", "new"}  # type: ignore[union-attr]
        drained = asyncio.ensure_future(pool.drain("old", timeout=10))
        await asyncio.sleep(0)  # let drain start waiting
        assert old.state == "draining"  # type: ignore[union-attr]
        assert not drained.done()
        for _ in range(4):  # no new request goes to the draining one
            got = pool.acquire()
            assert got is not None and got.id == "new"
        pool.set_ready("old", True)  # a probe does not revive a draining replica
        assert old.state == "draining"  # type: ignore[union-attr]
        pool.release(old)  # type: ignore[arg-type]
        assert await drained is True
        assert await pool.drain("old", timeout=1) is True  # already idle
        assert await pool.drain("gone", timeout=1) is True

    arun(body)


def test_drain_times_out_with_requests_still_running() -> None:
    async def body() -> None:
        pool = ready_pool("a")
        held = pool.acquire()
        assert held is not None
        assert await pool.drain("a", timeout=0.05) is False
        assert held.outstanding == 1

    arun(body)


def test_wait_ready_wakes_on_readiness_and_on_unavailable() -> None:
    async def body() -> None:
        pool = ReplicaPool("web")
        pool.add(Backend("a", "127.0.0.1", 1))
        waiter = asyncio.ensure_future(pool.wait_ready(10))
        await asyncio.sleep(0)
        assert not waiter.done()
        pool.set_ready("a", True)
        assert await waiter is True
        assert await pool.wait_ready(0) is True

        pool.set_ready("a", False)
        assert await pool.wait_ready(0.01) is False  # timed out
        waiter = asyncio.ensure_future(pool.wait_ready(10))
        await asyncio.sleep(0)
        pool.unavailable = "group 'web' is Failed: app exited with code 1"
        assert await waiter is False
        assert await pool.wait_ready(10) is False  # at once while it stays set

    arun(body)


def test_changed_fires_on_in_flight_changes_and_peak_is_kept() -> None:
    async def body() -> None:
        pool = ready_pool("a", "b")
        pool.changed.clear()
        waiter = asyncio.ensure_future(pool.changed.wait())
        await asyncio.sleep(0)
        got = [pool.acquire(), pool.acquire(), pool.acquire()]
        await waiter
        assert pool.in_flight == 3
        for b in got:
            pool.release(b)  # type: ignore[arg-type]
        assert pool.in_flight == 0
        assert pool.take_peak() == 3
        assert pool.take_peak() == 0

    arun(body)


def test_callbacks_that_raise_are_contained() -> None:
    def boom() -> None:
        raise RuntimeError("manager bug")

    pool = ReplicaPool("web", on_demand=boom)
    pool.notify_demand()  # logged, not raised into the request path
    calls: list[str] = []
    pool.on_demand = lambda: calls.append("demand")
    pool.notify_demand()
    assert calls == ["demand"]
