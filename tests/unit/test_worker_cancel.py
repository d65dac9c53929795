"""Cancellation inside the worker: CallCancelled raised in the thread that runs a sync
handler (only while that attempt runs there), tasks cancelled for async handlers,
and the CANCELLED event on every path (main thread, thread pool, blocking socket)."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.blocking import DRAINED, BlockingLink, serve_blocking
from chalkcompute.worker.cancel import CallCancelled
from chalkcompute.worker.outcome import cancelled_event
from chalkcompute.worker.runner import Runner, run_plain
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

KEY = ("call-1", 1)


def outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CallCancelled:
        return "cancelled"


# -- the canceller ------------------------------------------------------------------------------


def test_cancel_raises_in_the_thread_running_the_attempt(canceller):
    started = threading.Event()

    def handler():
        started.set()
        return spin()

    thread, out = run_in_thread(outcome, canceller.call, KEY, handler)
    assert started.wait(WAIT)
    assert canceller.cancel(KEY) is True
    thread.join(WAIT)
    assert out == ["cancelled"]
    assert canceller.running == 0


def test_cancel_before_start_means_the_handler_never_runs(canceller):
    ran = []
    assert canceller.cancel(KEY) is False
    with pytest.raises(CallCancelled):
        canceller.call(KEY, ran.append, 1)
    assert ran == []
    assert canceller.call(KEY, lambda: "again") == "again"  # remembered once


def test_cancel_after_the_end_lands_nowhere(canceller):
    finished, cancelled, done = threading.Event(), threading.Event(), threading.Event()

    def worker_thread():
        value = canceller.call(KEY, lambda: "value")
        finished.set()
        assert cancelled.wait(WAIT)
        # Plenty of bytecode after the cancel: nothing may be raised here.
        total = sum(i for i in range(200_000))
        done.set()
        return value, total

    thread, out = run_in_thread(worker_thread)
    assert finished.wait(WAIT)
    assert canceller.cancel(KEY) is False
    cancelled.set()
    thread.join(WAIT)
    assert done.is_set() and out[0][0] == "value"


def _work(k: int) -> int:
    total = 0
    for i in range(k):
        total += i
    return total


def test_a_late_cancel_never_escapes_the_attempt(canceller):
    """Cancel attempt after attempt at random moments, around their ends too: a
    CallCancelled may only come out of canceller.call, never land in the loop
    that runs one attempt after another (it would end that thread)."""
    n, rnd = 2000, random.Random(7)
    current = [0]
    stop = threading.Event()

    def attempts() -> tuple[int, int]:
        cancelled = finished = 0
        for i in range(n):
            current[0] = i
            try:
                canceller.call(("c", i), _work, rnd.randrange(300))
            except CallCancelled:
                cancelled += 1
            _work(rnd.randrange(300))  # the worker's own code between attempts
            finished += 1
        stop.set()
        return cancelled, finished

    def hammer() -> None:
        while not stop.is_set():
            canceller.cancel(("c", current[0]))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so cancels fall everywhere
    try:
        hammerer, _ = run_in_thread(hammer)
        thread, out = run_in_thread(attempts)
        thread.join(WAIT * 2)
        stop.set()
        hammerer.join(WAIT)
    finally:
        sys.setswitchinterval(interval)
    assert out and out[0][1] == n  # the loop survived every cancel
    assert canceller.running == 0


def test_a_cancel_swallowed_by_a_finalizer_is_raised_again(canceller):
    started = threading.Event()

    class Slow:
        def __del__(self):
            started.set()
            spin()  # the cancel lands here, where Python can only report it as unraisable

    def handler():
        obj = Slow()
        del obj
        return spin()  # without catch_swallowed this would run to its end

    thread, out = run_in_thread(outcome, canceller.call, KEY, handler)
    assert started.wait(WAIT)
    canceller.cancel(KEY)
    thread.join(WAIT)
    assert out == ["cancelled"]


def test_a_handler_that_catches_it_can_clean_up_and_re_raise(canceller):
    started, seen = threading.Event(), []

    def handler():
        started.set()
        try:
            return spin()
        except Exception:  # noqa: BLE001 - the point: except Exception does not swallow it
            seen.append("swallowed by except Exception")
            raise
        except CallCancelled:
            seen.append("cleaned up")
            raise

    thread, out = run_in_thread(outcome, canceller.call, KEY, handler)
    assert started.wait(WAIT)
    canceller.cancel(KEY)
    thread.join(WAIT)
    assert seen == ["cleaned up"] and out == ["cancelled"]


def test_a_handler_that_swallows_it_has_its_result_reported(canceller):
    codec_fn_started = threading.Event()

    def stubborn(x: int) -> int:
        codec_fn_started.set()
        try:
            spin()
        except CallCancelled:
            pass
        return x + 1

    codec = FunctionCodec.for_function(stubborn)
    thread, out = run_in_thread(run_plain, stubborn, codec, assignment(codec, "call-1", x=1), canceller)
    assert codec_fn_started.wait(WAIT)
    canceller.cancel(KEY)
    thread.join(WAIT)
    event, stop = out[0]
    assert result_of(codec, event) == 2 and stop == ""


def test_run_plain_reports_the_cancelled_event_and_sets_the_parent_call(canceller):
    started, parents = threading.Event(), []

    def handler(x: int) -> int:
        parents.append(current_call_id.get())
        started.set()
        spin()
        return x

    codec = FunctionCodec.for_function(handler)
    thread, out = run_in_thread(run_plain, handler, codec, assignment(codec, "call-1", x=1), canceller)
    assert started.wait(WAIT)
    canceller.cancel(KEY)
    thread.join(WAIT)
    event, stop = out[0]
    assert_cancelled(event)
    assert (event.call_id, event.attempt, stop) == ("call-1", 1, "")
    assert parents == ["call-1"]
    assert cancelled_event("call-1", 1) == event


def test_a_sleep_on_the_main_thread_is_cut_short(canceller):
    started = threading.Event()
    previous = signal.getsignal(signal.SIGURG)
    undo = canceller.install_interrupt()
    try:
        def cancel_when_started() -> None:
            assert started.wait(WAIT)
            canceller.cancel(KEY)

        def handler():
            started.set()
            time.sleep(WAIT)  # the handler's own blocking wait, not test synchronisation
            return "slept"

        helper, _ = run_in_thread(cancel_when_started)
        began = time.monotonic()
        assert outcome(canceller.call, KEY, handler) == "cancelled"
        assert time.monotonic() - began < WAIT / 2  # interrupted, not merely raised after the sleep
        helper.join(WAIT)
    finally:
        undo()
    assert signal.getsignal(signal.SIGURG) == previous


def test_a_batch_stops_only_when_every_item_is_cancelled(canceller):
    keys = (("a", 1), ("b", 1))
    group = canceller.group(keys)
    assert group == keys
    assert canceller.resolve(("a", 1)) is None
    assert canceller.cancel_item(("a", 1)) is False  # b still wants its result
    assert canceller.resolve(("b", 1)) == group
    canceller.ungroup(group)
    assert canceller.resolve(("a", 1)) == ("a", 1)


# -- the main-thread fast path (run_sync_handlers) ------------------------------------------------


def test_run_sync_handlers_cancels_the_running_and_a_queued_input(canceller):
    started, calls = threading.Event(), []

    def handler(x: int) -> int:
        calls.append(x)
        if x == 1:
            started.set()
            spin()
        return x * 10

    codec, link = FunctionCodec.for_function(handler), FakeLink()
    runner = Runner(handler, codec, link, canceller=canceller)
    assert runner.plain_sync
    link.deliver(assignment(codec, "a1", x=1))
    thread, out = run_in_thread(runner.run_sync_handlers)
    assert started.wait(WAIT)
    link.deliver(assignment(codec, "a2", x=2))  # prefetched: waits behind a1
    link.cancel("a2")
    link.cancel("a1")
    assert_cancelled(link.event_of("a1"))
    assert_cancelled(link.event_of("a2"))
    link.deliver(assignment(codec, "a3", x=3))
    assert result_of(codec, link.event_of("a3")) == 30
    link.lose("test over")
    thread.join(WAIT)
    assert out == ["test over"]
    assert calls == [1, 3]  # a2 never ran
    assert link.credit == 1 + 3  # the initial credit, then one per input


# -- the event-loop runner ---------------------------------------------------------------------


def test_sync_handlers_run_concurrently_on_a_pool_and_cancel_one_by_one(canceller):
    started = {1: threading.Event(), 2: threading.Event()}
    release = threading.Event()
    seen: dict[int, tuple] = {}

    def handler(x: int) -> int:
        seen[x] = (threading.current_thread().name, current_call_id.get())
        started[x].set()
        spin(release)
        return x

    codec, link = FunctionCodec.for_function(handler), FakeLink()
    runner = Runner(handler, codec, link, capacity=2, canceller=canceller)
    assert not runner.plain_sync
    thread, out = run_loop_in_thread(runner.run)
    link.deliver(assignment(codec, "a1", x=1))
    link.deliver(assignment(codec, "a2", x=2))
    assert started[1].wait(WAIT) and started[2].wait(WAIT)  # both at once: capacity 2
    link.cancel("a1")
    assert_cancelled(link.event_of("a1"))
    assert not any(e.call_id == "a2" for e in link.events)  # a2 keeps running
    release.set()
    assert result_of(codec, link.event_of("a2")) == 2
    link.lose("test over")
    thread.join(WAIT)
    assert out == ["test over"]
    assert seen[1][0].startswith("chalk-handler") and seen[1][1] == "a1" and seen[2][1] == "a2"
    assert link.credit == 2 + 2


def test_a_queued_input_is_cancelled_before_it_runs(canceller):
    started, release, calls = threading.Event(), threading.Event(), []

    def handler(x: int) -> int:
        calls.append(x)
        started.set()
        spin(release)
        return x

    codec, link = FunctionCodec.for_function(handler), FakeLink()
    runner = Runner(handler, codec, link, capacity=2, canceller=canceller)
    thread, _ = run_loop_in_thread(runner.run)
    for i in (1, 2, 3):  # the third waits for a slot
        link.deliver(assignment(codec, f"a{i}", x=i))
    assert started.wait(WAIT)
    link.cancel("a3")
    assert_cancelled(link.event_of("a3"))
    release.set()
    link.wait_events(3)
    link.lose("test over")
    thread.join(WAIT)
    assert sorted(calls) == [1, 2]


def test_a_sync_generator_is_cancelled_in_its_thread(canceller):
    started = threading.Event()

    def numbers(n: int):
        started.set()
        i = 0
        while True:
            yield i
            i += 1

    codec, link = FunctionCodec.for_function(numbers), FakeLink()
    thread, _ = run_loop_in_thread(Runner(numbers, codec, link, canceller=canceller).run)
    link.deliver(assignment(codec, "g1", n=1))
    assert started.wait(WAIT)
    link.cancel("g1")
    assert_cancelled(link.event_of("g1"))
    link.lose("test over")
    thread.join(WAIT)


def test_a_coroutine_is_cancelled_as_a_task(canceller):
    async def handler(x: int) -> int:
        await asyncio.Event().wait()  # forever
        return x

    codec, link = FunctionCodec.for_function(handler), FakeLink()
    thread, _ = run_loop_in_thread(Runner(handler, codec, link, capacity=3, canceller=canceller).run)
    link.deliver(assignment(codec, "c1", x=1))
    link.cancel("c1")
    assert_cancelled(link.event_of("c1"))
    link.lose("test over")
    thread.join(WAIT)
    assert link.credit == 3 + 1


def test_cancels_that_come_before_the_runner_are_kept(canceller):
    def handler(x: int) -> int:
        return x

    codec, link = FunctionCodec.for_function(handler), FakeLink()
    link.deliver(assignment(codec, "e1", x=1))
    link.cancel("e1")  # before the runner installed its handlers
    thread, _ = run_loop_in_thread(Runner(handler, codec, link, capacity=2, canceller=canceller).run)
    assert_cancelled(link.event_of("e1"))
    link.lose("test over")
    thread.join(WAIT)


# -- the blocking socket path -------------------------------------------------------------------


@pytest.fixture
def socket_path(tmp_path: Path):
    path = tmp_path / "d.sock"
    if len(str(path)) > 100:  # AF_UNIX path limit
        pytest.skip("temporary directory path too long for a unix socket")
    return str(path)


def test_blocking_link_monitor_delivers_a_cancel_during_a_long_call(socket_path, canceller):
    started, calls = threading.Event(), []

    def handler(x: int) -> int:
        calls.append(x)
        if x == 1:
            started.set()
            spin()
        return x * 10

    codec = FunctionCodec.for_function(handler)
    daemon = FakeDaemon(socket_path, version_of())
    link = BlockingLink(socket_path, "inst", "r1", "tok", canceller)
    try:
        assert link.connect().id == "fv"
        daemon.wait_connected()
        thread, out = run_in_thread(serve_blocking, link, handler, codec)
        daemon.read_until(lambda d: d.credit == 1)
        daemon.send(pb.WorkerResponse(assignments=[assignment(codec, "b1", x=1)]))
        assert started.wait(WAIT)
        # While b1 runs, only the monitor reads: a prefetched input, then cancels of both.
        daemon.send(pb.WorkerResponse(assignments=[assignment(codec, "b2", x=2)]))
        daemon.send(pb.WorkerResponse(cancels=[pb.AttemptEvent(call_id="b2", attempt=1),
                                               pb.AttemptEvent(call_id="b1", attempt=1)]))
        assert_cancelled(daemon.event_of("b1"))
        assert_cancelled(daemon.event_of("b2"))
        daemon.send(pb.WorkerResponse(assignments=[assignment(codec, "b3", x=3)]))
        assert result_of(codec, daemon.event_of("b3")) == 30
        daemon.send(pb.WorkerResponse(drain=True))
        thread.join(WAIT)
        assert out == [DRAINED]
        assert calls == [1, 3]
        assert daemon.credit == 1 + 3
    finally:
        link.close()
        daemon.close()


def test_blocking_link_with_capacity_runs_a_pool(socket_path, canceller):
    started = {1: threading.Event(), 2: threading.Event()}
    release = threading.Event()

    def handler(x: int) -> int:
        started[x].set()
        spin(release)
        return x

    codec = FunctionCodec.for_function(handler)
    daemon = FakeDaemon(socket_path, version_of(capacity=2))
    link = BlockingLink(socket_path, "inst", "r1", "tok", canceller)
    try:
        link.connect()
        daemon.wait_connected()
        thread, out = run_in_thread(lambda: serve_blocking(link, handler, codec, capacity=2))
        daemon.read_until(lambda d: d.credit == 2)
        daemon.send(pb.WorkerResponse(assignments=[assignment(codec, "p1", x=1), assignment(codec, "p2", x=2)]))
        assert started[1].wait(WAIT) and started[2].wait(WAIT)
        daemon.send(pb.WorkerResponse(drain=True))  # finish what runs; cancels still arrive
        daemon.send(pb.WorkerResponse(cancels=[pb.AttemptEvent(call_id="p2", attempt=1)]))
        assert_cancelled(daemon.event_of("p2"))
        assert thread.is_alive()  # p1 still runs
        release.set()
        assert result_of(codec, daemon.event_of("p1")) == 1
        thread.join(WAIT)
        assert out == [DRAINED]
        assert daemon.credit == 2 + 2
    finally:
        link.close()
        daemon.close()
