"""Runs the deployed function for each assignment, on the worker's main thread.

The main thread owns an event loop: async handlers and async generators run as
tasks on it; sync handlers run on it directly (one input at a time per
replica), sync generators on a helper thread so the window can block them.
Every yielded value waits for room in the daemon's chunk window first, so a
slow caller pauses the generator instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue

from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.link import ChunkGate, DaemonLink, error_message

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, fn, codec: FunctionCodec, link: DaemonLink, *, capacity: int = 1) -> None:
        self.fn = fn
        self.codec = codec
        self.link = link
        self.capacity = capacity
        self.is_async_gen = inspect.isasyncgenfunction(fn)
        self.is_gen = inspect.isgeneratorfunction(fn)
        self.is_coro = inspect.iscoroutinefunction(fn)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None
        self.stop_reason = ""
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}
        self.slots: asyncio.Semaphore | None = None

    @property
    def plain_sync(self) -> bool:
        """A sync, non-generator handler needs no event loop at all."""
        return not (self.is_async_gen or self.is_gen or self.is_coro)

    def run_sync_handlers(self) -> str:
        """The fast path for plain sync handlers: this thread takes inputs in order.

        The daemon may hand over a few inputs ahead (prefetch); they wait here,
        one runs at a time, and each result leaves as soon as it is ready.
        """
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.link.on_assignment = inbox.put
        for a in self.link.early:
            inbox.put(a)
        self.link.on_cancel = lambda call_id, attempt: None
        self.link.on_lost = lambda reason: inbox.put(reason)
        self.link.encode_chunks = self.codec.encode_chunks
        self.link.add_credit(self.capacity)
        while True:
            a = inbox.get()
            if isinstance(a, str):
                return a
            event, stop = run_plain(self.fn, self.codec, a)
            self.link.finish_gate(self.link.gate(a.call_id, a.attempt))
            self.link.send_event(event, credit=1)
            if stop:
                return stop

    async def run(self) -> str:
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        self.slots = asyncio.Semaphore(self.capacity)
        self.link.on_assignment = lambda a: self.loop.call_soon_threadsafe(self._start, a)
        for a in self.link.early:
            self._start(a)
        self.link.on_cancel = lambda call_id, attempt: self.loop.call_soon_threadsafe(self._cancel, call_id, attempt)
        self.link.on_lost = lambda reason: self.loop.call_soon_threadsafe(self._stop, reason)
        self.link.encode_chunks = self.codec.encode_chunks
        self.link.add_credit(self.capacity)
        await self.stopped.wait()
        return self.stop_reason

    def _stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stopped.set()

    def _start(self, a: pb.Assignment) -> None:
        key = (a.call_id, a.attempt)
        ctx = contextvars.copy_context()
        ctx.run(current_call_id.set, a.call_id)
        task = self.loop.create_task(self._run_slot(a), context=ctx)
        self.tasks[key] = task
        task.add_done_callback(lambda _t: self.tasks.pop(key, None))

    def _cancel(self, call_id: str, attempt: int) -> None:
        gate = self.link.gates.get((call_id, attempt))
        if gate is not None:
            # A sync generator runs on a thread that task.cancel() cannot reach:
            # the gate tells it to stop at its next yield (or while it waits for room).
            with gate.cond:
                gate.cancelled = True
                gate.cond.notify_all()
        task = self.tasks.get((call_id, attempt))
        if task is not None:
            task.cancel()

    async def _run_slot(self, a: pb.Assignment) -> None:
        # Inputs handed over ahead of time wait for a free slot here.
        async with self.slots:
            await self._run_one(a)

    async def _run_one(self, a: pb.Assignment) -> None:
        gate = self.link.gate(a.call_id, a.attempt)
        event = pb.AttemptEvent(call_id=a.call_id, attempt=a.attempt)
        try:
            kwargs = self.codec.decode_args(a.args.schema, a.args.batch)
            if self.is_async_gen:
                async for value in self.fn(**kwargs):
                    await self._room_async(gate)
                    self.link.emit_chunk(gate, value)
                    self._check(gate)
                event.done = True
            elif self.is_gen:
                ctx = contextvars.copy_context()
                await asyncio.to_thread(ctx.run, self._drive_sync_gen, gate, kwargs)
                event.done = True
            elif self.is_coro:
                value = await self.fn(**kwargs)
                event.result.CopyFrom(self._encode_result(value))
            else:
                value = self.fn(**kwargs)
                event.result.CopyFrom(self._encode_result(value))
        except asyncio.CancelledError:
            event.ClearField("result")
            event.error.CopyFrom(pb.RemoteError(
                exception_type="chalkd.CancelledError", message="the call was cancelled", code="CANCELLED"))
        except BaseException as exc:  # the user's exception travels to the caller
            event.ClearField("result")
            event.error.CopyFrom(error_message(exc))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self._stop(f"the handler raised {type(exc).__name__}")
        if gate.failed is not None and not event.HasField("error"):
            event.error.CopyFrom(error_message(gate.failed))
        self.link.finish_gate(gate)
        self.link.send_event(event, credit=1)

    def _encode_result(self, value) -> pb.Payload:
        schema, batch = self.codec.encode_result(value)
        return pb.Payload(schema=schema, batch=batch, rows=1)

    @staticmethod
    def _check(gate: ChunkGate) -> None:
        if gate.failed is not None:
            raise gate.failed

    async def _room_async(self, gate: ChunkGate) -> None:
        while True:
            with gate.cond:
                if gate.next_index < gate.up_to:
                    return
                fut = self.loop.create_future()
                gate.async_waiters.append((self.loop, fut))
            await fut

    def _drive_sync_gen(self, gate: ChunkGate, kwargs: dict) -> None:
        gen = self.fn(**kwargs)
        try:
            for value in gen:
                with gate.cond:
                    while gate.next_index >= gate.up_to and not gate.cancelled:
                        gate.cond.wait()
                if gate.cancelled:
                    return
                self.link.emit_chunk(gate, value)
                self._check(gate)
        finally:
            gen.close()  # runs the generator's own cleanup (finally blocks, context managers)


def run_plain(fn, codec: FunctionCodec, a: pb.Assignment) -> tuple[pb.AttemptEvent, str]:
    """Run one input of a plain sync handler: its final event, and why to stop ("" to go on)."""
    event = pb.AttemptEvent(call_id=a.call_id, attempt=a.attempt)
    token = current_call_id.set(a.call_id)
    try:
        kwargs = codec.decode_args(a.args.schema, a.args.batch)
        schema, batch = codec.encode_result(fn(**kwargs))
        event.result.CopyFrom(pb.Payload(schema=schema, batch=batch, rows=1))
    except BaseException as exc:  # the user's exception travels to the caller
        event.ClearField("result")
        event.error.CopyFrom(error_message(exc))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return event, f"the handler raised {type(exc).__name__}"
    finally:
        current_call_id.reset(token)
    return event, ""
