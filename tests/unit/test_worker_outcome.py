"""The worker's one outcome encoder: the rule "a handler's result or exception becomes this
reply", and every execution engine (blocking, thread pool, event loop, batched) answering the
same handler's end with the same final event."""

from __future__ import annotations

import asyncio

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.batching import item_keys, run_batch_async, run_batch_sync
from chalkcompute.worker.cancel import CallCancelled
from chalkcompute.worker.outcome import CANCELS_ON_LOOP, Outcome, cancelled_event, error_message, fail_late
from chalkcompute.worker.runner import Runner, run_plain
from tests.unit.worker_fakes import FakeLink, assignment, result_of, run_loop_in_thread


class Unlucky(ValueError):
    pass


# -- the rule ------------------------------------------------------------------------------------


def test_a_value_becomes_the_result_event():
    codec = FunctionCodec.for_function(lambda x: x)
    out = Outcome.of("c", 3)
    with out:
        out.result(codec, 42)
    assert len(out.events) == 1 and out.stop == ""
    assert (out.events[0].call_id, out.events[0].attempt) == ("c", 3)
    assert codec.decode_results(out.events[0].result.schema, out.events[0].result.batch) == [42]


def test_a_value_that_cannot_be_encoded_is_the_attempts_error():
    def f(x: int) -> int:
        return x

    codec = FunctionCodec.for_function(f)
    out = Outcome.of("c", 1)
    with out:
        out.result(codec, "not an int")
    [event] = out.events
    assert event.WhichOneof("event") == "error" and out.stop == ""


def test_an_exception_travels_with_its_type_mro_message_and_traceback():
    out = Outcome.of("c", 1)
    with out:
        raise Unlucky("seven")
    [event] = out.events
    assert event.error.exception_type.endswith("test_worker_outcome.Unlucky")
    assert event.error.message == "seven"
    assert event.error.exception_mro[:2] == ["builtins.ValueError", "builtins.Exception"]
    assert "raise Unlucky" in event.error.traceback
    assert out.stop == ""


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)])
def test_keyboard_interrupt_and_system_exit_also_stop_the_replica(exc):
    out = Outcome.of("c", 1)
    with out:
        raise exc
    assert out.events[0].error.exception_type == f"builtins.{type(exc).__name__}"
    assert out.stop == f"the handler raised {type(exc).__name__}"


def test_a_cancel_is_the_cancelled_event_of_every_attempt_even_those_that_failed_first():
    items = [pb.Assignment(call_id=f"i{n}", attempt=1) for n in range(3)]
    out = Outcome(item_keys(items))
    with out:
        out.failed(items[:1], ValueError("undecodable"))
        raise CallCancelled
    assert out.events == [cancelled_event(f"i{n}", 1) for n in range(3)]
    assert out.stop == ""


def test_where_the_handler_runs_decides_what_counts_as_a_cancel():
    # On the event loop a task's CancelledError is a cancel; raised by sync user code in a
    # thread it is that code's own exception (as it always was).
    on_loop, in_thread = Outcome.of("c", 1, CANCELS_ON_LOOP), Outcome.of("c", 1)
    for out in (on_loop, in_thread):
        with out:
            raise asyncio.CancelledError
    assert on_loop.events == [cancelled_event("c", 1)]
    assert in_thread.events[0].error.exception_type == "asyncio.exceptions.CancelledError"


def test_a_batch_exception_fails_the_live_items_and_keeps_the_others_own_errors():
    items = [pb.Assignment(call_id=f"i{n}", attempt=1) for n in range(3)]
    out = Outcome(item_keys(items))
    with out:
        out.failed(items[:1], TypeError("undecodable"))
        out.live = item_keys(items[1:])
        raise KeyError("no model")
    assert [(e.call_id, e.error.exception_type) for e in out.events] == [
        ("i0", "builtins.TypeError"), ("i1", "builtins.KeyError"), ("i2", "builtins.KeyError")]


def test_a_late_failure_replaces_a_success_but_not_an_error():
    done = pb.AttemptEvent(call_id="g", attempt=1, done=True)
    fail_late(done, ValueError("chunk 7 cannot be encoded"))
    assert done.error.message == "chunk 7 cannot be encoded"
    failed = pb.AttemptEvent(call_id="g", attempt=1, error=error_message(KeyError("first")))
    fail_late(failed, ValueError("second"))
    assert failed.error.exception_type == "builtins.KeyError"


# -- every engine, the same reply ---------------------------------------------------------------


def answer(x: int) -> int:
    if x < 0:
        raise Unlucky(f"{x} is negative")
    return x * 2


async def answer_async(x: int) -> int:
    await asyncio.sleep(0)
    return answer(x)


def answer_batch(x: list[int]) -> list[int]:
    return [answer(v) for v in x]


async def answer_batch_async(x: list[int]) -> list[int]:
    await asyncio.sleep(0)
    return answer_batch(x)


def via_blocking(x: int) -> pb.AttemptEvent:
    codec = FunctionCodec.for_function(answer)
    event, stop = run_plain(answer, codec, assignment(codec, "c", x=x))
    assert stop == ""
    return event


def via_runner(fn, capacity: int):
    def run(x: int) -> pb.AttemptEvent:
        codec, link = FunctionCodec.for_function(fn), FakeLink()
        runner = Runner(fn, codec, link, capacity=capacity)
        assert not runner.plain_sync
        thread, out = run_loop_in_thread(runner.run)
        link.deliver(assignment(codec, "c", x=x))
        event = link.event_of("c")
        link.lose("test over")
        thread.join(30)
        assert out == ["test over"]
        return event
    return run


def via_batch(fn):
    def run(x: int) -> pb.AttemptEvent:
        codec = FunctionCodec.for_function(fn, batched=True)
        items = [assignment(codec, "c", x=x)]
        if asyncio.iscoroutinefunction(fn):
            events, stop = asyncio.run(run_batch_async(fn, codec, items))
        else:
            events, stop = run_batch_sync(fn, codec, items)
        assert stop == "" and len(events) == 1
        return events[0]
    return run


ENGINES = {
    "blocking": via_blocking,
    "thread pool": via_runner(answer, capacity=2),
    "event loop": via_runner(answer_async, capacity=1),
    "batched": via_batch(answer_batch),
    "batched async": via_batch(answer_batch_async),
}


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_encodes_a_result_the_same_way(engine):
    event = ENGINES[engine](21)
    expected = via_blocking(21)
    assert (event.call_id, event.attempt, event.WhichOneof("event")) == ("c", 1, "result")
    assert result_of(FunctionCodec.for_function(answer), event) == 42
    assert event.result == expected.result


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_encodes_an_exception_the_same_way(engine):
    event, expected = ENGINES[engine](-1), via_blocking(-1)
    assert event.WhichOneof("event") == "error"
    # The traceback names each engine's own frames; the rest is the same.
    assert event.error.traceback and event.error.traceback.rstrip().endswith("Unlucky: -1 is negative")
    event.error.ClearField("traceback")
    expected.error.ClearField("traceback")
    assert event.error == expected.error
