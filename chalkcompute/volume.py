"""Persistent named volumes on chalkd: ``VolumeClient`` manages them, ``Volume`` holds files.

    from chalkcompute import VolumeClient

    client = VolumeClient()                      # $CHALK_COMPUTE_TARGET, else 127.0.0.1:50051
    vol = client.create("models")                # an existing volume is returned, not an error
    vol.put("config.yaml", b"learning_rate: 0.01\\n")
    vol.get("config.yaml")                       # b'learning_rate: 0.01\\n'
    [f.path for f in vol.list()]                 # ['config.yaml']
    with vol.batch_upload() as batch:            # all or nothing: an exception uploads nothing
        batch.put("a.txt", b"hello")
        batch.put_file("weights.bin", "./weights.bin")

A volume is a directory on the daemon's disk: functions and containers that
mount it (``volumes=[(vol, "/models")]``) read and write it directly, and this
API sees their files. Large files travel in 1 MiB chunks both ways
(:meth:`Volume.put_file` and :meth:`Volume.get_file` never hold a whole file
in memory). A transfer of 8 MiB or more shows its bytes, rate and ETA on stderr
when stderr is a terminal or a notebook (``CHALK_PROGRESS=0`` never, ``=1`` always;
see :mod:`chalkcompute._progress`). Every method blocks; each has an async twin, ``await
vol.get.aio("config.yaml")``; ``async with vol.batch_upload() as batch`` and
``async for e in vol.iterdir.aio()`` work too.

Differences from the reference, on purpose: ``target`` defaults to the SDK's
daemon (``$CHALK_COMPUTE_TARGET`` or ``127.0.0.1:50051``, also ``unix:/path``);
``credentials`` (TLS) is an ``ssl.SSLContext``, a CA bundle path or True rather
than ``grpc.ChannelCredentials`` (chalkd does not depend on grpcio); :class:`VolumeInfo`'s
``created_at``/``updated_at`` are aware UTC ``datetime`` values rather than
protobuf Timestamps; ``listdir(recursive=False)`` lists one directory, its subdirectories as entries ending with '/'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from grpclib.client import ServiceMethod, UnaryUnaryMethod

from chalkcompute import (
    _h2_repr,  # noqa: F401 - h2's frame reprs without hexlifying the data
    _progress,
    _rpc,
)
from chalkcompute._bridge import Twin, run_async, run_sync
from chalkcompute._client import Client, default_target
from chalkcompute._contract import name_too_long, quote, valid_volume_name
from chalkcompute._framing import FramedStream
from chalkcompute._progress import Transfer
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import VolumesStub
from chalkcompute._volume_lane import CHUNK, download_framed, upload_framed
from chalkcompute.exceptions import (
    ErrorKind,
    VolumeClosedError,
    VolumeError,
    VolumeFileNotFoundError,
    VolumeInvalidArgumentError,
    VolumeNotFoundError,
)

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")

__all__ = [
    "Volume",
    "VolumeBatch",
    "VolumeClient",
    "VolumeClosedError",
    "VolumeEntry",
    "VolumeError",
    "VolumeFileNotFoundError",
    "VolumeInfo",
    "VolumeInvalidArgumentError",
    "VolumeNotFoundError",
]

_UNARY_TIMEOUT = 300.0  # Get/List walk the volume to count its files


# -- values --------------------------------------------------------------------------------


# The framed lane's name of each stream RPC (see Client.open_stream).
_FRAMED = {"ReadFile": b"volumes.read", "WriteFiles": b"volumes.write", "ListFiles": b"volumes.list"}




def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _check_volume_name(name: object) -> None:
    """Refuse a volume name over 128 characters before anything (a message, the daemon) reads it."""
    too_long = name_too_long("volume name", name)
    if too_long:
        raise VolumeInvalidArgumentError(too_long, "INVALID_ARGUMENT")


@dataclass(frozen=True)
class VolumeInfo:
    """A volume's metadata: ``created_at`` and ``updated_at`` (the last write through
    this API) are aware UTC datetimes; size and count are of its regular files now."""

    name: str
    created_at: datetime
    updated_at: datetime
    size_bytes: int
    file_count: int

    @classmethod
    def _from_pb(cls, info: pb.VolumeInfo) -> VolumeInfo:
        return cls(info.name, _utc(info.created_at), _utc(info.updated_at), info.size_bytes, info.file_count)


@dataclass(frozen=True)
class VolumeEntry:
    """A file in a volume: ``path`` relative to its root, ``size`` in bytes, ``mtime`` in unix seconds."""

    path: str
    size: int
    mtime: float


# -- the client ----------------------------------------------------------------------------


class VolumeClient:
    """Client for chalkd's Volumes service.

    ``target``: ``"host:port"`` or ``"unix:/path"``; default the SDK's daemon.
    ``credentials``: TLS to a daemon started with ``--tls-cert``: an ``ssl.SSLContext``,
    a CA bundle path, or True for the system's roots. ``metadata``: ``[(key, value), ...]`` sent with every call.
    The connection is the process's shared one to that daemon; :meth:`close` ends
    this client (later calls raise :class:`VolumeClosedError`), not the connection.
    """

    def __init__(self, target: str | None = None, credentials: ssl.SSLContext | str | bool | None = None,
                 metadata: list[tuple[str, str]] | None = None) -> None:
        md = _rpc.check_metadata(metadata)
        self.target = target or default_target()
        self._client = Client.get(self.target, credentials=credentials)  # TLS when given
        self._metadata = md
        self.closed = False

    def _check(self, what: str) -> None:
        if self.closed:
            raise VolumeClosedError(f"cannot {what}: the VolumeClient for {self.target} is closed", None)

    @property
    def _stub(self) -> VolumesStub:
        # Made on use, on the SDK loop: the channel belongs to it.
        return VolumesStub(self._client.channel)

    async def _call(self, method: UnaryUnaryMethod[S, R], request: S, what: str,
                    timeout: float | None = _UNARY_TIMEOUT) -> R:
        self._check(what)
        return await _rpc.unary(method, request, target=self.target, timeout=timeout, metadata=self._metadata,
                                kind=ErrorKind.VOLUME)

    def _guarded(self) -> contextlib.AbstractContextManager[None]:
        """Around a volume stream: its failures mapped as :meth:`_call` maps them."""
        return _rpc.guarded(self.target, ErrorKind.VOLUME)

    @contextlib.asynccontextmanager
    async def _stream(self, method: ServiceMethod[Any, Any]) -> AsyncIterator[Any]:
        """A ReadFile/WriteFiles/ListFiles stream: on the daemon's unix socket when it
        is on this machine (no HTTP/2: ~3x the throughput), else gRPC (always with
        ``metadata``, which only gRPC carries). Both take ``send_message(msg, end=True)``."""
        name = _FRAMED[method.name.rsplit("/", 1)[-1]]
        async with self._client.open_stream(name, method, method.reply_type, metadata=self._metadata) as stream:
            yield stream

    def close(self) -> None:
        """End this client: every later call (and every Volume from it) raises VolumeClosedError."""
        self.closed = True

    def __enter__(self) -> VolumeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> VolumeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _create(self, name: str) -> Volume:
        """Create a named volume; an existing one is returned (not an error)."""
        _check_volume_name(name)
        resp = await self._call(self._stub.Create, pb.CreateVolumeRequest(name=name), f"create volume {quote(name)}")
        return Volume(name, client=self, _info=VolumeInfo._from_pb(resp.info))

    create = Twin(_create)

    def get(self, name: str) -> Volume:
        """A handle to the volume, without asking the daemon (see :meth:`lookup`)."""
        self._check(f"get volume {name!r}")
        return Volume(name, client=self)

    async def _lookup(self, name: str) -> Volume:
        """The volume, its info fetched; raises VolumeNotFoundError when it does not exist."""
        _check_volume_name(name)
        resp = await self._call(self._stub.Get, pb.GetVolumeRequest(name=name), f"look up volume {quote(name)}")
        return Volume(name, client=self, _info=VolumeInfo._from_pb(resp.info))

    lookup = Twin(_lookup)

    async def _list(self) -> list[VolumeInfo]:
        """One VolumeInfo per volume, by name."""
        resp = await self._call(self._stub.List, pb.ListVolumesRequest(), "list volumes")
        return [VolumeInfo._from_pb(i) for i in resp.volumes]

    list = Twin(_list)

    def __repr__(self) -> str:
        return f"VolumeClient(target={self.target!r}{', closed' if self.closed else ''})"


# -- a volume ------------------------------------------------------------------------------


class Volume:
    """A handle to a named volume, providing file operations.

    Obtain one with :meth:`VolumeClient.create`, :meth:`VolumeClient.get` or
    :meth:`VolumeClient.lookup`; ``Volume("name")`` alone uses a default client
    (and is what ``volumes=[(Volume("name"), "/mnt")]`` needs). Paths are relative
    and '/'-separated; absolute paths, ``..`` and empty segments are refused.
    """

    def __init__(self, name: str, client: VolumeClient | None = None, *, _info: VolumeInfo | None = None) -> None:
        _check_volume_name(name)
        if not valid_volume_name(name):
            raise VolumeInvalidArgumentError(f"invalid volume name {quote(name)}: use 1-63 letters, digits, '.', '_' "
                                             "or '-', starting with a letter or digit", "INVALID_ARGUMENT")
        self.name = name
        self._client_arg = client
        self._info = _info

    @property
    def client(self) -> VolumeClient:
        if self._client_arg is None:
            self._client_arg = VolumeClient()
        return self._client_arg

    @property
    def info(self) -> VolumeInfo:
        """The volume's info, fetched from the daemon on first use (see :meth:`refresh`)."""
        if self._info is None:
            self.refresh()
        assert self._info is not None
        return self._info

    async def _refresh(self) -> VolumeInfo:
        """Fetch the volume's info again (size and file count change as files do)."""
        client = self.client
        resp = await client._call(client._stub.Get, pb.GetVolumeRequest(name=self.name), f"read volume {self.name!r}")
        self._info = VolumeInfo._from_pb(resp.info)
        return self._info

    refresh = Twin(_refresh)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, path: str, local_path: str | os.PathLike | None) -> bytes | int:
        """The file's contents, or its size once streamed to ``local_path``."""
        client = self.client
        client._check(f"read {path!r} from volume {self.name!r}")
        request = pb.ReadFileRequest(name=self.name, path=path)
        transfer = Transfer(f"get {self.name}:{path}")
        try:
            with client._guarded():
                async with client._stream(client._stub.ReadFile) as stream:
                    if isinstance(stream, FramedStream) and not getattr(stream.reader, "_buffer", b"?"):
                        return await download_framed(stream, request, local_path, transfer)
                    await stream.send_message(request, end=True)
                    chunks = _stream_data(stream, f"{path!r} in volume {self.name!r}", transfer)
                    if local_path is None:
                        parts = [data async for data in chunks]
                        return parts[0] if len(parts) == 1 else b"".join(parts)
                    return await _write_chunks(chunks, local_path)
        finally:
            transfer.close()

    async def _chunks(self, path: str) -> AsyncIterator[tuple[bytes, int]]:
        """(data, whole size) per chunk of the file, as the daemon streams it (the CLI's ``get``
        to stdout reads it so; :meth:`get` and :meth:`get_file` take the faster way)."""
        client = self.client
        client._check(f"read {path!r} from volume {self.name!r}")
        transfer = Transfer(f"get {self.name}:{path}")
        try:
            with client._guarded():
                async with client._stream(client._stub.ReadFile) as stream:
                    await stream.send_message(pb.ReadFileRequest(name=self.name, path=path), end=True)
                    first = await stream.recv_message()
                    if first is None:  # only a broken daemon ends without a chunk
                        raise VolumeError(f"chalkd sent nothing for {path!r} in volume {self.name!r}", "INTERNAL")
                    size = first.size
                    transfer.sized(size)
                    transfer.done += len(first.data)
                    yield first.data, size
                    async for chunk in stream:
                        transfer.done += len(chunk.data)
                        yield chunk.data, size
        finally:
            transfer.close()

    async def _get(self, path: str) -> bytes:
        """Read a file's contents (bytes; :meth:`get_file` streams a large one to disk instead)."""
        data = await self._read(path, None)
        assert isinstance(data, bytes)
        return data

    get = Twin(_get)

    async def _get_file(self, path: str, local_path: str | os.PathLike) -> int:
        """Stream a file to ``local_path`` chunk by chunk (never whole in memory); its size.

        ``local_path`` is opened only once the daemon has started sending, so a
        missing file leaves an existing local file untouched."""
        n = await self._read(path, local_path)
        assert isinstance(n, int)
        return n

    get_file = Twin(_get_file)

    async def _entries(self, prefix: str = "", recursive: bool = True) -> AsyncIterator[VolumeEntry]:
        """Iterate over files in the volume, page by page as the daemon walks it.

        Same as listdir() but lazy: ``for e in vol.iterdir("logs/"): ...``."""
        client = self.client
        client._check(f"list volume {self.name!r}")
        with client._guarded():
            async with client._stream(client._stub.ListFiles) as stream:
                request = pb.ListFilesRequest(name=self.name, prefix=prefix, recursive=recursive)
                await stream.send_message(request, end=True)
                async for page in stream:
                    for e in page.entries:
                        yield VolumeEntry(e.path, e.size, e.mtime)

    iterdir = Twin(_entries, iterator=True)

    async def _listdir(self, prefix: str = "", recursive: bool = True) -> list[VolumeEntry]:
        """Files whose paths start with ``prefix``, in path order. With
        ``recursive=False``, only the prefix's directory: subdirectories appear as
        entries whose path ends with '/'."""
        return [e async for e in self._entries(prefix, recursive)]

    listdir = Twin(_listdir)
    list = listdir

    # -- writing ---------------------------------------------------------------------------

    async def _upload(self, items: Sequence[tuple[str, bytes | Path | BinaryIO]]) -> pb.WriteFilesResponse:
        """One WriteFiles stream: every file in chunks, then commit (nothing is
        visible before the daemon has the whole batch)."""
        client = self.client
        client._check(f"write to volume {self.name!r}")
        transfer = Transfer(_upload_label(self.name, items))
        size = _known_size(items)
        if size is not None:
            transfer.sized(size)
        try:
            with client._guarded():
                async with client._stream(client._stub.WriteFiles) as stream:
                    if isinstance(stream, FramedStream):
                        return await upload_framed(stream, self.name, items, transfer)
                    name = self.name
                    for path, src in items:
                        async for piece, last in _pieces(src):
                            await stream.send_message(pb.WriteFilesRequest(name=name, path=path, data=piece,
                                                                     end_of_file=last))
                            name = ""  # the volume is named by the first message only
                            transfer.done += len(piece)
                    await stream.send_message(pb.WriteFilesRequest(name=name, commit=True), end=True)
                    return await stream.recv_message()
        finally:
            transfer.close()

    async def _put(self, path: str, data: bytes | str) -> Volume:
        """Write a file (bytes, or str as UTF-8), atomically; returns self for chaining."""
        await self._upload([(path, _as_bytes(data, path))])
        return self

    put = Twin(_put)

    async def _put_file(self, path: str, local_path: str | os.PathLike) -> Volume:
        """Upload a local file, streamed from disk in chunks; returns self."""
        await self._upload([(path, _local_file(local_path))])
        return self

    put_file = Twin(_put_file)

    async def _remove(self, path: str) -> Volume:
        """Remove a file; returns self. A symlink there is removed itself, never followed."""
        client = self.client
        await client._call(client._stub.RemoveFile, pb.RemoveFileRequest(name=self.name, path=path),
                           f"remove {path!r} from volume {self.name!r}")
        return self

    remove = Twin(_remove)

    def batch_upload(self) -> VolumeBatch:
        """Context manager for batching uploads: everything staged is uploaded in
        one stream and made visible together on a clean exit; nothing when the
        block raises. ``async with vol.batch_upload() as batch`` works too."""
        return VolumeBatch(self)

    async def _delete(self) -> None:
        """Delete this volume and all its contents."""
        client = self.client
        await client._call(client._stub.Delete, pb.DeleteVolumeRequest(name=self.name), f"delete volume {self.name!r}")
        self._info = None

    delete = Twin(_delete)

    def __repr__(self) -> str:
        return f"Volume({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Volume) and other.name == self.name and other.client.target == self.client.target

    def __hash__(self) -> int:
        return hash(("Volume", self.name))


