"""The worker's fast path for plain sync handlers on the daemon's local socket.

A sync, non-generator handler needs no event loop: the main thread reads an
assignment from the socket, runs the handler and writes the result back,
with no hop between threads on the way (each hop is a wake-up that costs
more than the call itself on a small machine). The socket's writes are
serialized by a lock.

A side thread, the monitor, sends the heartbeats, so a handler that blocks
for minutes is still seen as alive. While one handler call has been running
for more than about :data:`LONG_CALL_SECONDS`, the monitor also reads the
socket (under the receive lock the main thread takes between calls), so a
cancel reaches the running handler (as CallCancelled, see
:mod:`chalkcompute.worker.cancel`) and new work and drains are filed for
later. Short calls never meet it: the main thread pays an uncontended lock
per call, no system call and no wake-up.

With capacity > 1 (``spec.concurrency.max_concurrent``) the main thread only
reads the socket and the handler runs on a pool of that many threads.

    link = BlockingLink(path, instance_id, replica_id, token)
    version = link.connect()
    reason = serve_blocking(link, fn, codec, capacity=1)    # returns when drained or lost
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import BatchCodec, FunctionCodec
from chalkcompute.worker.batchcall import NO_SETTINGS, BatchSettings, run_batch_call_sync
from chalkcompute.worker.batching import as_batch, item_keys, run_batch_sync
from chalkcompute.worker.cancel import Canceller
from chalkcompute.worker.link import HEARTBEAT_SECONDS
from chalkcompute.worker.output import OutputCapture
from chalkcompute.worker.runner import run_plain

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">IB")
MESSAGE, ERROR = 0, 1
LONG_CALL_SECONDS = 0.05  # the monitor's tick: a call running across a full tick is "long"
DRAINED = "the daemon asked this replica to drain"
CLOSED = "lost the daemon: the connection closed"


class BlockingLink:
    def __init__(self, path: str, instance_id: str, replica_id: str, token: str,
                 canceller: Canceller | None = None) -> None:
        self.path = path
        self.instance_id = instance_id
        self.replica_id = replica_id
        self.token = token
        self.canceller = canceller or Canceller()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connected by connect()
        self.lock = threading.Lock()       # writes
        self.recv_lock = threading.Lock()  # reads: the main thread between calls, the monitor during long ones
        self.last_send = time.monotonic()
        self.closed = False
        # Work received and not started yet: Assignment / AssignmentBatch, in order.
        self.pending: collections.deque = collections.deque()
        self.draining = False
        self.lost = ""            # set once the stream has ended
        self.watch = False        # the monitor may read during long calls (one call at a time only)
        self.batched = False      # the handler takes batches: a lone assignment is a batch of one
        self.polling = False      # the monitor holds the receive lock and may wait in select
        self._wake_r = self._wake_w = -1
        self._stop = threading.Event()
        self.capture: OutputCapture | None = None  # handlers' output per call, shipped with the next message

    def connect(self) -> pb.FunctionVersion:
        self.sock.connect(self.path)
        self._send_raw(MESSAGE, b"worker")
        kind, body = self._recv_frame()
        if kind != MESSAGE or body.decode() != self.instance_id:
            raise ConnectionError(f"{self.path} belongs to another chalkd instance")
        self.send(pb.WorkerRequest(hello=pb.WorkerHello(
            replica_id=self.replica_id, token=self.token)))
        first = self.recv()
        if first is None:
            raise ConnectionError("the daemon closed the worker stream before naming a function")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        threading.Thread(target=self._monitor, name="chalk-monitor", daemon=True).start()
        # Secrets: set before the function's module is imported, never written anywhere.
        os.environ.update(first.secret_env)
        return first.function

    # -- the wire ------------------------------------------------------------------------------

    def _send_raw(self, kind: int, body: bytes) -> None:
        with self.lock:
            self.sock.sendall(_HEADER.pack(len(body), kind) + body)
            self.last_send = time.monotonic()

    def send(self, msg: pb.WorkerRequest) -> None:
        capture = self.capture
        if capture is not None and (capture.pending or capture.partial):
            # Taken under the write lock: lines leave in the order they were written, before the
            # results that follow them (two pool threads sending at once cannot swap them).
            with self.lock:
                # A call's end goes with its last line, even one without a newline (print(x, end="")).
                msg.logs.extend(capture.take(flush_partial=bool(msg.events)))
                self.sock.sendall(_HEADER.pack(msg.ByteSize(), MESSAGE) + msg.SerializeToString())
                self.last_send = time.monotonic()
            return
        self._send_raw(MESSAGE, msg.SerializeToString())

    def ship_logs(self) -> None:
        """Send what the handlers printed, if anything waits (the monitor, the pool's reader)."""
        capture = self.capture
        if capture is not None and capture.pending:
            self.send(pb.WorkerRequest())

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise EOFError
            buf += part
        return bytes(buf)

    def _recv_frame(self) -> tuple[int, bytes]:
        length, kind = _HEADER.unpack(self._recv_exact(_HEADER.size))
        return kind, self._recv_exact(length) if length else b""

    def recv(self) -> pb.WorkerResponse | None:
        """The next message, or None when the daemon closed the stream."""
        try:
            kind, body = self._recv_frame()
        except (EOFError, OSError):
            return None
        if kind == ERROR:
            raise ConnectionError(body.decode(errors="replace"))
        msg = pb.WorkerResponse()
        msg.ParseFromString(body)
        return msg

    # -- receiving (either thread, holding recv_lock) --------------------------------------------

    def receive(self) -> None:
        """Read one message and file it (:meth:`take`); sets :attr:`lost` when the stream ends."""
        try:
            msg = self.recv()
        except ConnectionError as exc:
            self.lost = f"lost the daemon: {exc}"
            return
        if msg is None:
            self.lost = CLOSED
        else:
            self.take(msg)

    def take(self, msg: pb.WorkerResponse) -> None:
        """File a message: work into :attr:`pending`, cancels to the canceller, a drain."""
        for work in (*msg.assignments, *msg.batches):
            if self.batched and not (isinstance(work, pb.Assignment) and work.batch):  # a batch call stays whole
                work = as_batch(work)
            if isinstance(work, pb.AssignmentBatch):  # before any cancel of its items
                self.canceller.group(item_keys(work.items))
            self.pending.append(work)
        for c in msg.cancels:
            self.canceller.cancel_item((c.call_id, c.attempt))
        if msg.drain:
            self.draining = True

    def wake(self) -> None:
        """Cut the monitor's (or the pool loop's) wait in select short."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes it anyway

    def _drain_wakes(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except (BlockingIOError, OSError):
            pass

    # -- the monitor ------------------------------------------------------------------------------

    def _monitor(self) -> None:
        seen = -1
        while not self.closed:
            started = self.canceller.started
            if self.watch and not self.lost and self.canceller.running and started == seen:
                self._poll(started)  # the same call ran across a whole tick
            else:
                seen = started
                self._stop.wait(LONG_CALL_SECONDS)
            try:
                self.ship_logs()  # a long call's lines, live
                if self.capture is not None and self.capture.has_stale_partial():
                    self.send(pb.WorkerRequest())  # takes a line without its newline once it is old enough
                if time.monotonic() - self.last_send >= HEARTBEAT_SECONDS:
                    self.send(pb.WorkerRequest(heartbeat=True))
            except OSError:
                return

    def _poll(self, started: int) -> None:
        """Wait for a message while call number ``started`` runs, until a heartbeat is due."""
        if not self.recv_lock.acquire(blocking=False):  # the main thread reads: nothing to do
            self._stop.wait(LONG_CALL_SECONDS)
            return
        try:
            self.polling = True
            # The main thread clears `running` before it looks at `polling`: either
            # it wakes us, or we see here that the call has ended.
            if self.canceller.started != started or not self.canceller.running:
                return
            timeout = max(0.0, self.last_send + HEARTBEAT_SECONDS - time.monotonic())
            watched: list[socket.socket | int] = [self.sock, self._wake_r]
            readable, _, _ = select.select(watched, [], [], timeout)
            if self._wake_r in readable:
                self._drain_wakes()
            if self.sock in readable:  # the daemon writes whole frames: read one
                self.receive()
        except (OSError, ValueError):  # the socket was closed under us
            self.lost = self.lost or CLOSED
        finally:
            self.polling = False
            self.recv_lock.release()

    def close(self) -> None:
        self.closed = True
        self._stop.set()
        self.sock.close()


def _run(fn, codec: FunctionCodec, work, canceller: Canceller,
         settings: BatchSettings) -> tuple[list[pb.AttemptEvent], str]:
    if isinstance(work, pb.Assignment) and work.batch:
        event, stop = run_batch_call_sync(fn, codec, work, canceller, settings)
        return [event], stop
    if isinstance(work, pb.AssignmentBatch):
        assert isinstance(codec, BatchCodec)  # batches come only for a batched function
        return run_batch_sync(fn, codec, work.items, canceller)
    event, stop = run_plain(fn, codec, work, canceller)
    return [event], stop


COALESCE_SECONDS = 0.002
COALESCE_MAX = 256


def serve_blocking(link: BlockingLink, fn, codec: FunctionCodec, *, capacity: int = 1,
                   settings: BatchSettings = NO_SETTINGS) -> str:
    """Run assignments (and batches) until the daemon drains or is lost; returns why it stopped.

    One at a time on this thread, or with ``capacity`` > 1 on a pool of that
    many threads (this thread then only reads the socket).
    """
    link.batched = isinstance(codec, BatchCodec)
    if capacity > 1:
        return _serve_pool(link, fn, codec, capacity, settings)
    pending, canceller = link.pending, link.canceller
    link.watch = True
    # Results of inputs the daemon handed over ahead of time (it does so only for
    # short calls, in throughput mode) leave together, up to COALESCE_SECONDS
    # late: one message and one daemon wake-up for many results.
    out: list[pb.AttemptEvent] = []
    credit = 0
    since = 0.0
    try:
        link.send(pb.WorkerRequest(credit=1))
        while True:
            if not pending:
                if out:
                    link.send(pb.WorkerRequest(events=out, credit=credit))
                    out, credit = [], 0
                if link.draining:
                    return DRAINED
                if link.lost:
                    return link.lost
                with link.recv_lock:
                    # The monitor may have filed something while we waited for the lock.
                    if not (pending or link.draining or link.lost):
                        link.receive()
                continue
            events, stop = _run(fn, codec, pending.popleft(), canceller, settings)
            if link.polling:  # a long call: the monitor waits in select, holding the receive lock
                link.wake()
            if not out:
                since = time.monotonic()
            out.extend(events)
            credit += 1
            if stop or not pending or len(out) >= COALESCE_MAX or time.monotonic() - since >= COALESCE_SECONDS:
                link.send(pb.WorkerRequest(events=out, credit=credit))
                out, credit = [], 0
            if stop:
                return stop
    except OSError as exc:  # a write to a daemon that is gone
        return f"lost the daemon: {exc}"


def _serve_pool(link: BlockingLink, fn, codec: FunctionCodec, capacity: int, settings: BatchSettings) -> str:
    stops: list[str] = []
    lock = threading.Lock()
    inflight = 0

    def run(work) -> None:
        nonlocal inflight
        events, stop = _run(fn, codec, work, link.canceller, settings)
        try:
            link.send(pb.WorkerRequest(events=events, credit=1))
        except OSError:
            pass  # the reading thread sees the end of the stream
        with lock:
            inflight -= 1
        if stop:
            stops.append(stop)
        if stop or link.draining:  # the reading thread may be waiting for this
            link.wake()

    pool = ThreadPoolExecutor(capacity, thread_name_prefix="chalk-handler")
    try:
        link.send(pb.WorkerRequest(credit=capacity))
        while True:
            while link.pending:
                with lock:
                    inflight += 1
                pool.submit(run, link.pending.popleft())
            if stops:
                return stops[0]
            if link.draining:
                with lock:
                    if not inflight:  # what was handed over has finished
                        return DRAINED
            if link.lost:
                return link.lost
            # This thread only reads: cancels reach running handlers at once.
            watched: list[socket.socket | int] = [link.sock, link._wake_r]
            readable, _, _ = select.select(watched, [], [])
            if link._wake_r in readable:
                link._drain_wakes()
                link.ship_logs()  # the capture woke us: handlers printed
            if link.sock in readable:
                with link.recv_lock:
                    link.receive()
    except OSError as exc:
        return f"lost the daemon: {exc}"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
