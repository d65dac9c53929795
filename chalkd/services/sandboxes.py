"""Sandboxes: the SDK's ``SandboxClient`` over :class:`chalkd.sandboxes.manager.SandboxManager`.

    info = await SandboxesStub(channel).Create(pb.CreateSandboxRequest(spec=pb.SandboxSpec(image=img)))
    async with SandboxesStub(channel).Exec.open() as s:       # one bidi stream per exec
        await s.send_message(pb.SandboxExecRequest(start=pb.ExecStart(sandbox_id=info.id, argv=["cat"])))
        first = await s.recv_message()                        # session_id, pid, stdin_credit
        await s.send_message(pb.SandboxExecRequest(stdin=b"hi"))
        await s.send_message(pb.SandboxExecRequest(stdin_eof=True))
        out = await s.recv_message()                          # events: seq 1 stdout b"hi" ...

Exec is a pass-through to the sandbox's agent (:mod:`chalkd.sandboxes.agent_link`):
the agent keeps every output event until the caller acks it and stops
reading the process's output while a window of bytes is unacked, and this
service reads the next event from the agent only once the previous message
went out on the gRPC stream (whose own flow control waits for a slow
reader). So a reader that stops reading pauses the process, and the daemon
holds at most one batch per exec. When the caller goes away the session is
only detached: it keeps running in the agent and ``ExecAttach`` with the
last seq seen takes it up again, from this daemon or the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from secrets import token_hex

from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._contract import MAX_PATH_BYTES, name_too_long, path_too_long, quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import SandboxesBase
from chalkd.containers.agent_client import AgentError, AgentUnavailableError
from chalkd.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from chalkd.images.blobs import check_lazy_files
from chalkd.sandboxes.agent_link import (
    ExecLink,
    SessionExists,
    SessionGone,
    SessionNotFound,
    SessionTakenOver,
    TooManySessions,
    fs_list,
    fs_read_open,
    fs_write,
)
from chalkd.sandboxes.manager import status_error
from chalkd.sandboxes.records import SandboxRecord
from chalkd.services.convert import decode_sandbox
from chalkd.services.errors import grpc_errors

log = logging.getLogger(__name__)

__all__ = ["SandboxesService", "info_pb"]

# Bytes of argv + env an exec may carry (a shell's ARG_MAX is 2 MiB; this stays well under it).
MAX_EXEC_ARGS = 1 << 20
# How long an exec's stream stays open after the exit event went out, for the caller's final ack.
FINAL_ACK_WAIT = 30.0
WINDOW = 8 << 20          # bytes of output the agent holds unacked per exec, then pauses the process
DETACH_TIMEOUT = 300.0    # an exec nobody reattaches to within this gets SIGHUP
DISCARD_LIMIT = 256 << 20  # bytes of a refused upload read (and dropped) so the refusal reaches the client


def _fmt_cpu(millis: int) -> str:
    return "" if not millis else f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def info_pb(rec: SandboxRecord) -> pb.SandboxInfo:
    return pb.SandboxInfo(
        id=rec.id, name=rec.name, status=rec.status, status_message=rec.status_message,
        status_details=rec.status_details, image=rec.image, created_at=rec.created_at,
        cpu=_fmt_cpu(rec.cpu_millis), memory=str(rec.memory_bytes) if rec.memory_bytes else "", gpu=rec.gpu,
        isolation=rec.isolation, expires_at=rec.expires_at)


def _check_path(path: str) -> str:
    if not path:
        raise InvalidArgument("give a path inside the sandbox")
    too_long = path_too_long("path", path, MAX_PATH_BYTES)
    if too_long:
        raise InvalidArgument(too_long)
    if "\0" in path:
        raise InvalidArgument(f"path {quote(path)} contains a NUL character")
    return path


def _fs_error(exc: BaseException, path: str, sandbox_id: str) -> Exception:
    """An agent's file error as the daemon's: the SDK turns NOT_FOUND into FileNotFoundError, etc."""
    where = f"{quote(path)} in sandbox {sandbox_id}"
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"no such file or directory: {where}")
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"permission denied: {where}")
    if isinstance(exc, IsADirectoryError):
        return FailedPrecondition(f"is a directory: {where}")
    if isinstance(exc, NotADirectoryError):
        return FailedPrecondition(f"not a directory: {where}")
    if isinstance(exc, ValueError):
        return InvalidArgument(f"{exc} ({where})")
    return FailedPrecondition(f"{exc} ({where})")


async def _discard_rest(stream, limit: int = DISCARD_LIMIT, timeout: float = 30.0) -> None:
    """Read and drop the rest of a client stream: up to ``limit`` bytes or ``timeout`` seconds."""
    async def drain() -> None:
        seen = 0
        while seen < limit and (msg := await stream.recv_message()) is not None:
            seen += msg.ByteSize()

    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(), timeout)


class SandboxesService(SandboxesBase):
    def __init__(self, manager, runtime_name: str = "process") -> None:
        self.manager = manager  # None without the Docker runtime
        self.runtime_name = runtime_name
        # (sandbox id, a line about an exec): command, exit code, duration, never its output
        # (chalkd.logs.service.LogsService.record_exec, set by the server); session -> (argv, start).
        self.on_exec: Callable[[str, str], None] = lambda sandbox_id, text: None
        self._exec_started: OrderedDict[str, tuple[list[str], float]] = OrderedDict()

    def _manager(self):
        if self.manager is None:
            raise FailedPrecondition(
                f"sandboxes need the Docker runtime (a sandbox without isolation would mislead); this daemon "
                f"runs --runtime {self.runtime_name}: start it with `chalkd serve --runtime docker`")
        return self.manager

    def framed_handlers(self) -> dict[bytes, tuple]:
        """Exec and file streams on the daemon's local fast lane (no HTTP/2: output and files at
        socket speed); the same handlers as gRPC."""
        return {b"sandboxes.exec": (pb.SandboxExecRequest, self.Exec),
                b"sandboxes.read": (pb.SandboxFileRequest, self.ReadFile),
                b"sandboxes.write": (pb.SandboxWriteRequest, self.WriteFile)}

    # -- lifecycle ----------------------------------------------------------------------

    @grpc_errors
    async def Create(self, stream) -> None:
        req: pb.CreateSandboxRequest = await stream.recv_message()
        manager = self._manager()
        spec = decode_sandbox(req.spec)
        check_lazy_files(spec.image)  # LazyFileError: INVALID_ARGUMENT by the error table
        if spec.lifetime < 0:
            raise InvalidArgument(f"lifetime must be positive seconds, got {spec.lifetime:g}")
        too_long = name_too_long("sandbox name", spec.name)
        if too_long:
            raise InvalidArgument(too_long)
        if any(ord(c) < 32 or c == "\x7f" for c in spec.name):
            raise InvalidArgument(f"sandbox name {quote(spec.name)} contains a control character")
        size = sum(len(k) + len(v) for k, v in spec.env.items()) + sum(len(a) for a in spec.entrypoint)
        if size > MAX_EXEC_ARGS:
            raise InvalidArgument(f"the sandbox's env and entrypoint take {size} bytes, over the limit of "
                                  f"{MAX_EXEC_ARGS} bytes")
        try:
            rec = await manager.create(spec, local_secrets=dict(req.spec.local_secrets))
        except LookupError as exc:  # a secret or integration that does not exist (named, never a value)
            raise FailedPrecondition(str(exc)) from None
        await stream.send_message(info_pb(rec))

    @grpc_errors
    async def Get(self, stream) -> None:
        req: pb.GetSandboxRequest = await stream.recv_message()
        rec = self._manager().get(id=req.id, name=req.name)
        await rec.wait_change(min(req.wait_seconds, 60.0))
        await stream.send_message(info_pb(rec))

    @grpc_errors
    async def List(self, stream) -> None:
        await stream.recv_message()
        items = [info_pb(r) for r in self.manager.list()] if self.manager is not None else []
        await stream.send_message(pb.ListSandboxesResponse(sandboxes=items))

    @grpc_errors
    async def Terminate(self, stream) -> None:
        req: pb.TerminateSandboxRequest = await stream.recv_message()
        if req.grace_period < 0:
            raise InvalidArgument(f"grace_period_seconds must be >= 0, got {req.grace_period:g}")
        rec = await self._manager().terminate(req.id, req.grace_period)
        await stream.send_message(info_pb(rec))

    # -- exec ---------------------------------------------------------------------------

    @grpc_errors
    async def Exec(self, stream) -> None:
        # Read the request before any refusal: a client then always finds the refusal as the answer.
        first: pb.SandboxExecRequest | None = await stream.recv_message()
        if first is None:
            return
        manager = self._manager()
        which = first.WhichOneof("msg")
        try:
            if which == "start":
                st = first.start
                argv = list(st.argv)
                if not argv or not argv[0]:
                    raise InvalidArgument("exec needs a command")
                size = sum(len(a) for a in argv) + sum(len(k) + len(v) for k, v in st.env.items())
                if size > MAX_EXEC_ARGS:
                    raise InvalidArgument(f"the command and env take {size} bytes, over the limit of "
                                          f"{MAX_EXEC_ARGS} bytes; pass large data on stdin or in a file")
                if st.workdir:
                    _check_path(st.workdir)
                rec = await manager.ready(st.sandbox_id, min(max(st.wait_ready, 0.0), 3600.0))
                link = await ExecLink.start(manager.agent_socket(rec), "ex-" + token_hex(8), argv,
                                            env=dict(st.env) or None, cwd=st.workdir or None,
                                            timeout=st.timeout or None, window=WINDOW,
                                            detach_timeout=DETACH_TIMEOUT)
                self._exec_started[link.session] = (argv, time.monotonic())
                if len(self._exec_started) > 10_000:  # sessions whose end nobody saw: bounded
                    self._exec_started.popitem(last=False)
                self.on_exec(rec.id, f"exec {argv!r} started (session {link.session})")
            elif which == "attach":
                at = first.attach
                rec = await manager.ready(at.sandbox_id, 0.0)
                link = await ExecLink.attach(manager.agent_socket(rec), at.session_id, after=at.after_seq)
            else:
                raise InvalidArgument("an Exec stream starts with `start` or `attach`")
        except SessionNotFound:
            raise NotFound(f"no exec session {quote(first.attach.session_id)} in sandbox {rec.id} "
                           "(it ended and its output was read, or the sandbox restarted)") from None
        except SessionGone as exc:
            raise FailedPrecondition(f"exec session {quote(first.attach.session_id)}: {exc}") from None
        except (SessionExists, TooManySessions) as exc:
            raise FailedPrecondition(f"sandbox {rec.id}: {exc}") from None
        except AgentUnavailableError as exc:
            raise self._agent_gone(rec, exc) from None
        try:
            started = pb.SandboxExecResponse(session_id=link.session, stdin_credit=link.stdin_credit)
            if link.pid is not None:
                started.pid = link.pid
            await stream.send_message(started)
            inbound = asyncio.get_running_loop().create_task(self._forward_input(stream, link))
            try:
                await self._forward_output(stream, link, rec, inbound)
            finally:
                inbound.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await inbound
        finally:
            await link.close()  # detaches: the session runs on in the agent unless it ended

    def _exec_ended(self, sandbox_id: str, session: str, ev) -> None:
        argv, started = self._exec_started.pop(session, (None, None))
        ended = f"exit code {ev.exit_code}" if ev.exit_code is not None else f"signal {ev.signal}"
        took = f" after {time.monotonic() - started:.3f}s" if started is not None else ""
        what = f"exec {argv!r}" if argv is not None else f"exec session {session}"
        self.on_exec(sandbox_id, f"{what}: {ended}{took}" + (f" ({ev.error})" if ev.error else ""))

    async def _forward_output(self, stream, link, rec: SandboxRecord, inbound: asyncio.Task) -> None:
        while True:
            try:
                events = await link.next_events()
            except SessionTakenOver:
                # Not UNAVAILABLE: that would send this caller to reattach and take it back, and so on.
                raise GRPCError(Status.ABORTED, f"exec session {link.session} was taken over by another attach "
                                "(Sandbox.exec_attach)") from None
            except AgentUnavailableError as exc:
                raise self._agent_gone(rec, exc) from None
            if not events:
                raise self._agent_gone(rec, AgentUnavailableError("the agent closed the session's connection"))
            resp = pb.SandboxExecResponse()
            ended = False
            for ev in events:
                if ev.kind == "stdin_credit":
                    resp.stdin_credit = max(resp.stdin_credit, ev.up_to)
                elif ev.kind == "stdout":
                    resp.events.add(seq=ev.seq, stdout=ev.data)
                elif ev.kind == "stderr":
                    resp.events.add(seq=ev.seq, stderr=ev.data)
                elif ev.kind == "exit":
                    self._exec_ended(rec.id, link.session, ev)
                    out = resp.events.add(seq=ev.seq)
                    out.exit.error = ev.error or ""
                    if ev.exit_code is not None:
                        out.exit.exit_code = ev.exit_code
                    if ev.signal is not None:
                        out.exit.signal = ev.signal
                    ended = True
            await stream.send_message(resp)
            if ended:
                # The caller acks the exit event, then ends its side: the agent then forgets the session.
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(inbound), FINAL_ACK_WAIT)
                return

    async def _forward_input(self, stream, link) -> None:
        """The caller's stdin, EOF, signals and acks, to the agent, in order."""
        while True:
            msg: pb.SandboxExecRequest | None = await stream.recv_message()
            if msg is None:
                return
            which = msg.WhichOneof("msg")
            if which == "stdin":
                await link.write_stdin(msg.stdin)
            elif which == "stdin_eof":
                await link.close_stdin()
            elif which == "signal":
                if not 0 < msg.signal < 65:
                    continue  # not a signal number: nothing to send (the SDK checks it first)
                await link.send_signal(msg.signal)
            elif which == "ack":
                await link.ack(msg.ack)

    def _agent_gone(self, rec: SandboxRecord, exc: BaseException) -> Exception:
        if not rec.live:
            return FailedPrecondition(status_error(rec))
        return Unavailable(f"lost the agent of sandbox {rec.id} ({exc}); reattach with the session id")

    # -- files --------------------------------------------------------------------------

    @grpc_errors
    async def ReadFile(self, stream) -> None:
        req: pb.SandboxFileRequest = await stream.recv_message()
        path = _check_path(req.path)
        manager = self._manager()
        rec = await manager.ready(req.sandbox_id, 0.0)
        try:
            async with await fs_read_open(manager.agent_socket(rec), path) as reader:
                first = True
                async for data in reader:  # each send waits for the reader: memory stays one chunk
                    await stream.send_message(pb.SandboxFileChunk(data=data, size=reader.size if first else 0))
                    first = False
                if first:
                    await stream.send_message(pb.SandboxFileChunk(data=b"", size=reader.size))
        except AgentError as exc:
            raise self._agent_gone(rec, exc) from None
        except (OSError, ValueError) as exc:
            raise _fs_error(exc, path, rec.id) from None

    @grpc_errors
    async def WriteFile(self, stream) -> None:
        first: pb.SandboxWriteRequest | None = await stream.recv_message()
        if first is None:
            raise InvalidArgument("WriteFile needs a first message naming the sandbox and the path")
        try:
            await self._write_file(stream, first)
        except Exception:
            # Refused while the client still sends: read what it sends (bounded) before answering, or its
            # writes meet a closed socket and it sees a reset instead of the reason.
            await _discard_rest(stream)
            raise

    async def _write_file(self, stream, first: pb.SandboxWriteRequest) -> None:
        path = _check_path(first.path)
        manager = self._manager()
        rec = await manager.ready(first.sandbox_id, 0.0)

        async def pieces() -> AsyncIterator[bytes]:
            if first.data:
                yield first.data
            while (msg := await stream.recv_message()) is not None:
                if msg.data:
                    yield msg.data

        try:
            size = await fs_write(manager.agent_socket(rec), path, pieces(), mode=first.mode or None)
        except AgentError as exc:
            raise self._agent_gone(rec, exc) from None
        except (OSError, ValueError) as exc:
            raise _fs_error(exc, path, rec.id) from None
        await stream.send_message(pb.SandboxWriteResponse(size=size))

    @grpc_errors
    async def ListDir(self, stream) -> None:
        req: pb.SandboxFileRequest = await stream.recv_message()
        path = _check_path(req.path)
        manager = self._manager()
        rec = await manager.ready(req.sandbox_id, 0.0)
        try:
            entries = await fs_list(manager.agent_socket(rec), path)
        except AgentError as exc:
            raise self._agent_gone(rec, exc) from None
        except (OSError, ValueError) as exc:
            raise _fs_error(exc, path, rec.id) from None
        resp = pb.SandboxListDirResponse()
        for e in entries:
            resp.entries.add(name=e["name"], type=e.get("type", "other"), size=int(e.get("size") or 0),
                             mtime=float(e.get("mtime") or 0.0))
        await stream.send_message(resp)
