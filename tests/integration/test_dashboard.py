"""The web dashboard on a real daemon's HTTP port: the login link, the session cookie, the guards
(no cookie, a cross-origin POST, a missing or wrong CSRF token), the pages (a deployed function, a
call's detail with its arguments' shapes and its replica's log, secrets by name only) and the two
actions (cancel a running call here; terminating a sandbox needs Docker: on the process runtime the
page says so and has no button). The real-browser test is tests/integration/test_dashboard_browser.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

import chalkcompute
from chalkcompute import FunctionCall
from chalkcompute.exceptions import CallCancelledError, RemoteExecutionError
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.usefixtures("daemon"), pytest.mark.timeout(120)]

SECRET_VALUE = "dash-s3cret-value-never-shown"


@chalkcompute.function(timeout=120)
def dash_echo(values: list[int], label: str) -> int:
    print(f"dash_echo got {len(values)} values for <{label}>", flush=True)
    return sum(values)


@chalkcompute.function(retries=0)
def dash_hostile(x: int) -> int:
    print("<img src=x onerror=alert(1)>", flush=True)
    raise ValueError('<script>alert("owned")</script>')


@chalkcompute.function(timeout=120)
def dash_sleeper(gate: str) -> str:
    import os
    import time

    print("dash_sleeper started", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.05)
    return "done"


class Browserless:
    """A cookie-keeping HTTP client that does not follow redirects (each hop is checked)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect())

    def request(self, path: str, *, data: dict | None = None, headers: dict | None = None) -> tuple[int, dict, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def login_link(daemon) -> str:
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "dashboard", "--no-open", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "CHALKD_HOME": str(daemon.home)})
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[\w\-%]+", link), link
    return link


@pytest.fixture(scope="module")
def session(daemon) -> tuple[Browserless, str]:
    """A logged-in client and the page's CSRF token."""
    link = login_link(daemon)
    base = link.split("/login")[0]
    client = Browserless(base)
    status, headers, _ = client.request(link[len(base):])
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # Named after the HTTP port: another daemon on this host keeps its own session (cookies ignore ports).
    assert cookie.startswith(f"chalkd_dashboard_{base.rsplit(':', 1)[1]}=")
    assert daemon.token not in cookie  # the cookie holds a session id, not the token
    status, _, page = client.request("/")
    assert status == 200 and "<h1>Overview</h1>" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    return client, csrf


def test_without_a_session_every_page_is_refused_and_the_login_page_says_how(daemon, session):
    base = session[0].base
    anonymous = Browserless(base)
    for path in ("/", "/calls", "/secrets", "/functions/dash_echo", "/live", "/replicas/r-0123456789/log"):
        status, _, text = anonymous.request(path)
        assert status == 401, path
        assert "<td>" not in text
    status, _, text = anonymous.request("/login")
    assert status == 401 and "chalkd dashboard" in text
    status, headers, text = anonymous.request("/login?token=not-the-token")
    assert status == 401 and "Set-Cookie" not in headers
    # A made-up session cookie is no session.
    forged = Browserless(base)
    port = base.rsplit(":", 1)[1]
    status, _, _ = forged.request("/", headers={"Cookie": f"chalkd_dashboard_{port}=" + "A" * 43})
    assert status == 401


def test_a_deployed_function_and_a_calls_detail_with_shapes_and_its_replica_log(session):
    client, _ = session
    dash_echo.wait_ready()
    call = dash_echo.spawn(list(range(1000)), "x<y>&z")
    assert call.get(timeout=60) == sum(range(1000))
    status, _, page = client.request("/")
    assert status == 200 and 'href="/functions/dash_echo"' in page
    status, _, page = client.request("/functions/dash_echo")
    assert status == 200 and re.search(r"<h2>v\d+ replicas</h2>", page) and call.object_id in page
    assert re.search(r'href="/replicas/r-[0-9a-f]+/log"', page)
    status, headers, page = client.request(f"/calls/{call.object_id}")
    assert status == 200
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    # Arguments appear as shapes: the list's type and length, the string's length, never the values.
    facts, _, rest = page.partition("<h2>This call's output</h2>")
    own_part, _, log_part = rest.partition("<h2>Replica output</h2>")
    # The call's own lines (from the log store), escaped.
    assert "dash_echo got 1000 values for &lt;x&lt;y&gt;&amp;z&gt;" in own_part
    assert "values" in facts and "list&lt;item: int64&gt;" in facts and ">1000<" in facts and ">6<" in facts
    assert "x&lt;y&gt;&amp;z" not in facts and "x<y>&z" not in page and ">999<" not in facts
    # The replica's log, labelled as such, with what the handler printed (escaped).
    assert "its whole output" in page
    assert "dash_echo got 1000 values for &lt;x&lt;y&gt;&amp;z&gt;" in log_part
    # An unknown or malformed call id is a 404 page, not an error.
    assert client.request("/calls/fc-00000000000000000000")[0] == 404
    assert client.request("/calls/%3Cscript%3E")[0] == 404


