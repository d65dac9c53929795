"""The daemon's side of the in-container agent (:mod:`chalkcompute.agent`).

    await wait_agent_ready(sock, timeout=30)
    out = await agent_exec(sock, ["ls", "/does-not-exist"])
    out.exit_code, out.stderr            # (2, b"ls: cannot access '/does-not-exist': ...\\n")
    out = await agent_exec(sock, ["cat"], stdin=b"hi", timeout=5,
                           on_output=lambda stream, data: print(stream, data))
    (await agent_status(sock))["main"]   # {"pid": 7, "running": False, "exit_code": 0, ...}

One connection per request, over the unix socket the agent listens on in the
container's bind-mounted agent directory (wire format:
:mod:`chalkcompute.agent.protocol`). Cancelling :func:`agent_exec` closes the
connection, and the agent then kills the command's process group.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalkcompute.agent.protocol import PREFIX, PROTOCOL_VERSION, ProtocolError, decode_header, encode, split_prefix

log = logging.getLogger(__name__)

__all__ = [
    "ExecOutcome", "AgentError", "AgentUnavailableError", "AgentSocketRefused", "AgentSocket", "AgentProtocolError",
    "agent_exec", "agent_status",
    "agent_set_env", "wait_agent_ready",
]

OutputCallback = Callable[[str, bytes], "Awaitable[None] | None"]


@dataclass
class ExecOutcome:
    """What an exec came to; ``exit_code`` None and ``signal`` set when a signal killed it.

    ``error`` is set when the command could not be started (then ``pid`` is None
    and ``exit_code`` is 127 for a missing program, 126 otherwise, as in a
    shell) or when its ``timeout`` ran out (``signal`` 9).
    """

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    error: str | None = None


class AgentError(RuntimeError):
    """Base class for failures talking to the agent."""


class AgentUnavailableError(AgentError):
    """No agent answers on the socket (missing, refused, stopping) or it went away mid-request."""


class AgentProtocolError(AgentError):
    """The agent answered with something this client does not understand, or rejected the request."""


class AgentSocketRefused(AgentUnavailableError):
    """The agent's socket path is not a socket the container's agent made: a
    symbolic link, another kind of file, or owned by someone else. The agent
    directory is writable from inside the container, so the daemon checks
    what it finds there and never follows it (the message names the path)."""


class AgentSocket(os.PathLike):
    """An agent socket's path and the uid its agent runs as, which must own it.

        await agent_exec(AgentSocket("/run/chalkd/agents/ct-1/agent.sock", uid=1000), ["id"])

    A plain path is accepted too; its socket must then be owned by the uid that
    owns its directory (or by the daemon's)."""

    def __init__(self, path: str | os.PathLike, uid: int) -> None:
        self.path, self.uid = os.fspath(path), uid

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def _open_checked(path: str, uid: int | None = None) -> tuple[int, int]:
    """(directory fd, socket O_PATH fd) for ``path``, verified without following
    any symlink in the last two components: the socket must be a socket owned by
    ``uid`` (default: the directory's owner, the uid the container runs as) or by
    the daemon."""
    parent, name = os.path.split(path)
    try:
        dir_fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AgentUnavailableError(f"no agent socket at {path}: its directory is gone") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise AgentSocketRefused(f"refusing the agent socket {path}: {parent} is not a plain directory "
                                     "(a symbolic link or a file)") from None
        raise AgentUnavailableError(f"no agent socket at {path}: {exc.strerror}") from None
    try:
        try:
            sock_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise AgentUnavailableError(f"no agent listening at {path}: no such file") from None
        try:
            st, dst = os.fstat(sock_fd), os.fstat(dir_fd)
            if stat.S_ISLNK(st.st_mode):
                raise AgentSocketRefused(f"refusing the agent socket {path}: it is a symbolic link "
                                         f"(to {os.readlink(name, dir_fd=dir_fd)!r}), which chalkd never follows")
            if not stat.S_ISSOCK(st.st_mode):
                raise AgentSocketRefused(f"refusing the agent socket {path}: it is not a socket "
                                         f"(mode {stat.filemode(st.st_mode)})")
            expected = dst.st_uid if uid is None else uid
            if st.st_uid not in (expected, os.getuid()):
                raise AgentSocketRefused(f"refusing the agent socket {path}: it is owned by uid {st.st_uid}, "
                                         f"not by the container's uid {expected} or the daemon's")
        except BaseException:
            os.close(sock_fd)
            raise
        return dir_fd, sock_fd
    except BaseException:
        os.close(dir_fd)
        raise


async def _connect(socket_path: str | os.PathLike) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    path = os.fspath(socket_path)
    dir_fd, sock_fd = _open_checked(path, getattr(socket_path, "uid", None))
    # Connect through the verified O_PATH handle: the container cannot swap the
    # name for a symlink between the check and the connect. (The /proc path is
    # also short, whatever the depth of the daemon's home: sun_path is 108 bytes.)
    target = f"/proc/self/fd/{sock_fd}"
    try:
        return await asyncio.open_unix_connection(target)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError) as exc:
        raise AgentUnavailableError(f"no agent listening at {path}: {exc.strerror}") from None
    finally:
        os.close(sock_fd)
        os.close(dir_fd)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    try:
        hlen, plen = split_prefix(await reader.readexactly(PREFIX.size))
        body = await reader.readexactly(hlen + plen)
        return decode_header(body[:hlen]), body[hlen:]
    except ProtocolError as exc:
        raise AgentProtocolError(str(exc)) from None


