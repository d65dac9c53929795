"""A scaling group's HTTP front: one port per group, proxied to the group's ready replicas.

    pool = ReplicaPool("web", on_demand=manager.scale_from_zero)
    proxy = GroupProxy(pool, name="web", auth_key=None)
    port = await proxy.start("127.0.0.1", 51000)      # OSError when taken: pick another
    ...                                                # the manager adds replicas to `pool`, probes mark them
    await proxy.close(grace=30.0)

Per request: the ready replica with the fewest requests in flight (ties rotate; `ReplicaPool.acquire`);
hop-by-hop headers dropped both ways; X-Forwarded-For/-Proto/-Host set (replaced, never trusted from the
client: this proxy is the edge); bodies streamed both ways (a small body is read whole, which is faster
and lets an idempotent request be retried); websockets relayed frame by frame. Requests go out through
upstream.py's lean HTTP/1.1 client (keep-alive per replica); a request body streamed without a known
small length, and websockets, through aiohttp's client (`session`, which the probes may share).

Failures: a request whose connection to a replica could not be made goes to another ready replica (the
replica is reported to the pool, unready until its probe succeeds again); an idempotent request (GET,
HEAD, PUT, DELETE, OPTIONS) whose replica died before answering is retried once, on another replica when
there is one; any other gets 502. No ready replica: ``pool.notify_demand()`` (scale up from zero) and the
request is held up to ``hold_timeout`` seconds, then 503; ``pool.unavailable`` set: 503 with that reason
at once. With ``auth_key``, requests need ``Authorization: Bearer <key>`` (else 401), and that header is
not passed on to the app. Errors of the proxy's own are short text bodies naming the group.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from chalkd.groups.pool import Backend, ReplicaPool
from chalkd.groups.upstream import ConnectFailed, UpstreamBroken, UpstreamPool
from chalkd.web.sessions import without_session_cookie

log = logging.getLogger(__name__)

HOP_BY_HOP = (hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION,
              "Proxy-Connection", hdrs.TE, hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE)
WS_HANDSHAKE = (hdrs.SEC_WEBSOCKET_KEY, hdrs.SEC_WEBSOCKET_VERSION, hdrs.SEC_WEBSOCKET_EXTENSIONS,
                hdrs.SEC_WEBSOCKET_PROTOCOL)
FORWARDED = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
RETRYABLE = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_BODY_LIMIT = 1 << 20  # an idempotent request's body is kept (to resend it) up to this size
SMALL_BODY = 64 << 10  # bodies up to this size (with a Content-Length) are read whole: one write, not a stream
WS_MAX_MESSAGE = 16 << 20  # the largest websocket message relayed (aiohttp buffers one whole message)
CLIENT_KEEPALIVE = 75.0  # seconds an idle client connection is kept open (aiohttp's default is an hour)
MAX_CONNECTIONS = 4096  # to the replicas, all together (websockets included)
UPSTREAM_KEEPALIVE = 2.0  # seconds an idle connection to a replica is kept: under the apps' own (uvicorn 5 s,
#                           gunicorn 2 s), so a request seldom lands on one the app is closing
_NO_SKIP: frozenset[str] = frozenset()


class _Refused(Exception):
    """The proxy's own answer (4xx/5xx) to a request it will not forward."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers


