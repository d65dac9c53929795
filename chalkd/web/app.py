"""The daemon's HTTP port (``chalkd serve --http-port``, default 50052): one aiohttp server for
``/metrics`` now and the dashboard later, every request through :mod:`chalkd.web.guards`.

    web = WebServer(server, host="127.0.0.1", port=0, metrics_open=False)
    await web.start()           # bound: web.port is the real port (0 picks a free one)
    ...
    await web.close()

The dashboard adds its routes with :meth:`WebServer.add_routes` before :meth:`start` (the guards apply
to them as they are), and its login cookie through ``web.auth.session_check``.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from chalkd import metrics
from chalkd.config import DEFAULT_HTTP_PORT
from chalkd.connections import bind_socket
from chalkd.web.guards import OPEN_PATHS, WebAuth, allowed_hosts, guards

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HTTP_PORT", "DaemonHttp", "HttpPortError", "WebServer", "bind_http_socket", "find_http", "http_url",
           "web_ssl_context"]


class HttpPortError(RuntimeError):
    """The HTTP port cannot be bound (taken, not permitted): the message names ``--http-port``."""


def bind_http_socket(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound before anything starts (a taken port fails the start at once).

    >>> s = bind_http_socket("127.0.0.1", 0); s.getsockname()[1] > 0
    True
    >>> s.close()
    """
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        why = "it is in use (another chalkd, or another program)" if in_use else (exc.strerror or str(exc))
        raise HttpPortError(f"--http-port {port}: cannot listen on {host}:{port}: {why}; "
                            "pick another port, or 0 for a free one") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def http_url(host: str, port: int, tls: bool = False) -> str:
    """The address a client uses: ``http://127.0.0.1:50052`` (IPv6 in brackets).

    >>> http_url("::1", 50052)
    'http://[::1]:50052'
    """
    h = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{h}:{port}"


class DaemonHttp:
    """Where a running daemon's HTTP port is, and the token it proved it knows (see :func:`find_http`)."""

    def __init__(self, base: str, token: str | None, replica_credential: bool, tls: bool | str,
                 version: str) -> None:
        self.base, self.token, self.replica_credential = base, token, replica_credential
        self.tls, self.version = tls, version


async def find_http(target: str, timeout: float = 5.0) -> DaemonHttp:
    """Ask the daemon at ``target`` (``HOST:PORT``) for its HTTP port over gRPC ``Status``, after the
    token handshake, so a token is only ever sent to a daemon that proved it knows it. Raises
    ValueError (a bad target), ConnectionError (no daemon answers, or it has no HTTP port) and
    grpclib's GRPCError (the daemon refused).

        http = await find_http("127.0.0.1:50051")    # http.base == "http://127.0.0.1:50052"
    """
    import asyncio

    from grpclib.client import Channel

    from chalkcompute._auth import client_ssl_context, credentials_for, tls_from_env
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogStub

    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--target must be HOST:PORT, got {target!r}")
    tls = tls_from_env()
    channel = Channel(host.strip("[]"), int(port), ssl=client_ssl_context(tls))
    creds = credentials_for(target)
    creds.attach(channel)
    try:
        status = await asyncio.wait_for(FunctionCatalogStub(channel).Status(pb.StatusRequest()), timeout)
    except (TimeoutError, OSError) as exc:
        raise ConnectionError(f"no daemon answers at {target} ({exc or 'timed out'}); "
                              "start one with `chalkd serve`") from None
    finally:
        channel.close()
    if not status.http_port:
        raise ConnectionError(f"the daemon at {target} (chalkd {status.version}) has no HTTP port: upgrade it")
    return DaemonHttp(http_url(host.strip("[]"), status.http_port, bool(tls)),
                      creds.key.decode() if creds.key is not None else None, bool(creds.key_id),
                      tls if isinstance(tls, str) else bool(tls), status.version)


class WebServer:
    """See the module docstring. ``server`` is the running :class:`chalkd.server.Server` (its token,
    queue, catalog, scaler... are read at request time)."""

    def __init__(self, server: Any, *, host: str, port: int, metrics_open: bool = False,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.metrics_open = metrics_open
        self.ssl_context = ssl_context
        self.auth = WebAuth(server.token)
        self.registry, self.collector = metrics.daemon_registry(server)
        self._routes: list[web.AbstractRouteDef] = [web.get("/metrics", self._metrics)]
        self._open: set[str] = {"/metrics"} if metrics_open else set()
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        # The dashboard's pages, login link and session cookie (chalkd.web.dashboard), behind the same guards.
        from chalkd.web.dashboard import install_dashboard

        self.dashboard = install_dashboard(self)

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return http_url(self.host, self.port, self.ssl_context is not None)

    def bind(self) -> int:
        """Bind the port (before the rest of the daemon starts, so a taken one fails first)."""
        self._sock = bind_http_socket(self.host, self.requested_port)
        self.port = self._sock.getsockname()[1]
        return self.port

    def add_routes(self, routes: Iterable[web.AbstractRouteDef], *, open_paths: Iterable[str] = ()) -> None:
        """More routes (the dashboard's), guarded like the rest; ``open_paths`` skip the token (a login
        page that takes the token in its link, say) but still pass the Host and Origin guards."""
        if self._runner is not None:
            raise RuntimeError("add routes before the HTTP server starts")
        self._routes.extend(routes)
        self._open.update(open_paths)

    async def start(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None and self.port is not None
        app = web.Application(
            middlewares=guards(self.auth, allowed_hosts(self.host, self.port), tls=self.ssl_context is not None),
            client_max_size=64 * 1024,  # nothing here takes a body larger than a form
        )
        app[OPEN_PATHS] = frozenset(self._open)
        app.add_routes(self._routes)
        # No access log: a request's path may carry a login token one day; errors are still logged.
        # Idle keep-alive connections close after 15 s (Prometheus reconnects): descriptors are not held.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15.0)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._sock, ssl_context=self.ssl_context)
        await site.start()
        log.info("HTTP (/metrics%s) on %s", ", open" if self.metrics_open else "", self.url)

    async def close(self) -> None:
        await self.dashboard.close()  # its live streams end first: cleanup would wait on each open page
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await metrics.render(self.registry, self.collector)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"})


def web_ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """TLS for the HTTP port from the daemon's ``--tls-cert``/``--tls-key`` (HTTP/1.1, unlike gRPC's h2)."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx
