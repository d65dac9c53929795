"""Protocol v2, file operations run by the agent in the container's own filesystem.

One request per connection (paths absolute, or relative to the agent's working directory)::

    client -> {"t": "fs_read", "v": 2, "path": "/etc/hostname"}
    agent  -> {"t": "fs_meta", "size": 13}  {"t": "data"} b"..." (<= 1 MiB each) ...  {"t": "end"}

    client -> {"t": "fs_write", "v": 2, "path": "out/a.bin", "mode": 420}  {"t": "data"} b"..." ...  {"t": "end"}
    agent  -> {"t": "done", "size": 3}

    client -> {"t": "fs_list", "v": 2, "path": "/etc"}
    agent  -> {"t": "entries", "entries": [{"name": "hostname", "type": "file", "size": 13,
               "mtime": 1700000000.0}, ...]} (pages of <= 1000) ...  {"t": "end"}

Failures: ``{"t": "error", "code": "not_found" | "is_a_directory" | "not_a_directory" |
"permission_denied" | "bad_request" | "io", "error": "... '/the/path'"}``, then the agent closes.

Reads and listings are written with transport backpressure: a client that stops reading pauses the
agent, whose memory stays bounded. A write creates the parent directories, streams into a temporary
file in the target directory and renames it over the target at ``end``: a dropped connection
leaves nothing behind (no fsync: this is a file handed over, not a database commit). Files are
read and written on the agent's event loop, 1 MiB at a time, yielding between chunks.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .handler import AgentRef as Agent
from .handler import ConnectionRef as _Connection
from .handler import Handler
from .protocol import ProtocolError, encode

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "PAGE", "FsRead", "FsWrite", "FsList", "error_code"]

CHUNK = 1 << 20
PAGE = 1000
# Chunks sent per turn of the event loop before letting other connections run.
BURST = 8
# A transport holding more than this is "paused": we wait for it to drain.
HIGH_WATER = 4 << 20


def error_code(exc: OSError) -> str:
    """The protocol's error code for an OSError."""
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, IsADirectoryError):
        return "is_a_directory"
    if isinstance(exc, NotADirectoryError) or exc.errno == errno.ENOTDIR:
        return "not_a_directory"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    return "io"


def _message(exc: OSError, what: str, path: str) -> str:
    reason = (exc.strerror or str(exc)).lower()
    return f"cannot {what} {path!r}: {reason}"


def _path(h: dict[str, Any]) -> str:
    path = h.get("path")
    if not isinstance(path, str) or not path:
        raise ProtocolError(f"{h['t']} needs 'path': a non-empty string, got {path!r}")
    if "\x00" in path:
        raise ProtocolError(f"'path' must not contain a NUL byte: {path!r}")
    return path


class _Pump(Handler):
    """Writes frames from ``chunks()`` with backpressure: stops while the transport is paused."""

    def __init__(self, agent: Agent, conn: _Connection) -> None:
        assert agent.loop is not None
        self.loop: asyncio.AbstractEventLoop = agent.loop
        self.conn = conn
        self.paused = False
        self.scheduled = False
        self.done = False
        if conn.transport is not None:
            conn.transport.set_write_buffer_limits(high=HIGH_WATER)

    def frames(self) -> Iterator[bytes]:
        raise NotImplementedError

    def start(self) -> None:
        self._it = self.frames()
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled and not self.done:
            self.scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self.scheduled = False
        for _ in range(BURST):
            if self.paused or self.done or self.conn.closed:
                return
            try:
                frame = next(self._it)
            except StopIteration:
                self.done = True
                self.conn.close()
                return
            except OSError as exc:
                self.done = True
                self.fail(exc)
                return
            self.conn.send(frame)
        self._schedule()

    def fail(self, exc: OSError) -> None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._schedule()

    def lost(self) -> None:
        self.done = True
        close = getattr(self._it, "close", None) if hasattr(self, "_it") else None
        if close is not None:
            close()  # runs the generator's finally: closes its file


class FsRead(_Pump):
    @classmethod
    def open(cls, agent: Agent, conn: _Connection, h: dict[str, Any]) -> Handler | None:
        path = _path(h)
        try:
            # O_NONBLOCK: opening a FIFO must not hang the agent; it is refused below anyway.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            conn.fail(_message(exc, "read", path), code=error_code(exc))
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                conn.fail(f"cannot read {path!r}: it is a directory", code="is_a_directory")
                os.close(fd)
                return None
            if not stat.S_ISREG(st.st_mode):
                conn.fail(f"cannot read {path!r}: not a regular file (mode {stat.filemode(st.st_mode)})")
                os.close(fd)
                return None
            os.set_blocking(fd, True)
        except OSError as exc:
            os.close(fd)
            conn.fail(_message(exc, "read", path), code=error_code(exc))
            return None
        reader = cls(agent, conn)
        reader.path, reader.fd, reader.size = path, fd, st.st_size
        reader.start()
        return reader

    path: str
    fd: int
    size: int

    def frames(self) -> Iterator[bytes]:
        try:
            yield encode({"t": "fs_meta", "size": self.size})
            while True:
                data = os.read(self.fd, CHUNK)
                if not data:
                    break
                yield encode({"t": "data"}, data)
            yield encode({"t": "end"})
        finally:
            os.close(self.fd)

    def fail(self, exc: OSError) -> None:
        # Mid-stream: the client sees an error frame instead of "end".
        self.conn.fail(_message(exc, "read", self.path), code=error_code(exc))


