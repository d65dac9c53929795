"""Protocol v2, exec sessions: long-lived commands a client can detach from and reattach to.

Frames as in :mod:`.protocol`; the first frame of a connection carries ``"v": 2``::

    client -> {"t": "session", "v": 2, "session": "s1", "argv": ["cat"], "env": null, "cwd": null,
               "timeout": null, "window": 8388608, "detach_timeout": 300}
    agent  -> {"t": "started", "session": "s1", "pid": 42, "stdin_credit": 1048576, "stdin_received": 0}
    client -> {"t": "stdin"} b"hi\\n"   {"t": "stdin_eof"}   {"t": "signal", "sig": 15}   {"t": "ack", "seq": 1}
    agent  -> {"t": "stdin_credit", "up_to": 1048579}
    agent  -> {"t": "out", "seq": 1, "fd": 1} b"hi\\n"
    agent  -> {"t": "exit", "seq": 2, "exit_code": 0, "signal": null, "error": null}

or ``{"t": "attach", "v": 2, "session": "s1", "after": 1}`` (answered by ``started``, then every held
event with ``seq > after``, then live ones; events <= ``after`` count as acked, except the exit
event; a second attach takes the session over and the agent closes the first connection, after a
``taken_over`` error frame when its buffer is small), or ``{"t": "sessions", "v": 2}`` answered by
``{"t": "sessions", "sessions": [{"session", "pid", "running", "attached", "held_bytes",
"held_events", "last_seq", "acked", "reading", "window", ...}, ...]}``. Errors: ``{"t": "error",
"code": "exists" | "too_many" | "not_found" | "gone" | "bad_request" | "stopping", "error": "..."}``,
then the agent closes.

* Events are numbered from 1 per session and held until acked. While the held payload bytes are
  >= ``window`` the agent stops reading the process's stdout/stderr, so a process nobody reads from
  blocks on write; a session's memory stays <= window + one read (<= 1 MiB).
* ``stdin_credit``: the client may have sent stdin bytes up to ``up_to`` in total; the agent grants
  ``written to the pipe + 1 MiB``, so it never has to stop reading the connection (acks and signals
  always get through). ``stdin_received`` in ``started`` is the total the agent has had so far
  (for a client that reattaches).
* The attached connection closing before the exit event is acked detaches the session: the process
  runs on (until the window fills); with no attach within ``detach_timeout`` its group gets SIGHUP.
  An exited session is forgotten once its exit event is acked (the agent then closes the
  connection), or RETAIN seconds after it exited with nobody attached.
* ``timeout`` SIGKILLs the process group; the exit event says ``signal`` 9, ``error`` "timed out after 5s".

Requests are dispatched, and sessions kept by id, in :mod:`.v2`; file operations (``fs_read``,
``fs_write``, ``fs_list``) are in :mod:`.fsops`.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
from typing import TYPE_CHECKING, Any

from .handler import ConnectionRef as _Connection
from .handler import Handler
from .procs import _decode_status, _killpg, spawn_error
from .protocol import PREFIX, encode

if TYPE_CHECKING:
    import asyncio

SessionTable = Any  # .v2.SessionTable (not imported: .v2 imports this module)

log = logging.getLogger(__name__)

__all__ = ["Session", "READ_MAX", "STDIN_CREDIT"]

# One event's payload at most, and the size we ask the kernel to make stdout/stderr pipes: one
# read per MiB instead of per 64 KiB keeps the agent's cost per byte small.
READ_MAX = 1 << 20
# What the agent hands its transport at a time (see _Attached).
SEND_PIECE = 256 << 10
SEND_BUFFER = 4 << 20
STDIN_CREDIT = 1 << 20
# Enlarged pipes count against the uid's pipe-user-pages-soft (64 MiB by default); past it the
# kernel gives every *new* pipe of that uid 8 KiB. So only this many pipes are enlarged at a time.
MAX_BIG_PIPES = 16
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named only from Python 3.10


class _Attached(Handler):
    """The connection a session is attached to, and its send queue.

    Frames go to the transport a piece at a time, only when its buffer is empty (high-water 0):
    a piece is sent straight from the event's bytes and at most its unsent tail is copied into
    the transport's buffer. (Writing whole megabyte frames makes Python <= 3.11's transport copy
    them all into one growing bytearray: that halved the throughput.)"""

    __slots__ = ("session", "conn", "pending")

    def __init__(self, session: Session, conn: _Connection) -> None:
        self.session = session
        self.conn = conn
        self.pending: collections.deque[memoryview] = collections.deque()
        if conn.transport is not None:
            conn.transport.set_write_buffer_limits(high=0)
            sock = conn.transport.get_extra_info("socket")
            try:
                # Fewer wake-ups per MiB; the kernel caps it (net.core.wmem_max) without failing.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except (AttributeError, OSError):
                pass

    def send(self, *parts: bytes) -> None:
        for part in parts:
            if part:
                self.pending.append(memoryview(part))
        self.pump()

    def pump(self) -> None:
        conn, pending = self.conn, self.pending
        transport = conn.transport
        if conn.closed or transport is None:
            pending.clear()
            return
        while pending and not transport.get_write_buffer_size():
            view = pending[0]
            if len(view) > SEND_PIECE:
                pending[0] = view[SEND_PIECE:]
                view = view[:SEND_PIECE]
            else:
                pending.popleft()
            transport.write(view)

    def resume_writing(self) -> None:
        self.pump()

    def frame(self, header: dict[str, Any], payload: bytes) -> None:
        s = self.session
        if s.link is not self:
            return  # taken over: this connection is being closed
        kind = header["t"]
        if kind == "ack":
            seq = header.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                s.ack(seq)
        elif kind == "stdin":
            s.stdin_data(payload)
        elif kind == "stdin_eof":
            s.stdin_eof()
        elif kind == "signal":
            s.client_signal(header.get("sig"))
        # Other frame types: from a newer client, ignored.

    def lost(self) -> None:
        self.pending.clear()
        self.session.detach(self)


class Session:
    """One command, its pipes, the events not yet acked and the connection attached (if any)."""

    def __init__(self, table: SessionTable, sid: str, argv: list[str], env: dict[str, str], cwd: str | None,
                 timeout: float | None, window: int, detach_timeout: float) -> None:
        agent = table.agent
        assert agent.loop is not None
        self.table = table
        self.agent = agent
        self.loop: asyncio.AbstractEventLoop = agent.loop
        self.id = sid
        self.argv, self.env, self.cwd, self.timeout = argv, env, cwd, timeout
        self.window = window
        self.read_size = max(4096, min(READ_MAX, window))
        self.detach_timeout = detach_timeout
        self.pid: int | None = None
        self.status: int | None = None
        self.spawn_failed: tuple[str, int] | None = None
        self.timed_out = False
        self.link: _Attached | None = None
        # (seq, prefix + header, payload) of every event not yet acked.
        self.events: collections.deque[tuple[int, bytes, bytes]] = collections.deque()
        self.held = 0
        self.seq = 0
        self.acked = 0
        self.exit_seq: int | None = None
        self.outputs: dict[int, int] = {}  # read fd -> 1 | 2
        self.big: list[int] = []           # fds whose pipe we enlarged
        self.reading = False
        self.grace_over = False
        self.stdin_fd: int | None = None
        self.stdin_buf = bytearray()
        self.stdin_written = 0             # bytes written to the pipe, or dropped once it is closed
        self.stdin_received = 0
        self.stdin_closing = False
        self.credit_sent = STDIN_CREDIT
        self.detach_fired = False
        self.forgotten = False
        self.timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def running(self) -> bool:
        return self.pid is not None and self.status is None

    # -- start and attach -----------------------------------------------------------

    def start(self, conn: _Connection) -> Handler:
        self.link = handler = _Attached(self, conn)
        fds: list[int] = []
        try:
            for _ in range(3):
                fds += os.pipe()
        except OSError as exc:  # EMFILE / ENFILE: out of file descriptors
            for fd in fds:
                os.close(fd)
            self.spawn_failed = (f"cannot start {self.argv[0]!r}: no pipes: {(exc.strerror or str(exc)).lower()}",
                                 126)
        else:
            self._spawn(*fds)
        self._send_started()
        if self.spawn_failed is not None:
            message, code = self.spawn_failed
            self._emit_exit(code, None, message)
            return handler
        log.info("session %s: %s started as pid %d", self.id, self.argv, self.pid)
        self._update_reading()
        if self.timeout is not None:
            self.timers["timeout"] = self.loop.call_later(self.timeout, self._timed_out)
        return handler

    def _spawn(self, out_r: int, out_w: int, err_r: int, err_w: int, in_r: int, in_w: int) -> None:
        for fd in (out_r, err_r, in_w):
            self._enlarge(fd)
        env = dict(os.environ)
        env.update(self.env)
        try:
            self.pid = self.agent.spawn(self.argv, self._exited, env=env, cwd=self.cwd, stdin=in_r, stdout=out_w,
                                        stderr=err_w, start_new_session=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            for fd in (out_r, err_r, in_w):
                os.close(fd)
            self._unenlarge_all()
            self.spawn_failed = spawn_error(exc, self.argv, self.cwd)
            return
        finally:
            # The child has its copies; ours of its ends must go, or EOF never comes.
            for fd in (out_w, err_w, in_r):
                os.close(fd)
        for fd, n in ((out_r, 1), (err_r, 2)):
            os.set_blocking(fd, False)
            self.outputs[fd] = n
        os.set_blocking(in_w, False)
        self.stdin_fd = in_w

    def _enlarge(self, fd: int) -> None:
        if self.table.big_pipes >= MAX_BIG_PIPES:
            return
        try:
            import fcntl

            fcntl.fcntl(fd, _F_SETPIPE_SZ, READ_MAX)
        except (ImportError, OSError):  # not Linux, or over /proc/sys/fs/pipe-max-size: keep the default
            return
        self.table.big_pipes += 1
        self.big.append(fd)

    def _unenlarge_all(self) -> None:
        self.table.big_pipes -= len(self.big)
        self.big.clear()

    def _send_started(self) -> None:
        if self.link is not None:
            self.link.send(encode({"t": "started", "session": self.id, "pid": self.pid,
                                   "stdin_credit": self.credit_sent, "stdin_received": self.stdin_received}))

    def attach(self, conn: _Connection, after: int) -> Handler | None:
        if after > self.seq:
            conn.fail(f"'after' {after} is past session {self.id!r}'s last event ({self.seq})")
            return None
        if after < self.acked:
            conn.fail(f"session {self.id!r}: events {after + 1}..{self.acked} were acked and dropped; "
                      f"attach with after >= {self.acked}", code="gone")
            return None
        old = self.link
        self.link = link = _Attached(self, conn)
        if old is not None:
            log.info("session %s: taken over by a new attach", self.id)
            _close_taken_over(old, self.id)
        self._cancel("detach", "retain")
        self.detach_fired = False  # the next detach gets its own detach_timeout
        self._send_started()
        for seq, head, payload in self.events:
            if seq > after:
                link.send(head, payload)
        # The client has everything up to `after`: those are delivered (and, unacked, they would
        # hold the window shut for good). After the replay: this may read (and send) new output.
        self.ack(after, keep_exit=True)
        return link

    def detach(self, link: _Attached) -> None:
        if self.link is not link or self.forgotten:
            return
        self.link = None
        log.info("session %s: detached", self.id)
        self._schedule()

    def _schedule(self) -> None:
        """Detach / retention timers for a session nobody is attached to."""
        if self.link is not None or self.forgotten:
            return
        if self.status is not None or self.spawn_failed is not None:
            self._cancel("detach")
            if "retain" not in self.timers:
                self.timers["retain"] = self.loop.call_later(self.table.retain, self.forget)
        elif not self.detach_fired and "detach" not in self.timers:
            self.timers["detach"] = self.loop.call_later(self.detach_timeout, self._detach_expired)

    def _detach_expired(self) -> None:
        self.timers.pop("detach", None)
        self.detach_fired = True
        if self.running:
            log.info("session %s: nobody attached for %gs: SIGHUP", self.id, self.detach_timeout)
            _killpg(self.pid, signal.SIGHUP)  # type: ignore[arg-type]

    def _cancel(self, *names: str) -> None:
        for name in names:
            t = self.timers.pop(name, None)
            if t is not None:
                t.cancel()

    # -- events ---------------------------------------------------------------------

    def _emit(self, header: bytes, payload: bytes) -> None:
        head = PREFIX.pack(len(header), len(payload)) + header
        self.events.append((self.seq, head, payload))
        self.held += len(payload)
        if self.link is not None:
            self.link.send(head, payload)

    def _emit_out(self, fd_no: int, data: bytes) -> None:
        self.seq += 1
        self._emit(b'{"t":"out","seq":%d,"fd":%d}' % (self.seq, fd_no), data)

    def _emit_exit(self, code: int | None, sig: int | None, error: str | None) -> None:
        self.seq += 1
        self.exit_seq = self.seq
        header = encode({"t": "exit", "seq": self.seq, "exit_code": code, "signal": sig, "error": error})
        self._emit(header[PREFIX.size:], b"")
        log.info("session %s: exited (code %s, signal %s)", self.id, code, sig)

    def ack(self, seq: int, *, keep_exit: bool = False) -> None:
        """Drop the events up to ``seq``: delivered. Acking the exit event ends the session, unless
        ``keep_exit`` (an attach's ``after``: that client may not know it saw the end)."""
        seq = min(seq, self.seq)
        if keep_exit and self.exit_seq is not None:
            seq = min(seq, self.exit_seq - 1)
        if seq <= self.acked:
            return
        self.acked = seq
        events = self.events
        while events and events[0][0] <= seq:
            self.held -= len(events.popleft()[2])
        if self.exit_seq is not None and seq >= self.exit_seq:
            link = self.link
            self.forget()
            if link is not None:
                link.conn.close()
            return
        if self.grace_over:
            self._drain_outputs()
        else:
            self._update_reading()

    # -- output ---------------------------------------------------------------------

    def _update_reading(self) -> None:
        want = bool(self.outputs) and self.held < self.window and not self.forgotten
        if want == self.reading:
            return
        self.reading = want
        for fd in self.outputs:
            if want:
                self.loop.add_reader(fd, self._readable, fd)
            else:
                self.loop.remove_reader(fd)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, self.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._emit_out(self.outputs[fd], data)
            if self.held >= self.window:
                self._update_reading()
            return
        self._close_output(fd)
        self._maybe_finish()

    def _close_output(self, fd: int) -> None:
        if self.outputs.pop(fd, None) is None:
            return
        if self.reading:
            self.loop.remove_reader(fd)
        if fd in self.big:
            self.big.remove(fd)
            self.table.big_pipes -= 1
        os.close(fd)
        if not self.outputs:
            self.reading = False

    def _drain_outputs(self) -> None:
        """After the EOF grace: read what the pipes hold (within the window) and close them, even if a
        background process still has them open."""
        for fd in list(self.outputs):
            while self.held < self.window:
                try:
                    data = os.read(fd, self.read_size)
                except (BlockingIOError, InterruptedError):
                    data = b""
                except OSError:
                    data = b""
                if not data:
                    self._close_output(fd)
                    break
                self._emit_out(self.outputs[fd], data)
        self._update_reading()
        self._maybe_finish()

    def _eof_grace_over(self) -> None:
        self.timers.pop("eof_grace", None)
        self.grace_over = True
        if self.reading:
            self.reading = False
            for fd in self.outputs:
                self.loop.remove_reader(fd)
        self._drain_outputs()

    # -- stdin ----------------------------------------------------------------------

    def stdin_data(self, data: bytes) -> None:
        self.stdin_received += len(data)
        if self.stdin_received > self.credit_sent:
            log.warning("session %s: client sent stdin beyond its credit (%d > %d): detaching it", self.id,
                        self.stdin_received, self.credit_sent)
            if self.link is not None:
                self.link.pending.clear()
                self.link.conn.fail(f"stdin beyond the credit granted ({self.stdin_received} > "
                                    f"{self.credit_sent} bytes)")
        if self.stdin_fd is None or self.stdin_closing:
            self.stdin_written += len(data)  # nobody reads it any more: dropped, but credited
        else:
            self.stdin_buf += data
            self._flush_stdin()
        self._send_credit()

    def stdin_eof(self) -> None:
        self.stdin_closing = True
        if not self.stdin_buf:
            self._close_stdin()

    def _flush_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        buf = self.stdin_buf
        while buf:
            try:
                n = os.write(fd, memoryview(buf)[:READ_MAX])
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(fd, self._writable)
                return
            except OSError:  # EPIPE: the process does not read its stdin (any more); not an error
                self._close_stdin()
                return
            del buf[:n]
            self.stdin_written += n
        self.loop.remove_writer(fd)
        if self.stdin_closing:
            self._close_stdin()

    def _writable(self) -> None:
        self._flush_stdin()
        self._send_credit()

    def _close_stdin(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None:
            self.loop.remove_writer(fd)
            if fd in self.big:
                self.big.remove(fd)
                self.table.big_pipes -= 1
            os.close(fd)
        self.stdin_written += len(self.stdin_buf)
        self.stdin_buf = bytearray()

    def _send_credit(self) -> None:
        up_to = self.stdin_written + STDIN_CREDIT
        if up_to > self.credit_sent:
            self.credit_sent = up_to
            if self.link is not None:
                self.link.send(encode({"t": "stdin_credit", "up_to": up_to}))

    # -- signals and the end --------------------------------------------------------

    def client_signal(self, sig: Any) -> None:
        valid = isinstance(sig, int) and not isinstance(sig, bool) and sig in signal.valid_signals() and sig > 0
        if not valid:
            log.warning("session %s: ignoring a request to send signal %r (not a valid signal number)", self.id, sig)
            return
        self.signal_group(sig)

    def signal_group(self, sig: int) -> None:
        # Only while it runs: once reaped, its pid (= its group id) may be reused.
        if self.running:
            _killpg(self.pid, sig)  # type: ignore[arg-type]

    def _timed_out(self) -> None:
        self.timers.pop("timeout", None)
        if self.running:
            self.timed_out = True
            _killpg(self.pid, signal.SIGKILL)  # type: ignore[arg-type]

    def _exited(self, status: int) -> None:
        self.status = status
        self._cancel("timeout", "detach")
        self._close_stdin()
        if self.outputs and not self.forgotten:
            self.timers["eof_grace"] = self.loop.call_later(self.agent.eof_grace, self._eof_grace_over)
        self._maybe_finish()
        self._schedule()

    def _maybe_finish(self) -> None:
        if self.exit_seq is not None or self.status is None or self.outputs or self.forgotten:
            return
        self._cancel("eof_grace")
        code, sig = _decode_status(self.status)
        error = f"timed out after {self.timeout:g}s" if self.timed_out else None
        self._emit_exit(code, sig, error)

    def forget(self) -> None:
        """Drop the session: its events, its pipes, its entry in the table."""
        if self.forgotten:
            return
        self.forgotten = True
        for name in list(self.timers):
            self._cancel(name)
        for fd in list(self.outputs):
            self._close_output(fd)
        self._unenlarge_all()
        self._close_stdin()
        self.events.clear()
        self.held = 0
        if self.table.sessions.get(self.id) is self:
            del self.table.sessions[self.id]
        log.info("session %s: forgotten", self.id)

    def info(self) -> dict[str, Any]:
        return {"session": self.id, "argv": self.argv, "pid": self.pid, "running": self.running,
                "exited": self.exit_seq is not None, "attached": self.link is not None,
                "held_bytes": self.held, "held_events": len(self.events), "last_seq": self.seq,
                "acked": self.acked, "reading": self.reading, "window": self.window,
                "stdin_received": self.stdin_received, "stdin_written": self.stdin_written}


def _close_taken_over(link: _Attached, sid: str) -> None:
    """Close a connection another attach took the session from: tell it why if that is quick, else cut it."""
    conn, transport = link.conn, link.conn.transport
    link.pending.clear()
    if transport is None or conn.closed:
        return
    if transport.get_write_buffer_size() < (64 << 10):
        conn.fail(f"session {sid!r} was attached from another connection", code="taken_over")
    else:
        conn.closed = True
        transport.abort()  # do not flush megabytes of output nobody will read
