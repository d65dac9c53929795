"""The proxy's HTTP/1.1 client to replicas (chalkd/groups/upstream.py), through a GroupProxy, against raw
servers that answer exactly the bytes a test scripts: framings (chunked with extensions and trailers,
until-close, 204/304, 1xx), keep-alive reuse, and malformed or ambiguous answers from a hostile app, which
must never let one response be read as part of another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from chalkd.groups.pool import Backend, ReplicaPool
from chalkd.groups.proxy import GroupProxy

pytestmark = pytest.mark.timeout(30)


class RawApp:
    """Reads each request head (and a Content-Length body), answers ``answer(path)`` bytes; keeps the
    connection open for the next request unless the answer is None, says Connection: close or is
    HTTP/1.0 (then it closes)."""

    def __init__(self, answer: Callable[[str], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                path = head.split(b" ")[1].decode()
                out = self.answer(path)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if b"close-after" in path.encode() or b"Connection: close" in out or out.startswith(b"HTTP/1.0"):
                    return
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def through_proxy(answer: Callable[[str], bytes | None],
                  body: Callable[[aiohttp.ClientSession, str, RawApp], Awaitable[None]]) -> None:
    async def main() -> None:
        app = RawApp(answer)
        await app.start()
        pool = ReplicaPool("web")
        pool.add(Backend("raw", "127.0.0.1", app.port, state="ready"))
        proxy = GroupProxy(pool, name="web", auth_key=None)
        port = await proxy.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as client:
                await asyncio.wait_for(body(client, f"http://127.0.0.1:{port}", app), 20)
        finally:
            await proxy.close(grace=1)
            await app.stop()

    asyncio.run(main())


ANSWERS = {
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "/close-body": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    "/no-content": b"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n",
    "/not-modified": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "/early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/both": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\n",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "/bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "/bad-te": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "/fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n continued\r\nContent-Length: 0\r\n\r\n",
    "/not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
    "/smuggle": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    "/hop": b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
            b"X-Keep: 2\r\nContent-Length: 0\r\n\r\n",
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Path: ok\r\n\r\nok",
    "/http10": b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n1.0!",
    "/huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * (70 << 10) + b"\r\n\r\n",
    "/utf8": "HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=\"r\u00e9sum\u00e9.txt\"\r\n"
             "Content-Length: 0\r\n\r\n".encode(),
}


def scripted(path: str) -> bytes | None:
    return ANSWERS.get(path.split("?")[0], b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


def test_framings_pass_through() -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        async with client.get(url + "/chunked") as r:
            assert r.status == 200 and r.headers["X-A"] == "1"
            assert await r.read() == b"hello world"
        async with client.get(url + "/close-body") as r:
            assert await r.read() == b"until the end"
        async with client.get(url + "/no-content") as r:
            assert r.status == 204 and r.headers["X-B"] == "2" and await r.read() == b""
        async with client.get(url + "/not-modified") as r:
            assert r.status == 304 and r.headers["ETag"] == '"x"'
        async with client.get(url + "/early-hints") as r:
            assert r.status == 200 and await r.read() == b"ok"
        async with client.get(url + "/http10") as r:
            assert r.status == 200 and await r.read() == b"1.0!"
        async with client.get(url + "/hop") as r:
            assert r.headers["X-Keep"] == "2"
            assert "X-Secret" not in r.headers and "Keep-Alive" not in r.headers  # hop-by-hop
        async with client.get(url + "/utf8") as r:
            assert r.headers["Content-Disposition"] == 'attachment; filename="r\u00e9sum\u00e9.txt"'

    through_proxy(scripted, body)


def test_keep_alive_connections_are_reused_and_hop_headers_sent_right() -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        for _ in range(5):
            async with client.get(url + "/ok") as r:
                assert await r.read() == b"ok"
        async with client.post(url + "/ok", data=b"12345") as r:
            assert await r.read() == b"ok"
        assert app.connections == 1
        head = app.requests[-1].decode()
        assert head.startswith("POST /ok HTTP/1.1\r\n")
        assert "Content-Length: 5\r\n" in head and "Transfer-Encoding" not in head
        assert head.count("\r\nHost:") == 1

    through_proxy(scripted, body)


def test_a_response_not_reusable_closes_its_connection() -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        for path in ("/close-body", "/http10", "/both"):
            async with client.get(url + path) as r:
                await r.read()
            before = app.connections
            async with client.get(url + "/ok") as r:
                assert await r.read() == b"ok"
            assert app.connections == before + 1, path

    through_proxy(scripted, body)


def test_both_lengths_use_chunked_and_never_desync() -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        async with client.get(url + "/both") as r:
            assert "Content-Length" not in r.headers  # the app's length was not the body's
            assert await r.read() == b"abc"

    through_proxy(scripted, body)


@pytest.mark.parametrize(("path", "reason"), [
    ("/two-lengths", "differing Content-Length values"),
    ("/bad-length", "bad Content-Length"),
    ("/bad-te", "a Transfer-Encoding the proxy cannot frame"),
    ("/fold", "bad header line"),
    ("/not-http", "bad status line"),
    ("/huge-head", "the response head is over"),
])
def test_a_malformed_answer_is_a_502_naming_why(path: str, reason: str) -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        async with client.post(url + path, data=b"x") as r:  # POST: not retried
            assert r.status == 502
            text = await r.text()
        assert text.startswith("chalkd: group 'web': replica raw failed before answering (")
        assert reason in text
        async with client.get(url + "/ok") as r:  # the broken connection was not kept
            assert await r.read() == b"ok"

    through_proxy(scripted, body)


def test_bytes_after_a_response_are_never_read_as_the_next_one() -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        async with client.get(url + "/smuggle") as r:
            assert await r.read() == b"ok"
        async with client.get(url + "/ok") as r:
            assert r.headers["X-Path"] == "ok"
            assert await r.read() == b"ok"  # not "forged"
        assert app.connections == 2

    through_proxy(scripted, body)


def test_a_bad_chunk_after_the_headers_cuts_the_client_off() -> None:
    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        async with client.get(url + "/bad-chunk") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()

    through_proxy(scripted, body)


def test_a_replica_closing_an_idle_connection_is_not_an_error() -> None:
    """The app closes after each answer (close-after): the next request must open a new connection
    instead of failing on the dead one."""

    async def body(client: aiohttp.ClientSession, url: str, app: RawApp) -> None:
        for i in range(4):
            async with client.post(url + "/ok?close-after", data=b"x") as r:
                assert r.status == 200, await r.text()
                # The app's FIN may still be on its way: each POST must still get an answer.
            assert app.connections == i + 1

    through_proxy(lambda p: ANSWERS["/ok"], body)
