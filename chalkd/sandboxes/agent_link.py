"""The daemon's client for the agent's protocol v2: exec sessions and file operations in a sandbox.

    link = await ExecLink.start(sock, "s1", ["sh", "-c", "cat; echo done >&2"], timeout=60)
    link.pid, link.stdin_credit                  # (42, 1048576)
    await link.write_stdin(b"hi\\n")              # at most link.stdin_credit bytes at a time
    await link.close_stdin()
    while events := await link.next_events():    # [] once the exit event has been returned
        for ev in events:                        # AgentEvent("stdout", seq=1, data=b"hi\\n"), ...
            ...                                  # ... AgentEvent("exit", seq=3, exit_code=0)
        await link.ack(max(ev.seq for ev in events))
    await link.close()

    link = await ExecLink.attach(sock, "s1", after=2)   # another connection: replays events 3..
    async for chunk in fs_read(sock, "/etc/hostname"): ...
    await fs_write(sock, "/work/out.bin", chunks, mode=0o644)   # -> bytes written
    await fs_list(sock, "/work")                 # [{"name", "type", "size", "mtime"}, ...] by name

Wire format: :mod:`chalkcompute.agent.sessions` and :mod:`chalkcompute.agent.fsops`. The socket is
checked and connected exactly as for v1 (:mod:`chalkd.containers.agent_client`: never a symlink, a
non-socket or a socket owned by someone else). Each link reads from the socket only while less than
about 2 MiB is buffered, so a slow consumer pauses the agent (whose window then stops the process).

Errors: :class:`SessionNotFound`, :class:`SessionGone` (events asked for were acked and dropped),
:class:`SessionExists`, :class:`TooManySessions`; :class:`AgentUnavailableError` when no agent answers
or the connection ends before the session's exit event (the session may live on: attach again);
file operations raise the matching ``OSError`` (``FileNotFoundError``, ``IsADirectoryError``,
``NotADirectoryError``, ``PermissionError``, plain ``OSError``) or ``ValueError`` (bad request)
with the agent's message, which names the path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from chalkcompute.agent.protocol import PREFIX, PROTOCOL_VERSION, V2, ProtocolError, decode_header, encode, split_prefix
from chalkd.containers.agent_client import (
    AgentError,
    AgentProtocolError,
    AgentSocket,
    AgentUnavailableError,
    _open_checked,
)

log = logging.getLogger(__name__)

__all__ = [
    "AgentEvent", "ExecLink", "SessionNotFound", "SessionGone", "SessionExists", "TooManySessions",
    "SessionTakenOver", "fs_read", "fs_read_open", "FsReader", "fs_write", "fs_list", "list_sessions",
    "DEFAULT_WINDOW", "DEFAULT_DETACH_TIMEOUT", "FS_CHUNK",
]

DEFAULT_WINDOW = 8 << 20
DEFAULT_DETACH_TIMEOUT = 300.0
FS_CHUNK = 1 << 20
# Read from the socket while less than this is buffered (a frame carries at most 1 MiB of output).
BUFFER_HIGH = 2 << 20
# The receive buffer starts at BUFFER_START and doubles as needed (to about BUFFER_HIGH plus one
# frame on a busy link); READ_ROOM is the room it keeps free for one read.
BUFFER_START = 512 << 10
READ_ROOM = 256 << 10


class SessionNotFound(AgentError):
    """No session by that id in the agent (never started, or ended and forgotten)."""


class SessionGone(AgentError):
    """The events an attach asked for were acked and dropped already."""


class SessionExists(AgentError):
    """A session by that id exists already."""


class TooManySessions(AgentError):
    """The agent holds MAX_SESSIONS (256) sessions."""


class SessionTakenOver(AgentUnavailableError):
    """Another connection attached to the session, and the agent closed this one."""


@dataclass
class AgentEvent:
    """One event from the agent: ``stdout`` / ``stderr`` (``data``), ``exit`` (last; ``exit_code`` or
    ``signal``, and ``error`` when it could not start or timed out), or ``stdin_credit`` (``up_to``: the
    total stdin bytes this link may have sent, counted from its first; unnumbered, ``seq`` 0)."""

    kind: str
    seq: int = 0
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    up_to: int = 0


_SESSION_ERRORS: dict[str, type[AgentError]] = {
    "not_found": SessionNotFound, "gone": SessionGone, "exists": SessionExists, "too_many": TooManySessions,
    "taken_over": SessionTakenOver, "stopping": AgentUnavailableError,
}
_FS_ERRORS: dict[str, type[Exception]] = {
    "not_found": FileNotFoundError, "is_a_directory": IsADirectoryError, "not_a_directory": NotADirectoryError,
    "permission_denied": PermissionError, "io": OSError, "bad_request": ValueError,
}


def _session_error(h: dict[str, Any]) -> AgentError:
    message = str(h.get("error") or "the agent refused the request")
    return _SESSION_ERRORS.get(str(h.get("code")), AgentProtocolError)(message)


def _fs_error(h: dict[str, Any]) -> Exception:
    message = str(h.get("error") or "the agent refused the request")
    code = str(h.get("code"))
    if code == "stopping":
        return AgentUnavailableError(message)
    return _FS_ERRORS.get(code, AgentProtocolError)(message)


class _FrameStream(asyncio.BufferedProtocol):
    """A connection to the agent that parses frames on demand and stops reading while
    BUFFER_HIGH bytes wait to be parsed (the transport's own pause), so memory stays bounded.

    The socket is read straight into one buffer (no bytes object per read); each frame's payload is
    copied out of it once, when parsed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(BUFFER_START)
        self.rpos = 0  # start of the bytes not parsed yet
        self.wpos = 0  # end of the bytes received
        self.frames: collections.deque[tuple[dict[str, Any], bytes]] = collections.deque()
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.hello_seen = False
        self.lost = False
        self._closed: asyncio.Future[None] | None = None

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self.buf
        if len(buf) - self.wpos < READ_ROOM:
            pending = self.wpos - self.rpos
            if pending <= self.rpos and (pending <= READ_ROOM or len(buf) >= 2 * BUFFER_HIGH):
                # Move the unparsed tail to the front when that is cheap: a small tail, or a buffer
                # big enough that it happens rarely (a 2 MiB buffer would move ~1 MiB per MiB read).
                buf[:pending] = bytes(memoryview(buf)[self.rpos:self.wpos])
                self.rpos, self.wpos = 0, pending
            if len(buf) - self.wpos < READ_ROOM:
                buf.extend(bytes(len(buf)))  # a busy link settles at 2 * BUFFER_HIGH
        return memoryview(buf)[self.wpos:]

    def buffer_updated(self, nbytes: int) -> None:
        self.wpos += nbytes
        if self.wpos - self.rpos >= BUFFER_HIGH and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._wake()
        self.writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # reading

    def parse(self) -> None:
        """Move every complete frame from the byte buffer to ``frames`` (the hello is checked and dropped)."""
        pos, end_data = self.rpos, self.wpos
        view = memoryview(self.buf)
        try:
            while end_data - pos >= PREFIX.size:
                hlen, plen = split_prefix(bytes(view[pos:pos + PREFIX.size]))
                end = pos + PREFIX.size + hlen + plen
                if end_data < end:
                    break
                start = pos + PREFIX.size
                header = decode_header(bytes(view[start:start + hlen]))
                if self.hello_seen:
                    self.frames.append((header, bytes(view[start + hlen:end])))
                else:
                    self._check_hello(header)
                pos = end
        except ProtocolError as exc:
            raise AgentProtocolError(f"the agent at {self.path} sent a bad frame: {exc}") from None
        finally:
            view.release()
            self.rpos = pos
            if pos == end_data:
                self.rpos = self.wpos = 0
        left = self.wpos - self.rpos
        if self.reading_paused and self.transport is not None and (left < BUFFER_HIGH or not self.frames):
            self.reading_paused = False
            self.transport.resume_reading()

    def _check_hello(self, h: dict[str, Any]) -> None:
        self.hello_seen = True
        if h.get("t") != "hello":
            raise AgentProtocolError(f"expected the agent's hello, got {h.get('t')!r}")
        if h.get("v") != PROTOCOL_VERSION:
            raise AgentProtocolError(f"the agent at {self.path} speaks protocol {h.get('v')!r}, "
                                     f"this daemon {PROTOCOL_VERSION}: rebuild the sandbox's image")

    def take(self) -> list[tuple[dict[str, Any], bytes]]:
        """Every frame received so far."""
        self.parse()
        out = list(self.frames)
        self.frames.clear()
        return out

    async def wait(self) -> None:
        """Until more bytes arrive or the connection ends."""
        if self.eof:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def next_frame(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame; None at EOF."""
        while True:
            self.parse()
            if self.frames:
                return self.frames.popleft()
            if self.eof:
                return None
            await self.wait()

    # writing

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise AgentUnavailableError(f"the connection to the agent at {self.path} is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        while self.writing_paused and not self.eof:
            if self._drain is None or self._drain.done():  # one future for every writer waiting
                self._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drain)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def aclose(self) -> None:
        """Close and wait until the transport has let go of the socket."""
        self.close()
        if self.transport is not None and not self.lost:
            self._closed = asyncio.get_running_loop().create_future()
            await self._closed


async def _open(sock: str | os.PathLike[str], header: dict[str, Any]) -> _FrameStream:
    """Connect through the checked socket (see agent_client) and send a v2 first frame."""
    path = os.fspath(sock)
    dir_fd, sock_fd = _open_checked(path, getattr(sock, "uid", None))
    loop = asyncio.get_running_loop()
    try:
        _, stream = await loop.create_unix_connection(lambda: _FrameStream(path), f"/proc/self/fd/{sock_fd}")
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError) as exc:
        raise AgentUnavailableError(f"no agent listening at {path}: {exc.strerror}") from None
    finally:
        os.close(sock_fd)
        os.close(dir_fd)
    assert stream.transport is not None
    # Whole frames of up to 1 MiB go out without a pause per frame.
    stream.transport.set_write_buffer_limits(high=4 << 20)
    stream.write(encode({**header, "v": V2}))
    return stream


async def _first_reply(stream: _FrameStream) -> tuple[dict[str, Any], bytes]:
    frame = await stream.next_frame()
    if frame is None:
        raise AgentUnavailableError(f"the agent at {stream.path} closed the connection without an answer")
    return frame


class ExecLink:
    """One attached connection to an exec session (see the module docstring).

    Stdin credit is counted per link, from this link's first byte: ``stdin_credit`` is how many
    stdin bytes may be sent now (at the start, the total this link may send); :meth:`write_stdin`
    spends it; ``stdin_credit`` events from :meth:`next_events` raise it, their ``up_to`` being the
    total this link may have sent. (The agent counts per session; a link that attaches converts.)
    ``pid`` is None when the command could not start (its exit event, 127 or 126 with ``error``,
    follows)."""

    def __init__(self, stream: _FrameStream, session: str, started: dict[str, Any]) -> None:
        self._stream = stream
        self.session = session
        self.pid: int | None = started.get("pid")
        # What earlier links sent: the agent's credits are session totals.
        self._base = int(started.get("stdin_received") or 0)
        self._up_to = int(started.get("stdin_credit") or 0) - self._base
        self._sent = 0
        self._exited = False

    @property
    def stdin_credit(self) -> int:
        return max(0, self._up_to - self._sent)

    @classmethod
    async def _open(cls, sock: AgentSocket | str | os.PathLike[str], session: str,
                    header: dict[str, Any]) -> ExecLink:
        stream = await _open(sock, header)
        try:
            h, _ = await _first_reply(stream)
            if h["t"] == "error":
                raise _session_error(h)
            if h["t"] != "started":
                raise AgentProtocolError(f"expected 'started' from the agent, got {h['t']!r}")
        except BaseException:
            await stream.aclose()
            raise
        return cls(stream, session, h)

    @classmethod
    async def start(cls, sock: AgentSocket | str | os.PathLike[str], session: str, argv: list[str], *,
                    env: dict[str, str] | None = None, cwd: str | None = None, timeout: float | None = None,
                    window: int = DEFAULT_WINDOW, detach_timeout: float = DEFAULT_DETACH_TIMEOUT) -> ExecLink:
        """Start ``argv`` as session ``session`` (1-64 of ``[A-Za-z0-9_-]``) and attach to it.

        ``window``: output bytes the agent holds unacked before it stops reading the process;
        ``detach_timeout``: seconds detached before its group gets SIGHUP; ``timeout``: SIGKILL after."""
        header = {"t": "session", "session": session, "argv": [str(a) for a in argv],
                  "env": dict(env) if env else None, "cwd": cwd, "timeout": timeout, "window": window,
                  "detach_timeout": detach_timeout}
        return await cls._open(sock, session, header)

    @classmethod
    async def attach(cls, sock: AgentSocket | str | os.PathLike[str], session: str, after: int = 0) -> ExecLink:
        """Attach to a running (or exited, not yet acked) session: events with seq > ``after`` come
        again, then live ones. Takes the session over from any other connection."""
        return await cls._open(sock, session, {"t": "attach", "session": session, "after": after})

    async def next_events(self) -> list[AgentEvent]:
        """Wait for at least one event; return all already received (forward them together).

        Returns [] once the exit event has been returned (ack it to end the session).
        Raises :class:`AgentUnavailableError` (:class:`SessionTakenOver` when another attach took
        the session) if the connection ends before the exit event: the session may live on."""
        stream = self._stream
        while True:
            events = []
            for h, payload in stream.take():
                if h["t"] == "error":
                    await stream.aclose()
                    raise _session_error(h)
                ev = self._event(h, payload)
                if ev is not None:
                    events.append(ev)
            if events:
                return events
            if self._exited:
                return []  # nothing comes after the exit event
            if stream.eof:
                raise AgentUnavailableError(f"the connection to session {self.session!r} at {stream.path} "
                                            "ended before its exit event (agent stopped or connection broken)")
            await stream.wait()

    def _event(self, h: dict[str, Any], payload: bytes) -> AgentEvent | None:
        kind = h["t"]
        if kind == "out":
            return AgentEvent("stdout" if h.get("fd") == 1 else "stderr", int(h["seq"]), payload)
        if kind == "exit":
            self._exited = True
            return AgentEvent("exit", int(h["seq"]), exit_code=h.get("exit_code"), signal=h.get("signal"),
                              error=h.get("error"))
        if kind == "stdin_credit":
            self._up_to = max(self._up_to, int(h["up_to"]) - self._base)
            return AgentEvent("stdin_credit", up_to=self._up_to)
        return None  # from a newer agent

    async def write_stdin(self, data: bytes) -> None:
        """Send stdin bytes (at most :attr:`stdin_credit`; the agent drops a connection that oversteps)."""
        if not data:
            return
        self._sent += len(data)
        self._stream.write(encode({"t": "stdin"}, bytes(data)))
        await self._stream.drain()

    async def close_stdin(self) -> None:
        """Close the process's stdin once what was sent before is written."""
        self._stream.write(encode({"t": "stdin_eof"}))

    async def send_signal(self, sig: int) -> None:
        """Signal the session's process group (the agent ignores an invalid number)."""
        self._stream.write(encode({"t": "signal", "sig": int(sig)}))

    async def ack(self, seq: int) -> None:
        """Events up to ``seq`` are delivered: the agent drops them (and reads on, within its window).
        Acking the exit event ends the session; the agent then closes the connection."""
        self._stream.write(encode({"t": "ack", "seq": int(seq)}))

    async def close(self) -> None:
        """Detach: the connection closes, the session keeps running (see ``detach_timeout``)."""
        await self._stream.aclose()


async def list_sessions(sock: AgentSocket | str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The agent's sessions: ``{"session", "argv", "pid", "running", "exited", "attached", "held_bytes",
    "held_events", "last_seq", "acked", "reading", "window", "stdin_received", "stdin_written"}`` each."""
    stream = await _open(sock, {"t": "sessions"})
    try:
        h, _ = await _first_reply(stream)
    finally:
        await stream.aclose()
    if h["t"] == "error":
        raise _session_error(h)
    return list(h.get("sessions") or [])


class FsReader:
    """An open ``fs_read``: ``size`` (bytes, from the agent's fstat) and the chunks (<= 1 MiB) by
    ``async for``. Close it (or use ``async with``) if not read to the end."""

    def __init__(self, stream: _FrameStream, path: str, size: int) -> None:
        self._stream = stream
        self.path = path
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                frame = await self._stream.next_frame()
                if frame is None:
                    raise AgentUnavailableError(f"the agent closed the connection while reading {self.path!r}")
                h, payload = frame
                if h["t"] == "data":
                    yield payload
                elif h["t"] == "end":
                    return
                elif h["t"] == "error":
                    raise _fs_error(h)
        finally:
            await self._stream.aclose()

    async def close(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> FsReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.aclose()


async def fs_read_open(sock: AgentSocket | str | os.PathLike[str], path: str) -> FsReader:
    """Open ``path`` in the sandbox for reading; raises (FileNotFoundError, IsADirectoryError, ...)
    before any data, and gives the size first."""
    stream = await _open(sock, {"t": "fs_read", "path": path})
    try:
        h, _ = await _first_reply(stream)
        if h["t"] == "error":
            raise _fs_error(h)
        if h["t"] != "fs_meta":
            raise AgentProtocolError(f"expected 'fs_meta' from the agent, got {h['t']!r}")
    except BaseException:
        await stream.aclose()
        raise
    return FsReader(stream, path, int(h["size"]))


async def fs_read(sock: AgentSocket | str | os.PathLike[str], path: str) -> AsyncIterator[bytes]:
    """The bytes of ``path`` in the sandbox, chunk by chunk; errors come before the first chunk.
    (:func:`fs_read_open` gives the size first.)"""
    reader = await fs_read_open(sock, path)
    async with reader:
        async for chunk in reader:
            yield chunk


async def fs_write(sock: AgentSocket | str | os.PathLike[str], path: str,
                   chunks: AsyncIterable[bytes] | Iterable[bytes], mode: int | None = None) -> int:
    """Write ``path`` in the sandbox from ``chunks`` (parents created; the file appears whole, at the
    end, or not at all). ``mode`` None: an existing file's mode, else 0666 less the umask. Returns
    the size written."""
    stream = await _open(sock, {"t": "fs_write", "path": path, "mode": mode})
    try:
        async def send(data: bytes) -> None:
            view = memoryview(data)
            for i in range(0, len(view), FS_CHUNK):
                stream.write(encode({"t": "data"}, bytes(view[i:i + FS_CHUNK])))
                await stream.drain()
            _raise_early(stream)

        if isinstance(chunks, AsyncIterable):
            async for data in chunks:
                await send(data)
        else:
            for data in chunks:
                await send(data)
        stream.write(encode({"t": "end"}))
        h, _ = await _first_reply(stream)
        if h["t"] == "error":
            raise _fs_error(h)
        if h["t"] != "done":
            raise AgentProtocolError(f"expected 'done' from the agent, got {h['t']!r}")
        return int(h["size"])
    except (AgentUnavailableError, ConnectionError):
        # The agent refused early and closed: its error frame says why.
        _raise_early(stream)
        raise
    finally:
        await stream.aclose()


def _raise_early(stream: _FrameStream) -> None:
    """An error the agent sent while we were still sending data."""
    stream.parse()
    for h, _ in stream.frames:
        if h["t"] == "error":
            raise _fs_error(h)


async def fs_list(sock: AgentSocket | str | os.PathLike[str], path: str) -> list[dict[str, Any]]:
    """The entries of directory ``path`` in the sandbox, by name: ``{"name", "type" ("file" | "dir" |
    "link" | "other"), "size", "mtime"}`` (not following links)."""
    stream = await _open(sock, {"t": "fs_list", "path": path})
    entries: list[dict[str, Any]] = []
    try:
        while True:
            frame = await stream.next_frame()
            if frame is None:
                raise AgentUnavailableError(f"the agent closed the connection while listing {path!r}")
            h, _ = frame
            if h["t"] == "entries":
                entries.extend(h.get("entries") or [])
            elif h["t"] == "end":
                break
            elif h["t"] == "error":
                raise _fs_error(h)
    finally:
        await stream.aclose()
    entries.sort(key=lambda e: e["name"])
    return entries
