"""File data on the local fast lane without copies in Python.

On the daemon's unix socket (see :mod:`chalkcompute._framing`) a volume
transfer is a run of frames, each one protobuf message (``WriteFilesRequest``
one way, ``FileChunk`` the other). Going through asyncio's StreamReader and
protobuf, each MiB of file data was copied five times in Python on each side.
Here one thread owns the socket for the whole transfer instead:

* a sender writes a message's other fields itself and puts the ``data`` field
  *last* (protobuf allows any order), so the bytes that follow come straight
  from a file with ``os.sendfile`` (page cache to socket, no copy in Python) or
  from the caller's buffer with one ``sendmsg``;
* a receiver reads frames into one reused buffer (:class:`LaneSocket`) and
  hands the ``data`` field on as views of that buffer, which the daemon writes
  to the staged file and the SDK to the local file. A message whose ``data``
  is not its last field is read whole and parsed by protobuf, as before.

    lane = LaneSocket(sock.fileno())                  # owns a duplicate of the fd
    lane.send(write_files_head(name="models", path="a.bin", data_len=3), b"abc")
    for msg, n in messages(lane, pb.WriteFilesRequest, DATA_FIELD["WriteFilesRequest"], limit=2**28):
        for piece in lane.pieces(n): ...              # msg.data left empty; n bytes follow

The socket stays non-blocking (asyncio set it so); the thread waits with
``poll``, and :meth:`LaneSocket.wake` (from any thread) ends a wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._framing import _HEADER, ERROR, MESSAGE, FrameTooLarge
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

__all__ = ["DATA_FIELD", "LaneClosed", "LaneSocket", "MalformedFrame", "file_chunk_head", "messages", "run_in_thread",
           "write_files_head"]

BUFFER = 1 << 18  # the receiver's reused buffer: a unix socket hands over at most ~200 KiB per read
DATA_FIELD = {"WriteFilesRequest": 3, "FileChunk": 1}  # the ``bytes data`` field's number in each message

T = TypeVar("T")


class LaneClosed(ConnectionError):
    """The transfer was stopped (:meth:`LaneSocket.wake`) or the peer went away."""


class MalformedFrame(ValueError):
    """A frame that is not a well-formed message of the stream."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _data_key(field: int, n: int) -> bytes:
    """A length-delimited field's key and length: ``n`` bytes of it follow."""
    return _varint(field << 3 | 2) + _varint(n)


def write_files_head(*, name: str = "", path: str = "", end_of_file: bool = False, commit: bool = False,
                     data_len: int = 0) -> bytes:
    """The frame of a WriteFilesRequest up to its data: ``data_len`` bytes of data follow it."""
    head = pb.WriteFilesRequest(name=name, path=path, end_of_file=end_of_file, commit=commit).SerializeToString()
    if data_len:
        head += _data_key(DATA_FIELD["WriteFilesRequest"], data_len)
    return _HEADER.pack(len(head) + data_len, MESSAGE) + head


def file_chunk_head(data_len: int, size: int | None = None) -> bytes:
    """The frame of a FileChunk up to its data (``size``, the whole file's, on the first one)."""
    head = pb.FileChunk(size=size).SerializeToString() if size else b""
    if data_len:
        head += _data_key(DATA_FIELD["FileChunk"], data_len)
    return _HEADER.pack(len(head) + data_len, MESSAGE) + head


