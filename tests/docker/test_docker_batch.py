"""Batch calls through a container replica: map's inputs and call_batch's rows reach the worker in
the container as one queue unit each (the runtime wheel in the image carries the batch engine)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from chalkcompute import Image, RemoteFunction, RetryPolicy
from chalkcompute._batch import call_batch
from chalkcompute._client import run_sync

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]


def dk_triple(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return 3 * x


def test_map_and_call_batch_through_a_container() -> None:
    fn = RemoteFunction(dk_triple, name="dk_triple", image=Image.debian_slim(),
                        retries=RetryPolicy(max_retries=1, initial_wait_seconds=0.0))
    assert list(fn.map(range(2000))) == [3 * x for x in range(2000)]
    out = run_sync(call_batch(fn, pa.record_batch({"x": pa.array([1, -2, 3], pa.int16())})))
    assert out.values.to_pylist() == [3, None, 9]
    assert list(out.errors) == [1] and "negative -2" in str(out.errors[1])
