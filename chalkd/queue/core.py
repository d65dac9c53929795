"""The function queue: durable calls, one heap per function version (nested calls
before newer top-level ones, by their root call's order), credit-based dispatch
to workers, attempts with fencing, chunk streaming with flow control.

The queue knows nothing of gRPC. Callers are :class:`Subscriber` objects (one
per caller session) and workers are :class:`WorkerLink` objects (one per
worker stream); the services implement both.

    queue = Queue(store, hooks=scaler_hooks, known_functions=lambda: catalog.by_id)
    call = queue.submit(session, 1, fv, payload)          # session: a Subscriber
    # ... a worker link announces credit, gets an assignment, reports events:
    queue.worker_credit(link, 1)
    queue.worker_event(link, call.id, 1, events.Result(result))
    # the session receives events.Accepted() then events.Result(result), each after its commit.

SQL on calls and their chunks goes through :class:`chalkd.queue.storage.CallStore`; following calls,
chunks, their windows and streams nobody reads live in :mod:`chalkd.queue.streaming`.

Delivery is at-least-once before a call's first chunk: a failed attempt that
had not streamed runs again while the retry budget lasts (infrastructure
failures always; user exceptions when the function's retry policy names them);
a call that had streamed fails for good. A cancelled or timed-out attempt is
abandoned: its worker is told to stop, its slot stays held until the worker
says it has, and its retry waits for that, so attempts never overlap. A
worker that does not stop within ``cancel_grace`` seconds is killed
(``on_stuck``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from typing import Protocol

from chalkd import metrics
from chalkd.model import (
    INFRASTRUCTURE_CODES,
    Call,
    CallError,
    CallState,
    ErrorCode,
    FunctionVersion,
    Payload,
    ReplicaExit,
    new_time_id,
)
from chalkd.queue import events as ev
from chalkd.queue.batch import BatchReport, BatchResult, BatchState, errors_from_json, rows_refused
from chalkd.queue.dispatch import Attempt, Dispatcher, _Worker
from chalkd.queue.limits import Limits
from chalkd.queue.storage import CallStore, decode_error
from chalkd.queue.streaming import Streaming
from chalkd.store.db import Store, is_disk_full

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """A caller session: receives events for the calls it submitted or attached to."""

    def send_event(self, ref: int, call_id: str, event: ev.CallEvent) -> None: ...


class WorkerLink(Protocol):
    """A connected worker replica."""

    replica_id: str
    function_id: str

    def send_assignment(self, call_id: str, attempt: int, args: Payload, chunk_window: int,
                        window_bytes: int = 0) -> None: ...

    def send_batch(self, items: list[tuple[str, int, Payload]], chunk_window: int) -> None: ...

    def send_batch_call(self, call_id: str, attempt: int, args: Payload, rows: list[int]) -> None: ...

    def send_chunk_credit(self, call_id: str, attempt: int, up_to: int, bytes_up_to: int = 0) -> None: ...

    def send_cancel(self, call_id: str, attempt: int) -> None: ...


# Seconds a finished call's idempotency key is remembered: a caller resubmits a
# call it saw no answer for only after a reconnect, which gives up after
# CHALK_RECONNECT_TIMEOUT (60 s); twice that covers a reconnect that started late.
IDEMPOTENCY_WINDOW = 120.0

# About what one remembered idempotency key costs (tuple, strings, dict and deque slots).
IDEMPOTENCY_KEY_BYTES = 400
# Bytes a finished call costs in the cache besides its result.
FINISHED_CALL_BYTES = 600

DEFAULT_MEMORY_BUDGET = 1 << 30

# A call found running at this many daemon crashes in a row is not run again (it may be what kills it).
POISON_CRASHES = 3


class MemoryBudget:
    """The queue's share of ``--memory-budget``, split between its buffers.

    >>> b = MemoryBudget(1 << 30)
    >>> b.queued_args, b.finished, b.idempotency_keys
    (268435456, 268435456, 167772)
    """

    def __init__(self, total: int = DEFAULT_MEMORY_BUDGET) -> None:
        if total < 1 << 20:
            raise ValueError(f"memory budget must be at least 1 MiB, got {total} bytes")
        self.total = total
        self.queued_args = total // 4          # arguments of queued calls; the rest stay in the store
        self.finished = total // 4             # results of recently finished calls; older ones are read back
        self.idempotency_keys = total // 16 // IDEMPOTENCY_KEY_BYTES   # keys of finished calls remembered


class QueueError(Exception):
    pass


class CallNotFound(QueueError):
    pass


class Queue(Dispatcher, Streaming):
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 3,
        chunk_window: int = 8192,
        chunk_window_bytes: int = 16 * 2**20,
        detached_stream_timeout: float = 60.0,
        spawned_stream_budget: int = 256 * 2**20,
        finished_cache: int = 20_000,
        retry_backoff: Callable[[int], float] = lambda n: min(0.05 * 2 ** (n - 1), 2.0),
        clock: Callable[[], float] = time.time,
        cancel_grace: float = 5.0,
        rng: random.Random | None = None,
        limits: Limits | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        hooks=None,
        known_functions: Callable[[], dict[str, FunctionVersion]] = dict,
    ) -> None:
        # hooks: the autoscaler's side (a chalkd.scaling.hooks.ScalerHooks: on_demand, prefetch, on_stuck),
        # made before both and passed to both; without it the queue scales nothing (tests).
        self.store = store
        self.rows = CallStore(store)  # every SQL statement on calls and chunks
        self.budget = MemoryBudget(memory_budget)
        self._args_bytes = 0        # queued calls' arguments held in memory
        self._finished_bytes = 0    # results held in the finished cache
        self.limits = limits or Limits(store)
        self.cancel_grace = cancel_grace
        self.rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.chunk_window = chunk_window
        # A generator may be ahead of its slowest reader by chunk_window chunks and chunk_window_bytes
        # bytes; a stream nobody reads for detached_stream_timeout seconds is cancelled; a spawned
        # generator's chunks are taken by the store (acknowledged once durable) up to spawned_stream_budget.
        self.chunk_window_bytes = chunk_window_bytes
        self.detached_stream_timeout = detached_stream_timeout
        self.spawned_stream_budget = spawned_stream_budget
        self.retry_backoff = retry_backoff
        self.clock = clock
        self.calls: dict[str, Call] = {}                    # open calls
        self.finished: OrderedDict[str, Call] = OrderedDict()  # recently finished, for attach
        self._finished_cap = finished_cache
        self._idem: dict[tuple[str, str], str] = {}
        # (finished at, key, call id) in finish order, so the sweep drops old keys cheaply.
        self.idem_expiry: deque[tuple[float, tuple[str, str], str]] = deque()
        self.idempotency_window = IDEMPOTENCY_WINDOW
        self._heaps: dict[str, list] = {}                  # function id -> heap of (key, call)
        self._queued: dict[str, int] = {}                  # function id -> live entries in its heap
        self._workers: dict[str, dict[str, _Worker]] = {}  # function id -> replica id -> worker
        self._kicked: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}    # function id -> next gate opening
        self._slot_waiters: dict[str, set[str]] = {}         # concurrency key -> waiting function ids
        self._seq = 0
        self.total_submitted = 0
        self.on_demand: Callable[[str], None] = lambda function_id: None
        # How many inputs beyond its free slots a worker may hold queued (the
        # autoscaler allows it once a function cannot add replicas): saves a
        # daemon-worker round trip between back-to-back calls.
        self.prefetch: Callable[[str], int] = lambda function_id: 0
        # Called with (function id, replica id, reason) when an abandoned attempt's
        # worker has not stopped within cancel_grace: the autoscaler kills it.
        self.on_stuck: Callable[[str, str, str], None] = lambda function_id, replica_id, reason: None
        self._durations: dict[str, float] = {}
        # Every version by id (the server passes the catalog's): names for calls read
        # back from the store, TTLs for the result sweep.
        self.known_functions = known_functions
        if hooks is not None:
            self.on_demand, self.prefetch, self.on_stuck = hooks.on_demand, hooks.prefetch, hooks.on_stuck
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
        After a crash (no clean shutdown recorded), a call whose attempt was running
        at each of the last :data:`POISON_CRASHES` crashes fails instead of running again.
        """
        self._seq = self.rows.max_seq()
        crashed = not self.store.clean_shutdown
        # Arguments past the budget stay in the store: read without them, fetch them at dispatch.
        rows = self.rows.open_calls()
        poisoned = 0
        for r in rows:
            fv = functions.get(r["function_id"])
            call = Call(
                id=r["id"], seq=r["seq"], function=fv, args=None,
                created_at=r["created_at"], parent_id=r["parent_id"], idempotency_key=r["idempotency_key"],
                root_seq=r["root_seq"], attempt=r["attempt"], failures=r["failures"],
                stored=True,
            )
            if r["batch_rows"] is not None:
                # A batch call: the rows settled before the restart keep their outcome; the others run.
                partial = (Payload(r["result_schema"], r["result_batch"], r["result_rows"] or 1)
                           if r["result_batch"] is not None else None)
                call.batch = BatchState.from_row(r["batch_rows"], r["batch_state"], partial)
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
            crashes = r["crashes"]
            if crashed:
                # Consecutive crashes with its attempt running; one it sat out resets the count.
                crashes = crashes + 1 if r["state"] == "running" else 0
                if crashes >= POISON_CRASHES:
                    poisoned += 1
                    self._finish(call, error=CallError.platform(
                        ErrorCode.ABORTED,
                        f"call {call.id} of {fv.name!r} was running each of the last {crashes} times chalkd "
                        "died; not running it again"))
                    continue
            if crashes != r["crashes"] or r["state"] == "running":
                # Queued again: only a new attempt's mark may say it runs at the next crash.
                self.rows.requeue_after_crash(call.id, crashes)
            size = r["args_size"] or 0
            if self._args_bytes + size <= self.budget.queued_args:
                call.args = self._load_args(call)
                call.args_bytes = size
                self._args_bytes += size
            self.calls[call.id] = call
            self._push(call)
        # Idempotency keys of calls finished lately, so a caller that resubmits
        # after a crash gets its call back, not a second one.
        for r in self.rows.recent_idempotency_keys(self.clock() - self.idempotency_window,
                                                   self.budget.idempotency_keys):
            key = (r["function_id"], r["idempotency_key"])
            self._idem[key] = r["id"]
            self.idem_expiry.append((r["finished_at"], key, r["id"]))
        if rows:
            log.info("recovered %d open call(s) from the database", len(rows))
        if poisoned:
            log.error("failed %d call(s) that were running each of the last %d times chalkd died",
                      poisoned, POISON_CRASHES)

    # -- callers ----------------------------------------------------------------------

    def submit(
        self, sub: Subscriber, ref: int, function: FunctionVersion, args: Payload, *,
        idempotency_key: str | None = None, parent_id: str | None = None, detach: bool = False,
        batch: bool = False,
    ) -> Call | None:
        """Queue a call; None when it is refused before it exists (a full queue).

        With ``detach`` (``spawn``), ``sub`` hears only the acceptance (or refusal): nobody
        follows the call until someone attaches, and a generator's chunks wait in the store.
        With ``batch``, ``args`` holds one row per input and the call ends with one
        :class:`~chalkd.queue.batch.BatchResult` (see :mod:`chalkd.queue.batch`).
        """
        if batch:
            why = (f"{function.name!r} is a generator function: its calls cannot be batched"
                   if function.is_generator else "a batch call cannot be detached" if detach
                   else rows_refused(args.rows, args.size))
            if why:
                self.reject(sub, ref, CallError.platform(ErrorCode.INVALID_ARGUMENT, why))
                return None
        if idempotency_key:
            existing = self._idem.get((function.id, idempotency_key))
            if existing is not None:
                pending = self.calls.get(existing)
                if pending is not None and pending.stored is None:
                    # Its row is not committed yet: answer this resubmit once it is (or has failed).
                    self.store.after_commit(lambda: self._attach_stored(sub, ref, existing))
                    return pending
                try:
                    if detach:  # a spawn resubmitted after a reconnect: its acceptance, nothing more
                        found = self.get(existing)
                        sub.send_event(ref, existing, ev.ACCEPTED)
                        return found
                    self.attach(sub, ref, existing, after_chunk=-1)
                    return self.get(existing)
                except CallNotFound:  # expired since: the key is free again
                    del self._idem[(function.id, idempotency_key)]
        if self.store.full:
            # Never accept what cannot be stored: the caller hears why and retries later.
            self.reject(sub, ref, CallError.platform(ErrorCode.RESOURCE_EXHAUSTED, str(self.store.disk_full_error())))
            return None
        pol = function.policies
        waiting = self._queued.get(function.id, 0)
        if waiting >= pol.max_items:
            self.reject(sub, ref, CallError.platform(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"the queue of {function.name!r} is full: {waiting} calls waiting "
                f"(queue_policy max_items={pol.max_items}); retry later"))
            return None
        self._seq += 1
        parent = self.calls.get(parent_id) if parent_id else None
        call = Call(
            id=new_time_id("fc"), seq=self._seq, function=function, args=args, created_at=self.clock(),
            parent_id=parent_id, idempotency_key=idempotency_key,
            root_seq=parent.root_seq if parent else self._seq, detached=detach,
        )
        if batch:
            call.batch = BatchState.new(args.rows)
        call.subscribers[sub] = ref
        self.calls[call.id] = call
        if idempotency_key:
            self._idem[(function.id, idempotency_key)] = call.id
        self.total_submitted += 1
        size = len(args.batch) + len(args.schema)
        if self._args_bytes + size <= self.budget.queued_args:
            call.args_bytes = size
            self._args_bytes += size
        self.rows.insert(
            call, args,
            # "Accepted" only once the row is durable; dispatch need not wait for it, but an
            # attempt whose row never commits is cancelled and its caller told why.
            on_commit=lambda: self._stored(call, sub, ref), on_fail=lambda exc: self._not_stored(call, exc),
            hold=False,
        )
        if function.failed:
            self._finish(call, error=CallError.platform(ErrorCode.UNSCHEDULABLE, function.failed))
            return call
        if parent is not None:
            why = self._would_deadlock(function, parent)
            if why:
                self._finish(call, error=CallError.platform(ErrorCode.DEADLOCK, why))
                return call
        self._push(call)
        return call

    def _would_deadlock(self, fv: FunctionVersion, parent: Call) -> str:
        """Why a nested call of ``fv`` could never get a slot: its own callers hold them all."""
        scope, cap = self.limits.scope_cap(fv)
        chain: list[Call] = []
        holders = 0
        c: Call | None = parent
        while c is not None and len(chain) < 1000:
            chain.append(c)
            if c.state in (CallState.RUNNING, CallState.STREAMING) and self.limits.scope_cap(c.function)[0] == scope:
                holders += 1
            c = self.calls.get(c.parent_id) if c.parent_id else None
        if holders < cap:
            return ""
        path = " -> ".join(f"{c.function.name} ({c.id})" for c in reversed(chain))
        p = fv.policies
        if p.concurrency_key:
            what = f"concurrency key {p.concurrency_key!r} (max_concurrent={cap})"
        else:
            what = (f"{fv.name!r} (max_concurrent={p.max_concurrent} per replica x "
                    f"max_replicas={fv.max_replicas})")
        return (f"calling {fv.name!r} from {path} would deadlock: its own callers hold all {cap} slot(s) of "
                f"{what} and wait for this call; raise the limit or do not call it from its own chain")

    def _stored(self, call: Call, sub: Subscriber, ref: int) -> None:
        call.stored = True
        if call.detached and call.subscribers.get(sub) == ref:
            del call.subscribers[sub]  # spawned: the acceptance is all it hears
            self._lost_reader(call)
        if not call.args_bytes and call.state == CallState.QUEUED and call.attempt == 0:
            # Over the budget for queued arguments: the store has them; dispatch reads them back.
            call.args = None
        sub.send_event(ref, call.id, ev.ACCEPTED)

    def _attach_stored(self, sub: Subscriber, ref: int, call_id: str) -> None:
        try:
            self.attach(sub, ref, call_id, after_chunk=-1)
        except CallNotFound:
            self.reject(sub, ref, CallError.platform(
                ErrorCode.UNAVAILABLE, f"call {call_id}, which this idempotency key named, could not be stored; "
                "submit it again"))

    def _not_stored(self, call: Call, exc: BaseException) -> None:
        """A call's INSERT failed: it never existed. Stop its attempt and tell its callers."""
        call.stored = False
        if is_disk_full(exc):
            error = CallError.platform(ErrorCode.RESOURCE_EXHAUSTED, str(exc))
        else:
            log.error("call %s of %s could not be stored (%r): it fails", call.id, call.function.name, exc)
            error = CallError.platform(ErrorCode.INTERNAL, f"chalkd could not store the call: {exc}")
        if call.idempotency_key and self._idem.get((call.function.id, call.idempotency_key)) == call.id:
            del self._idem[(call.function.id, call.idempotency_key)]
        att = self._current_attempt(call)
        if att is not None and not att.abandoned:
            self._abandon(att)
        self._unqueue(call)
        self._release_args(call)
        self.calls.pop(call.id, None)
        self.finished.pop(call.id, None)
        if not call.state.finished:
            call.state = CallState.FAILED
        call.args = None
        subs = list(call.subscribers.items())
        call.subscribers.clear()
        for s, r in subs:
            self.reject(s, r, error)

    def reject(self, sub: Subscriber, ref: int, error: CallError) -> None:
        """Refuse a submit that never became a call (unknown function, too large...)."""
        sub.send_event(ref, "", ev.Failed(error))

    def get(self, call_id: str) -> Call:
        call = self.calls.get(call_id) or self.finished.get(call_id)
        if call is not None:
            return call
        row = self.rows.get(call_id)
        if row is None:
            raise CallNotFound(f"call {call_id!r} not found")
        return self._call_from_row(row)

    def running_on(self, call_id: str, replica_id: str) -> bool:
        """Is ``call_id`` open and dispatched to replica ``replica_id`` (a nested call's parent)?"""
        call = self.calls.get(call_id)
        return call is not None and call.replica_id == replica_id

    def cancel(self, call_id: str, reason: str = "cancelled by the caller") -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        att = self._current_attempt(call)
        if att is not None:
            self._abandon(att)
        self._unqueue(call)
        self._finish(call, error=CallError.platform(ErrorCode.CANCELLED, reason), state=CallState.CANCELLED)

    def _current_attempt(self, call: Call) -> Attempt | None:
        worker = self._worker_of(call)
        return worker.inflight.get((call.id, call.attempt)) if worker is not None else None

    def _abandon(self, att: Attempt) -> None:
        """Tell the worker to stop an attempt; its slot stays held until it has."""
        att.abandoned = True
        att.call.replica_id = None  # fencing: nothing more from this attempt counts
        att.worker.link.send_cancel(att.call.id, att.number)
        att.grace = self.loop.call_later(self.cancel_grace, self._check_stuck, att)

    def _check_stuck(self, att: Attempt) -> None:
        worker = att.worker
        if worker.inflight.get((att.call.id, att.number)) is att:
            self.on_stuck(worker.link.function_id, worker.link.replica_id,
                          f"its handler did not stop within {self.cancel_grace:g}s of being cancelled")

    def _timed_out(self, att: Attempt) -> None:
        att.timer = None
        call = att.call
        if att.worker.inflight.get((call.id, att.number)) is not att or att.abandoned:
            return
        timeout = call.function.policies.timeout
        self._abandon(att)
        log.info("%s attempt %d of %s timed out after %gs", call.id, att.number, call.function.name, timeout)
        self._attempt_failed(call, CallError.platform(
            ErrorCode.DEADLINE_EXCEEDED,
            f"{call.function.name!r} did not finish within its timeout of {timeout:g}s"), still_running=True)

    # -- workers ----------------------------------------------------------------------

    def worker_connected(self, link: WorkerLink) -> None:
        if link.replica_id in self._workers.get(link.function_id, {}):
            # A second stream for the same replica: the first one's attempts are over.
            self.worker_lost(link.function_id, link.replica_id, ReplicaExit(reason="it connected again"))
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

    def last_done(self, function_id: str, replica_id: str) -> float:
        """When (time.monotonic) the replica last finished a call of ``function_id``; 0.0 if never."""
        worker = self._workers.get(function_id, {}).get(replica_id)
        return worker.last_done if worker else 0.0

    def worker_event(self, link: WorkerLink, call_id: str, attempt: int, event: ev.CallEvent) -> None:
        call = self.calls.get(call_id)
        if type(event) is ev.Chunk:
            # Fencing: only the current attempt on the replica it was given to counts.
            if call is None or call.attempt != attempt or call.replica_id != link.replica_id:
                return
            self._on_chunk(call, event.payload, event.first_index)
            return
        worker = self._workers.get(link.function_id, {}).get(link.replica_id)
        att = worker.inflight.pop((call_id, attempt), None) if worker is not None else None
        if att is not None:
            self._attempt_ended(att)
        if call is None or call.attempt != attempt or call.replica_id != link.replica_id:
            log.debug("dropping %s for %s attempt %s from %s (stale)", event.kind, call_id, attempt, link.replica_id)
            return
        # A moving average of how long calls take decides whether prefetching pays.
        # An input handed over ahead of time started when the one before it ended:
        # its wait in the worker's own queue is not the handler's time.
        fid = link.function_id
        now = time.monotonic()
        took = now - max(call.dispatched_at, worker.last_done if worker is not None else 0.0)
        if call.batch is not None:
            if type(event) is BatchReport:
                took /= max(1, len(event.rows or call.batch.sent))  # per input, as for single calls
            elif type(event) is not ev.Failed:  # one value for many inputs: a worker without batch calls
                event = ev.Failed(CallError.platform(
                    ErrorCode.INTERNAL, f"the replica of {call.function.name!r} answered batch call {call.id} with "
                    "one value: its worker predates batch calls (rebuild its image)"))
        if worker is not None:
            worker.last_done = now
        self._durations[fid] = 0.8 * self._durations.get(fid, took) + 0.2 * took
        if type(event) is ev.Result:
            self._finish(call, result=event.payload)
        elif type(event) is ev.Done:
            self._finish(call)
        elif type(event) is ev.Failed:
            self._attempt_failed(call, event.error)
        elif type(event) is BatchReport and call.batch is not None:
            self._batch_settled(call, event)

    def _batch_settled(self, call: Call, report: BatchReport) -> None:
        """An attempt of a batch call answered: finish it, or run its pending rows again."""
        state: BatchState = call.batch
        delay = state.settle(report, call.function.policies, self.max_attempts, self.rng)
        if delay is None:
            # A batch whose every row failed is listed as failed; its caller still gets the rows' errors.
            self._finish(call, result=state.result(),
                         state=CallState.FAILED if len(state.errors) == state.rows else None)
            return
        call.replica_id = None
        call.state = CallState.QUEUED
        if delay:
            log.info("retrying %d row(s) of batch call %s of %s in %.2fs", len(state.pending), call.id,
                     call.function.name, delay)

        def stored() -> None:
            if delay:
                self.loop.call_later(delay, self._requeue, call)
            else:
                self._requeue(call)  # rows the rate limit held back: no failure, no wait
        # What settled is durable before the pending rows run again: a restart runs only those.
        self.rows.save_batch(call, state.result(), on_commit=stored,
                             on_fail=lambda exc: self._store_failed(call, exc, "a batch's rows"))

    def _attempt_ended(self, att: Attempt) -> None:
        """The worker is done with an attempt (or gone): free what it held."""
        if att.timer is not None:
            att.timer.cancel()
        if att.grace is not None:
            att.grace.cancel()
        if att.slots is not None:
            self._release(att.slots)
        call = att.call
        if (att.abandoned and call.retry_delay is not None and call.attempt == att.number
                and self.calls.get(call.id) is call):
            # Its retry waited for this end, so the two never overlap.
            delay, call.retry_delay = call.retry_delay, None
            self.loop.call_later(delay, self._requeue, call)

    def _attempt_failed(self, call: Call, error: CallError, *, still_running: bool = False) -> None:
        """Retry the call if its policy allows, else fail it with ``error``."""
        call.replica_id = None
        pol = call.function.policies
        if call.next_index > 0:
            self._finish(call, error=error)  # its chunks were seen: retrying would change the stream
            return
        if error.code in INFRASTRUCTURE_CODES:
            runs = pol.retry.max_retries + 1 if pol.retry else self.max_attempts
        elif error.code == ErrorCode.USER and pol.retry is not None and pol.retry.matches(error):
            runs = pol.retry.max_retries + 1
        else:
            self._finish(call, error=error)  # not retryable: no budget spent
            return
        call.failures += 1
        if call.failures >= runs:
            if error.code != ErrorCode.USER:
                error = CallError(error.exception_type, f"{error.message}; gave up after {call.failures} attempt(s)",
                                  error.traceback, error.code, error.exception_mro)
            self._finish(call, error=error)
            return
        delay = (pol.retry.wait_before(call.failures, self.rng) if pol.retry is not None
                 else self.retry_backoff(call.failures))
        call.state = CallState.QUEUED
        metrics.call_retried(call)
        self.rows.requeue(call.id, call.failures)
        # The exception's type and code only: its message is user text (it may hold data or a secret).
        log.info("retrying %s of %s in %.2fs (attempt %d failed: %s)", call.id, call.function.name, delay,
                 call.attempt, error.code.value or f"raised {error.exception_type or 'an exception'}")
        if still_running:
            call.retry_delay = delay
        else:
            self.loop.call_later(delay, self._requeue, call)

    def worker_lost(self, function_id: str, replica_id: str, exit: ReplicaExit) -> None:
        """A replica is gone: its pre-stream calls run again, streamed ones fail."""
        worker = self._workers.get(function_id, {}).pop(replica_id, None)
        if worker is None:
            return
        for att in list(worker.inflight.values()):
            self._attempt_ended(att)
            call = att.call
            if (att.abandoned or call.state.finished or self.calls.get(call.id) is not call
                    or call.attempt != att.number or call.replica_id != replica_id):
                continue
            if call.next_index > 0:
                call.replica_id = None
                call.failures += 1
                self._finish(call, error=CallError.platform(
                    ErrorCode.INTERRUPTED,
                    f"call {call.id} was interrupted mid-stream after {call.next_index} chunk(s): "
                    f"the replica running it was lost ({exit.describe()})",
                ))
            else:
                self._attempt_failed(call, CallError.platform(
                    ErrorCode.WORKER_LOST,
                    f"the replica running {call.function.name!r} was lost ({exit.describe()})"))
        worker.inflight.clear()

    def fail_waiting(self, function_id: str, error: CallError) -> None:
        """The function cannot run (build failed, unschedulable): fail its queued calls."""
        for _, call in self._heaps.pop(function_id, ()):
            call.in_heap = False
        self._queued.pop(function_id, None)
        # Queued calls, including those waiting out a retry backoff outside the heap.
        for call in [c for c in self.calls.values() if c.function.id == function_id and c.state == CallState.QUEUED]:
            self._finish(call, error=error)

    def limits_changed(self) -> None:
        """A limit was (re)defined: re-run dispatch now rather than at the old limit's next token or release."""
        for fid, timer in list(self._timers.items()):
            timer.cancel()
            del self._timers[fid]
        for key in list(self._slot_waiters):
            for fid in self._slot_waiters.pop(key):
                self._kick(fid)
        for fid, live in self._queued.items():
            if live:
                self._kick(fid)

    def waiting(self, function_id: str) -> int:
        return self._queued.get(function_id, 0)

    def oldest_wait(self, function_id: str) -> float:
        """Seconds the longest-queued call of ``function_id`` has waited in line (0.0 when none waits):
        the autoscaler adds a replica when it grows past a short window (chalkd.scaling.autoscaler)."""
        heap = self._heaps.get(function_id)
        if not heap or not self._queued.get(function_id):
            return 0.0
        # The head is first in line and almost always the longest waiting (O(1) each autoscaler pass); a
        # stale head (cancelled or started meanwhile) needs the scan. A requeued retry at the head keeps
        # its place but reads as a fresh wait: an underestimate that later passes correct.
        head = heap[0][1]
        since = head.queued_at if head.in_heap else min(e[1].queued_at for e in heap if e[1].in_heap)
        return max(0.0, time.monotonic() - since)

    def inflight(self, function_id: str) -> int:
        return sum(len(w.inflight) for w in self._workers.get(function_id, {}).values())

    def counts(self) -> tuple[int, int]:
        queued = sum(self._queued.values())
        return queued, len(self.calls) - queued

    # -- internals --------------------------------------------------------------------

    def _requeue(self, call: Call) -> None:
        if call.state != CallState.QUEUED or call.id not in self.calls:
            return
        fv = call.function
        if fv.deleted or fv.failed:
            # Its retry came due after the function went: nothing will ever run it.
            self._finish(call, error=CallError.platform(
                ErrorCode.NOT_FOUND, f"function {fv.name!r} version {fv.version} was deleted") if fv.deleted
                else CallError.platform(ErrorCode(fv.failed_code or "UNSCHEDULABLE"), fv.failed))
            return
        self._push(call)

    def _worker_of(self, call: Call) -> _Worker | None:
        if call.replica_id is None:
            return None
        return self._workers.get(call.function.id, {}).get(call.replica_id)

    def _store_failed(self, call: Call, exc: BaseException, what: str) -> None:
        """A statement of a running call failed (a bug, a constraint): that call fails, nothing else."""
        if call.stored is False or call.state.finished:
            return
        log.error("call %s of %s fails: %s could not be stored (%r)", call.id, call.function.name, what, exc)
        att = self._current_attempt(call)
        if att is not None and not att.abandoned:
            self._abandon(att)
        self._finish(call, error=CallError.platform(
            ErrorCode.INTERNAL, f"chalkd could not store {what} of call {call.id}: {exc}"))

    def _finish(
        self, call: Call, *, result: Payload | None = None, error: CallError | None = None,
        state: CallState | None = None,
    ) -> None:
        if call.state.finished:
            return
        batch: BatchState | None = call.batch
        if batch is not None and error is not None and state is None and batch.pieces:
            # Rows that succeeded keep their results; the rest fail with the call's error.
            batch.fail_pending(error)
            result, error = batch.result(), None
        self._unqueue(call)
        call.state = state or (CallState.FAILED if error else CallState.SUCCEEDED)
        call.result = result
        call.error = error
        call.finished_at = self.clock()
        metrics.call_finished(call)  # once per call: _finish returns above for a finished one
        if call.idempotency_key:
            self._remember_key(call)
        self.calls.pop(call.id, None)
        self._cache_finished(call, result)
        self._release_args(call)
        call.args = None

        def deliver() -> None:
            # Chunks stay in memory until now: before this commit the store may
            # not have them yet, and a caller attaching meanwhile must see them.
            call.chunks = []
            call.settled = True
            subs = list(call.subscribers.items())
            call.subscribers.clear()
            if call.stored is False:
                return  # never a call: its callers were told when its INSERT failed
            for sub, ref in subs:
                self._send_final(call, sub, ref)

        def failed(exc: BaseException) -> None:
            # The row still says running: a restarted daemon runs it again. This caller hears why now.
            log.error("call %s of %s: its outcome could not be stored (%r)", call.id, call.function.name, exc)
            call.result = None
            call.error = CallError.platform(
                ErrorCode.INTERNAL, f"chalkd could not store the outcome of call {call.id}: {exc}")
            deliver()
        # Nothing goes out before its row commits: a result delivered first could be
        # lost with the daemon while the caller already acted on it. Behind its chunks too.
        self.rows.finish(call, result, error, on_commit=deliver, on_fail=failed)

    def _cache_finished(self, call: Call, result: Payload | None) -> None:
        """Keep a finished call for attach, within the cache's count and bytes; the store has the rest."""
        call.result_bytes = FINISHED_CALL_BYTES + (len(result.batch) + len(result.schema) if result else 0)
        self._finished_bytes += call.result_bytes
        self.finished[call.id] = call
        finished = self.finished
        while len(finished) > self._finished_cap or (self._finished_bytes > self.budget.finished and finished):
            if not next(iter(finished.values())).settled:
                # Its row is not committed yet (a full disk): the store cannot answer for it, so
                # it stays; its bytes are held by the pending write anyway.
                break
            _, old = finished.popitem(last=False)
            self._finished_bytes -= old.result_bytes
            old.result_bytes = 0

    def _remember_key(self, call: Call) -> None:
        """Remember a finished call's idempotency key for a reconnect's resubmit, no longer and no more."""
        assert call.finished_at is not None and call.idempotency_key
        expiry = self.idem_expiry
        expiry.append((call.finished_at, (call.function.id, call.idempotency_key), call.id))
        oldest = call.finished_at - self.idempotency_window
        while expiry and (expiry[0][0] < oldest or len(expiry) > self.budget.idempotency_keys):
            _, key, call_id = expiry.popleft()
            if self._idem.get(key) == call_id:
                del self._idem[key]

    def _release_args(self, call: Call) -> None:
        self._args_bytes -= call.args_bytes
        call.args_bytes = 0

    def _load_args(self, call: Call) -> Payload:
        """Arguments that left memory while the call waited (over the budget): the store has them."""
        args = self.rows.args(call.id)
        if args is None:
            raise QueueError(f"call {call.id}: its arguments are neither in memory nor in the store")
        return args

    def _send_final(self, call: Call, sub: Subscriber, ref: int) -> None:
        if call.batch is not None and call.error is None:
            sub.send_event(ref, call.id, BatchResult(call.result, call.batch.errors, call.batch.seconds))
        elif call.error is not None:
            sub.send_event(ref, call.id, ev.Failed(call.error))
        elif call.result is not None:
            sub.send_event(ref, call.id, ev.Result(call.result))
        else:
            sub.send_event(ref, call.id, ev.DONE)

    def expire_results(self, now: float) -> int:
        """Drop finished calls older than their function's ``result_ttl_seconds`` (the server
        runs this every sweep interval); returns how many left memory.

        Rows go from the database (calls and their chunks), one pass per distinct TTL
        through the index on ``finished_at``, and from the memory of recently finished
        calls. Idempotency keys of finished calls are kept for ``idempotency_window``
        seconds (a caller resubmits only after a reconnect), then dropped.
        """
        by_ttl: dict[float, list[str]] = defaultdict(list)
        ttl_of: dict[str, float] = {}
        for fv in self.known_functions().values():
            by_ttl[fv.policies.result_ttl].append(fv.id)
            ttl_of[fv.id] = fv.policies.result_ttl
        for ttl, ids in by_ttl.items():
            self.rows.expire(ids, finished_before=now - ttl)
        expiry = self.idem_expiry
        while expiry and expiry[0][0] < now - self.idempotency_window:
            _, key, call_id = expiry.popleft()
            if self._idem.get(key) == call_id:
                del self._idem[key]
        removed = 0
        for call_id, call in list(self.finished.items()):
            ttl = ttl_of.get(call.function.id, 86_400.0)
            if call.finished_at is not None and call.finished_at < now - ttl:
                del self.finished[call_id]
                self._finished_bytes -= call.result_bytes
                call.result_bytes = 0
                if call.idempotency_key:
                    self._idem.pop((call.function.id, call.idempotency_key), None)
                removed += 1
        if removed:
            log.debug("expired %d finished call(s)", removed)
        return removed

    def _call_from_row(self, r) -> Call:
        fv = self.known_functions().get(r["function_id"]) or FunctionVersion(
            id=r["function_id"], name="", version=0, content_hash="", spec=b"", created_at=0)
        call = Call(id=r["id"], seq=r["seq"], function=fv, args=None, created_at=r["created_at"],
                    state=CallState(r["state"]), attempt=r["attempt"], next_index=r["chunks"],
                    parent_id=r["parent_id"], finished_at=r["finished_at"])
        if r["result_batch"] is not None:
            call.result = Payload(r["result_schema"], r["result_batch"], r["result_rows"] or 1)
        if r["error"] is not None:
            call.error = decode_error(r["error"])
        if r["batch_rows"] is not None:
            call.batch = BatchState(r["batch_rows"], [], errors=errors_from_json(r["batch_state"]))
        return call

