"""spawn / FunctionCall and map / starmap against a real chalkd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import chalkcompute
from chalkcompute import RemoteFunction
from chalkcompute._client import Client, run_sync
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.calls import FunctionCall
from chalkcompute.exceptions import (
    CallCancelledError,
    FunctionNotFoundError,
    FunctionSignatureError,
    FunctionTimeoutError,
    RemoteExecutionError,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("daemon")


@chalkcompute.function
def sm_square(x: int) -> int:
    return x * x


@chalkcompute.function
def sm_add(x: int, y: int) -> int:
    return x + y


@chalkcompute.function
async def sm_gated(gate: str, value: int) -> int:
    """Returns ``value`` once the file ``gate`` exists (async, so a cancel stops it)."""
    import asyncio
    import os

    while not os.path.exists(gate):
        await asyncio.sleep(0.01)
    return value


def gated_value(gate: str, value: int) -> int:
    import os
    import time

    while not os.path.exists(gate):
        time.sleep(0.01)
    return value


@chalkcompute.function
def sm_check(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad {x}")
    return x


@chalkcompute.function
async def sm_fail_or_wait(x: int, gate: str) -> int:
    import asyncio
    import os

    if x == 0:
        raise ValueError("zero")
    while not os.path.exists(gate):
        await asyncio.sleep(0.01)
    return x


@chalkcompute.function
def sm_numbers(n: int):
    yield from range(n)


def _states(function_name: str) -> list[str]:
    resp = run_sync(Client.get().rpc("ListCalls", pb.ListCallsRequest(function_name=function_name, limit=1000)))
    return [c.state for c in resp.calls]


# -- spawn / FunctionCall --------------------------------------------------------------------


def test_spawn_and_get():
    call = sm_square.spawn(7)
    assert isinstance(call, FunctionCall)
    assert call.object_id.startswith("fc-")
    assert call.get() == 49
    # get() again: the same answer from the same subscription, no new one.
    handles = len(Client.get().session.handles)
    assert call.get(timeout=5) == 49
    assert len(Client.get().session.handles) == handles


def test_get_timeout_then_result(tmp_path):
    gate = tmp_path / "gate"
    call = sm_gated.spawn(str(gate), 5)
    with pytest.raises(FunctionTimeoutError) as info:
        call.get(timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert call.object_id in str(info.value) and "0.2s" in str(info.value)
    gate.touch()
    assert call.get(timeout=60) == 5


def test_spawned_error_raises_like_a_call():
    call = sm_check.spawn(3)
    with pytest.raises(RuntimeError, match="^ValueError: bad 3$") as info:
        call.get()
    err = info.value
    assert isinstance(err, RemoteExecutionError)
    assert err.call_id == call.object_id and err.function_name == "sm_check"
    with pytest.raises(RemoteExecutionError):  # and again
        call.get()


def test_from_id_in_second_process(daemon, tmp_path):
    gate = tmp_path / "gate"
    call = sm_gated.spawn(str(gate), 42)
    code = (
        "import sys\n"
        "from chalkcompute.calls import FunctionCall\n"
        "call = FunctionCall.from_id(sys.argv[1])\n"
        "print(call.function_name, call.get(timeout=60))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, call.object_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CHALK_COMPUTE_TARGET": daemon.target, "CHALK_REGISTER_AT_EXIT": "0"})
    gate.touch()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert out.split() == ["sm_gated", "42"]
    assert call.get() == 42


def test_from_id_of_a_finished_call_in_this_process():
    call = sm_add.spawn(2, y=3)
    assert call.get() == 5
    again = FunctionCall.from_id(call.object_id)
    assert again.object_id == call.object_id and again.function_name == "sm_add"
    assert again.get() == 5


def test_from_id_unknown():
    with pytest.raises(FunctionNotFoundError, match="fc-does-not-exist"):
        FunctionCall.from_id("fc-does-not-exist")


def test_cancel(tmp_path):
    gate = tmp_path / "gate"
    try:
        call = sm_gated.spawn(str(gate), 1)
        call.cancel()
        with pytest.raises(CallCancelledError):
            call.get(timeout=30)
        # Cancelling by id, from an object that never followed the call.
        other = sm_gated.spawn(str(gate), 2)
        FunctionCall.from_id(other.object_id).cancel()
        with pytest.raises(CallCancelledError):
            other.get(timeout=30)
        done = sm_square.spawn(3)
        assert done.get() == 9
        done.cancel()  # finished already: nothing to cancel
        assert done.get() == 9
    finally:
        gate.touch()


@pytest.mark.timeout(180)
def test_spawned_call_survives_a_daemon_restart(fresh_daemon, tmp_path):
    fn = RemoteFunction(gated_value, name="sm_gated_restart", target=fresh_daemon.target)
    fn.wait_ready()
    gate = tmp_path / "gate"
    call = fn.spawn(str(gate), 11)  # accepted means committed: it survives kill -9
    fresh_daemon.kill9()
    fresh_daemon.start()
    gate.touch()
    assert call.get(timeout=90) == 11  # this process re-attached by itself
    assert FunctionCall.from_id(call.object_id, target=fresh_daemon.target).get(timeout=30) == 11


def test_map_refuses_generators_and_a_spawned_generator_is_iterated_not_got():
    with pytest.raises(FunctionSignatureError, match="generator"):
        sm_numbers.map([1, 2])
    call = sm_numbers.spawn(3)  # runs unfollowed; tests/integration/test_streams.py reads such calls
    with pytest.raises(FunctionSignatureError, match="iterate the call"):
        call.get(timeout=30)


def test_async_twins(tmp_path):
    gate = tmp_path / "gate"

    async def main():
        call = await sm_square.spawn.aio(6)
        value = await call.get.aio(timeout=30)
        slow = await sm_gated.spawn.aio(str(gate), 8)
        with pytest.raises(FunctionTimeoutError):
            await slow.get.aio(timeout=0.2)
        gate.touch()
        again = await FunctionCall.from_id.aio(slow.object_id)
        late = await again.get.aio()
        doomed = await sm_gated.spawn.aio(str(tmp_path / "never"), 0)
        await doomed.cancel.aio()
        with pytest.raises(CallCancelledError):
            await doomed.get.aio()
        mapped = [r async for r in sm_square.map.aio(range(20))]
        starred = [r async for r in sm_add.starmap.aio([(1, 2), (3, 4)], order_outputs=False)]
        return value, late, mapped, starred

    value, late, mapped, starred = asyncio.run(main())
    assert value == 36 and late == 8
    assert mapped == [x * x for x in range(20)]
    assert sorted(starred) == [3, 7]


# -- map / starmap ----------------------------------------------------------------------------


def test_map_in_order():
    assert list(sm_square.map(range(200))) == [x * x for x in range(200)]


def test_map_unordered():
    assert sorted(sm_square.map(range(200), order_outputs=False)) == sorted(x * x for x in range(200))


def test_map_zips_to_the_shortest_and_takes_kwargs():
    assert list(sm_add.map([1, 2, 3], [10, 20])) == [11, 22]
    assert list(sm_add.map([1, 2, 3], kwargs={"y": 100})) == [101, 102, 103]


def test_starmap():
    assert list(sm_add.starmap([(1, 2), (3, 4), [5, 6]])) == [3, 7, 11]
    assert sorted(sm_add.starmap(((i, i) for i in range(50)), order_outputs=False)) == [2 * i for i in range(50)]
    with pytest.raises(TypeError, match="argument tuples"):
        list(sm_square.starmap([1, 2]))


def test_map_return_exceptions():
    results = list(sm_check.map(range(9), return_exceptions=True))
    for x, r in enumerate(results):
        if x % 3 == 0:
            assert isinstance(r, RemoteExecutionError) and str(r) == f"ValueError: bad {x}"
        else:
            assert r == x


def test_map_raises_first_failure_and_cancels_the_rest(tmp_path):
    gate = tmp_path / "gate"
    try:
        with pytest.raises(RuntimeError, match="^ValueError: zero$"):
            for _ in sm_fail_or_wait.map(range(6), kwargs={"gate": str(gate)}):
                pass
        # The five inputs still waiting on the gate are cancelled, not left to run.
        wait_for(lambda: sorted(_states("sm_fail_or_wait")) == ["cancelled"] * 5 + ["failed"],
                 what="the other inputs to be cancelled")
    finally:
        gate.touch()


def test_map_empty():
    assert list(sm_square.map([])) == []
    assert list(sm_add.starmap([])) == []
    with pytest.raises(TypeError):
        sm_square.map()


def test_map_ten_thousand():
    n = 10_000
    assert list(sm_square.map(range(n))) == [x * x for x in range(n)]
    assert sum(sm_add.map(range(n), range(n), order_outputs=False)) == n * (n - 1)


def test_map_reads_its_inputs_lazily():
    consumed = []

    def inputs():
        for i in range(10**9):  # endless, for practical purposes
            consumed.append(i)
            yield i

    results = sm_square.map(inputs())
    first = [next(results) for _ in range(5)]
    assert first == [0, 1, 4, 9, 16]
    # At most a window's worth was read ahead.
    assert len(consumed) <= chalkcompute.calls.MAP_MAX_INFLIGHT + 5
    results.close()


def test_bad_map_and_get_arguments_are_named():
    with pytest.raises(TypeError, match=r"map\(\) argument 1 must be an iterable of inputs, got int"):
        list(sm_square.map(5))
    with pytest.raises(ValueError, match=r"get\(timeout=...\) must be None or a number of seconds >= 0, got -1"):
        sm_square.spawn(2).get(timeout=-1)
