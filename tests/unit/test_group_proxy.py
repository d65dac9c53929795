"""A scaling group's HTTP data path: the replica pool (chalkd/groups/pool.py) and the proxy
(chalkd/groups/proxy.py), against real local HTTP servers (aiohttp apps in the test's loop, or in a
subprocess where a replica must die for real).

Each test runs its own event loop (asyncio.run) under a timeout; waits are on events, never sleeps.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from yarl import URL

from chalkd.groups.pool import Backend, ReplicaPool
from chalkd.groups.proxy import GroupProxy

pytestmark = pytest.mark.timeout(30)


def arun(coro_fn: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(main())


def ready_pool(*ids: str) -> ReplicaPool:
    pool = ReplicaPool("web")
    for i, id in enumerate(ids):
        pool.add(Backend(id, "127.0.0.1", 10000 + i))
        pool.set_ready(id, True)
    return pool


# -- the pool -------------------------------------------------------------------------------------------------

def test_acquire_picks_the_least_outstanding_ready_backend() -> None:
    pool = ready_pool("a", "b", "c")
    a, b, c = (pool.get(x) for x in "abc")
    held = [pool.acquire() for _ in range(3)]  # one each
    assert sorted(x.id for x in held if x) == ["a", "b", "c"]
    pool.release(b)  # type: ignore[arg-type]
    # b has 0, the others 1: b, and again b until it has as many as the others.
    got = pool.acquire()
    assert got is b
    assert (a.outstanding, b.outstanding, c.outstanding) == (1, 1, 1)  # type: ignore[union-attr]
    assert pool.in_flight == 3


def test_ties_rotate_round_robin() -> None:
    pool = ready_pool("a", "b", "c")
    seen = []
    for _ in range(9):
        got = pool.acquire()
        assert got is not None
        seen.append(got.id)
        pool.release(got)  # every pick is a tie (all at 0)
    assert seen.count("a") == seen.count("b") == seen.count("c") == 3
    assert all(seen[i] != seen[i + 1] for i in range(8))
    assert pool.in_flight == 0


def test_only_ready_backends_are_picked_and_exclude_is_honoured() -> None:
    pool = ReplicaPool("web")
    pool.add(Backend("s", "127.0.0.1", 1))  # starting
    pool.add(Backend("r", "127.0.0.1", 2))
    pool.add(Backend("u", "127.0.0.1", 3))
    pool.set_ready("r", True)
    pool.set_ready("u", False)
    assert pool.ready_count == 1
    for _ in range(3):
        got = pool.acquire()
        assert got is not None and got.id == "r"
    assert pool.acquire(exclude=frozenset({"r"})) is None
    pool.report_failure("r", "connection refused")
    assert pool.get("r").state == "unready"  # type: ignore[union-attr]
    assert pool.acquire() is None


def test_add_refuses_a_duplicate_or_an_unknown_state() -> None:
    pool = ready_pool("a")
    with pytest.raises(ValueError, match="'a' is already in the pool"):
        pool.add(Backend("a", "127.0.0.1", 1))
    with pytest.raises(ValueError, match="state must be one of"):
        pool.add(Backend("b", "127.0.0.1", 1, state="up"))


def test_removing_a_busy_backend_keeps_the_counts_right() -> None:
    pool = ready_pool("a", "b")
    a = pool.acquire()
    assert a is not None
    pool.remove(a.id)
    assert pool.ready_count == 1 and pool.get(a.id) is None
    pool.release(a)
    assert pool.in_flight == 0
    pool.remove("nobody")  # no error


def test_drain_stops_routing_and_waits_for_in_flight_requests() -> None:
    async def body() -> None:
        pool = ready_pool("old", "new")
        old = pool.get("old")
        first, second = pool.acquire(), pool.acquire()
        assert {first.id, second.id} == {"old", "new"}  # type: ignore[union-attr]
        drained = asyncio.ensure_future(pool.drain("old", timeout=10))
        await asyncio.sleep(0)  # let drain start waiting
        assert old.state == "draining"  # type: ignore[union-attr]
        assert not drained.done()
        for _ in range(4):  # no new request goes to the draining one
            got = pool.acquire()
            assert got is not None and got.id == "new"
        pool.set_ready("old", True)  # a probe does not revive a draining replica
        assert old.state == "draining"  # type: ignore[union-attr]
        pool.release(old)  # type: ignore[arg-type]
        assert await drained is True
        assert await pool.drain("old", timeout=1) is True  # already idle
        assert await pool.drain("gone", timeout=1) is True

    arun(body)


def test_drain_times_out_with_requests_still_running() -> None:
    async def body() -> None:
        pool = ready_pool("a")
        held = pool.acquire()
        assert held is not None
        assert await pool.drain("a", timeout=0.05) is False
        assert held.outstanding == 1

    arun(body)


def test_wait_ready_wakes_on_readiness_and_on_unavailable() -> None:
    async def body() -> None:
        pool = ReplicaPool("web")
        pool.add(Backend("a", "127.0.0.1", 1))
        waiter = asyncio.ensure_future(pool.wait_ready(10))
        await asyncio.sleep(0)
        assert not waiter.done()
        pool.set_ready("a", True)
        assert await waiter is True
        assert await pool.wait_ready(0) is True

        pool.set_ready("a", False)
        assert await pool.wait_ready(0.01) is False  # timed out
        waiter = asyncio.ensure_future(pool.wait_ready(10))
        await asyncio.sleep(0)
        pool.unavailable = "group 'web' is Failed: app exited with code 1"
        assert await waiter is False
        assert await pool.wait_ready(10) is False  # at once while it stays set

    arun(body)


def test_changed_fires_on_in_flight_changes_and_peak_is_kept() -> None:
    async def body() -> None:
        pool = ready_pool("a", "b")
        pool.changed.clear()
        waiter = asyncio.ensure_future(pool.changed.wait())
        await asyncio.sleep(0)
        got = [pool.acquire(), pool.acquire(), pool.acquire()]
        await waiter
        assert pool.in_flight == 3
        for b in got:
            pool.release(b)  # type: ignore[arg-type]
        assert pool.in_flight == 0
        assert pool.take_peak() == 3
        assert pool.take_peak() == 0

    arun(body)


def test_callbacks_that_raise_are_contained() -> None:
    def boom() -> None:
        raise RuntimeError("manager bug")

    pool = ReplicaPool("web", on_demand=boom)
    pool.notify_demand()  # logged, not raised into the request path
    calls: list[str] = []
    pool.on_demand = lambda: calls.append("demand")
    pool.notify_demand()
    assert calls == ["demand"]


# -- the proxy, against real apps ------------------------------------------------------------------------------

class App:
    """One replica: an aiohttp app in the test's loop. ``gate`` holds /slow and the middle of /stream."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.seen: list[web.BaseRequest] = []
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.doomed = False
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.sent = 0  # bytes /big has written so far

    async def start(self) -> int:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/big", self.big)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/gzip", self.gzip)
        app.router.add_route("*", "/flaky", self.flaky)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def _note(self, request: web.BaseRequest) -> None:
        self.seen.append(request)
        self.arrived.set()

    async def echo(self, request: web.Request) -> web.Response:
        self._note(request)
        body = await request.read()
        return web.json_response({"id": self.id, "method": request.method, "path_qs": request.raw_path,
                                  "headers": dict(request.headers), "body": body.decode()},
                                 headers={"X-App": self.id, "Set-Cookie": "a=1"})

    async def slow(self, request: web.Request) -> web.Response:
        self._note(request)
        await self.gate.wait()
        return web.Response(text=self.id)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await self.gate.wait()  # the client must see "one" before the app goes on
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    async def big(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0 if request.method != "HEAD" else n  # a HEAD answer has the length and no body
        while sent < n:
            part = block[: n - sent]
            await resp.write(part)
            sent += len(part)
            self.sent = sent
        await resp.write_eof()
        return resp

    async def upload(self, request: web.Request) -> web.Response:
        self._note(request)
        digest = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            n += len(chunk)
        return web.json_response({"n": n, "sha256": digest.hexdigest(), "chunked": request.headers.get(
            "Transfer-Encoding", "")})

    async def flaky(self, request: web.Request) -> web.Response:
        """``doomed``: the replica dies mid-request (the connection drops with no answer); else its id."""
        self._note(request)
        await request.read()
        if self.doomed:
            assert request.transport is not None
            request.transport.abort()  # what this returns goes nowhere
        return web.Response(text=self.id)

    async def gzip(self, request: web.Request) -> web.Response:
        body = gzip.compress(b"x" * 1000)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self._note(request)
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data == "bye":
                    await ws.close(code=4001, message=b"app says bye")
                    break
                await ws.send_str(f"{self.id}:{msg.data}")
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


class Stack:
    """Apps, a pool with them ready, a GroupProxy over it, and a client session to the proxy."""

    def __init__(self, n: int = 2, *, auth_key: str | None = None, hold_timeout: float = 300.0,
                 on_demand: Callable[[], None] | None = None) -> None:
        self.apps = [App(f"r-{i}") for i in range(n)]
        self.pool = ReplicaPool("web", on_demand=on_demand)
        self.proxy = GroupProxy(self.pool, name="web", auth_key=auth_key, hold_timeout=hold_timeout)
        self.url = ""
        self.client: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Stack:
        for app in self.apps:
            await self.add(app)
        port = await self.proxy.start("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}"
        self.client = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def add(self, app: App, ready: bool = True) -> None:
        if not app.port:
            await app.start()
        self.pool.add(Backend(app.id, "127.0.0.1", app.port))
        if ready:
            self.pool.set_ready(app.id, True)

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.close()
        await self.proxy.close(grace=1.0)
        for app in self.apps:
            await app.stop()

    def get(self, path: str, **kw: Any) -> Any:
        assert self.client is not None
        return self.client.get(self.url + path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        assert self.client is not None
        return self.client.request(method, URL(self.url + path, encoded=True), **kw)  # the path as written


def test_requests_are_forwarded_with_method_path_query_body_and_forwarded_headers() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            async with s.request("PATCH", "/echo?a=1&b=%2F%20x", data=b"hello",
                                 headers={"X-Custom": "v", "Connection": "keep-alive, X-Drop-Me",
                                          "X-Drop-Me": "1", "X-Forwarded-For": "6.6.6.6",
                                          "Keep-Alive": "timeout=5", "Host": "web.example"}) as r:
                assert r.status == 200
                got = await r.json()
                assert r.headers["X-App"] == "r-0"
                assert r.headers.getall("Set-Cookie") == ["a=1"]
            assert got["method"] == "PATCH"
            assert got["path_qs"] == "/echo?a=1&b=%2F%20x"  # the target passes untouched
            assert got["body"] == "hello"
            h = got["headers"]
            assert h["X-Custom"] == "v"
            assert "X-Drop-Me" not in h and "Keep-Alive" not in h  # hop-by-hop, named in Connection or not
            assert h["X-Forwarded-For"] == "127.0.0.1"  # the client's own claim is replaced
            assert h["X-Forwarded-Proto"] == "http"
            assert h["X-Forwarded-Host"] == "web.example"
            assert h["Host"] == "web.example"
            assert "User-Agent" not in h or h["User-Agent"] == got["headers"].get("User-Agent")

    arun(body)


def test_compressed_bodies_pass_through_undecoded_and_nothing_is_added() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            async with s.get("/gzip", skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept")) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await r.read()) == b"x" * 1000
            async with s.get("/echo", skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept")) as r:
                h = (await r.json())["headers"]
            assert "Accept-Encoding" not in h and "User-Agent" not in h and "Accept" not in h

    arun(body)


def test_an_absolute_form_target_cannot_pick_another_host() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(s.url.rsplit(":", 1)[1]))
            writer.write(b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert b"must be a path starting with '/'" in answer
            assert s.apps[0].seen == []

    arun(body)


def test_balancing_goes_to_the_least_busy_replica_and_rotates_ties() -> None:
    async def body() -> None:
        async with Stack(2) as s:
            a, b = s.apps
            # Ties rotate: alternating replicas.
            ids = []
            for _ in range(6):
                async with s.get("/echo") as r:
                    ids.append((await r.json())["id"])
            assert ids.count("r-0") == ids.count("r-1") == 3
            # One held on a replica: the next requests all go to the other.
            slow = asyncio.ensure_future(s.get("/slow").__aenter__())
            await asyncio.wait([asyncio.ensure_future(a.arrived.wait()), asyncio.ensure_future(b.arrived.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            busy = a if a.seen else b
            other = b if busy is a else a
            for _ in range(4):
                async with s.get("/echo") as r:
                    assert (await r.json())["id"] == other.id
            assert s.pool.get(busy.id).outstanding == 1  # type: ignore[union-attr]
            busy.gate.set()
            r = await slow
            assert await r.text() == busy.id
            r.release()
            assert s.pool.in_flight == 0

    arun(body)


def test_a_streaming_response_reaches_the_client_chunk_by_chunk() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            app = s.apps[0]
            async with s.get("/stream") as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                first = await r.content.readuntil(b"\n\n")
                assert first == b"data: one\n\n"
                assert not app.gate.is_set()  # the app has not finished: the first chunk came on its own
                app.gate.set()
                assert await r.content.read() == b"data: two\n\n"

    arun(body)


def test_large_upload_and_download_are_streamed_through() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            n = 48 << 20
            async with s.get(f"/big?n={n}") as r:
                assert r.headers["Content-Length"] == str(n)
                digest, got = hashlib.sha256(), 0
                async for chunk in r.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                    got += len(chunk)
            block = bytes(range(256)) * 256
            want = hashlib.sha256(block * (n // len(block))).hexdigest()
            assert (got, digest.hexdigest()) == (n, want)

            async def gen() -> Any:  # a chunked upload of unknown length
                for _ in range(n // len(block)):
                    yield block

            async with s.request("POST", "/upload", data=gen()) as r:
                assert r.status == 200
                res = await r.json()
            assert res == {"n": n, "sha256": want, "chunked": "chunked"}
            payload = block * 40  # 2.5 MiB with a Content-Length: streamed, not chunked
            async with s.request("POST", "/upload", data=io.BytesIO(payload)) as r:
                res = await r.json()
            assert res["n"] == len(payload) and res["chunked"] == ""

    arun(body)


def test_a_client_that_stops_reading_pauses_the_replica_not_the_proxys_memory() -> None:
    # A download of 1 GiB whose reader stops after its first MiB: the proxy keeps only what the sockets
    # hold, so the app's writes stall far short of the whole body.
    async def body() -> None:
        async with Stack(1) as s:
            app = s.apps[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", int(s.url.rsplit(":", 1)[1]))
            writer.write(f"GET /big?n={1 << 30} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            got = 0
            while got < 1 << 20:
                got += len(await reader.read(1 << 16))
            stalled_at, still = app.sent, 0
            while still < 10:  # the app's count has not moved for 10 looks, 50 ms apart
                await asyncio.sleep(0.05)
                still = still + 1 if app.sent == stalled_at else 0
                stalled_at = app.sent
            assert stalled_at < 96 << 20, f"the app wrote {stalled_at} bytes for a reader that took {got}"
            writer.close()

    arun(body)


def test_websocket_echo_both_ways_with_close_code() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            assert s.client is not None
            async with s.client.ws_connect(s.url + "/ws", protocols=("chat",)) as ws:
                assert ws.protocol == "chat"
                await ws.send_str("hi")
                assert (await ws.receive_str()) == "r-0:hi"
                await ws.send_bytes(b"\x00\x01\x02")
                assert (await ws.receive_bytes()) == b"\x02\x01\x00"
                assert s.pool.in_flight == 1  # an open websocket counts as in flight
                await ws.send_str("bye")
                msg = await ws.receive()
                assert msg.type is WSMsgType.CLOSE
                assert msg.data == 4001 and msg.extra == "app says bye"
            async with s.client.ws_connect(s.url + "/ws") as ws:  # the client closes this time
                await ws.send_str("x")
                assert (await ws.receive_str()) == "r-0:x"
                await ws.close(code=4002)
            while s.pool.in_flight:
                s.pool.changed.clear()
                await s.pool.changed.wait()

    arun(body)


def test_a_failed_connection_goes_to_another_replica_which_is_reported() -> None:
    async def body() -> None:
        async with Stack(2) as s:
            dead = s.apps[0]
            await dead.stop()  # its port refuses connections now; the pool still thinks it ready
            for method in ("GET", "POST"):
                for _ in range(2):
                    async with s.request(method, "/echo", data=b"x") as r:
                        assert r.status == 200
                        assert (await r.json())["id"] == "r-1"
            assert s.pool.get("r-0").state == "unready"  # type: ignore[union-attr]
            assert s.pool.in_flight == 0

    arun(body)


def test_a_get_on_a_replica_that_dies_is_retried_once_elsewhere_and_a_post_gets_502() -> None:
    async def body() -> None:
        async with Stack(2) as s:
            doomed, good = s.apps
            doomed.doomed = True
            # A request held on the good replica makes the doomed one the least busy: tried first.
            slow = asyncio.ensure_future(s.get("/slow").__aenter__())
            await _first_arrival(s.apps)
            if doomed.seen:  # /slow landed on the doomed one: swap the roles
                doomed.doomed, good.doomed = False, True
                doomed, good = good, doomed
            doomed.seen.clear()
            good.seen.clear()
            async with s.get("/flaky") as r:
                assert r.status == 200
                assert await r.text() == good.id
            assert [x.method for x in doomed.seen] == ["GET"] and [x.method for x in good.seen] == ["GET"]

            doomed.seen.clear()
            good.seen.clear()
            async with s.request("POST", "/flaky", data=b"order #1") as r:
                assert r.status == 502
                text = await r.text()
            assert text.startswith(f"chalkd: group 'web': replica {doomed.id} failed before answering")
            assert "POST is not retried" in text
            assert len(doomed.seen) == 1 and good.seen == []  # the POST ran at most once
            assert s.pool.get(doomed.id).state == "ready"  # type: ignore[union-attr]  # its probe decides

            for app in s.apps:
                app.gate.set()
            (await slow).release()

    arun(body)


async def _first_arrival(apps: list[App]) -> None:
    waits = [asyncio.ensure_future(a.arrived.wait()) for a in apps]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def test_a_get_held_by_a_replica_process_that_is_killed_is_answered_by_another() -> None:
    """A real replica process gets the GET, is SIGKILLed before answering: the client gets the other's answer."""

    async def body() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HANGING_APP, stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            port = int((await proc.stdout.readline()).decode())
            async with Stack(1) as s:
                s.pool.add(Backend("proc", "127.0.0.1", port))
                s.pool.set_ready("proc", True)
                # The in-loop replica holds a /slow request, so the process gets the next one.
                slow = asyncio.ensure_future(s.get("/slow").__aenter__())
                await s.apps[0].arrived.wait()
                task = asyncio.ensure_future(s.get("/flaky").__aenter__())
                assert (await proc.stdout.readline()) == b"arrived\n"
                proc.kill()
                r = await task
                assert r.status == 200 and await r.text() == "r-0"
                r.release()
                s.apps[0].gate.set()
                (await slow).release()
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    arun(body)


HANGING_APP = """
import asyncio, sys
from aiohttp import web

async def hang(request):
    print("arrived", flush=True)
    await asyncio.Event().wait()

async def main():
    app = web.Application()
    app.router.add_get("/flaky", hang)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_unavailable_gives_503_with_the_reason_at_once_and_wakes_held_requests() -> None:
    async def body() -> None:
        demanded = asyncio.Event()
        async with Stack(0, on_demand=demanded.set) as s:
            held = asyncio.ensure_future(s.get("/echo").__aenter__())
            await demanded.wait()
            assert s.proxy.held == 1
            s.pool.unavailable = "group 'web' is Failed: app exited with code 1 (last output: boom)"
            r = await held
            assert r.status == 503
            assert await r.text() == "chalkd: group 'web': group 'web' is Failed: app exited with code 1 " \
                "(last output: boom)\n"
            r.release()
            # While it stays set, at once, even with a ready replica.
            app = App("r-9")
            s.apps.append(app)
            await s.add(app)
            async with s.get("/echo") as r:
                assert r.status == 503 and "is Failed" in await r.text()
            assert app.seen == []
            s.pool.unavailable = None
            async with s.get("/echo") as r:
                assert r.status == 200

    arun(body)


def test_no_ready_replica_holds_until_the_timeout_then_503_naming_the_group() -> None:
    async def body() -> None:
        demands: list[int] = []
        async with Stack(0, hold_timeout=0.2, on_demand=lambda: demands.append(1)) as s:
            async with s.get("/echo") as r:
                assert r.status == 503
                assert await r.text() == ("chalkd: group 'web': no replica is ready "
                                          "(scaling up from zero timed out after 0.2s)\n")
            assert demands == [1]
            s.pool.add(Backend("r-0", "127.0.0.1", 1))  # starting, never ready
            async with s.get("/echo") as r:
                assert r.status == 503
                assert "no replica became ready within 0.2s (1 starting)" in await r.text()

    arun(body)


def test_a_request_held_while_scaling_from_zero_is_answered_once_a_replica_is_ready() -> None:
    async def body() -> None:
        app = App("r-new")
        demanded = asyncio.Event()
        async with Stack(0, on_demand=demanded.set) as s:
            s.apps.append(app)
            held = asyncio.ensure_future(s.get("/echo").__aenter__())
            await demanded.wait()  # the manager was asked to start one
            await s.add(app, ready=False)
            await asyncio.sleep(0)
            assert not held.done()  # starting is not ready
            s.pool.set_ready(app.id, True)
            r = await held
            assert r.status == 200 and (await r.json())["id"] == "r-new"
            r.release()

    arun(body)


def test_auth_needs_the_bearer_key_which_is_not_forwarded() -> None:
    async def body() -> None:
        async with Stack(1, auth_key="s3cret-key") as s:
            async with s.get("/echo") as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "needs an Authorization: Bearer <key> header" in await r.text()
            for wrong in ("Bearer nope", "bearer s3cret-key", "Basic czNjcmV0LWtleQ==", "s3cret-key",
                          "Bearer s3cret-ke", "Bearer s3cret-key\u00e9"):
                async with s.get("/echo", headers={"Authorization": wrong}) as r:
                    assert r.status == 401, wrong
                    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
                    assert "does not carry this group's key" in await r.text()
            assert s.apps[0].seen == []  # nothing unauthenticated reached the app
            async with s.get("/echo", headers={"Authorization": "Bearer s3cret-key", "X-A": "1"}) as r:
                assert r.status == 200
                h = (await r.json())["headers"]
            assert "Authorization" not in h and h["X-A"] == "1"

    arun(body)


def test_an_unauthenticated_request_does_not_wake_a_group_scaled_to_zero() -> None:
    async def body() -> None:
        demands: list[int] = []
        async with Stack(0, auth_key="k", on_demand=lambda: demands.append(1)) as s:
            async with s.get("/echo") as r:
                assert r.status == 401
            assert demands == []

    arun(body)


def test_without_auth_the_apps_own_authorization_header_passes() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            async with s.get("/echo", headers={"Authorization": "Bearer app-token"}) as r:
                assert (await r.json())["headers"]["Authorization"] == "Bearer app-token"

    arun(body)


def test_drain_waits_for_in_flight_requests_through_the_proxy() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            old = s.apps[0]
            new = App("r-new")
            s.apps.append(new)
            await s.add(new)
            s.pool.set_ready(new.id, False)
            slow = asyncio.ensure_future(s.get("/slow").__aenter__())
            await old.arrived.wait()
            s.pool.set_ready(new.id, True)
            drained = asyncio.ensure_future(s.pool.drain(old.id, timeout=10))
            for _ in range(3):  # new requests go to the new replica only
                async with s.get("/echo") as r:
                    assert (await r.json())["id"] == "r-new"
            assert not drained.done()
            old.gate.set()
            r = await slow
            assert await r.text() == old.id  # the in-flight one finished on the old replica
            r.release()
            assert await drained is True
            s.pool.remove(old.id)

    arun(body)


def test_close_lets_in_flight_requests_finish_and_answers_held_ones() -> None:
    async def body() -> None:
        demanded = asyncio.Event()
        async with Stack(1, on_demand=demanded.set) as s:
            app = s.apps[0]
            slow = asyncio.ensure_future(s.get("/slow").__aenter__())
            await app.arrived.wait()
            s.pool.set_ready(app.id, False)
            held = asyncio.ensure_future(s.get("/echo").__aenter__())
            await demanded.wait()
            assert s.proxy.held == 1
            closing = asyncio.ensure_future(s.proxy.close(grace=10))
            r = await held
            assert r.status == 503 and "shutting down" in await r.text()
            r.release()
            assert not closing.done()  # /slow is still running
            app.gate.set()
            r = await slow
            assert r.status == 200 and await r.text() == app.id
            r.release()
            await closing
            with pytest.raises(aiohttp.ClientConnectionError):
                async with s.get("/echo"):
                    pass

    arun(body)


def test_a_taken_port_raises_oserror() -> None:
    async def body() -> None:
        async with Stack(0) as s:
            port = int(s.url.rsplit(":", 1)[1])
            other = GroupProxy(ReplicaPool("b"), name="b", auth_key=None)
            with pytest.raises(OSError):
                await other.start("127.0.0.1", port)
            await other.close(grace=0)

    arun(body)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="auth_key"):
        GroupProxy(ReplicaPool("w"), name="w", auth_key="")
    with pytest.raises(ValueError, match="hold_timeout"):
        GroupProxy(ReplicaPool("w"), name="w", auth_key=None, hold_timeout=0)


def test_head_and_expect_100_continue() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            async with s.request("HEAD", "/big?n=1000") as r:
                assert r.status == 200 and r.headers["Content-Length"] == "1000"
                assert await r.read() == b""
            async with s.request("HEAD", "/big?n=100000000") as r:  # a streamed one
                assert r.status == 200 and r.headers["Content-Length"] == "100000000"
            payload = b"y" * 5000
            async with s.request("POST", "/upload", data=payload, expect100=True) as r:
                assert r.status == 200 and (await r.json())["n"] == 5000

    arun(body)


def test_held_requests_are_bounded() -> None:
    async def body() -> None:
        demanded = asyncio.Event()
        async with Stack(0, on_demand=demanded.set) as s:
            s.proxy.max_held = 1
            held = asyncio.ensure_future(s.get("/echo").__aenter__())
            await demanded.wait()
            async with s.get("/echo") as r:
                assert r.status == 503
                assert "1 requests are already waiting" in await r.text()
            app = App("r-0")
            s.apps.append(app)
            await s.add(app)
            r = await held
            assert r.status == 200
            r.release()

    arun(body)


def test_websocket_refused_by_the_app_is_a_502_and_a_dead_replica_is_skipped() -> None:
    async def body() -> None:
        async with Stack(2) as s:
            assert s.client is not None
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await s.client.ws_connect(s.url + "/echo")  # a plain route: the app answers 200
            assert e.value.status == 502
            await s.apps[0].stop()  # its port refuses connections now
            for _ in range(2):
                async with s.client.ws_connect(s.url + "/ws") as ws:
                    await ws.send_str("x")
                    assert (await ws.receive_str()) == "r-1:x"
            assert s.pool.get("r-0").state == "unready"  # type: ignore[union-attr]

    arun(body)


def test_set_auth_key_takes_effect_on_the_next_request() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            async with s.get("/echo", headers={"Authorization": "Bearer app"}) as r:
                assert (await r.json())["headers"]["Authorization"] == "Bearer app"  # no key: the app's own
            s.proxy.set_auth_key("k2")
            async with s.get("/echo") as r:
                assert r.status == 401
            async with s.get("/echo", headers={"Authorization": "Bearer k2"}) as r:
                assert r.status == 200 and "Authorization" not in (await r.json())["headers"]
            s.proxy.set_auth_key(None)
            async with s.get("/echo") as r:
                assert r.status == 200
            with pytest.raises(ValueError, match="auth_key"):
                s.proxy.set_auth_key("")

    arun(body)


def test_a_reason_written_in_full_by_the_manager_is_not_prefixed_twice() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            s.pool.unavailable = "chalkd: group 'web' is being deleted"
            async with s.get("/echo") as r:
                assert r.status == 503 and await r.text() == "chalkd: group 'web' is being deleted\n"

    arun(body)


def test_start_after_a_taken_port_works_on_the_same_proxy() -> None:
    """The manager tries its ports in turn on one GroupProxy."""

    async def body() -> None:
        async with Stack(1) as s:
            taken = int(s.url.rsplit(":", 1)[1])
            other = GroupProxy(s.pool, name="web", auth_key=None)
            with pytest.raises(OSError):
                await other.start("127.0.0.1", taken)
            port = await other.start("127.0.0.1", 0)
            try:
                assert s.client is not None
                async with s.client.get(f"http://127.0.0.1:{port}/echo") as r:
                    assert r.status == 200
            finally:
                await other.close(grace=1)

    arun(body)


def test_a_streamed_upload_whose_connection_failed_goes_whole_to_another_replica() -> None:
    async def body() -> None:
        demanded = asyncio.Event()
        async with Stack(2, on_demand=demanded.set) as s:
            await s.apps[0].stop()  # ready in the pool, refusing connections
            s.pool.set_ready("r-1", False)
            block = bytes(range(256)) * 256

            async def gen() -> Any:  # chunked, of unknown length: streamed, never buffered
                for _ in range(32):
                    yield block

            upload = asyncio.ensure_future(s.request("POST", "/upload", data=gen()).__aenter__())
            await demanded.wait()  # r-0 failed (reported), nothing else ready: held
            assert s.pool.get("r-0").state == "unready"  # type: ignore[union-attr]
            s.pool.set_ready("r-1", True)
            r = await upload
            assert r.status == 200
            assert (await r.json())["n"] == 32 * len(block)
            r.release()
            assert [x.path for x in s.apps[1].seen] == ["/upload"]

    arun(body)
