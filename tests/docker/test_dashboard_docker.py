"""The dashboard on the Docker runtime: a sandbox is listed with a Terminate button, the button's POST
(with the session's CSRF token) terminates it, and a POST without the token is refused and leaves it
running; the GPU page shows the docker daemon's fake L4; a scaling group is listed with its URL, and a
request to it carrying the dashboard's cookie reaches the app without it. The process runtime's side
(no sandboxes, no button) is in tests/integration/test_dashboard.py."""

from __future__ import annotations

import re
import sys

import httpx
import pytest

from chalkcompute import Image, ReadinessProbe, SandboxClient, ScalingGroup
from chalkd.web.sessions import COOKIE
from tests.conftest import ROOT
from tests.integration.test_dashboard import Browserless, login_link

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
APP = ROOT / "tests" / "docker" / "apps" / "group_app.py"


def test_terminate_a_sandbox_from_the_dashboard(docker_daemon):
    link = login_link(docker_daemon)
    base = link.split("/login")[0]
    client = Browserless(base)
    status, headers, _ = client.request(link[len(base):])
    assert status == 303
    sandboxes = SandboxClient(target=docker_daemon.target)
    sb = sandboxes.create(image=Image.debian_slim(PY), name="dashboard-sandbox")
    try:
        status, _, page = client.request("/sandboxes")
        assert status == 200 and sb.id in page and "dashboard-sandbox" in page
        assert f'id="terminate-{sb.id}"' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        path = f"/sandboxes/{sb.id}/terminate"
        assert client.request(path, data={})[0] == 403
        assert client.request(path, data={"csrf": csrf}, headers={"Origin": "http://evil.example"})[0] == 403
        assert sandboxes.get(sb.id).refresh().status == "ready"
        status, headers, _ = client.request(path, data={"csrf": csrf}, headers={"Origin": base})
        assert status == 303 and headers["Location"] == "/sandboxes"
        status, _, page = client.request("/sandboxes")
        assert f"sandbox {sb.id} terminated" in page and f'id="terminate-{sb.id}"' not in page
        assert sandboxes.get(sb.id).refresh().status == "terminated"
    finally:
        sb.terminate()
    status, _, page = client.request("/gpus")
    assert status == 200 and "NVIDIA L4" in page and "GPU-fake-l4-0" in page
    # The scaling groups' page reads the real manager (the process runtime has none).
    status, _, page = client.request("/groups")
    assert status == 200 and "<h1>Scaling groups</h1>" in page and "--runtime docker" not in page


def test_a_scaling_group_is_listed_and_its_app_never_sees_the_dashboard_cookie(docker_daemon):
    """Browsers send the session cookie to the group's port too (same host): the proxy drops it."""
    link = login_link(docker_daemon)
    base = link.split("/login")[0]
    client = Browserless(base)
    assert client.request(link[len(base):])[0] == 303
    cookie = next(c for c in client.jar if c.name.startswith(COOKIE))
    session_id = cookie.value
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python", "/app/app.py"])
    sg = ScalingGroup(image=img, name="dashboard-group", readiness_probe=ReadinessProbe.http("/health"))
    sg.deploy().wait_ready()
    try:
        status, _, page = client.request("/groups")
        assert status == 200 and "dashboard-group" in page and "Running" in page
        url = re.search(r"<td>(http://[^<]+)</td>", page).group(1)
        got = httpx.get(url.rstrip("/") + "/headers", headers={"Cookie": f"theme=dark; {cookie.name}={session_id}"},
                        timeout=30).json()
        assert got.get("Cookie") == "theme=dark" and session_id not in str(got)
    finally:
        sg.delete()
