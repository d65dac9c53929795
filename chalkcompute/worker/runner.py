"""Runs the deployed function for each assignment.

Where a handler runs depends on its kind and the replica's capacity
(``spec.concurrency.max_concurrent``, at least 1):

- coroutines and async generators: tasks on the main thread's event loop, at
  most ``capacity`` at a time;
- plain sync handlers (batched ones too) with capacity 1: on the main thread
  itself, one input after another (:meth:`Runner.run_sync_handlers`, or
  :mod:`chalkcompute.worker.blocking` on chalkd's socket), with no hop
  between threads per call;
- sync handlers with capacity > 1, and sync generators: a pool of
  ``capacity`` threads, driven from the event loop.

Every yielded value waits for room in the daemon's chunk window first, so a
slow caller pauses the generator instead of growing memory. A cancel stops
the attempt wherever it runs (a task is cancelled; a thread gets
:class:`~chalkcompute.worker.cancel.CallCancelled`) and its end is reported
with the ``CANCELLED`` error event, which tells the daemon the slot is free.
Every engine here turns the handler's end into its final events through the
one :class:`~chalkcompute.worker.outcome.Outcome`::

    runner = Runner(fn, codec, link, capacity=4, batched=False)
    reason = runner.run_sync_handlers() if runner.plain_sync else asyncio.run(runner.run())
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import BatchCodec, FunctionCodec
from chalkcompute.worker.batchcall import NO_SETTINGS, BatchSettings, run_batch_call_async, run_batch_call_sync
from chalkcompute.worker.batching import as_batch, item_keys, run_batch_async, run_batch_sync
from chalkcompute.worker.cancel import CallCancelled, Canceller
from chalkcompute.worker.link import ChunkGate, DaemonLink
from chalkcompute.worker.outcome import CANCELS_ON_LOOP, Outcome, fail_late

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, fn, codec: FunctionCodec, link: DaemonLink, *, capacity: int = 1,
                 batched: bool = False, canceller: Canceller | None = None,
                 settings: BatchSettings = NO_SETTINGS) -> None:
        self.fn = fn
        self.settings = settings  # for batch calls: the function's batch size and timeout
        self.codec = codec
        self.link = link
        self.capacity = max(1, capacity)
        self.batched = batched
        self.canceller = canceller or Canceller()
        self.is_async_gen = inspect.isasyncgenfunction(fn)
        self.is_gen = inspect.isgeneratorfunction(fn)
        self.is_coro = inspect.iscoroutinefunction(fn)
        # Set by run(), on the loop it runs on (the plain sync path never makes them).
        self.loop: asyncio.AbstractEventLoop
        self.stopped: asyncio.Event
        self.stop_reason = ""
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}  # per attempt; a batch's items share one
        self.slots: asyncio.Semaphore
        self.pool: ThreadPoolExecutor | None = None
        # Canceller keys (an attempt, or a batch's item keys) whose handler runs
        # on a pool thread: cancelling their task would abandon a running thread.
        self.threaded: set = set()

    @property
    def plain_sync(self) -> bool:
        """A sync, non-generator handler one at a time needs no event loop at all."""
        return self.capacity == 1 and not (self.is_async_gen or self.is_gen or self.is_coro)

    def _attach(self, take, cancel, lost) -> None:
        """Take work and cancels from the link (what came early first), then ask for work."""
        self.link.encode_chunks = self.codec.encode_chunks
        self.link.install(take, cancel, lost)
        self.link.add_credit(self.capacity)

    def run_sync_handlers(self) -> str:
        """The fast path for plain sync handlers: this thread takes inputs in order.

        The daemon may hand over a few inputs ahead (prefetch); they wait here,
        one runs at a time, and each result leaves as soon as it is ready. A
        cancel (on the link's thread) raises CallCancelled in this thread while
        that attempt runs, or makes it raise as it starts.
        """
        inbox: queue.SimpleQueue = queue.SimpleQueue()

        def take(work) -> None:
            if self.batched and not _batch_call(work):
                work = as_batch(work)
            if isinstance(work, pb.AssignmentBatch):  # before any cancel of its items
                self.canceller.group(item_keys(work.items))
            inbox.put(work)

        self._attach(take, lambda call_id, attempt: self.canceller.cancel_item((call_id, attempt)), inbox.put)
        while True:
            work = inbox.get()
            if isinstance(work, str):
                return work
            if isinstance(work, pb.AssignmentBatch):
                assert isinstance(self.codec, BatchCodec)  # batches come only for a batched function
                events, stop = run_batch_sync(self.fn, self.codec, work.items, self.canceller)
                self._finish_gates(item_keys(work.items))
                self.link.send_events(events, credit=1)
            elif work.batch:
                event, stop = run_batch_call_sync(self.fn, self.codec, work, self.canceller, self.settings)
                self._finish_gates(((work.call_id, work.attempt),))
                self.link.send_event(event, credit=1)
            else:
                event, stop = run_plain(self.fn, self.codec, work, self.canceller)
                self._finish_gates(((work.call_id, work.attempt),))
                self.link.send_event(event, credit=1)
            if stop:
                return stop

    async def run(self) -> str:
        loop = self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        self.slots = asyncio.Semaphore(self.capacity)
        if not (self.is_coro or self.is_async_gen):
            self.pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="chalk-handler")
        self._attach(lambda work: loop.call_soon_threadsafe(self._start, work),
                     lambda call_id, attempt: loop.call_soon_threadsafe(self._cancel, (call_id, attempt)),
                     lambda reason: loop.call_soon_threadsafe(self._stop, reason))
        try:
            await self.stopped.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
        return self.stop_reason

    def _stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stopped.set()

    def _start(self, work: pb.Assignment | pb.AssignmentBatch) -> None:
        if self.batched and not _batch_call(work):
            work = as_batch(work)
        if isinstance(work, pb.AssignmentBatch):
            keys = item_keys(work.items)
            self.canceller.group(keys)
            parent = work.items[0].call_id  # nested calls of a batch name its first item
        else:
            keys = ((work.call_id, work.attempt),)
            parent = work.call_id
        ctx = contextvars.copy_context()
        ctx.run(current_call_id.set, parent)
        reported: list[bool] = []  # _run_slot appends once it has sent the final events
        task = self.loop.create_task(self._run_slot(work, keys, reported), context=ctx)
        for key in keys:
            self.tasks[key] = task
        task.add_done_callback(lambda t: self._done(t, keys, reported))

    def _done(self, task: asyncio.Task, keys: tuple, reported: list[bool]) -> None:
        for key in keys:
            self.tasks.pop(key, None)
        if not reported:
            # Cancelled before its first step (or a bug of ours): _run_slot did not
            # report, but the daemon still needs each attempt's end and the credit.
            exc = None if task.cancelled() else task.exception()
            out = Outcome(keys, CANCELS_ON_LOOP)
            out.raised(asyncio.CancelledError() if exc is None else exc)
            self.canceller.ungroup(keys)
            self._finish_gates(keys)
            self.link.send_events(out.events, credit=1)

    def _cancel(self, key: tuple[str, int]) -> None:
        target = self.canceller.resolve(key)
        if target is None:  # other items of its batch still want their results
            return
        gate = self.link.gates.get(key)
        if gate is not None:
            # A sync generator also stops at its next yield (or while it waits for room).
            with gate.cond:
                gate.cancelled = True
                gate.cond.notify_all()
        if target in self.threaded:
            self.canceller.cancel(target)  # raises in its thread, or as it starts there
            return
        task = self.tasks.get(key)
        if task is not None:
            task.cancel()

    async def _run_slot(self, work, keys: tuple, reported: list[bool]) -> None:
        try:
            # Inputs handed over ahead of time wait for a free slot here.
            async with self.slots:
                if isinstance(work, pb.AssignmentBatch):
                    events, stop = await self._run_batch(list(work.items))
                else:
                    events, stop = await self._run_one(work)
        except asyncio.CancelledError as exc:  # cancelled while it waited for a slot
            waited = Outcome(keys, CANCELS_ON_LOOP)
            waited.raised(exc)
            events, stop = waited.events, ""
        finally:
            if isinstance(work, pb.AssignmentBatch):
                self.canceller.ungroup(keys)
        self._finish_gates(keys)
        reported.append(True)
        self.link.send_events(events, credit=1)
        if stop:
            self._stop(stop)

    def _finish_gates(self, keys: tuple) -> None:
        # The link made a chunk gate for each Assignment it received.
        for key in keys:
            gate = self.link.gates.get(key)
            if gate is not None:
                self.link.finish_gate(gate)

    async def _in_thread(self, key, fn, *args):
        """``fn(*args)`` on the pool, in this task's context; cancels reach it as CallCancelled."""
        ctx = contextvars.copy_context()
        self.threaded.add(key)
        try:
            return await self.loop.run_in_executor(self.pool, ctx.run, fn, *args)
        finally:
            self.threaded.discard(key)

    async def _run_batch(self, items: list[pb.Assignment]) -> tuple[list[pb.AttemptEvent], str]:
        codec = self.codec
        assert isinstance(codec, BatchCodec)  # batches come only for a batched function
        if self.is_coro:
            return await run_batch_async(self.fn, codec, items)
        return await self._in_thread(item_keys(items), run_batch_sync, self.fn, codec, items, self.canceller)

    async def _run_one(self, a: pb.Assignment) -> tuple[list[pb.AttemptEvent], str]:
        key = (a.call_id, a.attempt)
        if a.batch:  # a batch call: its rows one after another, one answer
            if self.is_coro:
                event, stop = await run_batch_call_async(self.fn, self.codec, a, self.settings)
            else:
                event, stop = await self._in_thread(key, run_batch_call_sync, self.fn, self.codec, a,
                                                    self.canceller, self.settings)
            return [event], stop
        if not (self.is_async_gen or self.is_gen or self.is_coro):
            event, stop = await self._in_thread(key, run_plain, self.fn, self.codec, a, self.canceller)
            return [event], stop
        gate = self.link.gate(a.call_id, a.attempt)
        out = Outcome.of(a.call_id, a.attempt, CANCELS_ON_LOOP)
        with out:
            kwargs = self.codec.decode_args(a.args.schema, a.args.batch)
            if self.is_async_gen:
                async for value in self.fn(**kwargs):
                    await self._room_async(gate)
                    self.link.emit_chunk(gate, value)
                    self._check(gate)
                    if gate.next_index == 1:
                        await self._room_async(gate)  # the first chunk goes out now, alone
                        self._check(gate)
                out.done()
            elif self.is_gen:
                await self._in_thread(key, self.canceller.call, key, self._drive_sync_gen, gate, kwargs)
                out.done()
            else:
                out.result(self.codec, await self.fn(**kwargs))
        if gate.failed is not None:
            fail_late(out.events[0], gate.failed)
        return out.events, out.stop

    @staticmethod
    def _check(gate: ChunkGate) -> None:
        if gate.failed is not None:
            raise gate.failed

    async def _room_async(self, gate: ChunkGate) -> None:
        while True:
            with gate.cond:
                if gate.has_room():
                    return
                fut = self.loop.create_future()
                gate.async_waiters.append((self.loop, fut))
            await fut

    def _drive_sync_gen(self, gate: ChunkGate, kwargs: dict) -> None:
        gen = self.fn(**kwargs)
        try:
            for value in gen:
                self._room_sync(gate)
                self.link.emit_chunk(gate, value)
                self._check(gate)
                if gate.next_index == 1:
                    self._room_sync(gate)  # the first chunk goes out now, alone
                    self._check(gate)
        finally:
            gen.close()  # runs the generator's own cleanup (finally blocks, context managers)

    @staticmethod
    def _room_sync(gate: ChunkGate) -> None:
        with gate.cond:
            while not gate.has_room() and not gate.cancelled:
                gate.cond.wait()
        if gate.cancelled:
            raise CallCancelled


def _batch_call(work: pb.Assignment | pb.AssignmentBatch) -> bool:
    """A batch call's assignment (many inputs, one answer), never regrouped as a batched function's batch."""
    return isinstance(work, pb.Assignment) and work.batch


def run_plain(fn: Callable[..., Any], codec: FunctionCodec, a: pb.Assignment,
              canceller: Canceller | None = None) -> tuple[pb.AttemptEvent, str]:
    """Run one input of a plain sync handler on this thread: its final event, and why to stop ("" to go on).

    With a canceller, ``canceller.cancel((a.call_id, a.attempt))`` from another
    thread stops the handler with CallCancelled; the event is then the
    ``CANCELLED`` error.
    """
    out = Outcome(((a.call_id, a.attempt),))  # not Outcome.of: one call less on the warm path
    token = current_call_id.set(a.call_id)
    try:
        with out:
            kwargs = codec.decode_args(a.args.schema, a.args.batch)
            if canceller is None:
                out.result(codec, fn(**kwargs))
            else:
                out.result(codec, canceller.call((a.call_id, a.attempt), fn, **kwargs))
    finally:
        current_call_id.reset(token)
    return out.events[0], out.stop
