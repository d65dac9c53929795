"""Dispatch: queued calls to workers with credit, through the function's gates.

Before an input leaves the queue it must pass, in order: a free worker slot
(credit), the batch gate (a batched function waits for ``batch_size`` inputs
or until its oldest input has waited ``batch_wait``), a token from every rate
limit bucket it names, and a slot of its concurrency key. A gate that is shut
parks the function: a timer re-runs dispatch when the next token is due or
the batch window closes, and a released slot re-runs it for every function
waiting on that key. Mixed into :class:`chalkd.queue.core.Queue`.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

from chalkd import metrics
from chalkd.model import Call, CallState, FunctionVersion
from chalkd.queue.limits import Slots

# Inputs are handed to a busy worker ahead of time only for functions whose
# calls take less than this: for longer ones a round trip is noise, and an input
# held by a worker is one no other replica can take.
PREFETCH_BELOW_SECONDS = 0.005
PREFETCH_SECONDS = 0.02


class _Worker:
    __slots__ = ("link", "credit", "inflight", "draining", "serving", "last_done")

    def __init__(self, link) -> None:
        self.link = link
        self.last_done = 0.0       # monotonic time of its last final event
        self.credit = 0
        self.inflight: dict[tuple[str, int], Attempt] = {}
        self.draining = False
        self.serving = False   # has announced capacity: its handler is loaded


@dataclass(slots=True, eq=False)
class Attempt:
    """One run of a call on one replica, from dispatch until the worker says it ended."""

    call: Call
    number: int
    worker: _Worker
    slots: Slots | None = None
    timer: object = None          # the timeout's TimerHandle
    grace: object = None          # the stuck-check's TimerHandle, once abandoned
    abandoned: bool = False       # cancelled or timed out: its end is awaited, its outcome ignored


def _gated(fv: FunctionVersion) -> bool:
    """Policies under which inputs must not be handed to a worker ahead of time."""
    p = fv.policies
    return bool(p.rate_per_second or p.rate_limit_key or p.concurrency_key or p.timeout)


class Dispatcher:
    """The dispatch half of the queue (state lives on the Queue)."""

    def _push(self, call: Call) -> None:
        fid = call.function.id
        call.queued_at = time.monotonic()
        call.in_heap = True
        self._queued[fid] = self._queued.get(fid, 0) + 1
        heapq.heappush(self._heaps.setdefault(fid, []), (call.sort_key, call))
        self._kick(fid)

    def _unqueue(self, call: Call) -> None:
        """Take a call out of line. Its heap entry stays, stale, until popped or compacted:
        cancelling many queued calls must not rebuild the heap once each."""
        if not call.in_heap:
            return
        call.in_heap = False
        fid = call.function.id
        live = self._queued[fid] = self._queued[fid] - 1
        heap = self._heaps.get(fid)
        if heap is not None and len(heap) > 2 * live + 1024:
            kept = [entry for entry in heap if entry[1].in_heap]
            heapq.heapify(kept)
            self._heaps[fid] = kept

    def _kick(self, function_id: str) -> None:
        if function_id not in self._kicked:
            self._kicked.add(function_id)
            self.loop.call_soon(self._dispatch, function_id)

    def _kick_later(self, function_id: str, delay: float) -> None:
        when = self.loop.time() + delay
        current = self._timers.get(function_id)
        if current is not None:
            if current.when() <= when:
                return
            current.cancel()
        self._timers[function_id] = self.loop.call_at(when, self._timer_fired, function_id)

    def _timer_fired(self, function_id: str) -> None:
        self._timers.pop(function_id, None)
        self._dispatch(function_id)

    def _release(self, slots: Slots) -> None:
        slots.held -= 1
        for fid in self._slot_waiters.pop(slots.key, ()):
            self._kick(fid)

    def _dispatch(self, function_id: str) -> None:
        self._kicked.discard(function_id)
        heap = self._heaps.get(function_id)
        if not heap:
            return
        fv = heap[0][1].function
        pol = fv.policies
        gated = _gated(fv)
        buckets = self.limits.buckets_for(fv) if (pol.rate_per_second or pol.rate_limit_key) else ()
        slots = self.limits.slots_for(fv) if pol.concurrency_key else None
        workers = [w for w in self._workers.get(function_id, {}).values() if w.serving and not w.draining]
        prefetch = 0
        gate_shut = False
        while heap and workers:
            free = [w for w in workers if w.credit > 0]
            if free:
                worker = max(free, key=lambda w: (w.credit, -len(w.inflight)))
            elif gated:
                break
            else:
                # Every slot is taken. Hand inputs ahead only when no replica can be
                # added or is still loading, or they would queue behind a busy one.
                duration = self._durations.get(function_id, 1.0)
                if not prefetch and duration < PREFETCH_BELOW_SECONDS:
                    # About PREFETCH_SECONDS of work ahead per replica: enough to keep it
                    # busy across a round trip, little for a later, higher-priority input to wait behind.
                    prefetch = min(self.prefetch(function_id), max(1, int(PREFETCH_SECONDS / max(duration, 1e-6))))
                    if pol.batch_size or heap[0][1].batch is not None:
                        prefetch = min(prefetch, 2)  # a batch or two ahead: the next ones keep filling up
                    if len(self._workers.get(function_id, {})) != len(workers):
                        prefetch = 0
                ahead = [w for w in workers if w.credit > -prefetch]
                if not ahead:
                    break
                worker = min(ahead, key=lambda w: len(w.inflight))
            live = self._queued.get(function_id, 0)
            if not live:
                break
            while heap and not heap[0][1].in_heap:
                heapq.heappop(heap)  # stale entries first, so the head is the next call
            if not heap:
                break
            head = heap[0][1].batch is not None  # a batch call goes alone, whatever the function
            want = 1
            if pol.batch_size and not head:
                want = min(pol.batch_size, live)
                if want < pol.batch_size:
                    # A short batch goes once its oldest input has waited the window out.
                    oldest = min(entry[1].queued_at for entry in heap if entry[1].in_heap)
                    wait = oldest + pol.batch_wait - time.monotonic()
                    if wait > 0:
                        self._kick_later(function_id, wait)
                        break
            if buckets:
                tokens = min(b.available() for b in buckets)
                if tokens < 1:
                    metrics.rate_limited(fv)
                    self._kick_later(function_id, max(b.wait_time() for b in buckets))
                    gate_shut = True
                    break
                if not head:
                    want = min(want, tokens)
            if slots is not None:
                if slots.free < 1:
                    self._slot_waiters.setdefault(slots.key, set()).add(function_id)
                    gate_shut = True
                    break
                want = min(want, slots.free)
            calls = []
            while heap and len(calls) < want:
                _, call = heapq.heappop(heap)
                if not call.in_heap:
                    continue  # cancelled or finished while it waited
                if call.batch is not None and calls:
                    heapq.heappush(heap, (call.sort_key, call))  # goes alone, in a round of its own
                    break
                self._unqueue(call)
                if call.state == CallState.QUEUED and call.id in self.calls:
                    calls.append(call)
                if call.batch is not None:
                    break
            if not calls:
                continue
            if calls[0].batch is not None:
                call = calls[0]
                # One rate-limit token per row: a batch larger than the tokens there runs in slices.
                rows = call.batch.take(min(b.available() for b in buckets) if buckets else None)
                for bucket in buckets:
                    bucket.take(len(rows))
                worker.credit -= 1
                self._start_attempt(worker, call, slots)
                worker.link.send_batch_call(call.id, call.attempt, call.args,
                                            [] if len(rows) == call.batch.rows else rows)
                continue
            for bucket in buckets:
                bucket.take(len(calls))  # one token per attempt: a retry takes a fresh one
            worker.credit -= 1
            for call in calls:
                self._start_attempt(worker, call, slots)
            if pol.batch_size:
                worker.link.send_batch([(c.id, c.attempt, c.args) for c in calls], self.chunk_window)
            else:
                call = calls[0]
                # Only a generator streams chunks: a unary call needs no chunk window.
                if fv.is_generator:
                    worker.link.send_assignment(call.id, call.attempt, call.args, self.chunk_window,
                                                self.chunk_window_bytes)
                else:
                    worker.link.send_assignment(call.id, call.attempt, call.args, 0)
        # More replicas help only when inputs wait for a worker, not for a token or a shared slot.
        if self._queued.get(function_id) and not gate_shut:
            self.on_demand(function_id)

    def _start_attempt(self, worker: _Worker, call: Call, slots: Slots | None) -> Attempt:
        if call.args is None:
            call.args = self._load_args(call)
        self._release_args(call)  # running: no longer a queued call's arguments
        call.attempt += 1
        call.state = CallState.RUNNING
        call.replica_id = call.ran_on = worker.link.replica_id
        call.dispatched_at = time.monotonic()
        metrics.call_started(call)  # its wait in the queue
        att = Attempt(call, call.attempt, worker, slots)
        if slots is not None:
            slots.held += 1
        timeout = call.function.policies.timeout
        if timeout and call.batch is not None:
            # The worker times each row (each invocation of a batched function) itself; this is
            # the backstop for a handler that does not stop when told.
            size = call.function.policies.batch_size or 1
            invocations = -(-len(call.batch.sent) // size)
            att.timer = self.loop.call_later(timeout * invocations + self.cancel_grace, self._timed_out, att)
        elif timeout:
            att.timer = self.loop.call_later(timeout, self._timed_out, att)
        worker.inflight[(call.id, call.attempt)] = att
        # The durable "attempt started" mark (batched with the group commit, never awaited):
        # a daemon that dies finds it 'running' and counts the crash against it (poison calls).
        self.rows.mark_running(call.id, call.attempt)
        return att
