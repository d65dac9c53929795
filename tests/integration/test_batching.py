"""Batching against a real chalkd: callers pass one item, the handler gets lists."""

from __future__ import annotations

import pyarrow as pa
import pytest

import chalkcompute
from chalkcompute import FunctionSignatureError, RemoteExecutionError

pytestmark = pytest.mark.usefixtures("daemon")


@chalkcompute.function(max_batching_size=4, max_buffer_duration=60_000)
def by_size(xs: list[int]) -> list[tuple[int, int]]:
    # Each caller learns the size of the batch its item travelled in.
    return [(x, len(xs)) for x in xs]


def test_a_full_batch_goes_at_once():
    by_size.wait_ready()
    # The window is a minute: only reaching the size can have formed this batch.
    calls = [by_size.spawn(x) for x in range(4)]
    assert [c.get(timeout=30) for c in calls] == [(x, 4) for x in range(4)]


@chalkcompute.function(max_batching_size=100, max_buffer_duration=200)
def by_time(words: list[str], counts: list[int]) -> list[str]:
    return [f"{w}x{c}/{len(words)}" for w, c in zip(words, counts, strict=True)]


def test_a_short_batch_goes_when_its_window_closes():
    by_time.wait_ready()
    calls = [by_time.spawn(w, n) for w, n in (("a", 1), ("b", 2), ("c", 3))]
    assert [c.get(timeout=30) for c in calls] == ["ax1/3", "bx2/3", "cx3/3"]


@chalkcompute.function(max_batching_size=2)
def defaults_apply(xs: list[int]) -> list[int]:
    return [x * 10 for x in xs]


def test_one_call_and_defaults():
    # max_buffer_duration defaults to 1000 ms: a lone item still runs.
    assert defaults_apply(3) == 30


@chalkcompute.function(max_batching_size=3, max_buffer_duration=50)
def miscounts(xs: list[int]) -> list[int]:
    return xs[:-1]


def test_a_wrong_number_of_results_fails_each_caller():
    calls = [miscounts.spawn(x) for x in range(3)]
    for c in calls:
        with pytest.raises(RemoteExecutionError, match="results for a batch of"):
            c.get(timeout=30)


@chalkcompute.function(max_batching_size=2, max_buffer_duration=50)
def raises_in_batch(xs: list[int]) -> list[int]:
    raise ValueError(f"bad batch of {len(xs)}")


def test_a_handler_error_reaches_every_caller_of_the_batch():
    with pytest.raises(RemoteExecutionError, match="ValueError: bad batch of"):
        raises_in_batch(1)


def test_a_generator_cannot_be_batched():
    def gen(xs: list[int]):
        yield from xs

    with pytest.raises(FunctionSignatureError, match="cannot be batched"):
        chalkcompute.RemoteFunction(gen, max_batching_size=4)


def test_batch_size_must_be_positive():
    def f(xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(ValueError, match="max_batching_size must be a positive int"):
        chalkcompute.RemoteFunction(f, max_batching_size=0)


@chalkcompute.function(max_batching_size=3, max_buffer_duration=100)
def score(rows: pa.Table) -> list[float]:
    # One Arrow table per batch: a row per caller, a column per key of the caller's dict.
    return [t * w for t, w in zip(rows.column("t").to_pylist(), rows.column("w").to_pylist(), strict=True)]


def test_a_table_handler_gets_one_row_per_caller():
    calls = [score.spawn({"t": float(n), "w": 2.0}) for n in range(3)]
    assert [c.get(timeout=30) for c in calls] == [0.0, 2.0, 4.0]