class FsList(_Pump):
    @classmethod
    def open(cls, agent: Agent, conn: _Connection, h: dict[str, Any]) -> Handler | None:
        path = _path(h)
        try:
            it = os.scandir(path)
        except OSError as exc:
            conn.fail(_message(exc, "list", path), code=error_code(exc))
            return None
        lister = cls(agent, conn)
        lister.path, lister.scan = path, it
        lister.start()
        return lister

    path: str
    scan: Any

    def frames(self) -> Iterator[bytes]:
        with self.scan as it:
            page: list[dict[str, Any]] = []
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we list
                mode = st.st_mode
                kind = ("link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode)
                        else "file" if stat.S_ISREG(mode) else "other")
                page.append({"name": entry.name, "type": kind, "size": st.st_size, "mtime": st.st_mtime})
                if len(page) >= PAGE:
                    yield encode({"t": "entries", "entries": page})
                    page = []
            if page:
                yield encode({"t": "entries", "entries": page})
        yield encode({"t": "end"})

    def fail(self, exc: OSError) -> None:
        self.conn.fail(_message(exc, "list", self.path), code=error_code(exc))


class FsWrite(Handler):
    """Receives data frames into a temporary file; renames it over the target at ``end``."""

    @classmethod
    def open(cls, agent: Agent, conn: _Connection, h: dict[str, Any]) -> Handler | None:
        writer = cls(conn, str(h.get("path")))
        try:
            writer._open(h)
        except ProtocolError as exc:
            writer.refuse(str(exc), "bad_request")
        except OSError as exc:
            writer.refuse(_message(exc, "write", writer.path), error_code(exc))
        return writer

    def __init__(self, conn: _Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self.fd: int | None = None
        self.tmp = ""
        self.mode = 0
        self.size = 0

    def _open(self, h: dict[str, Any]) -> None:
        path = self.path = _path(h)
        mode = h.get("mode")
        if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777):
            raise ProtocolError(f"'mode' must be an integer permission mode 0..0o7777, got {mode!r}")
        parent, name = os.path.split(path)
        if not name or name in (".", ".."):
            raise ProtocolError(f"fs_write needs a file path, got {path!r}")
        if os.path.isdir(path):  # refused now, not after the whole file has been sent
            raise IsADirectoryError(errno.EISDIR, "it is a directory", path)
        if parent:
            _makedirs(parent)
        self.mode = _default_mode(path) if mode is None else mode
        self.fd, self.tmp = _temp_file(parent or ".", name)

    def refuse(self, message: str, code: str) -> None:
        """Send the error, then read and drop whatever the client still sends until it closes. (Closing
        with its data unread would reset the connection, and the client might miss the error.)"""
        self.conn.send(encode({"t": "error", "code": code, "error": message}))
        transport = self.conn.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        else:
            self.conn.close()

    def frame(self, header: dict[str, Any], payload: bytes) -> None:
        if self.fd is None:
            return
        kind = header["t"]
        try:
            if kind == "data":
                view = memoryview(payload)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                self.size += len(payload)
            elif kind == "end":
                fd, self.fd = self.fd, None
                try:
                    os.fchmod(fd, self.mode)
                finally:
                    os.close(fd)
                os.rename(self.tmp, self.path)
                self.conn.send(encode({"t": "done", "size": self.size}))
                self.conn.close()
        except OSError as exc:
            self._discard()
            self.refuse(_message(exc, "write", self.path), error_code(exc))

    def _discard(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def lost(self) -> None:
        if self.fd is not None:
            log.info("fs_write of %r: connection closed before the end: discarded", self.path)
            self._discard()


def _makedirs(parent: str) -> None:
    try:
        os.makedirs(parent, exist_ok=True)
    except FileExistsError:
        # A component is a file: say so the way open() would.
        raise NotADirectoryError(errno.ENOTDIR, f"{parent!r} is not a directory", parent) from None


def _default_mode(path: str) -> int:
    """An existing file keeps its mode; a new one gets 0666 less the umask, as open() would give it."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_file(directory: str, name: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(directory, f".{name[:200]}.{os.urandom(6).hex()}.chalk-tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)
