"""The dashboard's session cookie never reaches a scaling group's app: browsers send a host's cookies to
every port of it, so the group proxy (chalkd/groups/proxy.py) drops it, keeping the app's own cookies.
A real proxy in front of a real aiohttp app (tests/unit/test_group_proxy.py's helpers)."""

from __future__ import annotations

import pytest

from chalkd.web.sessions import cookie_name
from tests.unit.test_group_proxy import Stack, arun

COOKIE = cookie_name(50052)  # any chalkd's (any port's) is dropped

pytestmark = pytest.mark.timeout(30)


def test_the_proxy_drops_the_session_cookie_and_keeps_the_apps_own() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            for sent, expected in ((f"theme=dark; {COOKIE}=stolen-if-forwarded; cart=3", "theme=dark; cart=3"),
                                   (f"{COOKIE}=stolen-if-forwarded", None),
                                   ("theme=dark", "theme=dark")):
                async with s.request("GET", "/echo", headers={"Cookie": sent}) as r:
                    assert r.status == 200
                    got = (await r.json())["headers"]
                assert got.get("Cookie") == expected
                assert "stolen-if-forwarded" not in str(got)

    arun(body)


def test_a_websocket_upgrade_does_not_carry_the_session_cookie_either() -> None:
    async def body() -> None:
        async with Stack(1) as s:
            assert s.client is not None
            async with s.client.ws_connect(s.url + "/ws", headers={"Cookie": f"a=1; {COOKIE}=secret-id"}) as ws:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "r-0:hi"
            seen = s.apps[0].seen[-1]
            assert seen.headers.get("Cookie") == "a=1" and "secret-id" not in str(dict(seen.headers))

    arun(body)
