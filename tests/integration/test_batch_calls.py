"""Batch calls (chalkcompute._batch.call_batch: many inputs, one queue unit) against a real chalkd."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest

import chalkcompute
from chalkcompute._batch import call_batch
from chalkcompute._client import run_sync
from chalkcompute.calls import FunctionCall
from chalkcompute.exceptions import ChalkError, FunctionSignatureError, FunctionTimeoutError, RemoteExecutionError
from chalkcompute.policies import RateLimitPolicy
from chalkcompute.retries import RetryPolicy

pytestmark = pytest.mark.usefixtures("daemon")


@chalkcompute.function
def bc_scale(x: int, factor: float | None = None) -> float:
    if x == 13:
        raise ValueError("unlucky row")
    return x * (factor if factor is not None else 1.0)


@chalkcompute.function(max_batching_size=4)
def bc_lists(xs: list[int]) -> list[str]:
    # The handler sees lists of at most 4; it says how long each list was.
    return [f"{x}/{len(xs)}" for x in xs]


def note(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


@chalkcompute.function(retries=RetryPolicy(max_retries=2, initial_wait_seconds=0.0), max_replicas=1)
def bc_flaky(log: str, x: int) -> int:
    import os

    note(log, str(x))  # one line per run of this row
    if x == 2 and not os.path.exists(log + ".ok"):
        open(log + ".ok", "w").close()
        raise RuntimeError("first run of row 2 fails")
    return x + 100


@chalkcompute.function(timeout=0.5, retries=0)
def bc_slow(x: float) -> float:
    import time

    time.sleep(x)
    return x


def runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.timeout(60)
def test_values_in_order_with_per_row_errors_and_columns_cast() -> None:
    batch = pa.record_batch({"x": pa.array([1, 13, 3], pa.int32()), "factor": pa.array([2.0, 1.0, None])})
    out = run_sync(call_batch(bc_scale, batch))
    assert out.values.to_pylist() == [2.0, None, 3.0]
    assert list(out.errors) == [1]
    err = out.errors[1]
    assert isinstance(err, RemoteExecutionError) and "unlucky row" in str(err)


@pytest.mark.timeout(60)
def test_bad_columns_are_refused_naming_them() -> None:
    with pytest.raises(TypeError, match="no column for parameter.*'x'"):
        run_sync(call_batch(bc_scale, pa.record_batch({"factor": [1.0]})))
    with pytest.raises(TypeError, match="column 'x' .*cannot be cast to parameter 'x'"):
        run_sync(call_batch(bc_scale, pa.record_batch({"x": ["a"], "factor": [1.0]})))
    with pytest.raises(TypeError, match="row 1: parameter 'x' is not Optional"):
        run_sync(call_batch(bc_scale, pa.record_batch({"x": [1, None], "factor": [1.0, 1.0]})))
    with pytest.raises(TypeError, match=r"column\(s\) \['y'\] name no parameter"):
        run_sync(call_batch(bc_scale, pa.record_batch({"x": [1], "factor": [1.0], "y": [1]})))


@pytest.mark.timeout(60)
def test_a_batched_function_gets_lists_of_at_most_its_batch_size() -> None:
    out = run_sync(call_batch(bc_lists, pa.record_batch({"xs": list(range(10))})))
    assert out.values.to_pylist() == [f"{x}/{4 if x < 8 else 2}" for x in range(10)] and out.errors == {}


@pytest.mark.timeout(60)
def test_a_failed_row_is_retried_without_running_the_others_again(tmp_path: Path) -> None:
    log = str(tmp_path / "runs")
    out = run_sync(call_batch(bc_flaky, pa.record_batch({"log": [log] * 4, "x": [0, 1, 2, 3]})))
    assert out.values.to_pylist() == [100, 101, 102, 103] and out.errors == {}
    assert sorted(runs(Path(log))) == ["0", "1", "2", "2", "3"]   # row 2 twice, every other row once


@pytest.mark.timeout(60)
def test_the_timeout_applies_per_row() -> None:
    out = run_sync(call_batch(bc_slow, pa.record_batch({"x": [0.0, 30.0, 0.01]})))
    assert out.values.to_pylist() == [0.0, None, 0.01]
    assert isinstance(out.errors[1], FunctionTimeoutError) and list(out.errors) == [1]


@pytest.mark.timeout(60)
def test_cancelling_the_awaiting_task_cancels_the_batch_and_frees_its_slot() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(call_batch(bc_slow, pa.record_batch({"x": [0.4] * 50})))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # One replica, one slot: this batch runs only once the cancelled one has let go of it.
        out = await call_batch(bc_slow, pa.record_batch({"x": [0.0]}))
        assert out.values.to_pylist() == [0.0]

    run_sync(main())


@chalkcompute.function(timeout=0.5, retries=0, concurrency=4)
async def bc_slow_async(x: float) -> float:
    import asyncio

    await asyncio.sleep(x)
    return x


@chalkcompute.function(max_batching_size=2, timeout=0.5, retries=0)
def bc_slow_lists(xs: list[float]) -> list[float]:
    import time

    time.sleep(max(xs))
    return xs


@chalkcompute.function
def bc_gen(n: int):
    yield from range(n)


@pytest.mark.timeout(60)
def test_the_timeout_applies_per_row_of_a_coroutine_and_per_invocation_of_a_batched_function() -> None:
    out = run_sync(call_batch(bc_slow_async, pa.record_batch({"x": [0.0, 30.0, 0.01]})))
    assert out.values.to_pylist() == [0.0, None, 0.01] and list(out.errors) == [1]
    assert isinstance(out.errors[1], FunctionTimeoutError)
    # Invocations of [0, 0], [30, 0], [0]: only the second one's two rows time out.
    out = run_sync(call_batch(bc_slow_lists, pa.record_batch({"xs": [0.0, 0.0, 30.0, 0.0, 0.0]})))
    assert out.values.to_pylist() == [0.0, 0.0, None, None, 0.0] and sorted(out.errors) == [2, 3]


@pytest.mark.timeout(60)
def test_a_generator_cannot_be_batch_called() -> None:
    with pytest.raises(FunctionSignatureError, match="generator"):
        run_sync(call_batch(bc_gen, pa.record_batch({"n": [1]})))


@pytest.mark.timeout(60)
def test_a_batch_call_followed_by_id_says_what_it_is() -> None:
    out = run_sync(call_batch(bc_scale, pa.record_batch({"x": [13], "factor": [1.0]})))
    call_id = out.errors[0].call_id
    assert call_id.startswith("fc-")
    with pytest.raises(ChalkError, match=f"call {call_id} to 'bc_scale' is a batch call"):
        FunctionCall.from_id(call_id).get(timeout=30)


@chalkcompute.function(rate_limit=RateLimitPolicy(rate=200, per="second"))
def bc_limited(log: str, x: int) -> int:
    note(log, str(x))
    return -x


@pytest.mark.timeout(60)
def test_a_batch_larger_than_the_rate_limits_burst_runs_in_slices_each_row_once(tmp_path: Path) -> None:
    log = str(tmp_path / "runs")
    out = run_sync(call_batch(bc_limited, pa.record_batch({"log": [log] * 500, "x": list(range(500))})))
    assert out.values.to_pylist() == [-x for x in range(500)] and out.errors == {}
    assert sorted(map(int, runs(Path(log)))) == list(range(500))
