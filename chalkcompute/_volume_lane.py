"""The SDK's end of volume transfers on the daemon's unix socket (see :mod:`chalkcompute._volume_wire`).

:class:`chalkcompute.volume.Volume` hands a framed ReadFile or WriteFiles stream
here; one thread then does the whole transfer: a put sends each message's other
fields and then its data (local files with sendfile, bytes as they are, small
files gathered into one write), a get reads the chunks into the result or from
the reused buffer to the local file. Small transfers (byte strings up to 256 KiB
in all; a file whose stream fits the lane's buffer) stay on the event loop,
where they cost less than a thread.

    async with client.open_stream(b"volumes.write", stub.WriteFiles, pb.WriteFilesResponse) as stream:
        resp = await upload_framed(stream, "models", [("a.bin", Path("a.bin")), ("b.txt", b"hi")],
                                   Transfer("put models"))
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from chalkcompute._framing import MESSAGE, FramedStream, frame
from chalkcompute._progress import Transfer
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._volume_wire import (
    DATA_FIELD,
    LaneClosed,
    LaneSocket,
    messages,
    run_in_thread,
    write_files_head,
)
from chalkcompute.exceptions import VolumeError

__all__ = ["CHUNK", "download_framed", "upload_framed"]

CHUNK = 1 << 20  # data bytes per WriteFiles message (an older daemon reads each whole)
_GATHER = 1 << 18  # small messages are sent together up to this many bytes


async def download_framed(stream: FramedStream, request: pb.ReadFileRequest,
                          local_path: str | os.PathLike | None, transfer: Transfer) -> bytes | int:
    """ReadFile on the daemon's unix socket, read without asyncio's copies (see :mod:`chalkcompute._volume_wire`):
    the data goes from the socket into the result, or from the reused buffer to the local file.
    A file whose whole stream fits the lane's buffer is read on the loop; a larger one by a thread.
    ``transfer`` learns the file's size from the first chunk and counts the bytes received."""
    sock = stream.writer.transport.get_extra_info("socket")
    stream.writer.transport.pause_reading()  # from now on only the lane reads the socket
    lane = LaneSocket(sock.fileno())
    try:
        # A few bytes into a socket nothing was written to yet: this never waits.
        lane.send(frame(MESSAGE, request.SerializeToString()))
        lane.shutdown_write()
        if await _buffer_whole(lane):
            data = _receive_file(lane, request, stream.limit, None, transfer)
            if local_path is None:
                return data
            assert isinstance(data, bytes)
            return await asyncio.to_thread(_write_local, local_path, data)
        return await run_in_thread(lambda: _receive_file(lane, request, stream.limit, local_path, transfer), lane)
    finally:
        lane.close()


