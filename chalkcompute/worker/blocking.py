"""The worker's fast path for plain sync handlers on the daemon's local socket.

A sync, non-generator handler needs no event loop: the main thread reads an
assignment from the socket, runs the handler and writes the result back,
with no hop between threads on the way (each hop is a wake-up that costs
more than the call itself on a small machine). A side thread sends the
heartbeats, so a handler that blocks for minutes is still seen as alive; the
socket's writes are serialized by a lock.

    link = BlockingLink(path, instance_id, replica_id, token)
    version = link.connect()
    reason = serve_blocking(link, fn, codec)     # returns when drained or lost
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.link import HEARTBEAT_SECONDS
from chalkcompute.worker.runner import run_plain

_HEADER = struct.Struct(">IB")
MESSAGE, ERROR = 0, 1


class BlockingLink:
    def __init__(self, path: str, instance_id: str, replica_id: str, token: str) -> None:
        self.path = path
        self.instance_id = instance_id
        self.replica_id = replica_id
        self.token = token
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.last_send = time.monotonic()
        self.closed = False

    def connect(self) -> pb.FunctionVersion:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.sock = sock
        self._send_raw(MESSAGE, b"worker")
        kind, body = self._recv_frame()
        if kind != MESSAGE or body.decode() != self.instance_id:
            raise ConnectionError(f"{self.path} belongs to another chalkd instance")
        self.send(pb.WorkerRequest(hello=pb.WorkerHello(replica_id=self.replica_id, token=self.token, capacity=1)))
        first = self.recv()
        if first is None:
            raise ConnectionError("the daemon closed the worker stream before naming a function")
        threading.Thread(target=self._heartbeats, name="chalk-heartbeat", daemon=True).start()
        return first.function

    def _send_raw(self, kind: int, body: bytes) -> None:
        with self.lock:
            self.sock.sendall(_HEADER.pack(len(body), kind) + body)
            self.last_send = time.monotonic()

    def send(self, msg: pb.WorkerRequest) -> None:
        self._send_raw(MESSAGE, msg.SerializeToString())

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

    def _heartbeats(self) -> None:
        while not self.closed:
            time.sleep(HEARTBEAT_SECONDS / 2)
            if time.monotonic() - self.last_send >= HEARTBEAT_SECONDS:
                try:
                    self.send(pb.WorkerRequest(heartbeat=True))
                except OSError:
                    return

    def close(self) -> None:
        self.closed = True
        if self.sock is not None:
            self.sock.close()


def serve_blocking(link: BlockingLink, fn, codec: FunctionCodec) -> str:
    """Run assignments one at a time until the daemon drains or is lost."""
    pending: collections.deque[pb.Assignment] = collections.deque()
    link.send(pb.WorkerRequest(credit=1))
    while True:
        if not pending:
            msg = link.recv()
            if msg is None:
                return "lost the daemon: the connection closed"
            pending.extend(msg.assignments)
            if msg.drain and not pending:
                return "the daemon asked this replica to drain"
            continue
        a = pending.popleft()
        event, stop = run_plain(fn, codec, a)
        link.send(pb.WorkerRequest(events=[event], credit=1))
        if stop:
            return stop
