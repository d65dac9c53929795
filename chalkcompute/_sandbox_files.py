"""Files inside a sandbox (``sandbox.fs``), read and written by its agent, never on the daemon's host.

    sandbox.fs.write_bytes("/data/in.csv", b"a,b\\n1,2\\n")      # parents made; replaced whole
    sandbox.fs.read_bytes("/data/in.csv")                        # b'a,b\\n1,2\\n'
    sandbox.fs.upload_file("./model.bin", "/models/model.bin")   # 1 MiB pieces, bounded memory
    [e.name for e in sandbox.fs.listdir("/data")]                # ['in.csv']

Every method has an ``.aio`` twin. Missing paths raise FileNotFoundError, and so on (see :func:`_fs_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from chalkcompute import _rpc
from chalkcompute._bridge import Twin
from chalkcompute._contract import path_too_long
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.exceptions import (
    ErrorKind,
    InvalidArgumentError,
    PermissionDeniedError,
    SandboxNotFoundError,
    SandboxStatusError,
)

__all__ = ["SandboxFiles", "SandboxFileEntry"]

PIECE = 1 << 20  # bytes per file-write message


@dataclass(frozen=True)
class SandboxFileEntry:
    """A directory entry inside a sandbox: ``type`` is "file", "dir", "link" or "other"."""

    name: str
    type: str
    size: int
    mtime: float


class SandboxFiles:
    """Files inside a sandbox, read and written by its agent (never resolved on the daemon's host);
    large files travel in 1 MiB pieces both ways, in bounded memory. Paths are absolute or relative to
    the image's working directory. A missing path raises FileNotFoundError."""

    def __init__(self, sandbox: Any) -> None:  # a chalkcompute.sandbox.Sandbox (which imports this module)
        self.sandbox = sandbox

    def _check(self, path: str) -> str:
        if not isinstance(path, str) or not path:
            raise ValueError(f"give a path inside the sandbox, got {path!r}")
        too_long = path_too_long("path", path)
        if too_long:
            raise ValueError(too_long)
        return path

    async def _chunks(self, path: str) -> AsyncIterator[bytes]:
        client = self.sandbox.client
        request = pb.SandboxFileRequest(sandbox_id=self.sandbox.id, path=self._check(path))
        with _fs_errors(client.target):
            async with client._client.open_stream(b"sandboxes.read", client._stub.ReadFile, pb.SandboxFileChunk,
                                                  metadata=client._metadata) as stream:
                await stream.send_message(request, end=True)
                while (chunk := await stream.recv_message()) is not None:
                    if chunk.data:
                        yield chunk.data

    async def _read_bytes(self, path: str) -> bytes:
        """The whole file at ``path``."""
        return b"".join([c async for c in self._chunks(path)])

    read_bytes = Twin(_read_bytes)

    async def _download_file(self, path: str, local_path: str | os.PathLike) -> int:
        """Copy the sandbox's file at ``path`` to ``local_path``; returns its size."""
        size = 0
        tmp = f"{os.fspath(local_path)}.part"
        try:
            with open(tmp, "wb") as out:
                async for chunk in self._chunks(path):
                    await asyncio.to_thread(out.write, chunk)
                    size += len(chunk)
            os.replace(tmp, local_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size

    download_file = Twin(_download_file)

    async def _write(self, path: str, pieces: AsyncIterator[bytes], mode: int | None) -> int:
        client = self.sandbox.client
        first = pb.SandboxWriteRequest(sandbox_id=self.sandbox.id, path=self._check(path), mode=mode or 0)
        with _fs_errors(client.target):
            async with client._client.open_stream(b"sandboxes.write", client._stub.WriteFile,
                                                  pb.SandboxWriteResponse, metadata=client._metadata) as stream:
                try:
                    await stream.send_message(first)
                    async for piece in pieces:
                        await stream.send_message(pb.SandboxWriteRequest(data=piece))
                    await stream.end()
                except (OSError, ConnectionError):
                    # Refused part way (no such sandbox, a bad path): the daemon's answer says why.
                    await stream.recv_message()
                    raise
                resp = await stream.recv_message()
        return resp.size if resp is not None else 0

    async def _write_bytes(self, path: str, data: bytes, mode: int | None = None) -> int:
        """Write ``data`` to ``path`` (parents made; replaced whole, never half-written); returns its size."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        view = memoryview(data)

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(view), PIECE):
                yield bytes(view[i:i + PIECE])

        return await self._write(path, pieces(), mode)

    write_bytes = Twin(_write_bytes)

    async def _upload_file(self, local_path: str | os.PathLike, path: str, mode: int | None = None) -> int:
        """Copy the local file ``local_path`` to ``path`` in the sandbox; returns its size."""
        f = open(local_path, "rb")  # noqa: SIM115 (closed below, after the last piece)

        async def pieces() -> AsyncIterator[bytes]:
            while piece := await asyncio.to_thread(f.read, PIECE):
                yield piece

        try:
            return await self._write(path, pieces(), mode)
        finally:
            f.close()

    upload_file = Twin(_upload_file)

    async def _listdir(self, path: str = ".") -> list[SandboxFileEntry]:
        """The entries of the directory ``path``, by name."""
        client = self.sandbox.client
        request = pb.SandboxFileRequest(sandbox_id=self.sandbox.id, path=self._check(path))
        with _fs_errors(client.target):
            resp = await client._call(client._stub.ListDir, request, timeout=120)
        return sorted((SandboxFileEntry(e.name, e.type, e.size, e.mtime) for e in resp.entries),
                      key=lambda e: e.name)

    listdir = Twin(_listdir)






@contextlib.contextmanager
def _fs_errors(target: str) -> Iterator[None]:
    """File failures as Python's own: NOT_FOUND -> FileNotFoundError, PERMISSION_DENIED -> PermissionError,
    "is a directory" -> IsADirectoryError, "not a directory" -> NotADirectoryError; sandbox states as the
    Sandbox family."""
    try:
        with _rpc.guarded(target, ErrorKind.SANDBOX):
            yield
    except SandboxNotFoundError as exc:
        message = str(exc)
        if message.startswith("no such file"):
            raise FileNotFoundError(message) from None
        raise
    except SandboxStatusError as exc:
        message = str(exc)
        if message.startswith("is a directory"):
            raise IsADirectoryError(message) from None
        if message.startswith("not a directory"):
            raise NotADirectoryError(message) from None
        raise
    except PermissionDeniedError as exc:
        if str(exc).startswith("permission denied"):
            raise PermissionError(str(exc)) from None
        raise
    except InvalidArgumentError as exc:
        raise ValueError(str(exc)) from None