async def _buffer_whole(lane: LaneSocket) -> bool:
    """Read the stream on the loop until its end; False (what was read stays buffered) once
    it outgrows the lane's buffer."""
    loop = asyncio.get_running_loop()
    fd = lane.sock.fileno()
    while not lane.full():
        got = lane.fill_nowait()
        if got == 0:
            return True
        if got is None:
            ready = loop.create_future()
            loop.add_reader(fd, _settle, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
    return False


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _write_local(local_path: str | os.PathLike, data: bytes) -> int:
    with open(local_path, "wb") as f:
        f.write(data)
    return len(data)


def _receive_file(lane: LaneSocket, request: pb.ReadFileRequest, limit: int,
                  local_path: str | os.PathLike | None, transfer: Transfer) -> bytes | int:
    """The chunks the daemon sends for ``request`` (already sent), into memory or ``local_path``;
    ``transfer.done`` counts them (an integer add per chunk: the bar, if any, reads it itself)."""
    chunks = messages(lane, pb.FileChunk, DATA_FIELD["FileChunk"], limit=limit)
    first = next(chunks, None)
    if first is None:  # only a broken daemon ends without a chunk
        raise VolumeError(f"chalkd sent nothing for {request.path!r} in volume {request.name!r}", "INTERNAL")
    transfer.sized(first[0].size)
    if local_path is None:
        out = bytearray(first[0].size)  # the size the file had: the data lands in place
        pos = 0
        for msg, n in itertools.chain([first], chunks):
            if n and pos + n <= len(out):
                with memoryview(out) as view:
                    lane.readinto(view[pos:pos + n])
            else:  # data parsed whole, or more than the size said (the file grew meanwhile)
                data = b"".join(lane.pieces(n)) if n else msg.data
                out[pos:pos + len(data)] = data
                n = len(data)
            pos += n
            transfer.done = pos
        del out[pos:]  # the file shrank meanwhile
        return bytes(out)
    with open(local_path, "wb", buffering=0) as f:
        total = 0
        for msg, n in itertools.chain([first], chunks):
            for piece in lane.pieces(n) if n else (memoryview(msg.data),):
                while piece:
                    k = f.write(piece) or 0
                    piece = piece[k:]
                    total += k
            transfer.done = total
        return total


async def upload_framed(stream: FramedStream, name: str, items: Sequence[tuple[str, bytes | Path | BinaryIO]],
                        transfer: Transfer) -> pb.WriteFilesResponse:
    """WriteFiles on the daemon's unix socket, sent by one thread without copies (see
    :mod:`chalkcompute._volume_wire`): local files go with sendfile, bytes as they are;
    ``transfer.done`` counts the data bytes sent.
    A few small byte strings are framed here and written by asyncio: a thread would
    cost more than the copy."""
    small = [src for _, src in items if isinstance(src, bytes)]
    if len(small) == len(items) and sum(map(len, small)) <= _GATHER:
        frames = _Frames()
        _send_items(frames, name, items, transfer)
        stream.writer.write(frames.data)
        await stream.writer.drain()
        return await _answer(stream)
    sock = stream.writer.transport.get_extra_info("socket")
    lane = LaneSocket(sock.fileno(), buffer=0)
    try:
        await run_in_thread(lambda: _send_items(lane, name, items, transfer), lane)
    except LaneClosed:
        # The daemon closed the connection: its error frame, when it sent one, says why (raised here).
        await stream.recv_message()
        raise
    finally:
        lane.close()
    return await _answer(stream)


async def _answer(stream: FramedStream) -> pb.WriteFilesResponse:
    await stream.end()
    resp = await stream.recv_message()
    if resp is None:
        raise ConnectionError("chalkd closed the stream without answering the upload")
    return resp


class _Frames:
    """Where :func:`_send_items` puts a small upload's frames, for asyncio to write at once."""

    def __init__(self) -> None:
        self.data = bytearray()

    def send(self, *buffers: bytes | bytearray | memoryview) -> None:
        for b in buffers:
            self.data += b


def _send_items(lane: LaneSocket | _Frames, name: str, items: Sequence[tuple[str, bytes | Path | BinaryIO]],
                transfer: Transfer) -> None:
    """Every file's frames, then the commit (in the transfer's thread, or into _Frames). Small messages are
    gathered into one write; a file's pieces are CHUNK bytes (an older daemon reads each whole)."""
    pending = bytearray()

    def send(head: bytes, data: bytes | memoryview = b"") -> None:
        if len(pending) + len(head) + len(data) <= _GATHER:
            pending.extend(head)
            pending.extend(data)
            return
        lane.send(pending, head, data)
        pending.clear()

    for path, src in items:
        if isinstance(src, bytes):
            view = memoryview(src)
            for i in range(0, max(len(src), 1), CHUNK):
                piece = view[i:i + CHUNK]
                send(write_files_head(name=name, path=path, end_of_file=i + CHUNK >= len(src),
                                      data_len=len(piece)), piece)
                name = ""  # the volume is named by the first message only
                transfer.done += len(piece)
        elif isinstance(src, Path):
            assert isinstance(lane, LaneSocket)  # uploads with files always go through the lane
            if pending:
                lane.send(pending)
                pending.clear()
            _send_local_file(lane, name, path, src, transfer)
            name = ""
        else:  # a binary file object of the caller's (the CLI's stdin): its end is known only once read
            view = memoryview(bytearray(CHUNK))
            while True:
                n = src.readinto(view) if hasattr(src, "readinto") else _read_into(src, view)
                if not n:
                    break
                send(write_files_head(name=name, path=path, data_len=n), view[:n])
                name = ""
                transfer.done += n
                if pending:
                    lane.send(pending)  # before the buffer is reused
                    pending.clear()
            send(write_files_head(name=name, path=path, end_of_file=True))
            name = ""
    send(write_files_head(name=name, commit=True))
    if pending:
        lane.send(pending)


def _read_into(f: BinaryIO, view: memoryview) -> int:
    data = f.read(len(view))
    view[:len(data)] = data
    return len(data)


def _send_local_file(lane: LaneSocket, name: str, path: str, local: Path, transfer: Transfer) -> None:
    """A local file's data with sendfile, CHUNK bytes a message, then its end. Read until
    its end even if it grew meanwhile; one that shrinks under a message fails the upload."""
    fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while True:
            n = min(CHUNK, size - offset)
            if n <= 0:
                size = os.fstat(fd).st_size  # grown meanwhile?
                if size <= offset:
                    break
                continue
            lane.send(write_files_head(name=name, path=path, data_len=n))
            if lane.send_file(fd, offset, n) < n:
                lane.abort()  # a half-sent message: nothing may follow it, nothing is committed
                raise VolumeError(f"the local file {str(local)!r} shrank while it was uploaded to {path!r}; "
                                  "nothing was written", "ABORTED")
            offset += n
            name = ""
            transfer.done += n
        lane.send(write_files_head(name=name, path=path, end_of_file=True))
    finally:
        os.close(fd)
