"""The function queue: durable calls, per-function priority heaps, credit-based
dispatch to workers, attempts with fencing, chunk streaming with flow control.

The queue knows nothing of gRPC. Callers are :class:`Subscriber` objects (one
per caller session) and workers are :class:`WorkerLink` objects (one per
worker stream); the services implement both.

    queue = Queue(store, catalog)
    call = queue.submit(session, ref=1, function=fv, args=payload)
    # ... a worker link announces credit, gets an assignment, reports events:
    queue.worker_event(link, call.id, attempt=1, kind="result", payload=result)
    # the session receives ("accepted", ...) then ("result", ...), each after its commit.

Delivery is at-least-once before a call's first chunk: a lost worker's calls
that had not streamed are re-queued (a lost worker counts as an attempt, up to
``max_attempts``); a call that had streamed fails as interrupted mid-stream.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from chalkd.model import Call, CallError, CallState, Chunk, ErrorCode, FunctionVersion, Payload, ReplicaExit, new_time_id
from chalkd.store.db import Store

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """A caller session: receives events for the calls it submitted or attached to."""

    def send_event(
        self, ref: int, call_id: str, kind: str, *,
        payload: Payload | None = None, error: CallError | None = None, first_index: int = 0,
    ) -> None: ...


class WorkerLink(Protocol):
    """A connected worker replica."""

    replica_id: str
    function_id: str

    def send_assignment(self, call_id: str, attempt: int, args: Payload, chunk_window: int) -> None: ...

    def send_chunk_credit(self, call_id: str, attempt: int, up_to: int) -> None: ...

    def send_cancel(self, call_id: str, attempt: int) -> None: ...


# Inputs are handed to a busy worker ahead of time only for functions whose
# calls take less than this: for longer ones a round trip is noise, and an input
# held by a worker is one no other replica can take.
PREFETCH_BELOW_SECONDS = 0.005


class QueueError(Exception):
    pass


class CallNotFound(QueueError):
    pass


class _Worker:
    __slots__ = ("link", "credit", "inflight", "draining", "serving")

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.credit = 0
        self.inflight: dict[str, Call] = {}
        self.draining = False
        self.serving = False   # has announced capacity: its handler is loaded


class Queue:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 3,
        chunk_window: int = 8192,
        finished_cache: int = 20_000,
        retry_backoff: Callable[[int], float] = lambda n: min(0.05 * 2 ** (n - 1), 2.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.chunk_window = chunk_window
        self.retry_backoff = retry_backoff
        self.clock = clock
        self.calls: dict[str, Call] = {}                    # open calls
        self.finished: OrderedDict[str, Call] = OrderedDict()  # recently finished, for attach
        self._finished_cap = finished_cache
        self._idem: dict[tuple[str, str], str] = {}
        self._heaps: dict[str, list] = {}                  # function id -> heap of (key, call)
        self._workers: dict[str, dict[str, _Worker]] = {}  # function id -> replica id -> worker
        self._kicked: set[str] = set()
        self._seq = 0
        self.total_submitted = 0
        self.on_demand: Callable[[str], None] = lambda function_id: None
        # How many inputs beyond its free slots a worker may hold queued (the
        # autoscaler allows it once a function cannot add replicas): saves a
        # daemon-worker round trip between back-to-back calls.
        self.prefetch: Callable[[str], int] = lambda function_id: 0
        self._durations: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- recovery ---------------------------------------------------------------------

    def load(self, functions: dict[str, FunctionVersion]) -> None:
        """Rebuild open calls from the database after a (re)start.

        Calls that had not streamed are queued again; calls that had streamed
        fail as interrupted, their kept chunks still readable by a re-attaching caller.
        """
        row = self.store.query("SELECT COALESCE(MAX(seq), 0) AS s FROM calls")
        self._seq = row[0]["s"]
        rows = self.store.query(
            "SELECT * FROM calls WHERE state IN ('queued','running','streaming') ORDER BY seq"
        )
        for r in rows:
            fv = functions.get(r["function_id"])
            call = Call(
                id=r["id"], seq=r["seq"], function=fv, args=Payload(r["args_schema"], r["args_batch"]),
                created_at=r["created_at"], parent_id=r["parent_id"], idempotency_key=r["idempotency_key"],
                priority=r["priority"], root_seq=r["root_seq"], attempt=r["attempt"], failures=r["failures"],
            )
            if r["idempotency_key"]:
                self._idem[(r["function_id"], r["idempotency_key"])] = call.id
            if fv is None or fv.deleted:
                self._finish(call, error=CallError.platform(
                    ErrorCode.NOT_FOUND, f"function version {r['function_id']} was deleted"))
                continue
            if r["chunks"] > 0:
                call.next_index = r["chunks"]
                self._finish(call, error=CallError.platform(
                    ErrorCode.INTERRUPTED,
                    f"call {call.id} was interrupted mid-stream after {r['chunks']} chunk(s): "
                    "the daemon restarted while it was streaming",
                ))
                continue
            self.calls[call.id] = call
            self._push(call)
        # Idempotency keys of calls finished lately, so a caller that resubmits
        # after a crash gets its call back, not a second one.
        for r in self.store.query(
            "SELECT id, function_id, idempotency_key FROM calls WHERE idempotency_key IS NOT NULL "
            "AND state NOT IN ('queued','running','streaming') AND finished_at > ?",
            (self.clock() - 3600,),
        ):
            self._idem[(r["function_id"], r["idempotency_key"])] = r["id"]
        if rows:
            log.info("recovered %d open call(s) from the database", len(rows))

    # -- callers ----------------------------------------------------------------------

    def submit(
        self, sub: Subscriber, ref: int, function: FunctionVersion, args: Payload, *,
        idempotency_key: str | None = None, parent_id: str | None = None,
    ) -> Call:
        if idempotency_key:
            existing = self._idem.get((function.id, idempotency_key))
            if existing is not None:
                self.attach(sub, ref, existing, after_chunk=-1)
                return self.get(existing)
        self._seq += 1
        parent = self.calls.get(parent_id) if parent_id else None
        call = Call(
            id=new_time_id("fc"), seq=self._seq, function=function, args=args, created_at=self.clock(),
            parent_id=parent_id, idempotency_key=idempotency_key,
            priority=parent.priority if parent else 0,
            root_seq=parent.root_seq if parent else self._seq,
        )
        call.subscribers[sub] = ref
        self.calls[call.id] = call
        if idempotency_key:
            self._idem[(function.id, idempotency_key)] = call.id
        self.total_submitted += 1
        self.store.write(
            "INSERT OR IGNORE INTO calls (id, seq, function_id, parent_id, idempotency_key, priority, root_seq,"
            " state, args_schema, args_batch, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (call.id, call.seq, function.id, parent_id, idempotency_key, call.priority, call.root_seq,
             "queued", args.schema, args.batch, call.created_at),
        )
        # "Accepted" only once the row is durable; dispatch need not wait for it.
        self.store.after_commit(lambda: sub.send_event(ref, call.id, "accepted"))
        if function.failed:
            self._finish(call, error=CallError.platform(ErrorCode.UNSCHEDULABLE, function.failed))
            return call
        self._push(call)
        return call

    def reject(self, sub: Subscriber, ref: int, error: CallError) -> None:
        """Refuse a submit that never became a call (unknown function, too large...)."""
        sub.send_event(ref, "", "error", error=error)

    def get(self, call_id: str) -> Call:
        call = self.calls.get(call_id) or self.finished.get(call_id)
        if call is not None:
            return call
        rows = self.store.query("SELECT * FROM calls WHERE id=?", (call_id,))
        if not rows:
            raise CallNotFound(f"call {call_id!r} not found")
        return self._call_from_row(rows[0])

    def attach(self, sub: Subscriber, ref: int, call_id: str, *, after_chunk: int = -1) -> None:
        """Subscribe ``sub`` to a call and replay what it has not seen yet."""
        call = self.get(call_id)
        sub.send_event(ref, call.id, "accepted")
        chunks = call.chunks
        in_memory_from = call.chunks[0].first_index if call.chunks else call.next_index
        if after_chunk + 1 < in_memory_from:
            # Chunks every caller had acknowledged left memory: the store has them.
            stored = self._load_chunks(call)
            seen = {c.first_index for c in stored}
            chunks = stored + [c for c in call.chunks if c.first_index not in seen]
        for chunk in chunks:
            last = chunk.first_index + chunk.payload.rows - 1
            if last > after_chunk:
                sub.send_event(ref, call.id, "chunk", payload=chunk.payload, first_index=chunk.first_index)
        if call.state.finished:
            self._send_final(call, sub, ref)
        else:
            call.subscribers[sub] = ref

    def ack(self, call_id: str, index: int) -> None:
        """A caller consumed chunks up to ``index``: widen the worker's window."""
        call = self.calls.get(call_id)
        if call is None or index <= call.acked:
            return
        call.acked = index
        # Chunks every caller has seen need not stay in memory: the store has them.
        while call.chunks and call.chunks[0].first_index + call.chunks[0].payload.rows - 1 <= index:
            call.chunks.pop(0)
        worker = self._worker_of(call)
        if worker is not None:
            worker.link.send_chunk_credit(call.id, call.attempt, index + 1 + self.chunk_window)

    def unsubscribe(self, sub: Subscriber) -> None:
        for call in list(self.calls.values()):
            call.subscribers.pop(sub, None)

    def cancel(self, call_id: str, reason: str = "cancelled by the caller") -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        worker = self._worker_of(call)
        if worker is not None:
            worker.link.send_cancel(call.id, call.attempt)
            worker.inflight.pop(call.id, None)
        self._unqueue(call)
        self._finish(call, error=CallError.platform(ErrorCode.CANCELLED, reason), state=CallState.CANCELLED)

    def _unqueue(self, call: Call) -> None:
        heap = self._heaps.get(call.function.id)
        if heap:
            kept = [entry for entry in heap if entry[1] is not call]
            if len(kept) != len(heap):
                heapq.heapify(kept)
                self._heaps[call.function.id] = kept

    # -- workers ----------------------------------------------------------------------

    def worker_connected(self, link: WorkerLink) -> None:
        self._workers.setdefault(link.function_id, {})[link.replica_id] = _Worker(link)

    def worker_credit(self, link: WorkerLink, credit: int) -> None:
        worker = self._workers.get(link.function_id, {}).get(link.replica_id)
        if worker is None:
            return
        worker.credit += credit
        worker.serving = True
        self._kick(link.function_id)

    def worker_draining(self, replica_id: str, function_id: str) -> None:
        worker = self._workers.get(function_id, {}).get(replica_id)
        if worker is not None:
            worker.draining = True

    def inflight_count(self, function_id: str, replica_id: str) -> int:
        worker = self._workers.get(function_id, {}).get(replica_id)
        return len(worker.inflight) if worker else 0

    def worker_event(
        self, link: WorkerLink, call_id: str, attempt: int, kind: str, *,
        payload: Payload | None = None, error: CallError | None = None, first_index: int = 0,
    ) -> None:
        call = self.calls.get(call_id)
        # Fencing: only the current attempt on the replica it was given to counts.
        if call is None or call.attempt != attempt or call.replica_id != link.replica_id:
            log.debug("dropping %s for %s attempt %s from %s (stale)", kind, call_id, attempt, link.replica_id)
            return
        if kind == "chunk":
            assert payload is not None
            self._on_chunk(call, payload, first_index)
            return
        worker = self._workers.get(link.function_id, {}).get(link.replica_id)
        if worker is not None:
            worker.inflight.pop(call_id, None)
        # A moving average of how long calls take decides whether prefetching pays.
        fid = link.function_id
        took = time.monotonic() - call.dispatched_at
        self._durations[fid] = 0.8 * self._durations.get(fid, took) + 0.2 * took
        if kind == "result":
            self._finish(call, result=payload)
        elif kind == "done":
            self._finish(call)
        elif kind == "error":
            self._finish(call, error=error)

    def worker_lost(self, function_id: str, replica_id: str, exit: ReplicaExit) -> None:
        """A replica is gone: its pre-stream calls run again, streamed ones fail."""
        worker = self._workers.get(function_id, {}).pop(replica_id, None)
        if worker is None:
            return
        for call in list(worker.inflight.values()):
            if call.state.finished or call.replica_id != replica_id:
                continue
            call.replica_id = None
            call.failures += 1
            if call.next_index > 0:
                self._finish(call, error=CallError.platform(
                    ErrorCode.INTERRUPTED,
                    f"call {call.id} was interrupted mid-stream after {call.next_index} chunk(s): "
                    f"the replica running it was lost ({exit.describe()})",
                ))
            elif call.failures >= self.max_attempts:
                # `failures` is persisted, so a daemon restart does not reset the budget.
                self._finish(call, error=CallError.platform(
                    ErrorCode.WORKER_LOST,
                    f"the replica running {call.function.name!r} was lost on each of "
                    f"{call.failures} attempt(s); last: {exit.describe()}",
                ))
            else:
                call.state = CallState.QUEUED
                self.store.write("UPDATE calls SET state='queued', failures=? WHERE id=?", (call.failures, call.id))
                delay = self.retry_backoff(call.failures)
                log.info("re-queueing %s in %.2fs after losing its replica (%s)", call.id, delay, exit.describe())
                self.loop.call_later(delay, self._requeue, call)

    def fail_waiting(self, function_id: str, error: CallError) -> None:
        """The function cannot run (build failed, unschedulable): fail its queued calls."""
        self._heaps.pop(function_id, None)
        # Queued calls, including those waiting out a retry backoff outside the heap.
        for call in [c for c in self.calls.values() if c.function.id == function_id and c.state == CallState.QUEUED]:
            self._finish(call, error=error)

    def waiting(self, function_id: str) -> int:
        return len(self._heaps.get(function_id, ()))

    def inflight(self, function_id: str) -> int:
        return sum(len(w.inflight) for w in self._workers.get(function_id, {}).values())

    def counts(self) -> tuple[int, int]:
        queued = sum(len(h) for h in self._heaps.values())
        return queued, len(self.calls) - queued

    # -- internals --------------------------------------------------------------------

    def _requeue(self, call: Call) -> None:
        if call.state == CallState.QUEUED and call.id in self.calls:
            self._push(call)

    def _push(self, call: Call) -> None:
        fid = call.function.id
        heapq.heappush(self._heaps.setdefault(fid, []), (call.sort_key, call))
        self._kick(fid)

    def _kick(self, function_id: str) -> None:
        if function_id not in self._kicked:
            self._kicked.add(function_id)
            self.loop.call_soon(self._dispatch, function_id)

    def _dispatch(self, function_id: str) -> None:
        self._kicked.discard(function_id)
        heap = self._heaps.get(function_id)
        if not heap:
            return
        workers = [w for w in self._workers.get(function_id, {}).values() if w.serving and not w.draining]
        prefetch = 0
        while heap and workers:
            free = [w for w in workers if w.credit > 0]
            if free:
                worker = max(free, key=lambda w: (w.credit, -len(w.inflight)))
            else:
                # Every slot is taken. Hand inputs ahead only when no replica can be
                # added or is still loading, or they would queue behind a busy one.
                if not prefetch and self._durations.get(function_id, 1.0) < PREFETCH_BELOW_SECONDS:
                    prefetch = self.prefetch(function_id)
                    if len(self._workers.get(function_id, {})) != len(workers):
                        prefetch = 0
                ahead = [w for w in workers if w.credit > -prefetch]
                if not ahead:
                    break
                worker = min(ahead, key=lambda w: len(w.inflight))
            _, call = heapq.heappop(heap)
            if call.state != CallState.QUEUED or call.id not in self.calls:
                continue
            call.attempt += 1
            call.state = CallState.RUNNING
            call.replica_id = worker.link.replica_id
            call.dispatched_at = time.monotonic()
            worker.credit -= 1
            worker.inflight[call.id] = call
            assert call.args is not None
            worker.link.send_assignment(call.id, call.attempt, call.args, self.chunk_window)
        if heap:
            self.on_demand(function_id)

    def _worker_of(self, call: Call) -> _Worker | None:
        if call.replica_id is None:
            return None
        return self._workers.get(call.function.id, {}).get(call.replica_id)

    def _on_chunk(self, call: Call, payload: Payload, first_index: int) -> None:
        if first_index != call.next_index:
            log.warning("call %s: chunk %d out of order (expected %d); dropped", call.id, first_index, call.next_index)
            return
        call.next_index += payload.rows
        chunk = Chunk(first_index, payload)
        call.chunks.append(chunk)
        call.state = CallState.STREAMING
        self.store.write(
            "INSERT OR REPLACE INTO chunks (call_id, first_index, rows, schema, batch) VALUES (?,?,?,?,?)",
            (call.id, first_index, payload.rows, payload.schema, payload.batch),
        )
        self.store.write("UPDATE calls SET state='streaming', chunks=?, attempt=? WHERE id=?",
                         (call.next_index, call.attempt, call.id))
        subs = list(call.subscribers.items())

        # Chunks go out once they are durable (the first one marks the call as
        # streamed, so a restarted daemon never re-runs a call whose chunks a
        # caller saw); later ones follow in order behind it.
        def deliver() -> None:
            for sub, ref in subs:
                sub.send_event(ref, call.id, "chunk", payload=payload, first_index=first_index)
        self.store.after_commit(deliver)

    def _finish(
        self, call: Call, *, result: Payload | None = None, error: CallError | None = None,
        state: CallState | None = None,
    ) -> None:
        if call.state.finished:
            return
        call.state = state or (CallState.FAILED if error else CallState.SUCCEEDED)
        call.result = result
        call.error = error
        call.finished_at = self.clock()
        self.calls.pop(call.id, None)
        self.finished[call.id] = call
        if len(self.finished) > self._finished_cap:
            self.finished.popitem(last=False)
        err = _encode_error(error) if error else None
        self.store.write(
            "UPDATE calls SET state=?, attempt=?, failures=?, result_schema=?, result_batch=?, result_rows=?,"
            " error=?, chunks=?, finished_at=? WHERE id=?",
            (call.state.value, call.attempt, call.failures, result.schema if result else None,
             result.batch if result else None, result.rows if result else None, err,
             call.next_index, call.finished_at, call.id),
        )
        subs = list(call.subscribers.items())
        call.subscribers.clear()
        call.args = None

        def deliver() -> None:
            # Chunks stay in memory until now: before this commit the store may
            # not have them yet, and a caller attaching meanwhile must see them.
            call.chunks = []
            for sub, ref in subs:
                self._send_final(call, sub, ref)
        if call.next_index:
            # A stream's end must not overtake its chunks, which wait for their commit.
            self.store.after_commit(deliver)
        else:
            # A result need not be durable before the caller has it: if the daemon
            # dies before the commit, the call runs again (at-least-once) and the
            # caller, which already has its answer, never asks.
            deliver()

    def _send_final(self, call: Call, sub: Subscriber, ref: int) -> None:
        if call.error is not None:
            sub.send_event(ref, call.id, "error", error=call.error)
        elif call.result is not None:
            sub.send_event(ref, call.id, "result", payload=call.result)
        else:
            sub.send_event(ref, call.id, "done")

    def _load_chunks(self, call: Call) -> list[Chunk]:
        rows = self.store.query(
            "SELECT first_index, rows, schema, batch FROM chunks WHERE call_id=? ORDER BY first_index", (call.id,))
        return [Chunk(r["first_index"], Payload(r["schema"], r["batch"], r["rows"])) for r in rows]

    def _call_from_row(self, r) -> Call:
        fv = FunctionVersion(id=r["function_id"], name="", version=0, content_hash="", spec=b"", created_at=0)
        call = Call(id=r["id"], seq=r["seq"], function=fv, args=None, created_at=r["created_at"],
                    state=CallState(r["state"]), attempt=r["attempt"], next_index=r["chunks"])
        if r["result_batch"] is not None:
            call.result = Payload(r["result_schema"], r["result_batch"], r["result_rows"] or 1)
        if r["error"] is not None:
            call.error = decode_error(r["error"])
        return call


def _encode_error(error: CallError) -> bytes:
    return json.dumps({
        "type": error.exception_type, "message": error.message, "traceback": error.traceback,
        "code": error.code.value, "mro": list(error.exception_mro),
    }).encode()


def decode_error(data: bytes) -> CallError:
    """A call's error as the store keeps it."""
    d = json.loads(data)
    return CallError(d["type"], d["message"], d["traceback"], ErrorCode(d["code"]), tuple(d["mro"]))