class GroupProxy:
    """The HTTP proxy of one scaling group; see the module docstring."""

    def __init__(self, pool: ReplicaPool, *, name: str, auth_key: str | None, hold_timeout: float = 300.0,
                 max_held: int = 10_000, connect_timeout: float = 10.0) -> None:
        if auth_key is not None and not auth_key:
            raise ValueError(f"group {name!r}: auth_key must be a non-empty string or None")
        if not hold_timeout > 0:
            raise ValueError(f"group {name!r}: hold_timeout must be > 0 seconds, got {hold_timeout!r}")
        self.pool = pool
        self.name = name
        self.hold_timeout = hold_timeout
        self.max_held = max_held
        self.connect_timeout = connect_timeout
        self._expected: bytes | None = None
        self._drop: frozenset[bytes] = frozenset()
        self._use_key(auth_key)
        self._prefix = f"chalkd: group {name!r}: "
        self._session: aiohttp.ClientSession | None = None
        self._upstream: UpstreamPool | None = None
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._closing = False
        self._active = 0  # requests being handled (websockets included)
        self._idle = asyncio.Event()
        self._held = 0  # requests waiting for a ready replica

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session to the replicas (the probes may share it). Exists after `start`."""
        if self._session is None:
            raise RuntimeError(f"group {self.name!r}: the proxy is not started")
        return self._session

    def set_auth_key(self, auth_key: str | None) -> None:
        """A redeploy turned authentication on or off (or gave a new key): from the next request on."""
        if auth_key is not None and not auth_key:
            raise ValueError(f"group {self.name!r}: auth_key must be a non-empty string or None")
        self._use_key(auth_key)

    def _use_key(self, auth_key: str | None) -> None:
        self._expected = f"Bearer {auth_key}".encode() if auth_key is not None else None
        # Request headers never passed on (lower-case bytes, as request.raw_headers are matched); with a
        # key, Authorization carries ours, not the app's.
        dropped = (*HOP_BY_HOP, *FORWARDED, hdrs.EXPECT) + ((hdrs.AUTHORIZATION,) if auth_key is not None else ())
        self._drop = frozenset(n.lower().encode() for n in dropped)

    @property
    def held(self) -> int:
        """Requests waiting for a ready replica now."""
        return self._held

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); return the port. A taken port raises OSError."""
        if self._listener is not None:
            raise RuntimeError(f"group {self.name!r}: the proxy is already started")
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0,
                                         keepalive_timeout=UPSTREAM_KEEPALIVE)
        session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            # Only what the client sent goes to the app: no User-Agent, Accept, Accept-Encoding or
            # Content-Type of aiohttp's own (an added Accept-Encoding would get the client a body it
            # cannot decode, as bodies pass through undecoded).
            skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            max_line_size=16 << 10, max_field_size=16 << 10)
        # aiohttp retries an idempotent request once on a reused connection, on the same replica; the
        # retry policy is ours (once, on another replica), so its own is off.
        session._retry_connection = False
        self._session = session
        self._upstream = UpstreamPool()
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None,
                                  keepalive_timeout=CLIENT_KEEPALIVE, max_line_size=16 << 10,
                                  max_field_size=16 << 10)
        try:
            self._listener = await asyncio.get_running_loop().create_server(self._server, host, port, backlog=1024)
        except BaseException:
            self._server = None
            self._session = None
            await session.close()
            raise
        bound: int = self._listener.sockets[0].getsockname()[1]
        log.info("group %r: proxy listening on %s:%d", self.name, host, bound)
        return bound

    async def close(self, grace: float) -> None:
        """Stop accepting; answer held requests 503; let in-flight ones finish up to ``grace`` seconds,
        cancel the rest; close the connections to the replicas."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        self.pool.wake_waiters()
        if self._active:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning("group %r: %d request(s) still running after %gs; cancelled",
                            self.name, self._active, grace)
        if self._server is not None:
            await self._server.shutdown(0.1)
        if self._upstream is not None:
            self._upstream.close()
        if self._session is not None:
            await self._session.close()
        self._listener = None

    # -- one request -------------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._active += 1
        try:
            return await self._serve(request)
        except _Refused as r:
            return self._refusal(r)
        finally:
            self._active -= 1
            if self._closing and self._active == 0:
                self._idle.set()

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers
        if self._expected is not None:
            got = headers.get(hdrs.AUTHORIZATION)
            if got is None:
                raise _Refused(401, "this group needs an Authorization: Bearer <key> header",
                               {hdrs.WWW_AUTHENTICATE: f'Bearer realm="{self.name}"'})
            if not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), self._expected):
                raise _Refused(401, "the Authorization header does not carry this group's key",
                               {hdrs.WWW_AUTHENTICATE: f'Bearer realm="{self.name}", error="invalid_token"'})
        target = request.raw_path
        if not target.startswith("/"):
            # An absolute-form or authority-form target would let the client pick the host we connect to.
            raise _Refused(400, f"the request target must be a path starting with '/', not {target[:100]!r}")
        method = request.method
        if method == hdrs.METH_CONNECT:
            raise _Refused(405, "CONNECT is not proxied")
        if self.pool.unavailable is not None:
            raise _Refused(503, self.pool.unavailable)
        upgrade = headers.get(hdrs.UPGRADE)
        if upgrade is not None and upgrade.lower() == "websocket":
            return await self._websocket(request, target, self._forward_headers(request))

        body: Any = None
        retryable = method in RETRYABLE
        if request.body_exists:
            if headers.get(hdrs.EXPECT, "").lower() == "100-continue":
                # We answer the client's Expect ourselves (the app never sees it): its body comes now.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as aiohttp's own expect handler
            length = request.content_length
            if length is not None and (length <= SMALL_BODY or (retryable and length <= RETRY_BODY_LIMIT)):
                try:
                    body = await request.content.readexactly(length)
                except asyncio.IncompleteReadError:
                    raise _Refused(400, "the request body ended before its Content-Length") from None
            else:
                body = request.content  # streamed as it arrives; it cannot be sent twice
                retryable = False

        exclude: frozenset[str] = frozenset()
        retried = False
        b = self._pick(exclude)
        if b is None:
            b = await self._hold(exclude)
        while True:
            try:
                return await self._forward(request, b, target, body)
            except _NotSent as e:
                # Nothing reached the replica: any request may go elsewhere.
                self.pool.report_failure(b.id, e.reason)
                exclude = exclude | {b.id}
                again = self._pick(exclude)
            except _NoAnswer as e:
                # Sent (at least in part), no answer: the replica died or dropped the connection.
                if not retryable or retried:
                    raise _Refused(502, f"replica {b.id} failed before answering ({e.reason}); "
                                   + (f"{method} is not retried" if not retryable else "retried once")) from None
                log.info("group %r: %s %s: replica %s failed before answering (%s); retrying",
                         self.name, method, target[:200], b.id, e.reason)
                retried = True
                exclude = exclude | {b.id}
                # Another ready replica when there is one; else the same again (a stale keep-alive
                # connection is the usual cause there).
                again = self._pick(exclude) or self._pick(frozenset())
            finally:
                self.pool.release(b)
            b = again if again is not None else await self._hold(exclude)

    async def _forward(self, request: web.BaseRequest, b: Backend, target: str, body: Any) -> web.StreamResponse:
        """One try on replica ``b``: _NotSent / _NoAnswer when it can be tried again, else the response."""
        if body is not None and not isinstance(body, bytes):
            return await self._forward_streamed(request, b, target, self._forward_headers(request), body)
        upstream = self._upstream
        assert upstream is not None
        try:
            conn = await upstream.connect(b.host, b.port, timeout=self.connect_timeout)
        except ConnectFailed as e:
            raise _NotSent(str(e)) from None
        kept = False
        try:
            try:
                head = await conn.request(self._request_head(request, target, body, b), body,
                                          head_only=request.method == hdrs.METH_HEAD)
            except UpstreamBroken as e:
                raise _NoAnswer(str(e)) from None
            headers = CIMultiDict(head.headers)  # end-to-end ones only (see upstream.Head)
            length = head.length
            if length is not None and length <= SMALL_BODY:
                # Read whole before answering: one write to the client, and a replica dying now can
                # still be retried (nothing was sent to the client yet).
                try:
                    data = await conn.read_all(length)
                except UpstreamBroken as e:
                    raise _NoAnswer(str(e)) from None
                kept = True
                return web.Response(status=head.status, reason=head.reason, headers=headers, body=data)
            out = web.StreamResponse(status=head.status, reason=head.reason, headers=headers)
            await out.prepare(request)
            try:
                while chunk := await conn.read():
                    await out.write(chunk)
            except UpstreamBroken as e:
                self._broke_off(request, str(e))
                return out
            await out.write_eof()
            kept = True
            return out
        finally:
            if kept:
                upstream.put_back(conn)
            else:
                conn.close()

    def _broke_off(self, request: web.BaseRequest, reason: str) -> None:
        # Headers are out: the client can only learn of it by the connection closing early.
        log.info("group %r: %s %s: the replica's response broke off (%s)", self.name, request.method,
                 request.raw_path[:200], reason)
        if request.transport is not None:
            request.transport.close()

    async def _forward_streamed(self, request: web.BaseRequest, b: Backend, target: str, fwd: CIMultiDict[str],
                                body: Any) -> web.StreamResponse:
        """A request body streamed as it arrives (no length, or a large one): through aiohttp's client."""
        session = self._session
        assert session is not None
        url = URL(f"http://{_host_literal(b.host)}:{b.port}{target}", encoded=True)
        try:
            resp = await session.request(request.method, url, headers=fwd, data=body, allow_redirects=False)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            raise _NotSent(_reason(e)) from None
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            raise _NoAnswer(_reason(e)) from None
        try:
            return await self._relay(request, resp)
        finally:
            resp.release()

    def _pick(self, exclude: frozenset[str]) -> Backend | None:
        return self.pool.acquire(exclude)

    async def _hold(self, exclude: frozenset[str]) -> Backend:
        """Wait for a ready replica (not in ``exclude``), up to hold_timeout; _Refused when none comes."""
        pool = self.pool
        if self._held >= self.max_held:
            raise _Refused(503, f"no replica is ready and {self._held} requests are already waiting for one")
        pool.notify_demand()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_timeout
        self._held += 1
        try:
            while True:
                if self._closing:
                    raise _Refused(503, "the group's proxy is shutting down")
                if pool.unavailable is not None:
                    raise _Refused(503, pool.unavailable)
                b = pool.acquire(exclude)
                if b is not None:
                    return b
                if pool.ready_count:  # ready ones exist, all of them already failed this request
                    raise _Refused(502, f"could not connect to any ready replica (tried {', '.join(sorted(exclude))})")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _Refused(503, self._no_replica_reason())
                await pool.wait_signal(remaining)
        finally:
            self._held -= 1

    def _no_replica_reason(self) -> str:
        backends = self.pool.backends()
        if not backends:
            return f"no replica is ready (scaling up from zero timed out after {self.hold_timeout:g}s)"
        states: dict[str, int] = {}
        for b in backends:
            states[b.state] = states.get(b.state, 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        return f"no replica became ready within {self.hold_timeout:g}s ({counts})"

    def _forward_headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        fwd = CIMultiDict(request.headers)
        connection = fwd.get(hdrs.CONNECTION)
        if connection is not None:  # the headers it names are hop-by-hop too
            for token in connection.split(","):
                token = token.strip()
                if token:
                    fwd.popall(token, None)
        for name in HOP_BY_HOP:
            fwd.popall(name, None)
        for name in FORWARDED:
            fwd.popall(name, None)
        fwd.popall(hdrs.EXPECT, None)
        for cookie in fwd.popall(hdrs.COOKIE, []):  # the dashboard's session cookie is the daemon's, not the app's
            if kept := without_session_cookie(cookie):
                fwd.add(hdrs.COOKIE, kept)
        if self._expected is not None:
            fwd.popall(hdrs.AUTHORIZATION, None)  # the group's key is ours, not the app's
        remote = request.remote
        if remote:
            fwd["X-Forwarded-For"] = remote
        fwd["X-Forwarded-Proto"] = "http"
        host = request.headers.get(hdrs.HOST)
        if host:
            fwd["X-Forwarded-Host"] = host
        return fwd

    def _request_head(self, request: web.BaseRequest, target: str, body: bytes | None, b: Backend) -> bytes:
        """The request line and headers as the replica gets them: the client's header bytes as received,
        less hop-by-hop ones (and those its Connection header names), the client's own X-Forwarded-*,
        Expect and, with auth, Authorization; plus ours."""
        drop = self._drop
        connection = request.headers.get(hdrs.CONNECTION)
        if connection is not None:  # the headers it names are hop-by-hop too
            drop = drop | {t.strip().lower().encode("utf-8", "surrogateescape") for t in connection.split(",")}
        if body is not None:
            drop = drop | {b"content-length"}  # ours follows: the body's own length
        parts = [f"{request.method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")]
        host: bytes | None = None
        for name, value in request.raw_headers:
            lname = name.lower()
            if lname in drop:
                continue
            if lname == b"host":
                host = value
            elif lname == b"cookie":  # the dashboard's session cookie is the daemon's, never the app's
                value = without_session_cookie(value)
                if not value:
                    continue
            parts += (name, b": ", value, b"\r\n")
        if host is None:  # an HTTP/1.0 client may send none; HTTP/1.1 needs one
            parts.append(f"Host: {_host_literal(b.host)}:{b.port}\r\n".encode())
        if body is not None:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        remote = request.remote
        if remote:
            parts += (b"X-Forwarded-For: ", remote.encode(), b"\r\n")
        parts.append(b"X-Forwarded-Proto: http\r\n")
        if host is not None:
            parts += (b"X-Forwarded-Host: ", host, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _relay(self, request: web.BaseRequest, resp: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = _response_headers(list(resp.headers.items()))
        if hdrs.TRANSFER_ENCODING in resp.headers:  # chunked: a Content-Length beside it is not the body's
            headers.popall(hdrs.CONTENT_LENGTH, None)
        length = resp.content_length
        if length is not None and length <= SMALL_BODY:
            # Read whole before answering: one write to the client, and a replica dying now can still be
            # retried (nothing was sent to the client yet).
            try:
                data = await resp.read()
            except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
                raise _NoAnswer(_reason(e)) from None
            return web.Response(status=resp.status, reason=resp.reason, headers=headers, body=data)
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        await out.prepare(request)
        try:
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            self._broke_off(request, _reason(e))
            return out
        await out.write_eof()
        return out

    async def _websocket(self, request: web.BaseRequest, target: str, fwd: CIMultiDict[str]) -> web.StreamResponse:
        for name in WS_HANDSHAKE:
            fwd.popall(name, None)
        offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        session = self._session
        assert session is not None
        exclude: frozenset[str] = frozenset()
        b = self._pick(exclude)
        if b is None:
            b = await self._hold(exclude)
        while True:
            url = URL(f"http://{_host_literal(b.host)}:{b.port}{target}", encoded=True)
            try:
                upstream = await session.ws_connect(url, headers=fwd, protocols=protocols, autoclose=False,
                                                    autoping=False, max_msg_size=WS_MAX_MESSAGE, compress=0)
                break
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
                self.pool.report_failure(b.id, _reason(e))
                exclude = exclude | {b.id}
                self.pool.release(b)
            except aiohttp.WSServerHandshakeError as e:
                self.pool.release(b)
                raise _Refused(502, f"replica {b.id} refused the websocket upgrade (HTTP {e.status})") from None
            except BaseException as e:
                self.pool.release(b)
                if isinstance(e, aiohttp.ClientError | OSError):
                    raise _Refused(502, f"replica {b.id} failed the websocket upgrade ({_reason(e)})") from None
                raise
            again = self._pick(exclude)
            b = again if again is not None else await self._hold(exclude)
        try:
            client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (),
                                           autoclose=False, autoping=False, max_msg_size=WS_MAX_MESSAGE,
                                           compress=False)
            await client.prepare(request)
            await _relay_websocket(client, upstream)
            return client
        finally:
            try:
                await upstream.close()
            finally:
                self.pool.release(b)

    def _refusal(self, r: _Refused) -> web.Response:
        # A reason the manager wrote in full (pool.unavailable, "chalkd: group 'web' is Failed: ...") as is.
        text = r.text if r.text.startswith("chalkd: ") else self._prefix + r.text
        return web.Response(status=r.status, text=text + "\n", headers=r.headers)


class _NotSent(Exception):
    """No connection to the replica could be made: the request never reached it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NoAnswer(Exception):
    """The request went out (at least in part) and the replica failed before the client got anything."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _relay_websocket(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; the close code and reason pass through."""
    to_app = asyncio.ensure_future(_pump(client, upstream, lost_code=1001))
    to_client = asyncio.ensure_future(_pump(upstream, client, lost_code=1011))
    try:
        await asyncio.wait((to_app, to_client), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (to_app, to_client):
            if not t.done():
                t.cancel()
        await asyncio.gather(to_app, to_client, return_exceptions=True)
        await client.close()


async def _pump(src: Any, dst: Any, *, lost_code: int) -> None:
    while True:
        msg = await src.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif kind is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif kind is WSMsgType.PING:
            await dst.ping(msg.data)
        elif kind is WSMsgType.PONG:
            await dst.pong(msg.data)
        elif kind is WSMsgType.CLOSE:
            code = msg.data if isinstance(msg.data, int) and msg.data not in (1005, 1006, 1015) else 1000
            await dst.close(code=code, message=(msg.extra or "").encode())
            return
        else:  # CLOSING, CLOSED, ERROR: the peer went away without a close frame
            await dst.close(code=lost_code)
            return


def _response_headers(raw: list[tuple[str, str]]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(raw)
    connection = headers.get(hdrs.CONNECTION)
    if connection is not None:
        for token in connection.split(","):
            token = token.strip()
            if token:
                headers.popall(token, None)
    for name in HOP_BY_HOP:
        headers.popall(name, None)
    return headers


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _reason(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "connection closed by the replica"
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."