def test_secrets_are_listed_by_name_only(daemon, session):
    client, _ = session
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "secret", "set", "DASH_TOKEN_X", "--value",
                          SECRET_VALUE, "--target", daemon.target], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={**os.environ, "CHALKD_HOME": str(daemon.home)})
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "integration", "set", "dash_db",
                          f"PASSWORD={SECRET_VALUE}", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "CHALKD_HOME": str(daemon.home)})
    assert out.returncode == 0, out.stderr
    status, _, page = client.request("/secrets")
    assert status == 200 and "DASH_TOKEN_X" in page and "dash_db" in page and "PASSWORD" in page
    assert SECRET_VALUE not in page


def test_cancel_needs_the_sessions_csrf_token_and_a_same_origin_post(daemon, session, tmp_path):
    client, csrf = session
    gate = tmp_path / "gate"
    dash_sleeper.wait_ready()
    call = dash_sleeper.spawn(str(gate))
    try:
        # Running, and its first line is in its replica's log (the handler has started).
        wait_for(lambda: "dash_sleeper started" in client.request(f"/calls/{call.object_id}")[2],
                 what="the call to run and print")
        status, _, page = client.request(f"/calls/{call.object_id}")
        assert 'id="cancel-call"' in page
        path = f"/calls/{call.object_id}/cancel"
        # No CSRF field, a wrong one, another origin, a cross-site fetch: each refused, the call runs on.
        assert client.request(path, data={})[0] == 403
        assert client.request(path, data={"csrf": "wrong"})[0] == 403
        assert client.request(path, data={"csrf": csrf}, headers={"Origin": "http://evil.example"})[0] == 403
        assert client.request(path, data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
        # A scaling group's page is another port of the same host: same-site (the SameSite=Strict cookie goes
        # along), but not same-origin, so it is refused too.
        other = "http://127.0.0.1:1"
        assert client.request(path, data={"csrf": csrf}, headers={"Origin": other, "Sec-Fetch-Site": "same-site"})[0] \
            == 403
        assert client.request(path, data={"csrf": csrf}, headers={"Origin": "null"})[0] == 403
        host = client.base.split("//")[1]
        assert client.request(path, data={"csrf": csrf}, headers={"Host": "evil.example:" + host.split(":")[1]})[0] \
            == 421  # DNS rebinding
        # The bearer token alone cannot post a form either (actions are the session's).
        bearer = Browserless(client.base)
        assert bearer.request(path, data={"csrf": csrf}, headers={"Authorization": f"Bearer {daemon.token}"})[0] \
            == 403
        assert "running" in client.request(f"/calls/{call.object_id}")[2]
        # The real thing: a same-origin POST with the session's token cancels it.
        status, headers, _ = client.request(path, data={"csrf": csrf}, headers={"Origin": client.base})
        assert status == 303 and headers["Location"] == f"/calls/{call.object_id}"
        with pytest.raises(CallCancelledError, match="cancelled from the dashboard"):
            FunctionCall.from_id(call.object_id).get(timeout=30)
        status, _, page = client.request(f"/calls/{call.object_id}")
        assert "cancelled" in page and "cancelled from the dashboard" in page and 'id="cancel-call"' not in page
        # The replica that ran it is still named (the queue clears replica_id on cancel; ran_on stays), with its log.
        assert "which ran this call&#x27;s latest attempt" in page and "dash_sleeper started" in page
    finally:
        gate.touch()


def test_the_process_runtime_has_no_sandbox_to_terminate(session):
    client, csrf = session
    status, _, page = client.request("/sandboxes")
    assert status == 200 and 'id="no-sandboxes"' in page and "Terminate" not in page
    status, headers, _ = client.request("/sandboxes/sb-abc123/terminate", data={"csrf": csrf})
    assert status == 303  # nothing to terminate; the page says why
    assert "process runtime" in client.request("/sandboxes")[2]


def test_other_pages_render(session):
    client, _ = session
    for path, marker in (("/volumes", "Volumes"), ("/groups", "Scaling groups"), ("/gpus", "GPUs"),
                         ("/calls", "Recent calls"), ("/static/dashboard.js", "EventSource")):
        status, _, page = client.request(path)
        assert status == 200 and marker in page, path


def test_a_replica_log_streams_live_over_sse(session):
    client, _ = session
    dash_echo.wait_ready()
    dash_echo([1], "first")
    _, _, page = client.request("/functions/dash_echo")
    replica = re.search(r'href="/replicas/(r-[0-9a-f]+)/log"', page).group(1)
    _, _, page = client.request(f"/replicas/{replica}/log")
    stream = re.search(r'data-sse-log="([^"]+)"', page).group(1).replace("&amp;", "&")
    req = urllib.request.Request(client.base + stream)
    last_id = None
    with client.opener.open(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        dash_echo([1, 2, 3], "live-line\rdata: forged")
        seen = False
        for raw in resp:
            line = raw.decode()
            if "live-line" in line:
                # The CR is dropped: it cannot start a field of its own.
                assert line == "data: dash_echo got 3 values for <live-linedata: forged>\n"
                seen = True
            elif seen and line.startswith("id: "):
                last_id = line[4:].strip()
                break
    # A reconnecting EventSource sends the last id it got: the stream resumes after it, nothing twice.
    req = urllib.request.Request(client.base + stream, headers={"Last-Event-ID": last_id})
    with client.opener.open(req, timeout=30) as resp:
        dash_echo([1], "after-reconnect")
        for raw in resp:
            line = raw.decode()
            if line.startswith("data: "):
                assert "after-reconnect" in line, line
                break


def test_a_daemon_with_a_live_stream_open_stops_cleanly(fresh_daemon):
    """An open page's SSE stream ends when the daemon stops, instead of holding the shutdown."""
    link = login_link(fresh_daemon)
    base = link.split("/login")[0]
    client = Browserless(base)
    assert client.request(link[len(base):])[0] == 303
    with client.opener.open(urllib.request.Request(base + "/live"), timeout=60) as resp:
        assert resp.readline().startswith(b"data: {")
        fresh_daemon.proc.send_signal(signal.SIGTERM)
        resp.read()  # returns at the stream's end: the daemon closed it (aiohttp would wait 60 s)
    assert fresh_daemon.proc.wait(timeout=60) == 0


def test_chalkd_dashboard_with_a_wrong_token_prints_no_link(daemon):
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "dashboard", "--no-open", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "CHALK_COMPUTE_TOKEN": "not-this-daemons-token"})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("chalkd: ") and "token" in out.stderr


def test_user_text_is_escaped_everywhere_it_shows(session):
    """An error message, a traceback and a log line written by user code are text, never markup."""
    client, _ = session
    dash_hostile.wait_ready()
    call = dash_hostile.spawn(1)
    with pytest.raises(RemoteExecutionError, match="owned"):
        call.get(timeout=60)
    wait_for(lambda: "&lt;img src=x" in client.request(f"/calls/{call.object_id}")[2], what="the log line")
    for path in ("/", "/calls", "/functions/dash_hostile", f"/calls/{call.object_id}"):
        status, _, page = client.request(path)
        assert status == 200, path
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page, path


def test_chalkd_dashboard_without_a_display_prints_the_link_and_opens_nothing(daemon):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "dashboard", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**env, "CHALKD_HOME": str(daemon.home), "BROWSER": "false"})
    assert out.returncode == 0 and out.stdout.startswith("http://127.0.0.1:")
    assert "no graphical session" in out.stderr
