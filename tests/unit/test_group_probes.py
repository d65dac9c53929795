"""Readiness probes (chalkd/groups/probes.py) against real local servers: tcp and http, the failure
threshold, recovery, quick first readiness, and the spec's validation.

Each test runs its own event loop (asyncio.run); the apps are aiohttp servers in that loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from chalkd.groups.pool import Backend, ReplicaPool
from chalkd.groups.probes import ProbeLoop, ProbeSpec, probe_once

pytestmark = pytest.mark.timeout(30)


class HealthApp:
    """An aiohttp app whose /health answers ``status`` (changeable); ``hits`` is set at each probe."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        self.hit = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def health(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.hit.set()
        return web.Response(status=self.status, text="ok" if self.status < 400 else "no")

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/moved", self.moved)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def next_hit(self) -> None:
        self.hit.clear()
        await self.hit.wait()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(body: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(body(session), 20)

    asyncio.run(main())


async def wait_state(pool: ReplicaPool, id: str, state: str) -> None:
    b = pool.get(id)
    assert b is not None
    while b.state != state:
        pool.changed.clear()
        await pool.changed.wait()


# -- ProbeSpec validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"kind": "grpc"}, "kind"),
    ({"path": "health"}, "path must start with '/'"),
    ({"path": "/a b"}, "path"),
    ({"path": "/x\r\nHost: evil"}, "path"),
    ({"period_seconds": 0}, "period_seconds"),
    ({"period_seconds": -1.0}, "period_seconds"),
    ({"period_seconds": float("nan")}, "period_seconds"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": "2"}, "timeout_seconds"),
    ({"failure_threshold": 0}, "failure_threshold"),
    ({"failure_threshold": 1.5}, "failure_threshold"),
    ({"failure_threshold": True}, "failure_threshold"),
])
def test_a_bad_spec_is_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        ProbeSpec(**kwargs)


def test_the_default_spec_is_tcp() -> None:
    spec = ProbeSpec()
    assert (spec.kind, spec.path, spec.period_seconds, spec.timeout_seconds, spec.failure_threshold) == \
        ("tcp", "/", 5.0, 2.0, 3)


# -- probe_once ---------------------------------------------------------------------------------------------

def test_tcp_probe_is_ok_when_the_port_accepts_and_says_why_not_otherwise() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        port = await app.start()
        try:
            assert await probe_once(ProbeSpec(), "127.0.0.1", port, session) is None
        finally:
            await app.stop()
        reason = await probe_once(ProbeSpec(), "127.0.0.1", free_port(), session)
        assert reason is not None and "refused" in reason

    run(body)


def test_http_probe_wants_2xx_or_3xx() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        port = await app.start()
        try:
            spec = ProbeSpec(kind="http", path="/health")
            assert await probe_once(spec, "127.0.0.1", port, session) is None
            app.status = 503
            assert await probe_once(spec, "127.0.0.1", port, session) == "HTTP 503 from GET /health"
            # A redirect counts as ready and is not followed (its target may not exist).
            assert await probe_once(ProbeSpec(kind="http", path="/moved"), "127.0.0.1", port, session) is None
            assert await probe_once(ProbeSpec(kind="http", path="/nope"), "127.0.0.1", port, session) \
                == "HTTP 404 from GET /nope"
        finally:
            await app.stop()
        reason = await probe_once(ProbeSpec(kind="http"), "127.0.0.1", free_port(), session)
        assert reason is not None and "connect" in reason

    run(body)


def test_a_probe_that_gets_no_answer_times_out() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        accepted = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()  # never answers; returns when the probe gives up and closes
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            spec = ProbeSpec(kind="http", timeout_seconds=0.2)
            assert await probe_once(spec, "127.0.0.1", port, session) == "no answer within 0.2s"
            assert accepted.is_set()
        finally:
            server.close()
            await server.wait_closed()

    run(body)


# -- ProbeLoop ------------------------------------------------------------------------------------------------

