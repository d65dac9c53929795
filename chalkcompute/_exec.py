"""A command running in a sandbox: its output events, stdin, signals, and reattaching.

    proc = sandbox.exec_start("cat")
    proc.write_stdin("hello\\n")
    proc.close_stdin()
    for event in proc:                 # ExecEvent(stdout="hello\\n"), ..., ExecEvent(exit_code=0)
        ...
    proc.wait().exit_code              # 0: the aggregated ExecResult
    async for event in proc: ...       # the same from async code (``await proc.wait.aio()``)

One bidirectional stream to the daemon per exec, which passes it through to
the sandbox's agent. Output events are numbered (``seq``). The SDK acks them
as they are consumed; the agent holds what is unacked and stops reading the
process's output once a window of bytes is unacked, so a caller that stops
reading pauses the process instead of filling anyone's memory. Stdin goes out
within the credit the agent grants, so a process that does not read its
stdin never blocks acks or signals.

When the stream breaks (the daemon restarted, the connection dropped) before
the exit event, the process reattaches by itself after the last event it
received, for up to ``REATTACH_FOR`` seconds: nothing is lost or repeated. From
another handle or process, ``sandbox.exec_attach(proc.session_id)`` takes the
session over (from the first event the agent still holds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal as _signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError

from chalkcompute._bridge import Mailbox, Twin, run_async, run_sync, sdk_loop
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import SandboxesStub
from chalkcompute.exceptions import ErrorKind, ExecError, error_from_status

log = logging.getLogger(__name__)

__all__ = ["ExecEvent", "ExecProcess", "ExecResult"]

STDIN_PIECE = 1 << 20      # bytes per stdin message
ACK_EVERY = 1 << 20        # consumed bytes between two acks (the agent's window is 8 MiB)
REATTACH_FOR = 60.0        # seconds to keep trying to reattach after the stream broke
_CONNECTION_ERRORS = (OSError, ConnectionError, StreamTerminatedError)


@dataclass(frozen=True)
class ExecEvent:
    """A single event from a streaming exec: output (``stdout`` or ``stderr`` text), the start
    (``pid``), the end (``exit_code`` or ``exit_signal``, with ``error_message`` when the command
    could not start or timed out), or an error (``error_code``, ``error_message``). ``seq`` numbers
    output and exit events from 1; the start event has seq 0."""

    stdout: str | None = None
    stderr: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    seq: int = 0


@dataclass(frozen=True)
class ExecResult:
    """Result of a completed command execution.

    ``exit_code`` is None when a signal killed the process (then ``signal`` is
    set) or it never started (then ``error`` says why and ``exit_code`` is the
    shell's: 127 for a missing program, 126 when it cannot be executed).
    """

    stdout_text: str
    stderr_text: str
    exit_code: int | None
    signal: int | None = None
    pid: int | None = None
    error: str | None = None

    @property
    def stdout(self) -> Iterator[str]:
        """Iterate over stdout lines (with their line endings)."""
        return iter(self.stdout_text.splitlines(keepends=True))

    @property
    def stderr(self) -> Iterator[str]:
        """Iterate over stderr lines (with their line endings)."""
        return iter(self.stderr_text.splitlines(keepends=True))


class _Decoder:
    """Incremental UTF-8 per stream: a character split across two chunks is not mangled."""

    def __init__(self) -> None:
        import codecs

        self.out = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.err = codecs.getincrementaldecoder("utf-8")(errors="replace")


_END = object()


class ExecProcess:
    """Handle to a running exec: ``pid``, ``session_id``, stdin, signals, its events (see the module)."""

    def __init__(self, sandbox: Any, first: pb.SandboxExecRequest, *, after: int = 0) -> None:
        # ``sandbox``: the chalkcompute.sandbox.Sandbox it runs in (not imported: that module imports this one)
        self.sandbox = sandbox
        self._first = first
        self.session_id: str = first.attach.session_id if first.WhichOneof("msg") == "attach" else ""
        self.pid: int | None = None
        self._received = after           # the last seq that arrived (reattach resumes after it)
        self._acked = after
        self._consumed = after
        self._unacked_bytes = 0
        self._events: Mailbox[Any] = Mailbox()
        self._pending: collections.deque[Any] = collections.deque()  # the rest of a batch being consumed
        self._credit = 0                 # stdin bytes we may have sent in total
        self._sent = 0
        self._credit_changed: asyncio.Event | None = None
        self._stream: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Task | None = None
        self._ended = False              # the exit event arrived
        self._closed = False
        self._started: asyncio.Future[None] | None = None
        self._dec = _Decoder()
        self._result: ExecResult | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._exit: ExecEvent | None = None
        self._send_lock: asyncio.Lock | None = None
        self._attached: asyncio.Event | None = None  # set while a stream is open (cleared while reattaching)

    # -- opening (on the SDK loop) ---------------------------------------------------

    async def _open(self, first: pb.SandboxExecRequest) -> None:
        client = self.sandbox._client_obj
        stack = contextlib.AsyncExitStack()
        stub = SandboxesStub(client.channel)
        try:
            stream = await stack.enter_async_context(client.open_stream(
                b"sandboxes.exec", stub.Exec, pb.SandboxExecResponse, metadata=self.sandbox.client._metadata))
            try:
                await stream.send_message(first)
            except _CONNECTION_ERRORS:
                # The daemon may have refused and closed at once: its answer is the error to raise.
                await stream.recv_message()
                raise
            resp = await stream.recv_message()
            if resp is None:
                raise ExecError("UNAVAILABLE", "the daemon closed the exec stream before it started")
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._stream = stack, stream
        self.session_id = resp.session_id or self.session_id
        if resp.HasField("pid"):
            self.pid = resp.pid
        self._credit = max(self._credit, resp.stdin_credit)
        self._credit_changed = self._credit_changed or asyncio.Event()
        self._credit_changed.set()
        self._send_lock = self._send_lock or asyncio.Lock()
        self._attached = self._attached or asyncio.Event()
        self._attached.set()

    async def _start(self) -> ExecProcess:
        with _mapped():
            await self._open(self._first)
        self._events.put(ExecEvent(pid=self.pid))
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"exec-{self.session_id}")
        return self

    async def _read(self) -> None:
        """Responses to events, for as long as the exec runs; reattaches when the stream breaks."""
        while True:
            try:
                while True:
                    resp = await self._stream.recv_message()
                    if resp is None:
                        raise StreamTerminatedError("the daemon ended the exec stream")
                    self._take(resp)
                    if self._ended:
                        return
            except asyncio.CancelledError:
                raise
            except GRPCError as exc:
                if exc.status is not Status.UNAVAILABLE:
                    await self._close_stream()  # the daemon ended it: nothing more comes on it
                    self._events.put(_as_error(exc))
                    return
                failure: BaseException = exc
            except _CONNECTION_ERRORS as exc:
                failure = exc
            except Exception as exc:  # a bug: never leave a reader hanging
                log.exception("exec %s: reading its events failed", self.session_id)
                await self._close_stream()
                self._events.put(ExecError("INTERNAL", str(exc)))
                return
            if self._closed:
                await self._close_stream()
                return
            log.info("exec %s: stream broke (%s); reattaching after event %d", self.session_id, failure,
                     self._received)
            err = await self._reattach()
            if err is not None:
                await self._close_stream()
                self._events.put(err)
                return

    async def _reattach(self) -> BaseException | None:
        if self._attached is not None:
            self._attached.clear()  # writers wait for the new stream instead of failing
        await self._close_stream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REATTACH_FOR
        delay = 0.1
        while True:
            first = pb.SandboxExecRequest(attach=pb.ExecAttach(
                sandbox_id=self.sandbox.id, session_id=self.session_id, after_seq=self._received))
            try:
                await self._open(first)  # the agent sends what it holds after _received: nothing twice
                return None
            except GRPCError as exc:
                if exc.status is not Status.UNAVAILABLE:
                    return _as_error(exc)
                last: BaseException = exc
            except _CONNECTION_ERRORS as exc:
                last = exc
            except Exception as exc:
                return exc
            if loop.time() + delay > deadline:
                return ExecError("UNAVAILABLE", f"could not reattach to exec {self.session_id} within "
                                 f"{REATTACH_FOR:g}s ({last})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _take(self, resp: pb.SandboxExecResponse) -> None:
        if resp.stdin_credit > self._credit:
            self._credit = resp.stdin_credit
            if self._credit_changed is not None:
                self._credit_changed.set()
        batch: list[Any] = []  # one mailbox item per response: one wake-up of the reader, not one per event
        for ev in resp.events:
            if ev.seq <= self._received:
                continue  # already had it (a reattach racing an ack): never repeated
            self._received = ev.seq
            if ev.HasField("exit"):
                x = ev.exit
                self._ended = True
                batch.append(("exit", ExecEvent(
                    exit_code=x.exit_code if x.HasField("exit_code") else None,
                    exit_signal=x.signal if x.HasField("signal") else None,
                    error_message=x.error or None, seq=ev.seq)))
                batch.append(_END)
            elif ev.stdout:
                batch.append((ev.seq, 1, ev.stdout))
            elif ev.stderr:
                batch.append((ev.seq, 2, ev.stderr))
        if batch:
            self._events.put(batch)

    async def _close_stream(self) -> None:
        stack, self._stack, self._stream = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    # -- sending (on the SDK loop) ---------------------------------------------------

    async def _send(self, msg: pb.SandboxExecRequest) -> None:
        """Send on the stream; while a broken one is being reattached, wait for the new one (once)."""
        assert self._send_lock is not None and self._attached is not None
        for attempt in (0, 1):
            waiting = self._stream is None or not self._attached.is_set()
            if waiting and not self._closed and self._reader is not None and not self._reader.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._attached.wait(), REATTACH_FOR + 5)
            stream = self._stream
            if stream is None:
                raise ExecError("CLOSED", f"exec {self.session_id} is not attached (closed, or it ended)")
            try:
                async with self._send_lock:
                    with _mapped():
                        await stream.send_message(msg)
                return
            except _CONNECTION_ERRORS:
                if attempt or self._closed:
                    raise
                self._attached.clear()  # the reader notices the break too and reattaches

    async def _write_stdin(self, data: bytes | str) -> None:
        """Send data to the process's stdin (str is UTF-8 encoded); waits while the agent's credit is used up."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_stdin takes bytes or str, got {type(data).__name__}")
        view = memoryview(data)
        assert self._credit_changed is not None
        while view:
            while self._credit - self._sent <= 0:
                if self._ended:
                    return  # the process is gone: nobody reads stdin any more
                self._credit_changed.clear()
                await self._credit_changed.wait()
            n = min(len(view), STDIN_PIECE, self._credit - self._sent)
            await self._send(pb.SandboxExecRequest(stdin=bytes(view[:n])))
            self._sent += n
            view = view[n:]

    write_stdin = Twin(_write_stdin)

    async def _close_stdin(self) -> None:
        """Signal EOF on stdin."""
        if not self._ended:
            await self._send(pb.SandboxExecRequest(stdin_eof=True))

    close_stdin = Twin(_close_stdin)

    async def _send_signal(self, sig: int = _signal.SIGTERM) -> None:
        """Send a signal (default SIGTERM) to the process's group."""
        number = int(sig)
        if isinstance(sig, bool) or not 0 < number < 65:
            raise ValueError(f"sig must be a signal number such as signal.SIGINT, got {sig!r}")
        if not self._ended:
            await self._send(pb.SandboxExecRequest(signal=number))

    send_signal = Twin(_send_signal)

    def _ack_soon(self, seq: int, nbytes: int) -> None:
        """Called by the consumer (any thread): ack on the SDK loop once enough was consumed."""
        self._consumed = max(self._consumed, seq)
        self._unacked_bytes += nbytes
        if self._unacked_bytes >= ACK_EVERY or nbytes == 0:
            self._unacked_bytes = 0
            sdk_loop().call_soon_threadsafe(self._ack, self._consumed)

    def _ack(self, seq: int) -> None:
        if seq <= self._acked or self._stream is None:
            return
        self._acked = seq
        task = asyncio.get_running_loop().create_task(self._send_ack(seq))
        task.add_done_callback(_quiet)

    async def _send_ack(self, seq: int) -> None:
        await self._send(pb.SandboxExecRequest(ack=seq))
        if self._ended and seq >= self._received:
            # The exit event is acked: the agent forgets the session; end our side of the stream.
            await self._close_stream()

    # -- consuming (any thread or loop) ----------------------------------------------

    def _event(self, item: Any) -> ExecEvent | None:
        """The user's view of one mailbox item (and its ack); None at the end."""
        if item is _END:
            return None
        if isinstance(item, BaseException):
            self._events.put(item)  # every later read raises it too
            raise item
        if isinstance(item, tuple) and item[0] == "exit":
            self._exit = exit_event = item[1]
            self._ack_soon(exit_event.seq, 0)
            return exit_event
        if isinstance(item, tuple):
            seq, fd, data = item
            self._ack_soon(seq, len(data))
            if fd == 1:
                text = self._dec.out.decode(data)
                self._out.append(text)
                return ExecEvent(stdout=text, seq=seq)
            text = self._dec.err.decode(data)
            self._err.append(text)
            return ExecEvent(stderr=text, seq=seq)
        return item  # the start event (pid)

    def _unpack(self, item: Any) -> Any:
        """A mailbox item, or the first of a response's batch (the rest wait in ``_pending``)."""
        if isinstance(item, list):
            self._pending.extend(item)
            return self._pending.popleft()
        return item

    def __iter__(self) -> Iterator[ExecEvent]:
        """The process's events as they arrive: the start (pid), output, then the exit event."""
        while not self._done_reading():
            item = self._pending.popleft() if self._pending else self._unpack(self._events.get())
            event = self._event(item)
            if event is None:
                self._events.put(_END)
                return
            yield event

    async def __aiter__(self) -> AsyncIterator[ExecEvent]:
        while not self._done_reading():
            item = self._pending.popleft() if self._pending else self._unpack(await self._events.get_async())
            event = self._event(item)
            if event is None:
                self._events.put(_END)
                return
            yield event

    def _done_reading(self) -> bool:
        return self._result is not None

    def output(self) -> Iterator[ExecEvent]:
        """Iterate over output events from the process (same as iterating the handle)."""
        return iter(self)

    def _aggregate(self) -> ExecResult:
        if self._result is None:
            x = self._exit
            self._result = ExecResult(
                stdout_text="".join(self._out) + self._dec.out.decode(b"", final=True),
                stderr_text="".join(self._err) + self._dec.err.decode(b"", final=True),
                exit_code=x.exit_code if x else None, signal=x.exit_signal if x else None,
                pid=self.pid, error=x.error_message if x else None)
        return self._result

    def _wait_sync(self) -> ExecResult:
        for _ in self:
            pass
        return self._aggregate()

    async def _wait_async(self) -> ExecResult:
        async for _ in self:
            pass
        return self._aggregate()

    wait = Twin.pair("wait", _wait_sync, _wait_async)

    # -- ending ----------------------------------------------------------------------

    async def _detach(self) -> None:
        """Stop reading: the process runs on in the sandbox (reattach with its session id)."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
        if self._exit is not None and self._acked < self._exit.seq and self._stream is not None:
            # Its exit was read: ack it first, so the agent forgets the session now, not after retention.
            self._acked = self._exit.seq
            with contextlib.suppress(Exception):
                await self._send(pb.SandboxExecRequest(ack=self._exit.seq))
        await self._close_stream()

    def close(self) -> None:
        """Detach from the process (it keeps running; ``sandbox.exec_attach(session_id)`` resumes)."""
        if not self._closed:
            run_sync(self._detach())

    async def aclose(self) -> None:
        if not self._closed:
            await run_async(self._detach())

    def __enter__(self) -> ExecProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ExecProcess(session_id={self.session_id!r}, pid={self.pid!r})"


def _quiet(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("exec ack failed: %s", task.exception())


def _as_error(exc: GRPCError) -> BaseException:
    """A status that ended an exec stream: the sandbox family for states, else an ExecError."""
    err = error_from_status(exc.status, exc.message, ErrorKind.SANDBOX)
    from chalkcompute.exceptions import SandboxError, SandboxNotFoundError, SandboxStatusError

    if isinstance(err, (SandboxStatusError, SandboxNotFoundError)) or not isinstance(err, SandboxError):
        return err
    return ExecError(exc.status.name, exc.message or exc.status.name)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except GRPCError as exc:
        raise _as_error(exc) from None
