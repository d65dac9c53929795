"""Fakes for driving the worker without a daemon: a DaemonLink stand-in and a fake
daemon on a unix socket for the blocking link, plus payload helpers."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.link import ChunkGate

WAIT = 30.0  # seconds before a test gives up waiting for the worker (never reached when it works)


def assignment(codec: FunctionCodec, call_id: str, attempt: int = 1, **arguments) -> pb.Assignment:
    schema, batch = codec.encode_args(arguments)
    return pb.Assignment(call_id=call_id, attempt=attempt, args=pb.Payload(schema=schema, batch=batch, rows=1))


def result_of(codec: FunctionCodec, event: pb.AttemptEvent):
    assert event.WhichOneof("event") == "result", event
    return codec.decode_results(event.result.schema, event.result.batch)[0]


class FakeLink:
    """What a Runner needs of a DaemonLink; the test plays the daemon.

    ``deliver(work)`` / ``cancel(call_id, attempt)`` / ``lose(reason)`` act as
    messages from the daemon; ``wait_events(n)`` blocks until the runner has
    reported ``n`` events.
    """

    def __init__(self) -> None:
        self.early: list = []
        self.gates: dict[tuple[str, int], ChunkGate] = {}
        self.events: list[pb.AttemptEvent] = []
        self.credit = 0
        self.encode_chunks = None
        self.chunks: list = []
        self._cond = threading.Condition()
        self._take = self.early.append
        self._cancel = lambda call_id, attempt: self.early.append((call_id, attempt))
        self._lost = lambda reason: None

    # -- the daemon's side -----------------------------------------------------------------

    def deliver(self, work) -> None:
        if isinstance(work, pb.Assignment):
            self.gate(work.call_id, work.attempt).open_until(1 << 40)
        self._take(work)

    def cancel(self, call_id: str, attempt: int = 1) -> None:
        self._cancel(call_id, attempt)

    def lose(self, reason: str) -> None:
        self._lost(reason)

    def wait_events(self, n: int) -> list[pb.AttemptEvent]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= n, WAIT), self.events
            return list(self.events)

    def event_of(self, call_id: str) -> pb.AttemptEvent:
        with self._cond:
            assert self._cond.wait_for(lambda: any(e.call_id == call_id for e in self.events), WAIT)
            return next(e for e in self.events if e.call_id == call_id)

    # -- what the runner calls ----------------------------------------------------------------

    def install(self, take, cancel, lost) -> None:
        early, self.early = self.early, []
        self._take, self._cancel, self._lost = take, cancel, lost
        for item in early:
            cancel(*item) if isinstance(item, tuple) else take(item)

    def add_credit(self, n: int) -> None:
        with self._cond:
            self.credit += n
            self._cond.notify_all()

    def gate(self, call_id: str, attempt: int) -> ChunkGate:
        return self.gates.setdefault((call_id, attempt), ChunkGate(call_id, attempt))

    def finish_gate(self, gate: ChunkGate) -> None:
        self.gates.pop((gate.call_id, gate.attempt), None)

    def emit_chunk(self, gate: ChunkGate, value) -> None:
        gate.next_index += 1
        gate.wire = gate.sent = gate.next_index  # straight onto the (fake) wire
        self.chunks.append((gate.call_id, value))

    def send_event(self, event: pb.AttemptEvent, credit: int = 0) -> None:
        self.send_events([event], credit)

    def send_events(self, events: list[pb.AttemptEvent], credit: int = 0) -> None:
        with self._cond:
            self.events.extend(events)
            self.credit += credit
            self._cond.notify_all()


def run_in_thread(target, *args) -> tuple[threading.Thread, list]:
    """Start ``target(*args)`` on a daemon thread; its return value lands in the list."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target(*args)), daemon=True)
    thread.start()
    return thread, out


def run_loop_in_thread(make_coro) -> tuple[threading.Thread, list]:
    return run_in_thread(lambda: asyncio.run(make_coro()))


_HEADER = struct.Struct(">IB")


class FakeDaemon:
    """The daemon's end of the worker's unix socket (chalkd's framing: length, kind, body)."""

    def __init__(self, path: str, version: pb.FunctionVersion, instance: str = "inst") -> None:
        self.version = version
        self.instance = instance
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.conn: socket.socket | None = None
        self.hello: pb.WorkerRequest | None = None
        self.credit = 0
        self.events: list[pb.AttemptEvent] = []
        self._accepted = threading.Thread(target=self._accept, daemon=True)
        self._accepted.start()

    def _accept(self) -> None:
        self.conn, _ = self.listener.accept()
        assert self._frame() == b"worker"
        self._send_raw(self.instance.encode())
        self.hello = pb.WorkerRequest.FromString(self._frame())
        self.send(pb.WorkerResponse(function=self.version))

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.conn.recv(n - len(buf))
            if not part:
                raise EOFError
            buf += part
        return buf

    def _frame(self) -> bytes:
        length, _kind = _HEADER.unpack(self._recv_exact(_HEADER.size))
        return self._recv_exact(length)

    def _send_raw(self, body: bytes) -> None:
        self.conn.sendall(_HEADER.pack(len(body), 0) + body)

    def send(self, msg: pb.WorkerResponse) -> None:
        self._send_raw(msg.SerializeToString())

    def wait_connected(self) -> None:
        self._accepted.join(WAIT)
        assert self.hello is not None

    def read_until(self, predicate) -> None:
        """Read the worker's messages (skipping heartbeats) until ``predicate(self)`` holds."""
        self.conn.settimeout(WAIT)
        while not predicate(self):
            msg = pb.WorkerRequest.FromString(self._frame())
            self.credit += msg.credit
            self.events.extend(msg.events)

    def event_of(self, call_id: str) -> pb.AttemptEvent:
        self.read_until(lambda d: any(e.call_id == call_id for e in d.events))
        return next(e for e in self.events if e.call_id == call_id)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def spin(until: threading.Event | None = None) -> str:
    """Busy Python code (the async exception lands between its bytecodes) until ``until`` is set."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if until is not None and until.is_set():
            return "released"
    return "not cancelled"


def assert_cancelled(event: pb.AttemptEvent) -> None:
    assert event.WhichOneof("event") == "error", event
    assert event.error.code == "CANCELLED"
    assert event.error.exception_type == "chalkd.CancelledError"
    assert event.error.message == "the call was cancelled"


def version_of(capacity: int = 0, batch: int = 0) -> pb.FunctionVersion:
    spec = pb.FunctionSpec(name="f", concurrency=pb.ConcurrencySpec(max_concurrent=capacity),
                           batching=pb.BatchingSpec(max_batch_size=batch))
    return pb.FunctionVersion(id="fv", function_name="f", spec=spec)