class VolumeBatch:
    """What ``vol.batch_upload()`` yields: ``put``/``put_file`` stage files, the clean
    exit uploads them all (a path staged twice keeps the last)."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.items: list[tuple[str, bytes | Path]] = []

    def put(self, path: str, data: bytes | str) -> VolumeBatch:
        self.items.append((path, _as_bytes(data, path)))
        return self

    def put_file(self, path: str, local_path: str | os.PathLike) -> VolumeBatch:
        """Stage a local file; it is read (in chunks) only at upload."""
        self.items.append((path, _local_file(local_path)))
        return self

    def __enter__(self) -> VolumeBatch:
        self.volume.client._check(f"write to volume {self.volume.name!r}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            run_sync(self.volume._upload(self.items))

    async def __aenter__(self) -> VolumeBatch:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        if exc_type is None:
            await run_async(self.volume._upload(self.items))


def _as_bytes(data: object, path: str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data) if not isinstance(data, bytes) else data
    raise TypeError(f"the data for {path!r} must be bytes or str, got {type(data).__name__}")


def _upload_label(name: str, items: Sequence[tuple[str, bytes | Path | BinaryIO]]) -> str:
    if not items:
        return f"put {name}"
    more = f" (+{len(items) - 1} files)" if len(items) > 1 else ""
    return f"put {name}:{items[0][0]}{more}"


def _known_size(items: Sequence[tuple[str, bytes | Path | BinaryIO]]) -> int | None:
    """The upload's bytes when all are known before sending (byte strings, local files); None with a
    caller's file object (the CLI's stdin), whose length shows only at its end: no bar for those.
    Local files are stat'ed only when a bar could show."""
    total, files = 0, []
    for _, src in items:
        if isinstance(src, bytes):
            total += len(src)
        elif isinstance(src, Path):
            files.append(src)
        else:
            return None
    if files and _progress.enabled():
        try:
            total += sum(f.stat().st_size for f in files)
        except OSError:  # gone meanwhile: the upload itself reports it
            return None
    return total


