"""The web dashboard, served by the daemon on its HTTP port (:mod:`chalkd.web.app`) behind its guards.

Pages: functions and versions with their replicas and recent calls (``/``, ``/functions/<name>``), recent
calls (``/calls``), a call's detail with its arguments' shapes, attempts, timings, error and its replica's
log (``/calls/<id>``), a replica's log with a live tail (``/replicas/<id>/log``, SSE at ``.../stream``),
volumes, secrets (names only), sandboxes, scaling groups, GPUs. Two actions, POSTs carrying the session's
CSRF token: cancel a call, terminate a sandbox.

Login (as Jupyter does): ``chalkd dashboard`` opens ``/login?token=<token>``; a good token starts a
session (:mod:`chalkd.web.sessions`): an HttpOnly, SameSite=Strict cookie with a random id, then a
redirect to ``/``. The HTTP port's guards (:mod:`chalkd.web.guards`) check Host and Origin on every
request and let a request in with the bearer token or this session cookie (``WebAuth.session_check``).

    dash = install_dashboard(web)       # web: chalkd.web.app.WebServer, before web.start()
    ...
    await dash.close()                  # ends live streams, so a shutdown does not wait on open pages
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from chalkd.web import pages
from chalkd.web import readmodel as rm
from chalkd.web.sessions import Session, Sessions

log = logging.getLogger(__name__)

__all__ = ["Dashboard", "install_dashboard", "login_url"]

# Live streams (SSE) open at once, all pages together: each polls a file or the daemon every tick.
MAX_STREAMS = 16
TICK = 0.5                       # seconds between a live stream's looks
KEEPALIVE = 15.0                 # an SSE comment this often, so proxies and browsers keep the stream
STREAM_READ = 64 * 1024          # bytes a log stream reads per tick at most (a flood is sent in pieces)
LOG_LINES = 200                  # lines of a replica's log a page shows before the live tail
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def login_url(base: str, token: str) -> str:
    """The link ``chalkd dashboard`` prints: ``<base>/login?token=<token>``.

    >>> login_url("http://127.0.0.1:50052", "abc")
    'http://127.0.0.1:50052/login?token=abc'
    """
    from urllib.parse import quote

    return f"{base}/login?token={quote(token, safe='')}"


def _static(name: str) -> bytes:
    return resources.files("chalkd.web").joinpath("static", name).read_bytes()


class Dashboard:
    """The dashboard's routes and state (sessions, live streams). See the module docstring."""

    def __init__(self, server: Any, *, token: str, port: Callable[[], int | None], tls: bool = False) -> None:
        self.model = rm.ReadModel(server)
        self.sessions = Sessions(port)  # the cookie is named after the HTTP port, known once bound
        self.tls = tls
        self._token = token.encode()
        self._streams: set[asyncio.Task] = set()
        self._closing = asyncio.Event()
        self._flash: dict[str, str] = {}   # session id -> a one-time notice (what an action did)
        self._assets = {name: _static(name) for name in STATIC}

    # -- wiring ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.overview), web.get("/login", self.login), web.post("/logout", self.logout),
            web.get("/calls", self.calls), web.get("/calls/{id}", self.call),
            web.post("/calls/{id}/cancel", self.cancel_call),
            web.get("/functions/{name}", self.function),
            web.get("/replicas/{id}/log", self.replica_log), web.get("/replicas/{id}/log/stream", self.log_stream),
            web.get("/live", self.live),
            web.get("/volumes", self.volumes), web.get("/secrets", self.secrets), web.get("/sandboxes", self.sandboxes),
            web.post("/sandboxes/{id}/terminate", self.terminate_sandbox),
            web.get("/groups", self.groups), web.get("/gpus", self.gpus),
            *(web.get(f"/static/{name}", self.static) for name in STATIC),
        ]

    # The login page takes the token in its link; the script and style are public code, no data. The
    # Host and Origin guards still apply to these.
    OPEN_PATHS = ("/login", *(f"/static/{name}" for name in STATIC))

    async def close(self) -> None:
        """End the live streams (a shutdown would otherwise wait for each open page's stream)."""
        self._closing.set()
        tasks = list(self._streams)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- helpers --------------------------------------------------------------------------

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", headers=pages.SECURITY_HEADERS)

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.lookup(request)

    def _csrf(self, request: web.Request) -> str:
        """The session's CSRF token for the page's forms ("" for a bearer request: no action buttons)."""
        s = self._session(request)
        return s.csrf if s is not None else ""

    def _take_flash(self, request: web.Request) -> str:
        s = self._session(request)
        return self._flash.pop(s.id, "") if s is not None else ""

    async def _action_session(self, request: web.Request) -> Session:
        """The session of an action's POST whose CSRF field matches it; else 403 (never acted on)."""
        s = self._session(request)
        if s is None:
            raise web.HTTPForbidden(text="actions need the dashboard's session: open the link `chalkd dashboard` "
                                         "prints (a bearer token alone cannot post a form)\n")
        form = await request.post()
        if not Sessions.csrf_ok(s, form.get("csrf")):
            log.info("dashboard: refused a %s without a valid CSRF token from %s", request.path, request.remote)
            raise web.HTTPForbidden(text="refused: this form's CSRF token is missing or wrong (reload the page and "
                                         "try again)\n")
        return s

    def _back(self, s: Session, notice: str, to: str) -> web.Response:
        self._flash[s.id] = notice
        if len(self._flash) > 2 * self.sessions.limit:
            self._flash.pop(next(iter(self._flash)))
        raise web.HTTPSeeOther(to, headers=pages.SECURITY_HEADERS)

    # -- login ----------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        if not token:
            if self._session(request) is not None:
                raise web.HTTPSeeOther("/", headers=pages.SECURITY_HEADERS)
            return self._html(pages.login_help("This page needs a login link."), status=401)
        if not hmac.compare_digest(token.encode(), self._token):
            log.info("dashboard: refused a login with a wrong token from %s", request.remote)
            return self._html(pages.login_help("That login link's token is not this daemon's (was it rotated, "
                                               "or is it another daemon's link?)."), status=401)
        s = self.sessions.create()
        log.info("dashboard: new session from %s", request.remote)
        resp = web.HTTPSeeOther("/", headers=pages.SECURITY_HEADERS)
        resp.set_cookie(self.sessions.cookie, s.id, **self.sessions.cookie_options(tls=self.tls))
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        s = await self._action_session(request)
        self.sessions.end(s.id)
        resp = web.HTTPSeeOther("/login", headers=pages.SECURITY_HEADERS)
        resp.del_cookie(self.sessions.cookie, path="/")
        raise resp

    async def static(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        return web.Response(body=self._assets[name], content_type=STATIC[name],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        m = self.model
        calls = await m.recent_calls(limit=15)
        return self._html(pages.overview(m.overview(), m.functions(), calls, csrf=self._csrf(request),
                                         flash=self._take_flash(request)))

    async def calls(self, request: web.Request) -> web.Response:
        return self._html(pages.calls(await self.model.recent_calls(limit=100), csrf=self._csrf(request)))

    async def function(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        versions = self.model.function(name)
        if not versions:
            return self._html(pages.not_found(f"no function named {name}", csrf=self._csrf(request)), 404)
        calls = await self.model.recent_calls(name, limit=50)
        return self._html(pages.function(name, versions, calls, csrf=self._csrf(request)))

    async def call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["id"]
        d = await self.model.call(call_id)
        if d is None:
            return self._html(pages.not_found(f"no call {call_id} (unknown, or its result expired)",
                                              csrf=self._csrf(request)), 404)
        own = await asyncio.to_thread(self.model.call_lines, call_id, LOG_LINES)
        logs = []
        for rid in d.log_replicas[:4]:
            tail = await asyncio.to_thread(self.model.replica_log_tail, rid, LOG_LINES)
            if tail is not None:
                logs.append((rid, tail[0], tail[1]))
        return self._html(pages.call_detail(d, logs, own, csrf=self._csrf(request), flash=self._take_flash(request)))

    async def replica_log(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        tail = await asyncio.to_thread(self.model.replica_log_tail, rid, LOG_LINES)
        if tail is None:
            return self._html(pages.not_found(f"no log for replica {rid}", csrf=self._csrf(request)), 404)
        return self._html(pages.replica_log(rid, tail[0], tail[1], csrf=self._csrf(request)))

    async def volumes(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.model.volumes)  # sizes come from the store's rows
        return self._html(pages.volumes(rows, csrf=self._csrf(request)))

    async def secrets(self, request: web.Request) -> web.Response:
        return self._html(pages.secrets(self.model.secrets(), self.model.integrations(), csrf=self._csrf(request)))

    async def sandboxes(self, request: web.Request) -> web.Response:
        return self._html(pages.sandboxes(self.model.sandboxes(), self.model.runtime_name, csrf=self._csrf(request),
                                          flash=self._take_flash(request)))

    async def groups(self, request: web.Request) -> web.Response:
        return self._html(pages.groups(self.model.groups(), self.model.runtime_name, csrf=self._csrf(request)))

    async def gpus(self, request: web.Request) -> web.Response:
        return self._html(pages.gpus(self.model.gpus(), csrf=self._csrf(request)))

    # -- actions --------------------------------------------------------------------------

    async def cancel_call(self, request: web.Request) -> web.Response:
        s = await self._action_session(request)
        call_id = request.match_info["id"]
        return self._back(s, self.model.cancel_call(call_id), pages.path("calls", call_id))

    async def terminate_sandbox(self, request: web.Request) -> web.Response:
        s = await self._action_session(request)
        notice = await self.model.terminate_sandbox(request.match_info["id"])
        return self._back(s, notice, "/sandboxes")

    # -- live streams (SSE) -----------------------------------------------------------------

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        if len(self._streams) >= MAX_STREAMS:
            raise web.HTTPTooManyRequests(text=f"at most {MAX_STREAMS} live streams at once: close a dashboard tab\n")
        resp = web.StreamResponse(headers={**pages.SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        return resp

    async def _run_stream(self, body) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await body()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page went away, or the daemon stops
        finally:
            self._streams.discard(task)

    async def _wait_tick(self) -> bool:
        """Sleep a tick; False once the dashboard closes."""
        try:
            await asyncio.wait_for(self._closing.wait(), TICK)
        except TimeoutError:
            return True
        return False

    async def log_stream(self, request: web.Request) -> web.StreamResponse:
        """New lines of a replica's log as SSE ``data:`` lines, from byte ``?from=`` (default: the end)."""
        rid = request.match_info["id"]
        path = self.model.replica_log_path(rid)
        if path is None:
            raise web.HTTPNotFound(text=f"no log for replica {rid}\n")
        # Where to start: a reconnecting EventSource's Last-Event-ID (the byte offset after the last line it
        # got, sent as each batch's id), else ?from= (the page's tail end), else the end of the file.
        try:
            offset = int(request.headers.get("Last-Event-ID") or request.query.get("from", "-1"))
        except ValueError:
            offset = -1
        resp = await self._sse(request)

        def read(pos: int) -> tuple[bytes, int] | None:
            """New bytes from ``pos`` and where the next read starts; None once the log is gone."""
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                return None
            with f:
                end = os.fstat(f.fileno()).st_size
                if pos < 0 or pos > end:
                    return b"", end   # the end (or the file was replaced): from here on
                f.seek(pos)
                data = f.read(min(STREAM_READ, end - pos))
                return data, pos + len(data)

        async def body() -> None:
            pos = offset if offset >= 0 else -1
            partial = b""
            last_sent = time.monotonic()
            while True:
                got = await asyncio.to_thread(read, pos)
                if got is None:
                    await resp.write(b"event: gone\ndata: the replica's log was removed\n\n")
                    return
                data, pos = got
                data = partial + data
                lines = data.split(b"\n")
                partial = lines.pop()
                if len(partial) > STREAM_READ:  # a line with no end in sight: send what there is
                    lines.append(partial)
                    partial = b""
                if lines:
                    # A CR would end an SSE line early (and could forge fields): dropped, as a terminal shows it.
                    out = "".join(f"data: {ln.decode('utf-8', 'replace').replace(chr(13), '')}\n\n" for ln in lines)
                    await resp.write(f"{out}id: {pos - len(partial)}\n\n".encode())
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE:
                    await resp.write(b": keepalive\n\n")
                    last_sent = time.monotonic()
                if not await self._wait_tick():
                    return

        await self._run_stream(body)
        return resp

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The overview's counts as one SSE JSON event per second (``{"queued": "3", "fn:<id>:queued": ...}``);
        the page's script writes each value into the element marked ``data-live="<key>"``."""
        resp = await self._sse(request)

        async def body() -> None:
            last = ""
            ticks = 0
            while True:
                o = self.model.overview()
                snap = {"uptime": pages.took(o.uptime_s), "functions": str(o.functions),
                        "replicas": str(o.replicas), "queued": str(o.queued), "running": str(o.running),
                        "submitted": str(o.submitted)}
                for f in self.model.functions(with_replicas=False):
                    snap[f"fn:{f.id}:replicas"] = f"{f.ready}/{f.replicas}"
                    snap[f"fn:{f.id}:queued"] = str(f.queued)
                    snap[f"fn:{f.id}:running"] = str(f.running)
                text = json.dumps(snap, separators=(",", ":"))
                if text != last or ticks % 30 == 0:
                    await resp.write(f"data: {text}\n\n".encode())
                    last = text
                ticks += 1
                if not await self._wait_tick() or not await self._wait_tick():
                    return

        await self._run_stream(body)
        return resp


def install_dashboard(web_server: Any) -> Dashboard:
    """Add the dashboard to a :class:`chalkd.web.app.WebServer` (before it starts): its routes, its open
    paths (the login link, the static files) and its session cookie as the guards' second credential."""
    dash = Dashboard(web_server.server, token=web_server.auth.token, port=lambda: web_server.port,
                     tls=web_server.ssl_context is not None)
    web_server.add_routes(dash.routes(), open_paths=Dashboard.OPEN_PATHS)
    web_server.auth.session_check = dash.sessions.check
    return dash
