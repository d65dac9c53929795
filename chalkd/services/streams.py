"""The two long-lived streams: callers' Session and workers' Connect.

Both coalesce: events queued while a send is in progress go out together in
the next message (one message at once when idle, batches when backlogged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from grpclib.const import Status

from chalkcompute._contract import MAX_BATCH_BYTES, batches, quote, too_large
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import QueueBase, WorkerBase
from chalkd import errors
from chalkd.auth import current_scope
from chalkd.catalog import Catalog
from chalkd.model import CallError, ErrorCode, Payload
from chalkd.queue.batch import BatchReport, BatchResult
from chalkd.queue.core import Queue
from chalkd.queue.events import DONE, Accepted, CallEvent, Chunk, Done, Failed, Result
from chalkd.scaling.autoscaler import Autoscaler
from chalkd.services.convert import error_from_pb, error_to_pb, payload_from_pb, payload_to_pb, version_to_pb
from chalkd.services.errors import grpc_errors, status_of

log = logging.getLogger(__name__)

# Calls a replica started that it may still attach to or cancel (FunctionCall.from_id in user code).
STARTED_KEPT = 100_000

MAX_ITEMS_PER_MESSAGE = 2048
# A caller whose stream took nothing for this long while over its outbox limit is dropped. The SDK
# reads its stream on a thread of its own, so only a stopped or stuck caller stalls this long;
# one merely busy with a burst of large results keeps reading and is only paused.
STALL_SECONDS = 3.0


class _Outbox:
    """Items for one stream, sent by one task, many per message when they pile up.

    With a ``limit`` (bytes), it is bounded: past half the limit the stream's
    reader pauses (:meth:`wait_drained`); past the limit, once the peer has
    taken nothing for :data:`STALL_SECONDS`, the outbox stops taking items and
    sets :attr:`dropped` with the reason, and its session ends with it.

        out = _Outbox(stream, make_message, limit=128 * 2**20)
    """

    def __init__(self, stream, make_message: Callable[[list], object], limit: int = 0) -> None:
        self.stream = stream
        self.make_message = make_message
        self.items: list = []
        self.sizes: list[int] = []
        self.bytes = 0
        self.limit = limit
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.dropped: asyncio.Future | None = asyncio.get_running_loop().create_future() if limit else None
        self.sending_since: float | None = None   # monotonic start of the send in progress
        self.closed = False

    def put(self, item) -> None:
        if self.closed:
            return
        size = item.ByteSize()
        self.items.append(item)
        self.sizes.append(size)
        self.bytes += size
        if self.limit and self.bytes > self.limit // 2:
            self.drained.clear()
            since = self.sending_since
            if (self.bytes > self.limit and since is not None and time.monotonic() - since > STALL_SECONDS
                    and self.dropped is not None and not self.dropped.done()):
                # The peer stopped reading: holding more would grow the daemon without bound.
                self.closed = True
                self.dropped.set_result(
                    f"the caller stopped reading its stream: it took nothing for {STALL_SECONDS:g}s while "
                    f"{self.bytes} bytes waited for it, over the limit of {self.limit} (a share of "
                    "--memory-budget); its calls go on, fetch their results by id")
        self.wake.set()

    async def wait_drained(self) -> None:
        """Return once the outbox is back under half its limit (the reader's pause)."""
        await self.drained.wait()

    async def run(self) -> None:
        while not self.closed:
            await self.wake.wait()
            self.wake.clear()
            while self.items:
                # Many items per message when they pile up, but never a message
                # larger than the peer accepts: cut by count and by bytes.
                first = next(batches(self.sizes, size=int, limit=MAX_BATCH_BYTES, max_items=MAX_ITEMS_PER_MESSAGE))
                n, size = len(first), sum(first)
                batch = self.items[:n]
                del self.items[:n]
                del self.sizes[:n]
                self.sending_since = time.monotonic()
                await self.stream.send_message(self.make_message(batch))
                self.sending_since = None
                self.bytes -= size
                if self.bytes <= self.limit // 2:
                    self.drained.set()


def _session_message(items: list) -> pb.SessionResponse:
    msg = pb.SessionResponse()
    for item in items:
        if isinstance(item, pb.CallLogs):  # live output (chalkd.logs.service), in order with the events
            msg.logs.append(item)
        else:
            msg.events.append(item)
    return msg


class CallerSession:
    """One caller stream; the queue's Subscriber for the calls it made."""

    def __init__(self, stream, outbox_limit: int = 0) -> None:
        self.out = _Outbox(stream, _session_message, outbox_limit)
        self.live_logs = False  # the caller asked for its calls' output as it is written

    def send_event(self, ref: int, call_id: str, event: CallEvent) -> None:
        self.out.put(event_to_pb(ref, call_id, event))

    def send_logs(self, ref: int, call_id: str, line: pb.LogLine) -> None:
        # Live lines are a view: a caller whose outbox is past half its limit loses them (the store keeps them).
        if self.out.limit and self.out.bytes > self.out.limit // 2:
            return
        self.out.put(pb.CallLogs(ref=ref, call_id=call_id, lines=[line]))


def event_to_pb(ref: int, call_id: str, event: CallEvent) -> pb.CallEvent:
    """A queue event as the caller's wire message (the one place this is written)."""
    msg = pb.CallEvent(ref=ref, call_id=call_id)
    if type(event) is Chunk:
        msg.first_index = event.first_index
        msg.chunk.CopyFrom(payload_to_pb(event.payload))
    elif type(event) is Result:
        msg.result.CopyFrom(payload_to_pb(event.payload))
    elif type(event) is Failed:
        msg.error.CopyFrom(error_to_pb(event.error))
    elif type(event) is Done:
        msg.done = True
    elif type(event) is Accepted:
        msg.accepted = True
    elif type(event) is BatchResult:
        out = msg.batch_result
        if event.payload is not None:
            out.results.CopyFrom(payload_to_pb(event.payload))
        out.errors.extend(pb.RowError(row=row, error=error_to_pb(e)) for row, e in sorted(event.errors.items()))
        out.seconds = event.seconds
    else:
        raise TypeError(f"no wire form for {event!r}")
    return msg


def event_from_pb(msg: pb.AttemptEvent) -> CallEvent | None:
    """A worker's wire message as a queue event (None: one this daemon does not know)."""
    kind = msg.WhichOneof("event")
    if kind == "chunk":
        return Chunk(payload_from_pb(msg.chunk), msg.first_index)
    if kind == "result":
        return Result(payload_from_pb(msg.result))
    if kind == "error":
        return Failed(error_from_pb(msg.error))
    if kind == "done":
        return DONE
    if msg.HasField("batch_result"):
        b = msg.batch_result
        return BatchReport(payload_from_pb(b.results) if b.results.batch else None, list(b.rows),
                           {e.row: error_from_pb(e.error) for e in b.errors}, b.seconds)
    return None


def refusal(exc: BaseException) -> CallError:
    """Why one item on a caller's stream was refused, through the daemon's one error table
    (an exception the table does not know is logged with its traceback and answered INTERNAL)."""
    status, message = status_of(exc)
    if status is Status.INTERNAL:
        return CallError.platform(ErrorCode.INTERNAL, message)
    # Statuses without a call error code of their own are the caller's to fix.
    return CallError.platform(ErrorCode.__members__.get(status.name, ErrorCode.INVALID_ARGUMENT), message)


def session_outbox_limit(memory_budget: int, max_payload: int) -> int:
    """Bytes one caller stream may have waiting: an eighth of the budget, and room for two of the largest messages."""
    return max(memory_budget // 8, 2 * max_payload + MAX_BATCH_BYTES)


class QueueService(QueueBase):
    def __init__(self, queue: Queue, catalog: Catalog, *, max_payload: int, outbox_limit: int = 0) -> None:
        self.queue = queue
        self.catalog = catalog
        self.max_payload = max_payload
        self.outbox_limit = outbox_limit or session_outbox_limit(queue.budget.total, max_payload)
        # replica id -> the calls its scoped sessions submitted (the newest STARTED_KEPT)
        self.started_by: dict[str, OrderedDict[str, None]] = {}

    @grpc_errors
    async def Session(self, stream) -> None:
        session = CallerSession(stream, self.outbox_limit)
        scope = current_scope.get()
        session.replica_id = scope.replica_id if scope is not None else ""  # "" : the owner's full access
        loop = asyncio.get_running_loop()
        sender = loop.create_task(session.out.run())
        reader = loop.create_task(self._read(session, stream))
        assert session.out.dropped is not None
        try:
            await asyncio.wait((reader, sender, session.out.dropped), return_when=asyncio.FIRST_COMPLETED)
            if session.out.dropped.done():
                log.warning("dropping a caller session: %s", session.out.dropped.result())
                raise errors.ResourceExhausted(session.out.dropped.result())
            if reader.done():
                try:
                    reader.result()   # its error, if any, ends the stream
                except ConnectionError as exc:  # the caller went away (a process that exited): no error of ours
                    log.debug("a caller session ended: %s", exc)
        finally:
            session.out.closed = True
            self.queue.unsubscribe(session)
            for task in (reader, sender):
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    async def _read(self, session: CallerSession, stream) -> None:
        async for req in stream:
            self._handle(session, req)
            if not session.out.drained.is_set():
                # The caller is not reading what it is sent: take nothing new from it until it does.
                await session.out.wait_drained()

    def _handle(self, session: CallerSession, req: pb.SessionRequest) -> None:
        q = self.queue
        if req.live_logs:
            session.live_logs = True
        for s in req.submits:
            try:
                self._submit(session, s)
            except Exception as exc:  # noqa: BLE001 - one bad submit is refused with its own code; the rest go on
                q.reject(session, s.ref, refusal(exc))
        for a in req.attaches:
            if session.replica_id and a.call_id not in self.started_by.get(session.replica_id, ()):
                refused = self._not_yours(session, a.call_id)
                q.reject(session, a.ref, CallError.platform(ErrorCode.PERMISSION_DENIED, refused))
                continue
            try:
                q.attach(session, a.ref, a.call_id, after_chunk=a.after_chunk)
            except Exception as exc:  # noqa: BLE001 - per item, as submits
                q.reject(session, a.ref, refusal(exc))
        for ack in req.acks:
            q.ack(ack.call_id, ack.index)
        for c in req.cancels:
            if session.replica_id and c.call_id not in self.started_by.get(session.replica_id, ()):
                log.warning("refused: %s", self._not_yours(session, c.call_id))
                continue
            if c.detach:
                q.detach(session, c.call_id)
            else:
                q.cancel(c.call_id)

    def _submit(self, session: CallerSession, s: pb.Submit) -> None:
        q = self.queue
        fv = self.catalog.get(name=s.function_name, id=s.function_id)
        args = payload_from_pb(s.args)
        if args.size > self.max_payload:
            q.reject(session, s.ref, CallError.platform(
                ErrorCode.RESOURCE_EXHAUSTED, too_large("the arguments", args.size, self.max_payload)))
            return
        parent_id = s.parent_call_id or None
        if session.replica_id and parent_id and not q.running_on(parent_id, session.replica_id):
            # A replica names as parent only a call it is running: another's would borrow its
            # place in the queue's order and its deadlock chain.
            log.warning("replica %s named call %s as a parent it is not running; submitted as top-level",
                        session.replica_id, parent_id[:40])
            parent_id = None
        call = q.submit(session, s.ref, fv, args, idempotency_key=s.idempotency_key or None,
                        parent_id=parent_id, detach=s.detach, batch=s.batch)
        if session.replica_id and call is not None:
            started = self.started_by.setdefault(session.replica_id, OrderedDict())
            started[call.id] = None
            if len(started) > STARTED_KEPT:  # a long-lived replica's record stays bounded
                started.popitem(last=False)

    def owns(self, replica_id: str, call_id: str) -> bool:
        """Did replica ``replica_id`` start call ``call_id`` (a replica's credential reaches only those)?"""
        return call_id in self.started_by.get(replica_id, ())

    def forget_replica(self, replica_id: str) -> None:
        self.started_by.pop(replica_id, None)

    @staticmethod
    def _not_yours(session, call_id: str) -> str:
        return (f"replica {session.replica_id}'s credential cannot reach call {call_id}: "
                "function code may only follow or cancel the calls it started")


def _worker_message(items: list) -> pb.WorkerResponse:
    msg = pb.WorkerResponse()
    for item in items:
        if isinstance(item, pb.Assignment):
            msg.assignments.append(item)
        elif isinstance(item, pb.ChunkCredit):
            msg.chunk_credits.append(item)
        elif isinstance(item, pb.AttemptEvent):
            msg.cancels.append(item)
        elif isinstance(item, pb.WorkerResponse):
            msg.MergeFrom(item)
    return msg


class WorkerConnection:
    """One worker stream; the queue's WorkerLink for its replica."""

    def __init__(self, stream, replica_id: str, function_id: str) -> None:
        self.replica_id = replica_id
        self.function_id = function_id
        self.out = _Outbox(stream, _worker_message)

    def send_assignment(self, call_id: str, attempt: int, args: Payload, chunk_window: int,
                        window_bytes: int = 0) -> None:
        self.out.put(pb.Assignment(call_id=call_id, attempt=attempt, args=payload_to_pb(args)))
        if chunk_window:
            self.out.put(pb.ChunkCredit(call_id=call_id, attempt=attempt, up_to=chunk_window,
                                        bytes_up_to=window_bytes))

    def send_batch(self, items: list[tuple[str, int, Payload]], chunk_window: int) -> None:
        # One message item, so the batch is never split across messages.
        msg = pb.WorkerResponse(batches=[pb.AssignmentBatch(items=[
            pb.Assignment(call_id=call_id, attempt=attempt, args=payload_to_pb(args))
            for call_id, attempt, args in items])])
        self.out.put(msg)

    def send_batch_call(self, call_id: str, attempt: int, args: Payload, rows: list[int]) -> None:
        self.out.put(pb.Assignment(call_id=call_id, attempt=attempt, args=payload_to_pb(args), batch=True,
                                   batch_rows=rows))

    def send_chunk_credit(self, call_id: str, attempt: int, up_to: int, bytes_up_to: int = 0) -> None:
        self.out.put(pb.ChunkCredit(call_id=call_id, attempt=attempt, up_to=up_to, bytes_up_to=bytes_up_to))

    def send_cancel(self, call_id: str, attempt: int) -> None:
        self.out.put(pb.AttemptEvent(call_id=call_id, attempt=attempt))

    def send_drain(self) -> None:
        self.out.put(pb.WorkerResponse(drain=True))


class WorkerService(WorkerBase):
    def __init__(self, queue: Queue, scaler: Autoscaler, *, max_payload: int, secrets=None,
                 on_replica_gone: Callable[[str], None] | None = None, logs=None) -> None:
        self.logs = logs  # chalkd.logs.service.LogsService: handlers' output, stored and sent on live
        self.queue = queue
        self.scaler = scaler
        self.max_payload = max_payload
        self.secrets = secrets  # chalkd.secrets.store.SecretStore
        # Given by the server: frees what a replica's scoped credential held once its worker stream ends.
        self.on_replica_gone: Callable[[str], None] = on_replica_gone or (lambda replica_id: None)

    def _secret_env(self, fv) -> dict[str, str]:
        """The function's secrets as env vars, for the worker to set before user code runs.

        They travel only on this stream: never in the container's config, an image or a log."""
        if not fv.spec.secrets:
            return {}
        if self.secrets is None:
            raise errors.FailedPrecondition("this daemon has no secret store")
        try:
            return self.secrets.resolve(fv.spec.secrets, fv.id)
        except LookupError as exc:  # deleted since deploy: the message names it, never a value
            raise errors.FailedPrecondition(f"function {fv.name!r} cannot start: {exc}") from None

    @grpc_errors
    async def Connect(self, stream) -> None:
        first = await stream.recv_message()
        if first is None or not first.HasField("hello"):
            raise errors.InvalidArgument("a worker must say hello first")
        scope = current_scope.get()
        if scope is not None and scope.replica_id and scope.replica_id != first.hello.replica_id:
            raise errors.PermissionDenied(f"replica {scope.replica_id}'s credential cannot open the "
                                          f"worker stream of replica {quote(first.hello.replica_id)}")
        replica = self.scaler.connect(first.hello.replica_id, first.hello.token)  # ReplicaUnknown: UNAUTHENTICATED
        fv = replica.function
        pool_ids: list[str] = []
        if first.hello.function_id and first.hello.function_id != fv.id:
            # A pooled replica (a class with shared_replicas) opens one stream per version it serves.
            fv = next((m for m in replica.pool if m.id == first.hello.function_id), None)
            if fv is None:
                raise errors.PermissionDenied(f"replica {quote(replica.id)} does not serve function version "
                                              f"{quote(first.hello.function_id)}")
        elif replica.pool:
            pool_ids = [m.id for m in replica.pool if m is not fv]
        conn = WorkerConnection(stream, replica.id, fv.id)
        await stream.send_message(pb.WorkerResponse(function=version_to_pb(fv), secret_env=self._secret_env(fv),
                                                    max_payload=self.max_payload, pool_function_ids=pool_ids))
        sender = asyncio.get_running_loop().create_task(conn.out.run())
        self.queue.worker_connected(conn)
        q = self.queue
        # Ready once the worker asks for work: after its code loaded (and a class's @before ran),
        # so wait_ready means "can take a call", and a worker that dies before is a startup failure.
        ready = False
        try:
            if first.credit:
                ready = True
                self.scaler.replica_ready(replica)
                q.worker_credit(conn, first.credit)
            async for req in stream:
                self.scaler.seen(replica)
                if req.credit:
                    if not ready:
                        ready = True
                        self.scaler.replica_ready(replica)
                    q.worker_credit(conn, req.credit)
                if req.logs and self.logs is not None:  # before the events: a call's lines before its end
                    self.logs.on_worker_lines(fv.id, fv.name, replica.id, req.logs)
                for msg in req.events:
                    event = event_from_pb(msg)
                    if event is not None:
                        q.worker_event(conn, msg.call_id, msg.attempt, event)
                if replica.state == "stopping" and not conn.out.closed:
                    conn.send_drain()
                if replica.state == "stopped":
                    # The runtime said it is gone (its swarm node is down) though its worker still talks:
                    # its calls already run elsewhere; end the stream (and its sessions) at its next message.
                    break
        finally:
            conn.out.closed = True
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, Exception):
                pass
            self.scaler.replica_disconnected(replica)
            if self.logs is not None:
                self.logs.store.replica_gone(fv.id, replica.id)
            if fv is replica.function:  # a pooled replica's other streams end with it
                self.on_replica_gone(replica.id)
