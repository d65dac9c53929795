"""Batched handlers in the worker: one invocation per AssignmentBatch, one event per
item, the wrong-count error, and cancelling a batch only when all its items are."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.batching import item_keys, run_batch_async, run_batch_sync
from chalkcompute.worker.blocking import DRAINED, BlockingLink, serve_blocking
from chalkcompute.worker.outcome import Outcome, batch_size_mismatch
from chalkcompute.worker.runner import Runner
from tests.unit.worker_fakes import (
    WAIT,
    FakeDaemon,
    FakeLink,
    assert_cancelled,
    assignment,
    result_of,
    run_in_thread,
    run_loop_in_thread,
    spin,
    version_of,
)


def batch_embed(texts: list[str]) -> list[list[float]]:
    return [[float(len(t)), 1.0] for t in texts]


def too_few(texts: list[str]) -> list[int]:
    return [len(t) for t in texts][:-1]


def not_a_list(texts: list[str]) -> list[int]:
    return {"n": len(texts)}  # type: ignore[return-value]


def boom(texts: list[str]) -> list[int]:
    raise KeyError("no model loaded")


def score(rows: pa.Table) -> list[float]:
    return pc.multiply(rows.column("w"), 2.0)  # a column is fine too


def items_of(codec, *texts, name="texts", prefix="i") -> list[pb.Assignment]:
    return [assignment(codec, f"{prefix}{n}", **{name: t}) for n, t in enumerate(texts)]


def test_results_are_split_one_per_item_in_order():
    codec = FunctionCodec.for_function(batch_embed, batched=True)
    items = items_of(codec, "a", "bcd")
    events, stop = run_batch_sync(batch_embed, codec, items)
    assert stop == ""
    assert [e.call_id for e in events] == ["i0", "i1"]
    assert [result_of(codec, e) for e in events] == [[1.0, 1.0], [3.0, 1.0]]


@pytest.mark.parametrize("fn, message", [
    (too_few, "too_few returned 2 results for a batch of 3 inputs"),
    (not_a_list, "not_a_list returned dict, not a list of 3 results (one per input)"),
])
def test_the_wrong_number_of_results_is_every_items_error(fn, message):
    codec = FunctionCodec.for_function(fn, batched=True)
    events, _ = run_batch_sync(fn, codec, items_of(codec, "a", "b", "c"))
    assert len(events) == 3
    for e in events:
        assert e.error.exception_type == "chalkcompute.BatchSizeMismatch"
        assert e.error.message == message
        assert "builtins.ValueError" in e.error.exception_mro


def test_batch_size_mismatch_accepts_a_right_sized_list_or_tuple():
    assert batch_size_mismatch("f", [1, 2], 2) is None
    assert batch_size_mismatch("f", (1, 2), 2) is None
    assert "returned 1 results for a batch of 2" in batch_size_mismatch("f", [1], 2).message


def test_an_exception_is_every_items_error():
    codec = FunctionCodec.for_function(boom, batched=True)
    events, stop = run_batch_sync(boom, codec, items_of(codec, "a", "b"))
    assert stop == "" and len(events) == 2
    assert all(e.error.exception_type == "builtins.KeyError" and "no model loaded" in e.error.message
               for e in events)


def test_an_undecodable_item_gets_its_own_error_and_the_rest_run():
    seen = []

    def record(texts: list[str]) -> list[int]:
        seen.append(list(texts))
        return [len(t) for t in texts]

    codec = FunctionCodec.for_function(record, batched=True)
    bad = pb.Assignment(call_id="bad", attempt=1, args=pb.Payload(schema=b"junk", batch=b"junk", rows=1))
    events, _ = run_batch_sync(record, codec, [items_of(codec, "ab")[0], bad])
    by_id = {e.call_id: e for e in events}
    assert result_of(codec, by_id["i0"]) == 2
    assert by_id["bad"].WhichOneof("event") == "error"
    assert seen == [["ab"]]


def test_a_result_that_cannot_travel_fails_only_its_item():
    codec = FunctionCodec.for_function(too_few, batched=True)
    items = items_of(codec, "a", "b")
    out = Outcome(item_keys(items))
    out.results("f", codec, items, [1, "not an int"])
    events = out.events
    assert result_of(codec, events[0]) == 1
    assert events[1].WhichOneof("event") == "error"


def test_nested_calls_name_the_first_item_as_parent():
    parents = []

    def handler(texts: list[str]) -> list[str]:
        parents.append(current_call_id.get())
        return texts

    codec = FunctionCodec.for_function(handler, batched=True)
    run_batch_sync(handler, codec, items_of(codec, "a", "b"))
    assert parents == ["i0"]


def test_a_table_handler_gets_a_table_and_may_return_a_column():
    codec = FunctionCodec.for_function(score, batched=True)
    items = [assignment(codec, f"t{n}", rows={"w": w}) for n, w in enumerate([1.0, 2.5])]
    events, _ = run_batch_sync(score, codec, items)
    assert [result_of(codec, e) for e in events] == [2.0, 5.0]


def test_an_async_batch():
    async def handler(texts: list[str]) -> list[int]:
        await asyncio.sleep(0)
        return [len(t) for t in texts]

    codec = FunctionCodec.for_function(handler, batched=True)
    events, stop = asyncio.run(run_batch_async(handler, codec, items_of(codec, "a", "bb")))
    assert [result_of(codec, e) for e in events] == [1, 2] and stop == ""


def test_a_batch_is_cancelled_only_when_every_item_is(canceller):
    release = threading.Event()
    started = threading.Event()

    def handler(texts: list[str]) -> list[str]:
        started.set()
        spin(release)
        return texts

    codec = FunctionCodec.for_function(handler, batched=True)

    def run(items):
        canceller.group(item_keys(items))
        return run_batch_sync(handler, codec, items, canceller)

    # One of two cancelled: the invocation goes on, both results are reported.
    items = items_of(codec, "a", "b")
    thread, out = run_in_thread(run, items)
    assert started.wait(WAIT)
    assert canceller.cancel_item(("i0", 1)) is False
    release.set()
    thread.join(WAIT)
    assert [result_of(codec, e) for e in out[0][0]] == ["a", "b"]

    # Both cancelled: CallCancelled in the handler, CANCELLED for every item.
    release.clear()
    started.clear()
    items = items_of(codec, "c", "d", prefix="j")
    thread, out = run_in_thread(run, items)
    assert started.wait(WAIT)
    canceller.cancel_item(("j0", 1))
    assert canceller.cancel_item(("j1", 1)) is True
    thread.join(WAIT)
    events, _ = out[0]
    assert [e.call_id for e in events] == ["j0", "j1"]
    for e in events:
        assert_cancelled(e)


# -- the runners -----------------------------------------------------------------------------------


def test_runner_async_batches_one_credit_per_batch_and_cancel_all(canceller):
    async def handler(texts: list[str]) -> list[int]:
        if "forever" in texts:
            await asyncio.Event().wait()
        return [len(t) for t in texts]

    codec, link = FunctionCodec.for_function(handler, batched=True), FakeLink()
    thread, out = run_loop_in_thread(Runner(handler, codec, link, capacity=2, batched=True, canceller=canceller).run)
    link.deliver(pb.AssignmentBatch(items=items_of(codec, "a", "bb")))
    assert [result_of(codec, e) for e in link.wait_events(2)] == [1, 2]
    link.deliver(pb.AssignmentBatch(items=items_of(codec, "forever", "x", prefix="f")))
    link.cancel("f0")
    link.cancel("f1")
    assert_cancelled(link.event_of("f0"))
    assert_cancelled(link.event_of("f1"))
    link.lose("test over")
    thread.join(WAIT)
    assert out == ["test over"]
    assert link.credit == 2 + 2  # one per batch


def test_runner_sync_batches_on_the_main_thread_path_and_the_pool(canceller):
    def handler(texts: list[str]) -> list[str]:
        return [t.upper() for t in texts]

    codec = FunctionCodec.for_function(handler, batched=True)
    for capacity in (1, 3):
        link = FakeLink()
        runner = Runner(handler, codec, link, capacity=capacity, batched=True, canceller=canceller)
        assert runner.plain_sync == (capacity == 1)
        thread, out = run_in_thread(runner.run_sync_handlers) if runner.plain_sync \
            else run_loop_in_thread(runner.run)
        link.deliver(pb.AssignmentBatch(items=items_of(codec, "a", "b", "c")))
        assert [result_of(codec, e) for e in link.wait_events(3)] == ["A", "B", "C"]
        link.lose("test over")
        thread.join(WAIT)
        assert out == ["test over"] and link.credit == capacity + 1


def test_blocking_link_runs_batches(tmp_path: Path, canceller):
    path = str(tmp_path / "d.sock")
    if len(path) > 100:
        pytest.skip("temporary directory path too long for a unix socket")
    codec = FunctionCodec.for_function(batch_embed, batched=True)
    daemon = FakeDaemon(path, version_of(batch=4))
    link = BlockingLink(path, "inst", "r1", "tok", canceller)
    try:
        link.connect()
        daemon.wait_connected()
        thread, out = run_in_thread(serve_blocking, link, batch_embed, codec)
        daemon.send(pb.WorkerResponse(batches=[pb.AssignmentBatch(items=items_of(codec, "a", "bb"))]))
        daemon.read_until(lambda d: len(d.events) == 2)
        assert [result_of(codec, e) for e in daemon.events] == [[1.0, 1.0], [2.0, 1.0]]
        assert daemon.credit == 1 + 1
        daemon.send(pb.WorkerResponse(drain=True))
        thread.join(WAIT)
        assert out == [DRAINED]
    finally:
        link.close()
        daemon.close()
