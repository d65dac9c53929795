"""The proxy's own HTTP/1.1 client to the replicas: keep-alive connections per replica, a strict response
parser, bodies handed on as they arrive (with flow control).

aiohttp's client costs the proxy about three quarters of its CPU per request; this one writes the request
head itself and parses only what a proxy needs (status, headers, framing), so the proxy keeps up with
fast apps. aiohttp still does what needs more (websockets, uploads streamed without a length).

    pool = UpstreamPool()
    conn = await pool.connect("10.0.0.5", 8080, timeout=10)          # an idle one, or a new one
    head = await conn.request(b"GET /x HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n", None, head_only=False)
    while chunk := await conn.read():                                 # b"" at the end of the body
        ...
    pool.put_back(conn)                                               # kept when reusable, else closed

Errors: `ConnectFailed` (nothing was sent), `UpstreamBroken` (sent, the answer failed or was malformed).
A response the parser cannot frame without doubt (Content-Length and Transfer-Encoding together,
differing lengths, a bad chunk size, obs-fold) is refused, so one app response can never be read as
part of another's on a reused connection.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time

MAX_HEAD = 64 << 10  # the largest response head accepted
HIGH_WATER = 256 << 10  # bytes of body waiting for the client before reading from the app pauses
IDLE_SECONDS = 2.0  # an idle connection is kept this long (under the apps' own keep-alive timeouts)
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS = re.compile(rb"^HTTP/1\.([01]) ([1-9][0-9][0-9])(?: (.*))?$")
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?$")


class ConnectFailed(Exception):
    """No connection could be made: the request never reached the replica."""


class UpstreamBroken(Exception):
    """The request went out (at least in part) and no well-formed answer came back."""


class Head:
    """A response's status line and its end-to-end headers: hop-by-hop ones (and those its Connection
    header names) left out, Content-Length only where it is the body's (names as sent; values as UTF-8,
    else latin-1)."""

    __slots__ = ("status", "reason", "headers", "length", "keep_alive")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None,
                 keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length  # the body's length when known (Content-Length, or 0 without a body)
        self.keep_alive = keep_alive


class Conn(asyncio.Protocol):
    """One keep-alive connection to a replica; one request at a time."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._paused = False
        # Body state of the response being read.
        self._mode = ""  # "length" | "chunked" | "close" | "none"
        self._left = 0  # bytes left of the body (length) or of the current chunk (chunked)
        self._chunk_state = "size"  # size | data | crlf | trailers
        self.reusable = False
        self.done = True  # no response being read

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _more(self) -> None:
        """Wait for more bytes; UpstreamBroken at the end of the stream."""
        if self._eof:
            reason = f"connection lost: {self._error}" if self._error else "connection closed by the replica"
            raise UpstreamBroken(reason)
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- one exchange --

    async def request(self, head: bytes, body: bytes | None, *, head_only: bool) -> Head:
        """Send a request; return the response's head (1xx interim answers skipped). ``head_only``: the
        request was HEAD (the response has no body whatever its headers say)."""
        assert self.transport is not None and self.done
        self.done = False
        self.reusable = False
        if body:
            self.transport.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                self.transport.write(body)
        else:
            self.transport.write(head)
        while True:
            end = self._buf.find(b"\r\n\r\n")
            while end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise UpstreamBroken(f"the response head is over {MAX_HEAD} bytes")
                await self._more()
                end = self._buf.find(b"\r\n\r\n")
            if end > MAX_HEAD:
                raise UpstreamBroken(f"the response head is over {MAX_HEAD} bytes")
            raw = bytes(self._buf[:end])
            del self._buf[: end + 4]
            parsed = self._parse_head(raw, head_only)
            if parsed is not None:
                return parsed

    def _parse_head(self, raw: bytes, head_only: bool) -> Head | None:
        lines = raw.split(b"\r\n")
        m = _STATUS.match(lines[0])
        if m is None:
            raise UpstreamBroken(f"bad status line {lines[0][:100]!r}")
        minor, status = m.group(1), int(m.group(2))
        headers: list[tuple[bytes, bytes]] = []
        lengths: set[bytes] = set()
        chunked = False
        te_seen = False
        close = minor == b"0"
        named: set[bytes] = set()  # further hop-by-hop headers the Connection header names
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise UpstreamBroken(f"bad header line {line[:100]!r}")
            value = value.strip(b" \t")
            lname = name.lower()
            if lname == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
                continue  # added back below when it frames the body
            if lname == b"transfer-encoding":
                te_seen = True
                codings = [c.strip().lower() for c in value.split(b",")]
                chunked = codings[-1] == b"chunked"
            elif lname == b"connection":
                for t in value.split(b","):
                    t = t.strip().lower()
                    if t == b"close":
                        close = True
                    elif t == b"keep-alive":
                        if minor == b"0":
                            close = False
                    elif t:
                        named.add(t)
            if lname in HOP_BY_HOP:
                continue
            headers.append((name, value))
        if 100 <= status < 200:
            if status == 101:
                raise UpstreamBroken("the replica switched protocols on a plain request")
            return None  # 100 Continue, 103 Early Hints: the real answer follows
        length: int | None = None
        if head_only or status in (204, 304):
            self._mode = "none"
            length = 0
        elif te_seen:
            if not chunked:
                raise UpstreamBroken("a Transfer-Encoding the proxy cannot frame")
            self._mode = "chunked"
            self._chunk_state = "size"
            if lengths:
                close = True  # both framings: chunked wins (RFC 9112 6.3), the connection is not reused
        elif lengths:
            if len(lengths) != 1:
                raise UpstreamBroken("differing Content-Length values")
            (value,) = lengths
            if not value.isdigit() or len(value) > 18:
                raise UpstreamBroken(f"bad Content-Length {value[:40]!r}")
            length = int(value)
            self._mode = "length"
            self._left = length
        else:
            self._mode = "close"
            close = True
        self.reusable = not close
        if self._mode == "none" or (self._mode == "length" and length == 0):
            self._finish()
        if len(lengths) == 1 and (self._mode == "length" or head_only or status == 304):
            # The body's length; on a HEAD or 304 answer, the length a GET would have had.
            headers.append((b"Content-Length", next(iter(lengths))))
        out = [(_text(n), _text(v)) for n, v in headers if not named or n.lower() not in named]
        return Head(status, m.group(3).decode("latin-1") if m.group(3) else "", out, length, not close)

    def _finish(self) -> None:
        self.done = True
        self._mode = "none"
        if self._buf:  # bytes after the response: an app that answered more than asked
            self.reusable = False

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        mode = self._mode
        if self.done or mode == "none":
            return b""
        if mode == "length":
            while not self._buf:
                await self._more()
            n = min(self._left, len(self._buf))
            data = bytes(self._buf[:n])
            del self._buf[:n]
            self._left -= n
            if self._left == 0:
                self._finish()
            return data
        if mode == "close":
            while not self._buf:
                if self._eof:
                    self.done = True
                    self.reusable = False
                    return b""
                await self._more()
            data = bytes(self._buf)
            self._buf.clear()
            return data
        return await self._read_chunked()

    async def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > limit:
                raise UpstreamBroken(f"a body over {limit} bytes where a length was promised")
            parts.append(data)

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            state = self._chunk_state
            if state == "data":
                if not self._buf:
                    if out:
                        return bytes(out)
                    await self._more()
                    continue
                n = min(self._left, len(self._buf))
                out += self._buf[:n]
                del self._buf[:n]
                self._left -= n
                if self._left == 0:
                    self._chunk_state = "crlf"
                continue
            if state == "crlf":
                while len(self._buf) < 2:
                    if out:
                        return bytes(out)
                    await self._more()
                if self._buf[:2] != b"\r\n":
                    raise UpstreamBroken("a chunk without its CRLF")
                del self._buf[:2]
                self._chunk_state = "size"
                continue
            # "size" or "trailers": line based
            end = self._buf.find(b"\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise UpstreamBroken("a chunk-size or trailer line too long")
                if out:
                    return bytes(out)
                await self._more()
                continue
            line = bytes(self._buf[:end])
            del self._buf[: end + 2]
            if state == "trailers":
                if line == b"":
                    self._finish()
                    return bytes(out)
                continue  # trailers are dropped (a hop's business)
            m = _CHUNK_SIZE.match(line)
            if m is None:
                raise UpstreamBroken(f"bad chunk size {line[:40]!r}")
            self._left = int(m.group(1), 16)
            self._chunk_state = "data" if self._left else "trailers"

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:  # not UTF-8: each byte as itself
        return raw.decode("latin-1")


class UpstreamPool:
    """Idle keep-alive connections per replica address, newest first; expired ones closed on the way."""

    def __init__(self, *, limit_idle: int = 4096) -> None:
        self._idle: dict[tuple[str, int], collections.deque[Conn]] = {}
        self.limit_idle = limit_idle
        self._count = 0

    async def connect(self, host: str, port: int, *, timeout: float) -> Conn:
        key = (host, port)
        idle = self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                self._count -= 1
                if conn.closed or conn._eof or conn._buf or now - conn.idle_since > IDLE_SECONDS:
                    conn.close()
                    continue
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, proto = await loop.create_connection(lambda: Conn(key), host, port)
        except TimeoutError:
            raise ConnectFailed(f"cannot connect: no answer within {timeout:g}s") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect: {e.strerror or e}") from None
        return proto

    def put_back(self, conn: Conn) -> None:
        """Keep ``conn`` for the next request when its response was read whole and it may be reused."""
        if conn.closed or not conn.done or not conn.reusable or self._count >= self.limit_idle:
            conn.close()
            return
        conn.idle_since = now = time.monotonic()
        idle = self._idle.setdefault(conn.key, collections.deque())
        while idle and now - idle[0].idle_since > IDLE_SECONDS:  # the oldest first
            idle.popleft().close()
            self._count -= 1
        idle.append(conn)
        self._count += 1

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._count = 0