def _local_file(local_path: str | os.PathLike[str]) -> Path:
    p = Path(local_path)
    if not p.is_file():
        raise FileNotFoundError(f"no local file {str(p)!r} to upload")
    return p


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb", buffering=0)


async def _stream_data(stream: Any, what: str, transfer: Transfer) -> AsyncIterator[bytes]:
    """Each FileChunk's data, as the daemon streams it (gRPC, or a framed stream read by asyncio),
    counted in ``transfer``."""
    first = await stream.recv_message()
    if first is None:  # only a broken daemon ends without a chunk
        raise VolumeError(f"chalkd sent nothing for {what}", "INTERNAL")
    transfer.sized(first.size)
    transfer.done += len(first.data)
    yield first.data
    async for chunk in stream:
        transfer.done += len(chunk.data)
        yield chunk.data


async def _write_chunks(chunks: AsyncIterator[bytes], local_path: str | os.PathLike) -> int:
    out = None
    n = 0
    try:
        async for data in chunks:
            if out is None:
                out = await asyncio.to_thread(open, local_path, "wb")
            if data:
                await asyncio.to_thread(out.write, data)
                n += len(data)
    finally:
        if out is not None:
            await asyncio.to_thread(out.close)
    return n


async def _pieces(src: bytes | Path | BinaryIO) -> AsyncIterator[tuple[bytes, bool]]:
    """(chunk, is_last) for a file's contents: at least one piece, even when empty."""
    if isinstance(src, bytes):
        if len(src) <= CHUNK:
            yield src, True
            return
        view = memoryview(src)
        for i in range(0, len(src), CHUNK):
            yield bytes(view[i:i + CHUNK]), i + CHUNK >= len(src)
        return
    own = isinstance(src, Path)  # else a binary file object of the caller's (the CLI's stdin)
    f: BinaryIO = await asyncio.to_thread(_open_binary, src) if isinstance(src, Path) else src
    try:
        data = await asyncio.to_thread(f.read, CHUNK)
        while True:
            # The next chunk is read while this one is sent; is_last needs it anyway.
            nxt = await asyncio.to_thread(f.read, CHUNK) if data else b""
            yield data, not nxt
            if not nxt:
                return
            data = nxt
    finally:
        if own:
            await asyncio.to_thread(f.close)
