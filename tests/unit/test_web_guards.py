"""chalkd.web.guards on a real aiohttp server (no daemon): the order of the guards, the open paths, and
the session hook the dashboard's login cookie plugs into."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from aiohttp import web

from chalkd.web.guards import OPEN_PATHS, WebAuth, allowed_hosts, guards

pytestmark = pytest.mark.timeout(30)


async def _serve(auth: WebAuth, open_paths: frozenset[str], requests: list[dict]) -> list[httpx.Response]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    seen: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="hello")

    app = web.Application(middlewares=guards(auth, allowed_hosts("127.0.0.1", port)))
    app[OPEN_PATHS] = open_paths
    app.add_routes([web.get("/private", hello), web.get("/open", hello), web.post("/private", hello)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            out = []
            for r in requests:
                headers = {k: v.replace("{port}", str(port)) for k, v in r.get("headers", {}).items()}
                out.append(await client.request(r.get("method", "GET"), r["path"], headers=headers))
            return out
    finally:
        await runner.cleanup()


def run(auth: WebAuth, *requests: dict, open_paths: frozenset[str] = frozenset()) -> list[int]:
    return [r.status_code for r in asyncio.run(_serve(auth, open_paths, list(requests)))]


def test_token_and_open_paths():
    auth = WebAuth("tok")
    assert run(auth, {"path": "/private"}, {"path": "/private", "headers": {"Authorization": "Bearer tok"}},
               {"path": "/private", "headers": {"Authorization": "bearer tok"}},  # the scheme is case-insensitive
               {"path": "/private", "headers": {"Authorization": "Bearer tok2"}},
               {"path": "/open"}, open_paths=frozenset({"/open"})) == [401, 200, 200, 401, 200]


def test_the_host_guard_runs_before_the_token():
    auth = WebAuth("tok")
    # A rebinding page learns nothing, not even whether the path needs a token.
    assert run(auth, {"path": "/open", "headers": {"Host": "evil.example:{port}"}},
               {"path": "/private", "headers": {"Host": "evil.example:{port}"}},
               open_paths=frozenset({"/open"})) == [421, 421]


def test_a_cross_origin_post_is_refused_even_with_the_token():
    auth = WebAuth("tok")
    bearer = {"Authorization": "Bearer tok"}
    assert run(auth, {"method": "POST", "path": "/private", "headers": {**bearer, "Origin": "http://evil.example"}},
               {"method": "POST", "path": "/private", "headers": {**bearer, "Origin": "http://127.0.0.1:{port}"}},
               ) == [403, 200]


def test_the_session_hook_is_a_second_credential():
    """Where the dashboard's login cookie goes: a request the hook accepts needs no bearer header."""
    auth = WebAuth("tok", session_check=lambda request: request.cookies.get("session") == "good")
    assert run(auth, {"path": "/private", "headers": {"Cookie": "session=good"}},
               {"path": "/private", "headers": {"Cookie": "session=bad"}}) == [200, 401]


def test_allowed_hosts():
    assert allowed_hosts("::1", 9) == {"127.0.0.1:9", "localhost:9", "[::1]:9"}
    assert "10.1.2.3:9" in allowed_hosts("10.1.2.3", 9)
    wild = allowed_hosts("0.0.0.0", 9)
    assert f"{socket.gethostname().lower()}:9" in wild and "0.0.0.0:9" not in wild
