"""Batch calls in the worker (chalkcompute.worker.batchcall): the handler per row or per batched
invocation, one answer with the results column and per-row errors, per-row timeouts, cancels,
results too large for one message, and a batch whose row count lies."""

from __future__ import annotations

import asyncio
import threading

import pyarrow as pa
import pytest

from chalkcompute._contract import _max_payload
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec, schema_from_bytes
from chalkcompute.worker.batchcall import BatchSettings, run_batch_call_async, run_batch_call_sync
from chalkcompute.worker.cancel import Canceller


def halve(x: int) -> float:
    if x == 3:
        raise ValueError("three")
    return x / 2


def lists(xs: list[int]) -> list[int]:
    return [len(xs)] * len(xs)


def spin_on(x: int) -> int:
    while x == 1:  # bytecode all along: an interrupt lands at once
        pass
    return x


async def nap(x: float) -> float:
    await asyncio.sleep(x)
    return x


def work(codec: FunctionCodec, column: list, rows: list[int] | None = None, name: str = "x") -> pb.Assignment:
    schema, batch = codec._in.encode([column])
    return pb.Assignment(call_id="fc-1", attempt=1, batch=True, batch_rows=rows or [],
                         args=pb.Payload(schema=schema, batch=batch, rows=len(column)))


def results(event: pb.AttemptEvent) -> tuple[list, dict[int, str]]:
    out = event.batch_result
    values = (pa.ipc.read_record_batch(pa.py_buffer(out.results.batch), schema_from_bytes(out.results.schema))
              .column(0).to_pylist() if out.results.batch else [])
    return values, {e.row: e.error.code or e.error.message for e in out.errors}


@pytest.mark.timeout(10)
def test_each_row_runs_and_fails_on_its_own() -> None:
    codec = FunctionCodec.for_function(halve)
    event, stop = run_batch_call_sync(halve, codec, work(codec, [1, 2, 3, 4]), Canceller(), BatchSettings())
    assert stop == "" and list(event.batch_result.rows) == [0, 1, 2, 3]
    assert results(event) == ([0.5, 1.0, None, 2.0], {2: "three"})


@pytest.mark.timeout(10)
def test_only_the_rows_named_run() -> None:
    codec = FunctionCodec.for_function(halve)
    event, _ = run_batch_call_sync(halve, codec, work(codec, [1, 2, 3, 4], rows=[1, 3]), Canceller(),
                                   BatchSettings())
    assert list(event.batch_result.rows) == [1, 3] and results(event) == ([1.0, 2.0], {})


@pytest.mark.timeout(10)
def test_a_batched_function_runs_once_per_batch_size_with_lists() -> None:
    codec = FunctionCodec.for_function(lists, batched=True)
    event, _ = run_batch_call_sync(lists, codec, work(codec, list(range(7))), Canceller(),
                                   BatchSettings(max_batch_size=3))
    assert results(event) == ([3, 3, 3, 3, 3, 3, 1], {})


@pytest.mark.timeout(10)
def test_a_row_past_its_timeout_is_interrupted_and_the_next_runs() -> None:
    codec = FunctionCodec.for_function(spin_on)
    event, _ = run_batch_call_sync(spin_on, codec, work(codec, [0, 1, 2]), Canceller(),
                                   BatchSettings(timeout=0.2, name="spin_on"))
    assert results(event) == ([0, None, 2], {1: "DEADLINE_EXCEEDED"})


@pytest.mark.timeout(10)
def test_a_coroutine_row_past_its_timeout_fails_alone() -> None:
    codec = FunctionCodec.for_function(nap)
    event, _ = asyncio.run(run_batch_call_async(nap, codec, work(codec, [0.0, 30.0, 0.0]),
                                                BatchSettings(timeout=0.2, name="nap")))
    assert results(event) == ([0.0, None, 0.0], {1: "DEADLINE_EXCEEDED"})


@pytest.mark.timeout(10)
def test_a_cancel_stops_the_whole_attempt() -> None:
    codec = FunctionCodec.for_function(spin_on)
    canceller = Canceller()
    threading.Timer(0.2, canceller.cancel_item, args=(("fc-1", 1),)).start()
    event, _ = run_batch_call_sync(spin_on, codec, work(codec, [0, 1, 2]), canceller, BatchSettings())
    assert event.WhichOneof("event") == "error" and event.error.code == "CANCELLED"


@pytest.mark.timeout(10)
def test_results_too_large_for_one_message_send_the_first_rows_and_run_the_rest_again() -> None:
    def big(x: int) -> str:
        return "x" * 3000

    codec = FunctionCodec.for_function(big)
    old = _max_payload[0]
    _max_payload[0] = 8000
    try:
        event, _ = run_batch_call_sync(big, codec, work(codec, [0, 1, 2, 3]), Canceller(), BatchSettings())
    finally:
        _max_payload[0] = old
    values, errors = results(event)
    assert values[:2] == ["x" * 3000] * 2 and values[2:] == [None, None]
    assert errors == {2: "RESOURCE_EXHAUSTED", 3: "RESOURCE_EXHAUSTED"}


@pytest.mark.timeout(10)
def test_a_batch_whose_row_count_lies_is_refused_whole() -> None:
    codec = FunctionCodec.for_function(halve)
    a = work(codec, [1, 2])
    a.args.rows = 5
    event, _ = run_batch_call_sync(halve, codec, a, Canceller(), BatchSettings())
    assert event.WhichOneof("event") == "error" and "says it has 5 row(s)" in event.error.message
