"""Volumes: the SDK's ``VolumeClient``/``Volume`` API over :class:`chalkd.volumes.store.VolumeStore`.

    stub = VolumesStub(channel)
    await stub.Create(pb.CreateVolumeRequest(name="models"))
    async with stub.WriteFiles.open() as s:
        await s.send_message(pb.WriteFilesRequest(name="models", path="a.txt", data=b"hi", end_of_file=True))
        await s.send_message(pb.WriteFilesRequest(commit=True), end=True)
        await s.recv_message()                     # WriteFilesResponse(paths=["a.txt"], bytes=2)
    async with stub.ReadFile.open() as s:      # FileChunk(size=2, data=b"hi"), then 1 MiB chunks
        ...

Local clients open ReadFile, WriteFiles and ListFiles on the daemon's unix
socket instead (:meth:`VolumesService.framed_handlers`): the same handlers and
messages, without HTTP/2 framing. There a whole ReadFile or WriteFiles runs in
one thread of its own that owns the socket (:mod:`chalkcompute._volume_wire`):
a file's data goes from the socket's reused buffer to the staged file, and from
the page cache to the socket with sendfile, never copied in Python.

Over gRPC, disk work runs in worker threads, one chunk at a time, so a large
file never sits whole in the daemon's memory and never stalls its event loop;
small writes (the many-small-files batch) are done inline, where a thread hop
would cost more than the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
from collections.abc import Callable, Iterator

from chalkcompute import _h2_repr  # noqa: F401 - h2's frame reprs without hexlifying the data
from chalkcompute._contract import quote
from chalkcompute._framing import FramedStream
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import VolumesBase
from chalkcompute._volume_wire import (
    DATA_FIELD,
    LaneSocket,
    MalformedFrame,
    file_chunk_head,
    messages,
    run_in_thread,
)
from chalkd.auth import current_scope
from chalkd.errors import (
    ChalkdError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from chalkd.services.errors import grpc_errors
from chalkd.volumes.paths import VolumeStoreError
from chalkd.volumes.store import VolumeInfo, VolumeStore

log = logging.getLogger(__name__)

__all__ = ["VolumesService", "CHUNK"]

CHUNK = 1 << 20        # bytes per FileChunk sent
PAGE = 1000            # entries per ListFiles page
_INLINE_WRITE = 1 << 16  # pieces up to this size are written on the loop


def _own_lane(stream) -> LaneSocket | None:
    """The framed stream's socket for one thread to read directly, its transport paused;
    None for gRPC, or when asyncio already holds bytes of the stream (a client that did
    not wait for the daemon's answer to its first frame): those go the asyncio way."""
    if not isinstance(stream, FramedStream) or getattr(stream.reader, "_buffer", b"?"):
        return None
    transport = stream.writer.transport
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    transport.pause_reading()
    return LaneSocket(sock.fileno())


def info_pb(info: VolumeInfo) -> pb.VolumeInfo:
    return pb.VolumeInfo(name=info.name, created_at=info.created_at, updated_at=info.updated_at,
                         size_bytes=info.size_bytes, file_count=info.file_count)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """The disk's failures as domain errors that say what was being done; the store's own
    (VolumeNotFound, InvalidVolumePath, VolumePathConflict...) pass on to the error table."""
    try:
        yield
    except PermissionError as exc:
        # A file a container made with another owner, when chalkd is not root.
        raise PermissionDenied(f"{what}: chalkd may not access {exc.filename or 'it'} ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"{what}: the daemon's disk is full ({exc.strerror})") from None
        log.exception("%s failed", what)
        raise Internal(f"{what} failed: {exc}") from None


class VolumesService(VolumesBase):
    def __init__(self, volumes: VolumeStore,
                 replica_volumes: Callable[[str], frozenset[str]] = lambda replica_id: frozenset()) -> None:
        self.volumes = volumes
        # replica id -> the volumes its function mounts (the server's lookup); a replica reaches only those.
        self.replica_volumes = replica_volumes

    def _check_scope(self, name: str) -> None:
        scope = current_scope.get()
        if scope is not None and scope.replica_id and name not in self.replica_volumes(scope.replica_id):
            raise PermissionDenied(f"replica {scope.replica_id}'s credential cannot reach volume "
                                   f"{quote(name)}: function code may use only the volumes its function mounts")

    def framed_handlers(self) -> dict[bytes, tuple]:
        """The streams local clients open on the daemon's fast lane
        (:class:`chalkd.services.fastpath.FastPathServer`): the same handlers
        without HTTP/2, whose pure-Python framing caps a stream near 150 MB/s."""
        return {b"volumes.read": (pb.ReadFileRequest, self.ReadFile),
                b"volumes.write": (pb.WriteFilesRequest, self.WriteFiles),
                b"volumes.list": (pb.ListFilesRequest, self.ListFiles)}

    @grpc_errors
    async def Create(self, stream) -> None:
        req: pb.CreateVolumeRequest = await stream.recv_message()
        with _errors(f"creating volume {quote(req.name)}"):
            info, created = await asyncio.to_thread(self.volumes.create, req.name)
        await stream.send_message(pb.CreateVolumeResponse(info=info_pb(info), created=created))

    @grpc_errors
    async def Get(self, stream) -> None:
        req: pb.GetVolumeRequest = await stream.recv_message()
        self._check_scope(req.name)
        with _errors(f"reading volume {quote(req.name)}"):
            info = await asyncio.to_thread(self.volumes.get, req.name)
        await stream.send_message(pb.GetVolumeResponse(info=info_pb(info)))

    @grpc_errors
    async def List(self, stream) -> None:
        await stream.recv_message()
        with _errors("listing volumes"):
            infos = await asyncio.to_thread(self.volumes.list)
        await stream.send_message(pb.ListVolumesResponse(volumes=[info_pb(i) for i in infos]))

    @grpc_errors
    async def Delete(self, stream) -> None:
        req: pb.DeleteVolumeRequest = await stream.recv_message()
        with _errors(f"deleting volume {quote(req.name)}"):
            await asyncio.to_thread(self.volumes.delete, req.name)
        await stream.send_message(pb.DeleteVolumeResponse())

    @grpc_errors
    async def ListFiles(self, stream) -> None:
        req: pb.ListFilesRequest = await stream.recv_message()
        self._check_scope(req.name)
        entries = self.volumes.list_files(req.name, req.prefix, req.recursive)
        try:
            while True:
                with _errors(f"listing volume {quote(req.name)}"):
                    page = await asyncio.to_thread(lambda: list(itertools.islice(entries, PAGE)))
                if page:
                    await stream.send_message(pb.ListFilesResponse(
                        entries=[pb.VolumeEntry(path=e.path, size=e.size, mtime=e.mtime) for e in page]))
                if len(page) < PAGE:
                    return
        finally:
            entries.close()

    @grpc_errors
    async def ReadFile(self, stream) -> None:
        req: pb.ReadFileRequest = await stream.recv_message()
        self._check_scope(req.name)
        what = f"reading {quote(req.path)} in volume {quote(req.name)}"
        if isinstance(stream, FramedStream) and not stream.writer.transport.get_write_buffer_size():
            sock = stream.writer.transport.get_extra_info("socket")
            if sock is not None:
                lane = LaneSocket(sock.fileno(), buffer=0)
                try:
                    await run_in_thread(lambda: self._send_file(lane, req, what), lane)
                finally:
                    lane.close()
                return
        with _errors(what):
            f = await asyncio.to_thread(self.volumes.open_read, req.name, req.path)
        pending = None
        try:
            with _errors(what):
                size = os.fstat(f.fileno()).st_size
                data = await asyncio.to_thread(f.read, CHUNK)
            first = True
            while True:
                # The next chunk is read while this one is on its way: two in memory at most.
                pending = asyncio.ensure_future(asyncio.to_thread(f.read, CHUNK)) if data else None
                await stream.send_message(pb.FileChunk(data=data, size=size) if first else pb.FileChunk(data=data))
                first = False
                if pending is None:
                    return
                with _errors(what):
                    data = await pending
                pending = None
                if not data:
                    return
        finally:
            if pending is not None:  # its thread still reads f
                await asyncio.wait([pending])
            f.close()

    @grpc_errors
    async def WriteFiles(self, stream) -> None:
        lane = _own_lane(stream)
        if lane is not None:
            try:
                resp = await run_in_thread(lambda: self._receive_batch(lane, stream.limit), lane)
            finally:
                lane.close()
            await stream.send_message(resp)
            return
        msg: pb.WriteFilesRequest | None = await stream.recv_message()
        if msg is None:
            raise InvalidArgument("WriteFiles: the stream ended before its first message")
        name = msg.name
        what = f"writing to volume {quote(name)}"
        batch = None
        try:
            try:
                self._check_scope(name)  # in here: a refused client still sending hears why
                with _errors(what):
                    batch = await asyncio.to_thread(self.volumes.begin_batch, name)
                commit = False
                file_bytes = 0  # of the file being written: its end is synced in a thread when big
                while msg is not None:
                    if commit:
                        raise InvalidArgument(f"{what}: messages after the one with commit")
                    with _errors(what):
                        if msg.path or msg.data or msg.end_of_file:  # a file's piece (an empty path is refused)
                            if len(msg.data) > _INLINE_WRITE:
                                await asyncio.to_thread(batch.write, msg.path, msg.data)
                            else:
                                batch.write(msg.path, msg.data)
                            file_bytes += len(msg.data)
                        if msg.end_of_file:
                            if file_bytes >= 2**20:
                                await asyncio.to_thread(batch.end_file)
                            else:
                                batch.end_file()
                            file_bytes = 0
                    commit = commit or msg.commit
                    msg = await stream.recv_message()
            except (ChalkdError, VolumeStoreError):  # a refusal, not a broken stream
                if isinstance(stream, FramedStream):
                    # A unix socket closed under a writing client loses the error frame
                    # to EPIPE: read the stream to its end, then say why it was refused.
                    while await stream.recv_message() is not None:
                        pass
                raise
            if not commit:
                raise FailedPrecondition(f"{what}: the batch ended without commit, so nothing was written")
            with _errors(what):
                paths, nbytes = await asyncio.to_thread(batch.commit)
        finally:
            if batch is not None and not batch.done:
                await asyncio.to_thread(batch.abort)
        await stream.send_message(pb.WriteFilesResponse(paths=paths, bytes=nbytes))

    def _send_file(self, lane: LaneSocket, req: pb.ReadFileRequest, what: str) -> None:
        """ReadFile on the local lane, in one thread: each chunk's data goes from the page
        cache to the socket with sendfile, the message's other fields written before it
        (see :mod:`chalkcompute._volume_wire`). The first chunk carries the size; the file
        is read to its end, as the stream handler reads it."""
        with _errors(what):
            f = self.volumes.open_read(req.name, req.path)
        with f:
            fd = f.fileno()
            with _errors(what):
                size = os.fstat(fd).st_size
            offset = 0
            first = True
            while True:
                n = min(CHUNK, size - offset)
                if n <= 0:
                    with _errors(what):
                        size = os.fstat(fd).st_size  # grown meanwhile?
                    if size > offset:
                        continue
                    if first:  # an empty file: one chunk, no data
                        lane.send(file_chunk_head(0, size=0))
                    return
                lane.send(file_chunk_head(n, size if first else None))
                try:
                    sent = lane.send_file(fd, offset, n)
                except BaseException:
                    lane.abort()  # a half-sent chunk: nothing may follow it
                    raise
                if sent < n:
                    lane.abort()
                    raise FailedPrecondition(f"{what}: the file shrank while it was read")
                offset += n
                first = False

    def _receive_batch(self, lane: LaneSocket, limit: int) -> pb.WriteFilesResponse:
        """WriteFiles on the local lane, in one thread: each piece of data goes from the
        socket buffer to the staged file (see :mod:`chalkcompute._volume_wire`); the same
        checks, commit and refusals as the stream handler."""
        stream = messages(lane, pb.WriteFilesRequest, DATA_FIELD["WriteFilesRequest"], limit=limit)
        try:
            first = next(stream, None)
            if first is None:
                raise InvalidArgument("WriteFiles: the stream ended before its first message")
            name = first[0].name
            what = f"writing to volume {quote(name)}"
            batch = None
            try:
                try:
                    self._check_scope(name)  # in here: a refused client still sending hears why
                    with _errors(what):
                        batch = self.volumes.begin_batch(name)
                    commit = False
                    item: tuple[pb.WriteFilesRequest, int] | None = first
                    while item is not None:
                        msg, n = item
                        if commit:
                            raise InvalidArgument(f"{what}: messages after the one with commit")
                        with _errors(what):
                            if n:
                                for piece in lane.pieces(n):
                                    batch.write(msg.path, piece)
                            elif msg.path or msg.data or msg.end_of_file:  # an empty path is refused
                                batch.write(msg.path, msg.data)
                            if msg.end_of_file:
                                batch.end_file()
                        commit = commit or msg.commit
                        item = next(stream, None)
                except (ChalkdError, VolumeStoreError):
                    # Read to the end, so the refusal reaches a client still sending (see WriteFiles).
                    for _ in stream:
                        pass
                    raise
                if not commit:
                    raise FailedPrecondition(f"{what}: the batch ended without commit, so nothing was written")
                with _errors(what):
                    paths, nbytes = batch.commit()
            finally:
                if batch is not None and not batch.done:
                    batch.abort()
        except MalformedFrame as exc:
            raise InvalidArgument(f"WriteFiles: {exc}") from None
        return pb.WriteFilesResponse(paths=paths, bytes=nbytes)

    @grpc_errors
    async def RemoveFile(self, stream) -> None:
        req: pb.RemoveFileRequest = await stream.recv_message()
        self._check_scope(req.name)
        with _errors(f"removing {quote(req.path)} from volume {quote(req.name)}"):
            await asyncio.to_thread(self.volumes.remove, req.name, req.path)
        await stream.send_message(pb.RemoveFileResponse())
