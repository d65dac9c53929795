"""Connection accounting for the daemon's gRPC listeners: who is connected, for how long, doing what.

    guard = ConnectionGuard(auth_timeout=5, idle_timeout=300, max_unauthenticated_per_peer=64)
    guard.install(grpc_server)      # after Authenticator.install: wraps grpclib's per-connection protocol
    await grpc_server.start(...)
    await guard.start()             # the once-a-second sweep
    ...
    await guard.close()

Why: a connection costs the daemon a file descriptor whether or not it ever
says anything, so connections that never prove who they are could otherwise
use up every descriptor and shut out real callers. Three rules, all checked
per connection (never per frame) by one sweep every second at most:

**Authenticated** means an RPC on this connection passed the daemon's token
check (:class:`chalkd.auth.Authenticator`): it carried a session credential
made by ``Auth.Challenge`` with the daemon's token or a running replica's key.
``Auth.Challenge`` itself proves nothing (anyone may ask for a challenge), so
a connection that only asks for challenges stays unauthenticated.

1. *Unauthenticated timeout* (``--auth-timeout``, default 5 s): a connection
   that has not authenticated that long after it opened is closed. The SDK
   authenticates with its very first RPC (the handshake is one round trip).
2. *Idle timeout* (``--idle-timeout``, default 300 s): a connection with no
   open stream and no stream opened, finished or fed with data for that long
   is closed, after a GOAWAY so that the client's next RPC opens a new
   connection (grpclib's ``Channel`` does that by itself; the SDK then
   handshakes again). ``0`` turns it off.
3. *Cap per peer* (``--max-unauthenticated-per-peer``, default 64): the
   *unauthenticated* connections of one peer are capped; connections that
   authenticated are not counted, so they are never crowded out. The peer is
   the remote IP for TCP and the peer's uid (``SO_PEERCRED``) on the unix
   socket. On loopback every TCP peer is 127.0.0.1, the daemon's own user
   included, so when a new connection finds the cap full the peer's *oldest*
   unauthenticated connection is closed to make room: a flood that opened
   connections and went quiet cannot keep a newcomer out, which is then
   admitted and authenticates in one round trip. All unauthenticated
   connections together are also capped at a quarter of the fd limit, the
   oldest closed first, so the daemon's own files, replicas and
   authenticated callers always have descriptors left.

Cost: a connection is wrapped once, when it opens; the wrapper hands
``data_received`` and the flow-control callbacks straight to grpclib's own
protocol (instance attributes, so the transport calls grpclib directly), and
activity is read from grpclib's own per-connection counters by the sweep. The
only per-RPC work is one dict lookup until a connection has authenticated.

:func:`raise_fd_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at
start and warns when it stays below :data:`LOW_FD_LIMIT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from grpclib.events import RecvRequest, listen

from chalkd.auth import current_scope

log = logging.getLogger(__name__)

LOW_FD_LIMIT = 4096
DEFAULT_AUTH_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_UNAUTHENTICATED_PER_PEER = 64
REPORT_INTERVAL = 60.0  # seconds between log lines summing up what the rules closed
MIN_UNAUTHENTICATED_TOTAL = 16  # the global cap never goes below this, however low the fd limit


def raise_fd_limit(low: int = LOW_FD_LIMIT) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit now in force.

    Logs a warning naming the figure and how to raise it when it is below ``low``.

    >>> raise_fd_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    True
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < low:
        log.warning(
            "chalkd can have at most %d files and connections open (RLIMIT_NOFILE, hard limit %s); "
            "below %d, many callers or replicas may be refused. Raise the hard limit: `ulimit -Hn 65536` "
            "(as root) in the shell that starts chalkd, LimitNOFILE=65536 in its systemd unit, or a "
            "`nofile` line in /etc/security/limits.conf", soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard, low)
    else:
        log.info("open-file limit (RLIMIT_NOFILE): %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft


def _peer_of(transport: asyncio.BaseTransport) -> str:
    """``ip:<address>`` for TCP, ``uid:<n>`` on a unix socket (``SO_PEERCRED``), else ``unknown``."""
    addr = transport.get_extra_info("peername")
    if isinstance(addr, tuple) and addr:
        host = str(addr[0])
        return "ip:" + (host[7:] if host.startswith("::ffff:") else host)  # IPv4-mapped: one peer
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX and hasattr(socket, "SO_PEERCRED"):
        with contextlib.suppress(OSError):
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return f"uid:{uid}"
    return "unknown"


class _Conn:
    """One connection's accounting (the sweep reads grpclib's own counters through ``inner``)."""

    __slots__ = ("inner", "transport", "peer", "opened", "authenticated", "fingerprint", "active_at")

    def __init__(self, inner: Any, transport: asyncio.BaseTransport, peer: str, now: float) -> None:
        self.inner = inner
        self.transport = transport
        self.peer = peer
        self.opened = now
        self.authenticated = False
        self.fingerprint = -1
        self.active_at = now

    def activity(self) -> int:
        """A number that changes whenever a stream opens, ends or carries data (grpclib's counters)."""
        conn = self.inner.connection
        return conn.streams_succeeded + conn.streams_failed + conn.data_received

    def busy(self) -> bool:
        return bool(self.inner.processor.streams)


class _TrackedProtocol(asyncio.Protocol):
    """grpclib's protocol for one connection, with open/close accounted by the guard.

    Only ``connection_made``/``connection_lost`` pass through this class; the hot
    callbacks are grpclib's own bound methods set on the instance."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.conn: _Conn | None = None
        # Straight to grpclib: the transport looks these up on the instance first.
        self.data_received = inner.data_received  # type: ignore[method-assign]
        self.pause_writing = inner.pause_writing  # type: ignore[method-assign]
        self.resume_writing = inner.resume_writing  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)
        self.conn = self.guard._opened(self.inner, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.guard._lost(self.conn)
        self.inner.connection_lost(exc)


class ConnectionGuard:
    """See the module docstring. One guard may watch several gRPC servers (TCP and unix)."""

    def __init__(self, *, auth_timeout: float = DEFAULT_AUTH_TIMEOUT, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_unauthenticated_per_peer: int = DEFAULT_MAX_UNAUTHENTICATED_PER_PEER,
                 fd_limit: int | None = None) -> None:
        if not auth_timeout > 0:
            raise ValueError(f"--auth-timeout must be positive, got {auth_timeout:g}")
        if idle_timeout < 0:
            raise ValueError(f"--idle-timeout must be 0 (off) or positive, got {idle_timeout:g}")
        if max_unauthenticated_per_peer < 1:
            raise ValueError(f"--max-unauthenticated-per-peer must be at least 1, got {max_unauthenticated_per_peer}")
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout
        self.max_per_peer = max_unauthenticated_per_peer
        limit = fd_limit if fd_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            limit = 1 << 20
        self.max_unauthenticated = max(MIN_UNAUTHENTICATED_TOTAL, limit // 4)
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}
        # Unauthenticated connections, oldest first (dicts keep insertion order): all, and per peer.
        self.pending: dict[_Conn, None] = {}
        self.pending_by_peer: dict[str, dict[_Conn, None]] = {}
        self.closed = {"auth_timeout": 0, "idle": 0, "peer_cap": 0, "total_cap": 0}
        self._task: asyncio.Task | None = None
        # Sweep often enough to honour the shortest timeout within a quarter of it, at most once a second.
        shortest = min(t for t in (auth_timeout, idle_timeout) if t > 0)
        self.sweep_interval = max(0.05, min(1.0, shortest / 4))
        self._clock: Callable[[], float] = time.monotonic
        self._reported = dict(self.closed)
        self._reported_at = self._clock()

    # -- wiring -----------------------------------------------------------------------------

    def install(self, server: Any) -> None:
        """Wrap ``server``'s per-connection protocol and mark connections whose RPCs pass auth.

        Call after :meth:`chalkd.auth.Authenticator.install`: listeners run in order and a
        refused RPC stops there, so the one added here only sees RPCs that passed."""
        make = server._protocol_factory  # grpclib's factory: used by start() via the instance attribute

        def factory() -> _TrackedProtocol:
            return _TrackedProtocol(self, make())

        server._protocol_factory = factory

        async def on_request(event: RecvRequest) -> None:
            # The Authenticator's listener ran first in this request's task: it sets the scope only for an
            # RPC whose credential checked out (Auth.Challenge passes it without one, and without a scope).
            if current_scope.get() is None:
                return
            # Peer keeps the transport the connection was made with (grpclib.protocol.Peer).
            conn = self.conns.get(getattr(event.peer, "_transport", None))  # type: ignore[arg-type]
            if conn is not None and not conn.authenticated:
                self._authenticated(conn)

        listen(server, RecvRequest, on_request)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep_forever(), name="connection-sweeper")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> dict[str, int]:
        """Open connections, unauthenticated ones, and how many each rule closed so far."""
        return {"open": len(self.conns), "unauthenticated": len(self.pending),
                **{f"closed_{k}": v for k, v in self.closed.items()}}

    # -- accounting ---------------------------------------------------------------------------

    def _opened(self, inner: Any, transport: asyncio.BaseTransport) -> _Conn:
        conn = _Conn(inner, transport, _peer_of(transport), self._clock())
        self.conns[transport] = conn
        mine = self.pending_by_peer.setdefault(conn.peer, {})
        # Room first (oldest out), then admit: a quiet flood cannot keep a newcomer out.
        while len(mine) >= self.max_per_peer:
            self._close(next(iter(mine)), "peer_cap")
        while len(self.pending) >= self.max_unauthenticated:
            self._close(next(iter(self.pending)), "total_cap")
        mine = self.pending_by_peer.setdefault(conn.peer, {})  # _close may have dropped the emptied dict
        mine[conn] = None
        self.pending[conn] = None
        return conn

    def _unpend(self, conn: _Conn) -> None:
        if self.pending.pop(conn, 0) is None:
            mine = self.pending_by_peer.get(conn.peer)
            if mine is not None:
                mine.pop(conn, None)
                if not mine:
                    del self.pending_by_peer[conn.peer]

    def _authenticated(self, conn: _Conn) -> None:
        conn.authenticated = True
        self._unpend(conn)

    def _lost(self, conn: _Conn) -> None:
        self.conns.pop(conn.transport, None)
        self._unpend(conn)

    def _close(self, conn: _Conn, why: str) -> None:
        """Close ``conn`` now (GOAWAY first when it spoke HTTP/2 to us), and account for it at once."""
        self.closed[why] += 1
        self._lost(conn)
        log.debug("closing a connection from %s (%s)", conn.peer, why)
        with contextlib.suppress(Exception):  # best effort: the transport may be half-gone already
            h2 = conn.inner.connection._connection
            h2.close_connection()
            conn.inner.connection.flush()
        conn.transport.close()

    # -- the sweep ----------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> None:
        """Close what has been unauthenticated or idle too long (one pass; see the module docstring)."""
        now = self._clock() if now is None else now
        for conn in list(self.pending):  # oldest first: stop at the first one still in time
            if now - conn.opened < self.auth_timeout:
                break
            self._close(conn, "auth_timeout")
        if not self.idle_timeout:
            return
        for conn in list(self.conns.values()):
            fp = conn.activity()
            if fp != conn.fingerprint or conn.busy():
                conn.fingerprint, conn.active_at = fp, now
            elif now - conn.active_at >= self.idle_timeout:
                self._close(conn, "idle")

    def report(self, now: float, every: float = REPORT_INTERVAL) -> None:
        """Log what the rules closed since the last report, at most once per ``every`` seconds (a flood
        is one line a minute, not one per connection)."""
        if now - self._reported_at < every or self.closed == self._reported:
            return
        delta = {k: v - self._reported[k] for k, v in self.closed.items() if v != self._reported[k]}
        log.info("closed connections in the last %.0fs: %s (%d open, %d not authenticated)", now - self._reported_at,
                 ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in delta.items()), len(self.conns), len(self.pending))
        self._reported, self._reported_at = dict(self.closed), now

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                now = self._clock()
                self.sweep(now)
                self.report(now)
            except Exception:
                log.exception("the connection sweep failed")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket (gRPC, HTTP) bound by us (as uvicorn's ``Config.bind_socket``) so that the
    port is known before anything starts and grpclib is handed the socket (``Server.start(sock=...)``).

    >>> s = bind_socket("127.0.0.1", 0); s.getsockname()[1] > 0
    True
    >>> s.close()
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
