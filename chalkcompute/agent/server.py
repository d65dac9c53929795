"""The in-container agent: PID 1 of every chalkd container, and its exec server.

    python3 -m chalkcompute.agent --socket /run/chalk-agent/agent.sock -- nginx -g "daemon off;"

* starts the image's own command (after ``--``), if any, as a child in its own
  process group with the agent's stdin/stdout/stderr (so ``docker logs`` shows
  it); when it exits the agent stays up, so exec keeps working, and records its
  exit status (a ``status`` request returns it);
* reaps every zombie (as PID 1 it adopts orphans) without losing the exit
  status of a process it spawned itself: it is the only caller of ``waitpid``
  in this process and hands each status to whoever spawned that pid;
* serves exec requests on a unix socket (see :mod:`.protocol`): each command in
  its own session and process group, output streamed back chunk by chunk;
* on SIGTERM/SIGINT forwards the signal to the main command's process group and
  to every running exec, waits up to ``--stop-grace`` seconds for them,
  SIGKILLs what is left and exits 0 (a requested stop is a clean stop; Docker
  reports 0 rather than 143). SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH
  are forwarded to the main command only.

Exec results follow ``docker exec``: ``exit_code`` when the process exited,
``signal`` (and ``exit_code`` None) when a signal killed it. A command that
cannot be started gets no pid, an ``error`` and the shell's exit code: 127 when
the program does not exist (``executable file not found: 'nosuch'``), 126 when
it cannot be executed or ``cwd`` is unusable. A timeout SIGKILLs the process
group and reports ``signal`` 9 with ``error`` ``timed out after 2s``.

Standard library only, Python >= 3.9: it runs under whatever ``python3`` the
image has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

from .procs import _decode_status, _exec_args, _killpg, spawn_error
from .protocol import PREFIX, PROTOCOL_VERSION, V2_REQUESTS, FrameParser, ProtocolError, encode

log = logging.getLogger(__name__)

__all__ = ["Agent", "main", "spawn_error"]

CHUNK = 64 * 1024
# After the process exits, how long to wait for its stdout/stderr to close. A
# background child that inherited them (``sh -c 'server &'``) would otherwise
# hold the exec open forever (docker exec does wait forever).
EOF_GRACE = 2.0
# Signals that only concern the main command: forwarded to it, the agent stays up.
FORWARDED = ("SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")

_HEADERS = {name: json.dumps({"t": name}, separators=(",", ":")).encode() for name in ("stdout", "stderr")}


class _Child:
    """A process the agent spawned, waiting for its exit status from the reaper."""

    __slots__ = ("proc", "on_exit")

    def __init__(self, proc: subprocess.Popen, on_exit: Callable[[int], None]) -> None:
        self.proc = proc
        self.on_exit = on_exit


class Agent:
    """Reaper, main-command supervisor and exec server. ``await Agent(...).run()``."""

    def __init__(self, socket_path: str, command: list[str] | None = None, *, ready_file: str | None = None,
                 stop_grace: float = 10.0, eof_grace: float = EOF_GRACE, socket_mode: int = 0o600,
                 socket_owner: tuple[int, int] | None = None, await_env: bool = False,
                 max_sessions: int | None = None, session_retain: float | None = None,
                 exit_with_main: bool = False) -> None:
        self.socket_path = socket_path
        # A scaling group's replica is its app: when the app exits, the container ends with its code,
        # so the daemon sees the crash (and the app's last lines) instead of a replica that looks alive.
        self.exit_with_main = exit_with_main
        self.exit_code = 0
        # Secrets come over the socket, never in the container's config: the main command
        # waits for them, and every exec inherits them from our environment.
        self.await_env = await_env
        self.command = list(command or [])
        self.ready_file = ready_file
        self.stop_grace = stop_grace
        self.eof_grace = eof_grace
        self.socket_mode = socket_mode
        self.socket_owner = socket_owner
        self.children: dict[int, _Child] = {}
        self.execs: set[_Exec] = set()
        self.main_pid: int | None = None
        self.main_status: dict[str, Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Events are made in run(): on 3.9 an Event binds to a loop when created.
        self._stop: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._stopping = False
        self._server: asyncio.AbstractServer | None = None
        from .v2 import MAX_SESSIONS, RETAIN, SessionTable  # here: v2 imports this module

        # Protocol v2's exec sessions (see .sessions).
        self.sessions = SessionTable(self, MAX_SESSIONS if max_sessions is None else max_sessions,
                                     RETAIN if session_retain is None else session_retain)

    # -- processes ------------------------------------------------------------------

    def spawn(self, argv: list[str], on_exit: Callable[[int], None], **popen: Any) -> int:
        """Start ``argv``; ``on_exit(waitpid status)`` runs when the reaper collects it.

        Must be called on the loop's thread: the reaper runs there too, so the pid
        is registered before any SIGCHLD for it can be handled.
        """
        proc = subprocess.Popen(argv, close_fds=True, **popen)
        self.children[proc.pid] = _Child(proc, on_exit)
        return proc.pid

    def reap(self) -> None:
        """SIGCHLD: collect every zombie; hand our own children's statuses on."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            if child is None:
                log.debug("reaped orphan %d", pid)
                continue
            # We collected it: tell Popen, so it never waits for (or warns about) it.
            code, sig = _decode_status(status)
            child.proc.returncode = code if code is not None else -(sig or 0)
            try:
                child.on_exit(status)
            except Exception:
                log.exception("exit callback for pid %d failed", pid)
        if self._changed is not None:
            self._changed.set()

    def _start_main(self) -> None:
        if not self.command:
            return
        argv = self.command
        # Its own process group, so a stop reaches its whole tree.
        kwargs: dict[str, Any] = {"process_group": 0}
        self.main_status = {"argv": argv, "pid": None, "running": False, "exit_code": None, "signal": None,
                            "error": None}
        try:
            pid = self.spawn(argv, self._main_exited, **kwargs)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            message, code = spawn_error(exc, argv, None)
            self.main_status.update(exit_code=code, error=message)
            log.error("main command %s could not start: %s", argv, message)
            if self.exit_with_main and self._stop is not None:
                self._stop.set()
            return
        self.main_pid = pid
        self.main_status.update(pid=pid, running=True)
        log.info("main command %s started as pid %d", argv, pid)

    def _main_exited(self, status: int) -> None:
        code, sig = _decode_status(status)
        assert self.main_status is not None
        self.main_status.update(running=False, exit_code=code, signal=sig)
        # The agent stays up so exec keeps working; the daemon can ask for this status.
        log.info("main command exited (%s)", f"code {code}" if sig is None else f"signal {sig}")
        if self.exit_with_main and not self._stopping and self._stop is not None:
            self.exit_code = code if code is not None else 128 + (sig or 0)
            self._stop.set()

    def _forward(self, sig: int) -> None:
        if self.main_status and self.main_status["running"] and self.main_pid:
            _killpg(self.main_pid, sig)

    # -- lifecycle ------------------------------------------------------------------

    def _on_stop_signal(self, sig: int) -> None:
        if self._stopping:
            # A second request: do not make the caller wait out the grace period.
            log.warning("second %s: killing everything now", signal.Signals(sig).name)
            self._kill_all(signal.SIGKILL)
        else:
            self._stopping = True
            log.info("%s: stopping", signal.Signals(sig).name)
            self._kill_all(sig)
        if self._stop is not None:
            self._stop.set()

    def _kill_all(self, sig: int) -> None:
        self._forward(sig)
        for ex in list(self.execs):
            ex.signal_group(sig)
        self.sessions.signal_all(sig)

    def _busy(self) -> bool:
        main_running = bool(self.main_status and self.main_status["running"])
        return main_running or bool(self.execs) or self.sessions.running()

    async def _wait_idle(self, timeout: float) -> bool:
        assert self._changed is not None
        deadline = self.loop.time() + timeout  # type: ignore[union-attr]
        while self._busy():
            left = deadline - self.loop.time()  # type: ignore[union-attr]
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        return True

    async def _listen(self) -> asyncio.AbstractServer:
        """Bind on a temporary name, then rename: the socket path exists only once we listen."""
        path = self.socket_path
        parent = os.path.dirname(path) or "."
        os.makedirs(parent, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale, from an earlier agent
        except FileNotFoundError:
            pass
        tmp = os.path.join(parent, f".agent-{os.getpid()}.sock")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        sock = self._bind(tmp)
        try:
            os.chmod(tmp, self.socket_mode)
            if self.socket_owner is not None:
                os.chown(tmp, *self.socket_owner)
        except PermissionError:
            # gVisor (runsc --host-uds=create) creates the host socket but will not chmod, chown, rename
            # or unlink it: bind the final name instead (the umask gave it its mode); the temporary
            # name stays behind in the agent directory, which the daemon removes with the sandbox.
            sock.close()
            log.info("the socket %s cannot be changed after bind (gVisor?): binding %s directly", tmp, path)
            sock = self._bind(path)
            return await self.loop.create_unix_server(  # type: ignore[union-attr]
                lambda: _Connection(self), sock=sock, backlog=1024)
        server = await self.loop.create_unix_server(  # type: ignore[union-attr]
            lambda: _Connection(self), sock=sock, backlog=1024)
        os.rename(tmp, path)
        return server

    def _bind(self, path: str) -> socket.socket:
        """A unix socket bound at ``path`` with ``socket_mode`` (through the directory for a long path)."""
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Narrow the umask just around bind, so the socket is never more open than
        # asked for; children keep the container's own umask.
        old = os.umask(0o777 & ~self.socket_mode)
        dir_fd = None
        try:
            address = path
            if len(os.fsencode(path)) > 107:
                # Longer than sun_path: bind through an O_PATH handle on the directory.
                dir_fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                address = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
            if dir_fd is not None:
                os.close(dir_fd)
        return sock

    def _write_ready(self) -> None:
        if not self.ready_file:
            return
        tmp = f"{self.ready_file}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "socket": self.socket_path, "main_pid": self.main_pid}, f)
        os.rename(tmp, self.ready_file)

    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        # Handlers first: a SIGCHLD for the main command must not come before we listen for it.
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        for name in FORWARDED:
            forwarded = getattr(signal, name, None)
            if forwarded is not None:
                loop.add_signal_handler(forwarded, self._forward, forwarded)
        if os.getpid() != 1:
            _become_subreaper()
        self.reap()  # zombies inherited from whoever exec'd us
        if not self.await_env:
            self._start_main()
        try:
            self._server = await self._listen()
        except OSError as exc:
            log.error("cannot listen on %s: %s", self.socket_path, exc)
            self._kill_all(signal.SIGTERM)
            return 1
        self._write_ready()
        log.info("agent %d listening on %s", os.getpid(), self.socket_path)
        await self._stop.wait()  # type: ignore[union-attr]

        self._server.close()
        for path in (self.socket_path, self.ready_file):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        if self.exit_with_main and self.main_status is not None and self.main_status.get("error"):
            self.exit_code = self.main_status.get("exit_code") or 127  # the app could not even start
        if not await self._wait_idle(self.stop_grace):
            log.warning("still running after %gs: killing", self.stop_grace)
            self._kill_all(signal.SIGKILL)
            await self._wait_idle(2.0)
        # Let the exit frames of the last execs reach their clients.
        await asyncio.sleep(0)
        log.info("agent stopped")
        return self.exit_code


def _become_subreaper() -> None:
    """Adopt orphaned grandchildren when we are not PID 1 (under tini, or in tests)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # no ctypes in a minimal python: orphans go to the real init
        log.debug("could not become a child subreaper", exc_info=True)


class _Connection(asyncio.Protocol):
    """One client connection: one request (exec, status or ping)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.parser = FrameParser()
        self.transport: asyncio.Transport | None = None
        self.exec: _Exec | None = None
        # A v2 request's handler (.sessions / .fsops): gets the later frames and the connection's events.
        self.handler: Any = None
        self.request_seen = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(encode({"t": "hello", "v": PROTOCOL_VERSION, "pid": os.getpid()}))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.parser.feed(data)
        except ProtocolError as exc:
            self.fail(str(exc))
            return
        for header, payload in frames:
            if self.request_seen:
                if self.handler is not None and not self.closed:
                    self.handler.frame(header, payload)
                continue  # v1: nothing comes after the request
            self.request_seen = True
            try:
                self._handle(header, payload)
            except ProtocolError as exc:
                self.fail(str(exc))

    def _handle(self, header: dict[str, Any], payload: bytes) -> None:
        version = header.get("v", PROTOCOL_VERSION)
        if header["t"] in V2_REQUESTS:
            from .v2 import open_v2

            self.handler = open_v2(self.agent, self, header, payload)
            return
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {version!r} is not supported (agent speaks {PROTOCOL_VERSION})")
        kind = header["t"]
        if kind == "exec":
            argv, env, cwd, timeout = _exec_args(header)
            if self.agent._stopping:
                self.fail("the agent is stopping", code="stopping")
                return
            self.exec = _Exec(self.agent, self, argv, env, cwd, timeout, payload)
            self.exec.start()
        elif kind == "status":
            self.send(encode({"t": "status", "agent_pid": os.getpid(), "main": self.agent.main_status,
                              "execs": len(self.agent.execs), "stopping": self.agent._stopping}))
            self.close()
        elif kind == "ping":
            self.send(encode({"t": "pong"}))
            self.close()
        elif kind == "env":
            given = header.get("env")
            if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in given.items()):
                raise ProtocolError("an env request needs 'env': a map of str to str")
            os.environ.update(given)  # never logged: these are secrets
            if self.agent.await_env:
                self.agent.await_env = False
                self.agent._start_main()
            self.send(encode({"t": "ok"}))
            self.close()
        else:
            raise ProtocolError(f"unknown request {kind!r}")

    def send(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()  # flushes what is buffered first

    def fail(self, message: str, code: str = "bad_request") -> None:
        self.send(encode({"t": "error", "code": code, "error": message}))
        self.close()

    def eof_received(self) -> bool:
        # Clients never half-close: EOF means the client went away.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exec is not None:
            self.exec.abandon()
        if self.handler is not None:
            self.handler.lost()

    def pause_writing(self) -> None:
        if self.exec is not None:
            self.exec.pause()
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.exec is not None:
            self.exec.resume()
        if self.handler is not None:
            self.handler.resume_writing()


class _Exec:
    """One exec: a process in its own session, its pipes, and its client connection."""

    def __init__(self, agent: Agent, conn: _Connection, argv: list[str], env: dict[str, str], cwd: str | None,
                 timeout: float | None, stdin: bytes) -> None:
        assert agent.loop is not None
        self.agent = agent
        self.loop: asyncio.AbstractEventLoop = agent.loop
        self.conn = conn
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.timeout = timeout
        self.stdin = memoryview(stdin)
        self.pid: int | None = None
        self.status: int | None = None
        self.outputs: dict[int, bytes] = {}     # read fd -> header bytes
        self.stdin_fd: int | None = None
        self.paused = False
        self.timed_out = False
        self.done = False
        self.timers: list[asyncio.TimerHandle] = []

    # -- start ----------------------------------------------------------------------

    def start(self) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r = in_w = None
        if self.stdin:
            in_r, in_w = os.pipe()
        env = dict(os.environ)
        env.update(self.env)
        try:
            self.pid = self.agent.spawn(
                self.argv, self._exited, env=env, cwd=self.cwd,
                stdin=in_r if in_r is not None else subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                # Its own session and process group: a timeout, a disconnect or a stop
                # reaches everything it started, and nothing else.
                start_new_session=True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            for fd in (out_r, out_w, err_r, err_w, in_r, in_w):
                if fd is not None:
                    os.close(fd)
            message, code = spawn_error(exc, self.argv, self.cwd)
            self.conn.send(encode({"t": "exit", "exit_code": code, "signal": None, "pid": None, "error": message}))
            self.conn.close()
            self.done = True
            return
        finally:
            # The child has its copies; ours of the child's ends must go, or EOF never comes.
            for fd in (out_w, err_w, in_r):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        self.agent.execs.add(self)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.outputs[fd] = _HEADERS[name]
            self.loop.add_reader(fd, self._readable, fd)
        if in_w is not None:
            os.set_blocking(in_w, False)
            self.stdin_fd = in_w
            self._write_stdin()
        if self.timeout is not None:
            self.timers.append(self.loop.call_later(self.timeout, self._timed_out))

    # -- io -------------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            header = self.outputs[fd]
            self.conn.send(PREFIX.pack(len(header), len(data)) + header + data)
            return
        self._close_output(fd)
        self._maybe_finish()

    def _close_output(self, fd: int) -> None:
        if self.outputs.pop(fd, None) is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def _write_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        while self.stdin:
            try:
                n = os.write(fd, self.stdin[:CHUNK])
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(fd, self._write_stdin)
                return
            except OSError:  # EPIPE: the process does not read its stdin; not an error
                break
            self.stdin = self.stdin[n:]
        self._close_stdin()

    def _close_stdin(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None:
            self.loop.remove_writer(fd)
            os.close(fd)
        self.stdin = memoryview(b"")

    def pause(self) -> None:
        """The client reads slower than the process writes: stop reading its pipes."""
        if not self.paused:
            self.paused = True
            for fd in self.outputs:
                self.loop.remove_reader(fd)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            for fd in self.outputs:
                self.loop.add_reader(fd, self._readable, fd)

    # -- end ------------------------------------------------------------------------

    def signal_group(self, sig: int) -> None:
        if self.pid is not None and not self.done:
            _killpg(self.pid, sig)

    def _timed_out(self) -> None:
        if self.status is None and not self.done and self.pid is not None:
            self.timed_out = True
            _killpg(self.pid, signal.SIGKILL)

    def _exited(self, status: int) -> None:
        self.status = status
        self._close_stdin()
        if self.outputs and not self.done:
            self.timers.append(self.loop.call_later(self.agent.eof_grace, self._eof_grace_over))
        self._maybe_finish()

    def _eof_grace_over(self) -> None:
        # Something it left behind still holds the pipes: finish with what we have.
        self.resume()  # drain whatever is already buffered
        for fd in list(self.outputs):
            while True:
                try:
                    data = os.read(fd, CHUNK)
                except OSError:
                    break
                if not data:
                    break
                self.conn.send(PREFIX.pack(len(self.outputs[fd]), len(data)) + self.outputs[fd] + data)
            self._close_output(fd)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.done or self.status is None or self.outputs:
            return
        code, sig = _decode_status(self.status)
        error = None
        if self.timed_out:
            error = f"timed out after {self.timeout:g}s"
        self.conn.send(encode({"t": "exit", "exit_code": code, "signal": sig, "pid": self.pid, "error": error}))
        self.conn.close()
        self._cleanup()

    def abandon(self) -> None:
        """The client went away: the command's whole process group goes too."""
        if self.done:
            return
        if self.pid is not None:
            _killpg(self.pid, signal.SIGKILL)
        self._cleanup()

    def _cleanup(self) -> None:
        self.done = True
        for t in self.timers:
            t.cancel()
        self.timers.clear()
        for fd in list(self.outputs):
            self._close_output(fd)
        self._close_stdin()
        self.agent.execs.discard(self)
        if self.agent._changed is not None:
            self.agent._changed.set()


def _parse_owner(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    return int(uid), int(gid) if gid else -1


def read_env_file(path: str) -> dict[str, str]:
    """The JSON map of str to str at ``path`` (ValueError naming what is wrong; never a value).

    On a swarm a scaling group's secrets reach its replicas as a Swarm secret mounted as a file, since no
    daemon socket exists on another node to send them over::

        os.environ.update(read_env_file("/run/secrets/chalkd-group-env"))
    """
    with open(path, encoding="utf-8") as f:
        try:
            given = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise ValueError("it must be a JSON object of strings to strings")
    if any(not k or "=" in k or "\0" in k or "\0" in v for k, v in given.items()):
        raise ValueError("a name is empty or holds '=' or NUL, or a value holds NUL")
    return given


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--socket PATH [--ready-file PATH] [--stop-grace S] [-- CMD ARGS...]``."""
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args:
        i = args.index("--")
        args, command = args[:i], args[i + 1:]
    parser = argparse.ArgumentParser(prog="chalk-agent", description="chalkd's in-container agent")
    parser.add_argument("--socket", required=True, help="unix socket to serve exec requests on")
    parser.add_argument("--ready-file", default=None, help="written once the socket accepts connections")
    parser.add_argument("--stop-grace", type=float, default=10.0,
                        help="seconds to wait for the main command and execs after SIGTERM before SIGKILL")
    parser.add_argument("--eof-grace", type=float, default=EOF_GRACE,
                        help="seconds an exec waits, after its process exits, for its output pipes to close")
    parser.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o600, help="octal, default 600")
    parser.add_argument("--socket-owner", type=_parse_owner, default=None,
                        help="UID[:GID] to chown the socket to (the daemon's user, when it is not root)")
    parser.add_argument("--await-env", action="store_true",
                        help="start the main command only after an env request (secrets) arrives")
    parser.add_argument("--max-sessions", type=int, default=None, help="live exec sessions at most (default 256)")
    parser.add_argument("--session-retain", type=float, default=None,
                        help="seconds an exited session nobody acked or attached to is kept (default 600)")
    parser.add_argument("--exit-with-main", action="store_true",
                        help="stop (with the main command's exit code) when the main command exits")
    parser.add_argument("--env-file", default=None,
                        help="a JSON map of str to str (secrets: a Swarm secret's file) added to the environment "
                             "before the main command starts")
    parser.add_argument("--log-level", default=os.environ.get("CHALK_AGENT_LOG_LEVEL", "WARNING"))
    opts = parser.parse_args(args)
    logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr,
                        format="chalk-agent[%(process)d] %(levelname)s %(message)s")
    if opts.env_file:
        try:
            os.environ.update(read_env_file(opts.env_file))  # never logged: these are secrets
        except (OSError, ValueError) as exc:
            log.error("cannot read --env-file %s: %s", opts.env_file, exc)
            return 2
    agent = Agent(opts.socket, command, ready_file=opts.ready_file, stop_grace=opts.stop_grace,
                  eof_grace=opts.eof_grace, socket_mode=opts.socket_mode, socket_owner=opts.socket_owner,
                  await_env=opts.await_env, max_sessions=opts.max_sessions, session_retain=opts.session_retain,
                  exit_with_main=opts.exit_with_main)
    return asyncio.run(agent.run())