class LaneSocket:
    """One thread's blocking view of a non-blocking stream socket: reads into one
    reused buffer, writes whole buffers and file ranges. Owns a duplicate of
    ``fd`` (closed by :meth:`close`), so a transport closing the original never
    leaves it writing to a reused descriptor."""

    def __init__(self, fd: int, *, buffer: int = BUFFER) -> None:
        self.sock = socket.socket(fileno=os.dup(fd))
        self._buf = bytearray(buffer)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._wake_r, self._wake_w = os.pipe()
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._sendfile = hasattr(os, "sendfile")
        self._send_buf: bytearray | None = None  # send_file's, where sendfile cannot be used
        self.unread = 0  # bytes of the current message's data not yet taken (see pieces)

    # -- waiting ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Stop the transfer: the thread's current or next wait raises LaneClosed (any thread)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # closed: the transfer is over anyway
            pass

    def _wait(self, event: int) -> None:
        fd = self.sock.fileno()
        self._poll.register(fd, event)
        try:
            ready = self._poll.poll()
        finally:
            self._poll.unregister(fd)
        if any(f == self._wake_r for f, _ in ready):
            raise LaneClosed("the transfer was stopped")

    # -- reading ---------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read what the socket has after the buffered bytes; False at the peer's end."""
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < 4096:  # only the start of a header or a small message is carried over
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n
        while True:
            try:
                n = self.sock.recv_into(self._view[self._end:])
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLIN)
                continue
            except OSError as exc:
                raise LaneClosed(f"reading from the socket failed: {exc}") from None
            if n == 0:
                return False
            self._end += n
            return True

    def fill_nowait(self) -> int | None:
        """For a caller on an event loop: read what the socket has now, never waiting. The
        number of bytes read, 0 at the peer's end, None when there is nothing yet."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf) and self._start:
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n
        if self.full():
            return None
        try:
            n = self.sock.recv_into(self._view[self._end:])
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise LaneClosed(f"reading from the socket failed: {exc}") from None
        self._end += n
        return n

    def full(self) -> bool:
        """Whether the buffer holds as many unread bytes as it can."""
        return self._end - self._start == len(self._buf)

    def _need(self, n: int) -> None:
        while self._end - self._start < n:
            if not self._fill():
                raise LaneClosed("the connection closed in the middle of a frame")

    def exact(self, n: int) -> bytes:
        """The next ``n`` bytes (header fields and small messages; any size works)."""
        if n <= len(self._buf):
            self._need(n)
            out = bytes(self._view[self._start:self._start + n])
            self._start += n
            return out
        out_b = bytearray()
        for piece in self._pieces(n):
            out_b += piece
        return bytes(out_b)

    def varint(self) -> tuple[int, bytes]:
        """A protobuf varint: its value and its bytes."""
        value = shift = 0
        raw = bytearray()
        while True:
            self._need(1)
            b = self._buf[self._start]
            self._start += 1
            raw.append(b)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value, bytes(raw)
            shift += 7
            if shift >= 70:
                raise MalformedFrame("a malformed message: a varint longer than 10 bytes")

    def _pieces(self, n: int) -> Iterator[memoryview]:
        while n:
            if self._start == self._end and not self._fill():
                raise LaneClosed("the connection closed in the middle of a frame")
            k = min(n, self._end - self._start)
            view = self._view[self._start:self._start + k]
            self._start += k
            n -= k
            try:
                yield view
            finally:
                view.release()

    def pieces(self, n: int) -> Iterator[memoryview]:
        """The current message's next ``n`` data bytes as views of the reused buffer, each valid
        until the next is asked for."""
        for view in self._pieces(n):
            self.unread -= len(view)
            yield view

    def readinto(self, target: memoryview) -> None:
        """The current message's next ``len(target)`` data bytes into ``target``: what is
        buffered, then straight from the socket (no copy through the buffer)."""
        n = len(target)
        got = min(n, self._end - self._start)
        target[:got] = self._view[self._start:self._start + got]
        self._start += got
        while got < n:
            try:
                k = self.sock.recv_into(target[got:])
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLIN)
                continue
            except OSError as exc:
                raise LaneClosed(f"reading from the socket failed: {exc}") from None
            if k == 0:
                raise LaneClosed("the connection closed in the middle of a frame")
            got += k
        self.unread -= n

    def skip_unread(self) -> None:
        """Drop what is left of the current message's data (a refused batch is read to its end)."""
        for _ in self._pieces(self.unread):
            pass
        self.unread = 0

    def frame_header(self, limit: int) -> tuple[int, int] | None:
        """(length, kind) of the next frame, None at the peer's clean end."""
        self.skip_unread()
        if self._start == self._end and not self._fill():
            return None
        self._need(_HEADER.size)
        length, kind = _HEADER.unpack_from(self._buf, self._start)
        self._start += _HEADER.size
        if length > limit:
            raise FrameTooLarge(f"message of {length} bytes exceeds the limit of {limit} bytes")
        return length, kind

    # -- writing ---------------------------------------------------------------------------

    def send(self, *buffers: bytes | bytearray | memoryview) -> None:
        """Write every byte of ``buffers``, in order."""
        views = [memoryview(b) for b in buffers if len(b)]
        while views:
            try:
                n = self.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLOUT)
                continue
            except OSError as exc:
                raise LaneClosed(f"writing to the socket failed: {exc}") from None
            while n:
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0] = views[0][n:]
                    n = 0

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """Write ``count`` bytes of the file ``fd`` from ``offset``; fewer only at the file's end
        (the file shrank), so the caller can tell. Uses sendfile, else reads into a reused buffer."""
        done = 0
        while done < count:
            if self._sendfile:
                try:
                    n = os.sendfile(self.sock.fileno(), fd, offset + done, count - done)
                except (BlockingIOError, InterruptedError):
                    self._wait(select.POLLOUT)
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP) and not done:
                        self._sendfile = False  # a file system or socket without it: read and send
                        continue
                    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                        raise LaneClosed(f"writing to the socket failed: {exc}") from None
                    raise
            else:
                if self._send_buf is None:
                    self._send_buf = bytearray(BUFFER)
                buf = self._send_buf
                want = min(len(buf), count - done)
                if hasattr(os, "preadv"):
                    with memoryview(buf) as view:
                        n = os.preadv(fd, [view[:want]], offset + done)
                        if n:
                            self.send(view[:n])
                else:  # macOS has pread only
                    data = os.pread(fd, want, offset + done)
                    n = len(data)
                    if n:
                        self.send(data)
            if n == 0:
                return done
            done += n
        return done

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        """End the connection both ways (a frame was left half written: nothing may follow it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._view.release()


def messages(lane: LaneSocket, msg_type: Callable[[], Any], data_field: int, *,
             limit: int) -> Iterator[tuple[Any, int]]:
    """(message, n) per frame until the peer's end. When the ``data`` field comes last
    in the frame it is not read: ``n`` bytes of it follow, to take with
    ``lane.pieces(n)`` before the next message (or they are skipped). An error
    frame raises the GRPCError it carries."""
    while True:
        header = lane.frame_header(limit)
        if header is None:
            return
        length, kind = header
        if kind == ERROR:
            code, _, text = lane.exact(length).decode(errors="replace").partition(":")
            raise GRPCError(Status(int(code)), text)
        if kind != MESSAGE:
            raise MalformedFrame(f"a malformed stream: frame kind {kind}")
        yield _split(lane, msg_type, data_field, length)


def _split(lane: LaneSocket, msg_type: Callable[[], Any], data_field: int, length: int) -> tuple[Any, int]:
    """Read one message's fields up to a final ``data`` field; the rest is parsed by protobuf."""
    rest = bytearray()
    left = length
    while left:
        key, raw = lane.varint()
        left -= len(raw)
        wire = key & 7
        if wire == 2:
            n, raw_n = lane.varint()
            left -= len(raw_n)
            if n > left:
                raise MalformedFrame("a malformed message: a field longer than its frame")
            if key >> 3 == data_field and n == left:
                msg = _parse(msg_type, rest)
                msg.ClearField("data")  # the last occurrence wins, as protobuf reads it
                lane.unread = n
                return msg, n
            rest += raw + raw_n + lane.exact(n)
            left -= n
        elif wire == 0:
            _, raw_v = lane.varint()
            rest += raw + raw_v
            left -= len(raw_v)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            rest += raw + lane.exact(n)
            left -= n
        else:
            raise MalformedFrame(f"a malformed message: wire type {wire}")
        if left < 0:
            raise MalformedFrame("a malformed message: fields longer than their frame")
    return _parse(msg_type, rest), 0


def _parse(msg_type: Callable[[], Any], data: bytearray) -> Any:
    msg = msg_type()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise MalformedFrame(f"a malformed message: {exc}") from None
    return msg


async def run_in_thread(fn: Callable[[], T], lane: LaneSocket) -> T:
    """``fn()`` in a thread of its own (not the loop's small default pool, which a
    stalled peer would hold), with the caller's context; cancelling the caller
    wakes ``lane`` and waits for the thread to finish.

        resp = await run_in_thread(lambda: receive(lane), lane)
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = ctx.run(fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile: nobody waits
            pass

    thread = threading.Thread(target=run, name="chalk-volume-transfer", daemon=True)
    thread.start()
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        lane.wake()
        # Until the thread is out, even if cancelled again: the caller then closes the lane's
        # descriptors, which a thread still in a syscall could meet reused by another file.
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller hears
        raise