def test_a_new_replica_is_marked_ready_by_quick_probes_long_before_the_period() -> None:
    """period_seconds is 60 (twice the test's timeout): only the quick first probes can make it ready."""

    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        app.status = 503  # listening, not ready yet
        port = await app.start()
        pool = ReplicaPool("web")
        b = Backend("r-1", "127.0.0.1", port)
        pool.add(b)
        probe = ProbeLoop(ProbeSpec(kind="http", path="/health", period_seconds=60), pool, b, session)
        probe.start()
        try:
            await app.next_hit()
            await app.next_hit()  # two failed probes: it keeps probing before the first success
            assert b.state == "starting" and not probe.first_ready.is_set()
            assert probe.failures == 0  # failures before the first success do not count towards unready
            app.status = 200
            await asyncio.wait_for(probe.first_ready.wait(), 10)
            assert b.state == "ready" and pool.ready_count == 1
            assert probe.last_error is None
        finally:
            await probe.stop()
            await app.stop()

    run(body)


def test_threshold_failures_in_a_row_mark_unready_and_a_success_marks_ready_again() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        port = await app.start()
        pool = ReplicaPool("web")
        b = Backend("r-1", "127.0.0.1", port)
        pool.add(b)
        spec = ProbeSpec(kind="http", path="/health", period_seconds=0.02, failure_threshold=3)
        probe = ProbeLoop(spec, pool, b, session)
        probe.start()
        try:
            await asyncio.wait_for(probe.first_ready.wait(), 10)
            app.status = 500
            # Failures below the threshold leave it ready.
            while probe.failures < 2:
                await app.next_hit()
            assert b.state == "ready"
            await asyncio.wait_for(wait_state(pool, "r-1", "unready"), 10)
            assert probe.failures >= 3
            assert probe.last_error == "HTTP 500 from GET /health"
            assert pool.acquire() is None
            app.status = 200
            await asyncio.wait_for(wait_state(pool, "r-1", "ready"), 10)
            assert probe.failures == 0 and probe.last_error is None
            got = pool.acquire()
            assert got is b
            pool.release(got)
        finally:
            await probe.stop()
            await app.stop()

    run(body)


def test_a_success_between_failures_resets_the_count() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        port = await app.start()
        pool = ReplicaPool("web")
        b = Backend("r-1", "127.0.0.1", port)
        pool.add(b)
        probe = ProbeLoop(ProbeSpec(kind="http", path="/health", period_seconds=0.02, failure_threshold=3),
                          pool, b, session)
        probe.start()
        try:
            await asyncio.wait_for(probe.first_ready.wait(), 10)
            for _ in range(3):  # fail, fail, succeed: never 3 in a row
                app.status = 500
                while probe.failures < 2:
                    await app.next_hit()
                app.status = 200
                while probe.failures != 0:
                    await app.next_hit()
                assert b.state == "ready"
        finally:
            await probe.stop()
            await app.stop()

    run(body)


def test_tcp_probe_loop_marks_unready_when_the_app_goes_away_and_ready_when_it_is_back() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        port = await app.start()
        pool = ReplicaPool("web")
        b = Backend("r-1", "127.0.0.1", port)
        pool.add(b)
        probe = ProbeLoop(ProbeSpec(period_seconds=0.02, failure_threshold=2), pool, b, session)
        probe.start()
        try:
            await asyncio.wait_for(probe.first_ready.wait(), 10)
            await app.stop()
            await asyncio.wait_for(wait_state(pool, "r-1", "unready"), 10)
            assert probe.last_error is not None and "refused" in probe.last_error
            app = HealthApp()
            await app.start(port)
            await asyncio.wait_for(wait_state(pool, "r-1", "ready"), 10)
        finally:
            await probe.stop()
            await app.stop()

    run(body)


def test_a_probe_never_revives_a_draining_replica() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        app = HealthApp()
        port = await app.start()
        pool = ReplicaPool("web")
        b = Backend("r-1", "127.0.0.1", port)
        pool.add(b)
        probe = ProbeLoop(ProbeSpec(kind="http", path="/health", period_seconds=0.02), pool, b, session)
        probe.start()
        try:
            await asyncio.wait_for(probe.first_ready.wait(), 10)
            assert await pool.drain("r-1", timeout=1.0)
            for _ in range(3):
                await app.next_hit()
            assert b.state == "draining"
            assert pool.acquire() is None
        finally:
            await probe.stop()
            await app.stop()

    run(body)


def test_starting_twice_is_an_error_and_stop_is_idempotent() -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        pool = ReplicaPool("web")
        b = Backend("r-1", "127.0.0.1", free_port())
        pool.add(b)
        probe = ProbeLoop(ProbeSpec(), pool, b, session)
        probe.start()
        with pytest.raises(RuntimeError, match="already started"):
            probe.start()
        await probe.stop()
        await probe.stop()
        assert b.state == "starting"

    run(body)
