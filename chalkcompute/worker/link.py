"""The worker's connection to chalkd, on its own thread and event loop.

Heartbeats, credits and results go out from here whatever the handler is
doing: CPU-bound code or a blocking nested call on the main thread never
stalls them. Streamed chunks are buffered per call and coalesced: the link
encodes every chunk that piled up since its last send as one Arrow batch.

    link = DaemonLink(target, replica_id, token)
    version = link.connect()              # blocks until the daemon says which function
    # From now on, on the link's thread: take(Assignment | AssignmentBatch),
    # cancel(call_id, attempt), lost(reason); what came earlier is replayed first.
    link.install(take, cancel, lost)
    link.emit_chunk(gate, value)          # from any thread
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from grpclib.client import Channel

from chalkcompute._auth import SessionCredentials, client_ssl_context, tls_from_env
from chalkcompute._bridge import new_event_loop
from chalkcompute._client import parse_target
from chalkcompute._contract import MAX_BATCH_BYTES, batches, sdk_max_payload, set_max_payload, too_large
from chalkcompute._framing import open_framed
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import WorkerStub
from chalkcompute.exceptions import SerializationError
from chalkcompute.worker.outcome import PayloadTooLarge, fail_late
from chalkcompute.worker.output import OutputCapture

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
LOST_GRACE_SECONDS = float(os.environ.get("CHALK_WORKER_GRACE", "3"))
MAX_CHUNKS_PER_PAYLOAD = 4096


class ChunkGate:
    """Per attempt: the daemon's chunk window, and the chunks waiting to be sent.

    A generator yields its next value only while :meth:`has_room`:

    - the window is open: its index is below ``up_to`` and the bytes of the
      chunks it sent are below ``bytes_up_to`` (the daemon widens both as the
      caller reads), so a slow reader pauses the generator whatever its chunks weigh;
    - its first chunk is on the wire: the first chunk goes alone and at once, so a
      caller sees it before a batch fills (a generator of 20,000 dicts that never
      awaits: ~45 ms to its first chunk when it waited for a batch); after it, what
      piles up while a send is in flight goes out together;
    - fewer than ``batch_hint`` values wait to be encoded: values count in bytes
      only once encoded, so the hint, sized from the bytes per value seen so far,
      bounds what waits (a few values of 1 MiB, thousands of small dicts).
    """

    def __init__(self, call_id: str, attempt: int) -> None:
        self.call_id = call_id
        self.attempt = attempt
        self.up_to = 0
        self.bytes_up_to = 0         # 0: no byte bound (a daemon before byte windows)
        self.next_index = 0          # index the next emitted chunk gets
        self.sent = 0                # chunks encoded for the wire
        self.sent_bytes = 0          # their bytes (schema + batch of each payload, as the daemon counts)
        self.wire = 0                # chunks whose message went out
        self.pending: deque = deque()
        self.cond = threading.Condition()
        self.failed: BaseException | None = None
        self.cancelled = False
        self.batch_hint = MAX_CHUNKS_PER_PAYLOAD  # shrinks when values are large
        self.row_bytes = 0           # bytes per value in the last payload encoded
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def has_room(self) -> bool:
        """May the generator emit another value now? (Called with ``cond`` held; a failed
        gate has room: the generator's next step raises its error.)"""
        if self.failed is not None:
            return True
        if self.next_index >= self.up_to or (self.next_index and not self.wire):
            return False
        if self.bytes_up_to and self.sent_bytes + len(self.pending) * self.row_bytes >= self.bytes_up_to:
            return False  # what waits to be encoded counts at the bytes per value seen so far
        return len(self.pending) < self.batch_hint

    def open_until(self, up_to: int, bytes_up_to: int = 0) -> None:
        with self.cond:
            if up_to <= self.up_to and bytes_up_to <= self.bytes_up_to:
                return
            self.up_to = max(self.up_to, up_to)
            self.bytes_up_to = max(self.bytes_up_to, bytes_up_to)
        self.wake()

    def on_wire(self, sent: int) -> None:
        """The message with this gate's chunks up to ``sent`` went out (on the link's thread)."""
        with self.cond:
            self.wire = sent
        self.wake()

    def wake(self) -> None:
        """Let a generator waiting for room look again (a thread, or a task on its loop)."""
        with self.cond:
            self.cond.notify_all()
            waiters, self.async_waiters = self.async_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class DaemonLink:
    def __init__(self, target: str, replica_id: str, token: str, function_id: str = "") -> None:
        self.host, self.port, self.path = parse_target(target)
        self.target = target
        self.replica_id = replica_id
        self.token = token
        # "" for the version the replica was started for; a pooled replica (a class with
        # shared_replicas) opens a link per other version it serves, named here.
        self.function_id = function_id
        self.pool_function_ids: list[str] = []  # from the daemon's first answer: the pool's other versions
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chalk-worker-link", daemon=True)
        # Until the runner installs its handlers, work (Assignment, AssignmentBatch)
        # and cancels ((call_id, attempt) tuples) wait here in order, never dropped.
        self.early: list = []
        self.on_assignment: Callable[[pb.Assignment | pb.AssignmentBatch], None] = self.early.append
        self.on_cancel: Callable[[str, int], None] = lambda call_id, attempt: self.early.append((call_id, attempt))
        self.on_lost: Callable[[str], None] = lambda reason: None
        self.lost = ""  # why the stream ended, once it has
        self.encode_chunks: Callable[[list], tuple[bytes, bytes]] | None = None
        self.gates: dict[tuple[str, int], ChunkGate] = {}
        self._events: list[pb.AttemptEvent] = []
        self._credit = 0
        self._dirty: set[ChunkGate] = set()
        self._failed: dict[tuple[str, int], BaseException] = {}  # attempts whose chunks could not be encoded
        # What handlers print, per call (chalkcompute.worker.output); None: not captured (a pooled
        # replica's other links: the main link ships every call's lines).
        self.capture: OutputCapture | None = None
        self._wake: asyncio.Event | None = None
        self._scheduled = False
        self._lock = threading.Lock()

    # -- from the main thread --------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> pb.FunctionVersion:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout)

    def gate(self, call_id: str, attempt: int) -> ChunkGate:
        with self._lock:
            gate = self.gates.get((call_id, attempt))
            if gate is None:
                gate = self.gates[(call_id, attempt)] = ChunkGate(call_id, attempt)
            return gate

    def emit_chunk(self, gate: ChunkGate, value) -> None:
        """Queue one yielded value (the caller already waited for window room)."""
        gate.pending.append(value)
        gate.next_index += 1
        with self._lock:
            self._dirty.add(gate)
        self._poke()

    def send_event(self, event: pb.AttemptEvent, credit: int = 0) -> None:
        with self._lock:
            self._events.append(event)
            self._credit += credit
        self._poke()

    def send_events(self, events: list[pb.AttemptEvent], credit: int = 0) -> None:
        with self._lock:
            self._events.extend(events)
            self._credit += credit
        self._poke()

    def add_credit(self, n: int) -> None:
        with self._lock:
            self._credit += n
        self._poke()

    def install(self, take: Callable, cancel: Callable[[str, int], None], lost: Callable[[str], None]) -> None:
        """Hand work, cancels and the end of the stream to the runner from now on.

        What arrived before is replayed first, in order. It runs on the link's
        thread, so nothing received meanwhile can overtake the replay.
        """
        def swap() -> None:
            early, self.early = self.early, []
            self.on_assignment, self.on_cancel, self.on_lost = take, cancel, lost
            for item in early:
                if isinstance(item, tuple):
                    cancel(*item)
                else:
                    take(item)
            if self.lost:
                lost(self.lost)

        if self.loop.is_running():
            done = threading.Event()

            def swap_then_tell() -> None:
                swap()
                done.set()

            self.loop.call_soon_threadsafe(swap_then_tell)
            done.wait()
        else:
            swap()

    def finish_gate(self, gate: ChunkGate) -> None:
        with self._lock:
            self.gates.pop((gate.call_id, gate.attempt), None)

    def poke_logs(self) -> None:
        """Lines wait in the capture (any thread): the next message takes them."""
        self._poke()

    def _poke(self) -> None:
        # One wake-up per burst: the flush takes everything queued by then.
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._wake_sender)

    def _wake_sender(self) -> None:
        self._scheduled = False
        if self._wake is not None:
            self._wake.set()

    # -- on the link's thread ---------------------------------------------------------------

    async def _open(self) -> pb.FunctionVersion:
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        # Over TCP (a worker on another node) with $CHALK_COMPUTE_TLS (chalkd's CA): the daemon's
        # certificate is checked for the target's host (an IP SAN) before the handshake sends anything.
        self.channel = (Channel(path=self.path) if self.path
                        else Channel(self.host, self.port, ssl=client_ssl_context(tls_from_env())))
        # gRPC needs a session made with this replica's own key (a scoped credential); the framed
        # socket's worker stream is authenticated by the hello's key instead (see chalkd.auth).
        SessionCredentials(self.target, self.token, key_id=self.replica_id).attach(self.channel)
        sock = os.environ.get("CHALK_WORKER_SOCKET") if os.environ.get("CHALK_TRANSPORT") != "grpc" else None
        # chalkd's framed socket (FramedStream) or a grpclib stream: the same send/recv/iterate.
        self.stream: Any = None
        if sock:
            try:
                self.stream = await open_framed(sock, b"worker", pb.WorkerResponse,
                                                expect_instance=os.environ.get("CHALK_DAEMON_INSTANCE", ""))
            except (OSError, ConnectionError) as exc:
                log.warning("cannot use chalkd's socket %s (%s); using gRPC", sock, exc)
        if self.stream is None:
            self.stream = await WorkerStub(self.channel).Connect.open().__aenter__()
        await self.stream.send_message(pb.WorkerRequest(hello=pb.WorkerHello(
            replica_id=self.replica_id, token=self.token, function_id=self.function_id)))
        first = await self.stream.recv_message()
        if first is None:
            raise ConnectionError("the daemon closed the worker stream before naming a function")
        set_max_payload(first.max_payload)  # results, chunks and nested calls' arguments
        self.pool_function_ids = list(first.pool_function_ids)
        self.loop.create_task(self._run())
        # Secrets: set before the function's module is imported, never written anywhere.
        os.environ.update(first.secret_env)
        return first.function

    async def _run(self) -> None:
        reason = "the daemon closed the stream"
        sender = self.loop.create_task(self._send_loop())
        beat = self.loop.create_task(self._heartbeat())
        try:
            async for msg in self.stream:
                for a in msg.assignments:
                    self.gate(a.call_id, a.attempt)
                # A credit for a finished attempt (an ack crossing its end) has no gate left.
                for credit in msg.chunk_credits:
                    gate = self.gates.get((credit.call_id, credit.attempt))
                    if gate is not None:
                        gate.open_until(credit.up_to, credit.bytes_up_to)
                for a in msg.assignments:
                    self.on_assignment(a)
                for b in msg.batches:
                    self.on_assignment(b)
                for c in msg.cancels:
                    self.on_cancel(c.call_id, c.attempt)
                if msg.drain:
                    reason = self.lost = "the daemon asked this replica to drain"
                    self.on_lost(reason)
        except Exception as exc:  # the connection broke
            reason = f"lost the daemon: {exc or type(exc).__name__}"
        finally:
            sender.cancel()
            beat.cancel()
        self.lost = reason
        self.on_lost(reason)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                idle = not self._events and not self._dirty and not self._credit
            capture = self.capture
            if capture is not None and capture.has_stale_partial():
                self._poke()  # a line without its newline, printed a while ago, goes now
            if idle:
                async with self._send_lock:
                    await self.stream.send_message(pb.WorkerRequest(heartbeat=True))

    async def _send_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                collected = self._collect()
                if collected is None:
                    break
                msg, flushed = collected
                # grpclib may pause inside a message for flow control: a heartbeat
                # must not slip in between its frames.
                async with self._send_lock:
                    for part in _split(msg):
                        await self.stream.send_message(part)
                for gate, sent in flushed:
                    gate.on_wire(sent)

    def _collect(self) -> tuple[pb.WorkerRequest, list[tuple[ChunkGate, int]]] | None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            events, self._events = self._events, []
            credit, self._credit = self._credit, 0
        chunk_events = []
        flushed = []
        for gate in dirty:
            chunk_events.extend(self._encode_pending(gate))
            flushed.append((gate, gate.sent))
            gate.wake()  # its waiting values are encoded: room for more
        for g in dirty:
            if g.failed is not None:  # recorded even when nothing else goes out now: its end comes later
                self._failed[(g.call_id, g.attempt)] = g.failed
        capture = self.capture
        # A call's end goes with its last line, even one without a newline (print(x, end="")).
        logs = capture.take(flush_partial=bool(events)) if capture is not None else []
        if not chunk_events and not events and not credit and not logs:
            return None
        if self._failed:
            for ev in events:
                exc = self._failed.pop((ev.call_id, ev.attempt), None)
                if exc is not None and ev.WhichOneof("event") == "done":
                    # A value yielded at the very end could not be encoded (here, perhaps after
                    # the handler had returned): no success.
                    fail_late(ev, exc)
        # Chunks before the final event of the same call: they were yielded first.
        # Lines first (the daemon reads them first): a call's output is in before its result.
        return pb.WorkerRequest(logs=logs, events=chunk_events + events, credit=credit), flushed

    def _encode_pending(self, gate: ChunkGate) -> list[pb.AttemptEvent]:
        encode = self.encode_chunks
        assert encode is not None, "chunks before the runner installed its codec"
        limit = sdk_max_payload()
        out = []
        while gate.pending:
            n = min(len(gate.pending), MAX_CHUNKS_PER_PAYLOAD, gate.batch_hint)
            values = [gate.pending.popleft() for _ in range(n)]
            try:
                encoded = encode(values)
                size = len(encoded[0]) + len(encoded[1])
                if n > 1 and len(encoded[1]) > MAX_BATCH_BYTES:
                    # Big values: fewer per payload, so no message outgrows the limit.
                    gate.pending.extendleft(reversed(values))
                    gate.batch_hint = max(1, n // 2)
                    continue
                # Values per payload (and waiting to be encoded) from the bytes per value seen.
                gate.batch_hint = max(1, min(MAX_CHUNKS_PER_PAYLOAD, MAX_BATCH_BYTES * n // max(size, 1)))
                gate.row_bytes = size // n
                if size > limit:
                    gate.failed = PayloadTooLarge(too_large(f"chunk {gate.sent}", size, limit))
                    payloads = []
                else:
                    payloads = [(encoded, n)]
            except SerializationError:
                # The values may not share one type: send them one by one.
                payloads = []
                for v in values:
                    try:
                        one = encode([v])
                    except SerializationError as exc:
                        gate.failed = exc
                        break
                    if (size := len(one[0]) + len(one[1])) > limit:
                        gate.failed = PayloadTooLarge(too_large(f"chunk {gate.sent + len(payloads)}", size, limit))
                        break
                    payloads.append((one, 1))
            for (schema, batch), rows in payloads:
                out.append(pb.AttemptEvent(
                    call_id=gate.call_id, attempt=gate.attempt, first_index=gate.sent,
                    chunk=pb.Payload(schema=schema, batch=batch, rows=rows)))
                gate.sent += rows
                gate.sent_bytes += len(schema) + len(batch)
            if gate.failed is not None:
                gate.pending.clear()
                break
        return out

    def close(self) -> None:
        def _close() -> None:
            try:
                self.channel.close()
            except Exception:
                pass
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(_close)


def exit_after_grace(reason: str) -> None:
    """The daemon is gone: give in-flight work a moment, then exit for good."""
    log.warning("%s; exiting in %.0fs", reason, LOST_GRACE_SECONDS)
    time.sleep(LOST_GRACE_SECONDS)
    os._exit(3)


def _split(msg: pb.WorkerRequest) -> list[pb.WorkerRequest]:
    """Cut a request into messages under the shared batch limit (events stay in order; the credit
    and heartbeat ride on the last part, after the events they follow)."""
    if msg.ByteSize() <= MAX_BATCH_BYTES:
        return [msg]
    parts = [pb.WorkerRequest(events=group) for group in batches(msg.events, size=_event_size)] or [pb.WorkerRequest()]
    parts[0].logs.extend(msg.logs)  # bounded by the capture (1 MiB of text)
    parts[-1].credit = msg.credit
    parts[-1].heartbeat = msg.heartbeat
    return parts


def _event_size(event: pb.AttemptEvent) -> int:
    return event.ByteSize()