def _raise_error_frame(header: dict[str, Any]) -> None:
    message = str(header.get("error") or "the agent refused the request")
    if header.get("code") == "stopping":
        raise AgentUnavailableError(message)
    raise AgentProtocolError(message)


async def _request(socket_path: str | os.PathLike, header: dict[str, Any], payload: bytes = b"",
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, send one request and check the agent's hello."""
    reader, writer = await _connect(socket_path)
    try:
        # Sent before reading the hello: the agent queues it; no extra round trip.
        writer.write(encode(header, payload))
        if len(payload) > 1 << 16:
            await writer.drain()
        hello, _ = await _read_frame(reader)
        if hello.get("t") != "hello":
            raise AgentProtocolError(f"expected the agent's hello, got {hello.get('t')!r}")
        if hello.get("v") != PROTOCOL_VERSION:
            # It rejects our request too; this message says why.
            raise AgentProtocolError(f"the agent speaks protocol version {hello.get('v')!r}, "
                                     f"this daemon {PROTOCOL_VERSION}: rebuild the container's image")
    except BaseException:
        writer.close()
        raise
    return reader, writer


_GONE = (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError)


async def agent_exec(socket_path: str | os.PathLike, argv: list[str], *, env: dict[str, str] | None = None,
                     cwd: str | None = None, timeout: float | None = None, stdin: bytes = b"",
                     on_output: OutputCallback | None = None, capture: bool = True) -> ExecOutcome:
    """Run ``argv`` in the container through its agent and wait for it to end.

    ``env`` is added to the container's environment; ``cwd`` defaults to the
    image's working directory; ``timeout`` (seconds) makes the agent SIGKILL
    the command's process group. ``on_output(stream, data)`` is called with
    each chunk (``stream`` is ``"stdout"`` or ``"stderr"``) as the agent reads
    it; it may be a coroutine function, which then paces reading. With
    ``capture=False`` the outcome's stdout/stderr stay empty (stream only).

    Raises :class:`AgentUnavailableError` if no agent answers or it goes away
    before the command ends, :class:`AgentProtocolError` if it rejects the request.
    """
    header = {"t": "exec", "v": PROTOCOL_VERSION, "argv": [str(a) for a in argv], "env": dict(env or {}),
              "cwd": cwd, "timeout": timeout}
    try:
        reader, writer = await _request(socket_path, header, bytes(stdin))
    except _GONE as exc:
        raise AgentUnavailableError(f"the agent at {os.fspath(socket_path)} closed the connection: {exc}") from None
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        while True:
            h, payload = await _read_frame(reader)
            kind = h["t"]
            if kind == "stdout" or kind == "stderr":
                if capture:
                    (out if kind == "stdout" else err).append(payload)
                if on_output is not None:
                    result = on_output(kind, payload)
                    if inspect.isawaitable(result):
                        await result
            elif kind == "exit":
                return ExecOutcome(stdout=b"".join(out), stderr=b"".join(err), exit_code=h.get("exit_code"),
                                   signal=h.get("signal"), pid=h.get("pid"), error=h.get("error"))
            elif kind == "error":
                _raise_error_frame(h)
            # Any other frame type is from a newer agent: ignored.
    except _GONE:
        raise AgentUnavailableError(f"the agent at {os.fspath(socket_path)} went away before {argv[0]!r} "
                                    "finished (did the container stop?)") from None
    finally:
        writer.close()


async def _one_shot(socket_path: str | os.PathLike, request: dict[str, Any], expect: str | None) -> dict[str, Any]:
    """Send one request and read its one reply frame (an error frame raises)."""
    try:
        reader, writer = await _request(socket_path, {**request, "v": PROTOCOL_VERSION})
        try:
            h, _ = await _read_frame(reader)
        finally:
            writer.close()
    except _GONE as exc:
        raise AgentUnavailableError(f"the agent at {os.fspath(socket_path)} closed the connection: {exc}") from None
    if h["t"] == "error":
        _raise_error_frame(h)
    if expect is not None and h["t"] != expect:
        raise AgentProtocolError(f"expected a {expect} frame, got {h['t']!r}")
    return h


async def agent_status(socket_path: str | os.PathLike) -> dict[str, Any]:
    """The agent's view: ``{"agent_pid", "execs", "stopping", "main": {"argv", "pid", "running",
    "exit_code", "signal", "error"} or None}`` (``main`` is None when it runs no main command)."""
    h = await _one_shot(socket_path, {"t": "status"}, "status")
    h.pop("t")
    return h


async def agent_set_env(socket_path: str | os.PathLike, env: dict[str, str]) -> None:
    """Add ``env`` to the agent's environment (secrets: never in the container's config).
    An agent started with ``--await-env`` starts its main command after this."""
    await _one_shot(socket_path, {"t": "env", "env": dict(env)}, "ok")


async def _ping(socket_path: str | os.PathLike) -> None:
    await _one_shot(socket_path, {"t": "ping"}, None)


async def wait_agent_ready(socket_path: str | os.PathLike, timeout: float) -> None:
    """Return once the agent answers a ping on ``socket_path``; TimeoutError after ``timeout`` seconds.

    The agent creates its socket only once it listens, so this mostly waits for
    the file to appear; the poll starts at 5 ms and backs off to 50 ms.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    last: Exception | None = None
    while True:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            await asyncio.wait_for(_ping(socket_path), left)
            return
        except AgentUnavailableError as exc:
            last = exc
        except TimeoutError:
            last = None
            break
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 0.05)
    why = f" (last error: {last})" if last is not None else ""
    raise TimeoutError(f"the container's agent did not answer on {Path(socket_path)} within {timeout:g}s{why}")
