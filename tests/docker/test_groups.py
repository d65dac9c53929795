"""Scaling groups on the Docker runtime: the reference's example, requests through the group's URL,
failures, a rolling redeploy and a killed replica under load, scaling, restarts, the CLI.

The app is tests/docker/apps/group_app.py (stdlib only); one test installs flask, as the reference's
example does, and falls back to the stdlib app when the package index cannot be reached.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from chalkcompute import Image, ReadinessProbe, ScalingGroup, ScalingGroupError, Secret
from tests.conftest import Daemon
from tests.docker.conftest import containers_of, remove_home_containers

APP = Path(__file__).parent / "apps" / "group_app.py"
FLASK_APP = '''
from flask import Flask
app = Flask(__name__)

@app.get("/health")
def health():
    return "ok"

app.run(host="0.0.0.0", port=8080)
'''


def app_image(**env: str) -> Image:
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python", "/app/app.py"])
    return img.env(env) if env else img


@pytest.fixture(scope="module")
def groups_daemon(docker_engine, tmp_path_factory):
    """A daemon of its own: a 1 s cooldown (scaling tests end quickly) and a port range of its own."""
    d = Daemon(tmp_path_factory.mktemp("chalkd-groups"),
               extra_args=("--runtime", "docker", "--group-cooldown", "1", "--group-ports", "52100-52199")).start()
    yield d
    d.stop()
    remove_home_containers(d.home)


@pytest.fixture
def on_groups(groups_daemon, monkeypatch):
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", groups_daemon.target)
    return groups_daemon


class Load:
    """Requests from a few threads until stopped: every answer's status and body are kept."""

    def __init__(self, url: str, path: str = "/whoami", threads: int = 4, method: str = "GET") -> None:
        self.url, self.path, self.method = url, path, method
        self.results: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.started = threading.Event()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.request(self.method, self.url + self.path)
                    self.results.append((r.status_code, r.text))
                    self.started.set()
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        assert self.started.wait(30), f"no request answered: {self.errors[:3]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.mark.timeout(240)
def test_the_reference_example_with_flask(on_groups, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(FLASK_APP)
    img = (Image.debian_slim().pip_install(["flask"]).add_local_file(str(app), "/app/app.py")
           .entrypoint(["python", "/app/app.py"]))
    try:
        sg = ScalingGroup(image=img, port=8080).deploy().wait_ready()
    except ScalingGroupError as exc:
        if "pip" not in str(exc) and "flask" not in str(exc).lower():
            raise
        # No package index from here: the same example with the stdlib app.
        sg = ScalingGroup(image=app_image(), port=8080).deploy().wait_ready()
    try:
        resp = sg.call("/health", method="GET")
        assert (resp.status_code, resp.text) == (200, "ok")
        assert sg.info is not None and sg.info.status == "Running" and sg.info.ready_replicas == 1
        assert sg.web_url is not None and sg.web_url.startswith("http://127.0.0.1:521")
        again = ScalingGroup.from_name(sg.name)
        assert again.id == sg.id and again.web_url == sg.web_url
    finally:
        sg.delete()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{sg.web_url}/health", timeout=5)  # its URL no longer answers
    sg.delete()  # harmless twice


@pytest.mark.timeout(180)
def test_requests_through_the_group(on_groups):
    sg = ScalingGroup(image=app_image(), name="through", readiness_probe=ReadinessProbe.http("/health"))
    with pytest.raises(ScalingGroupError, match="deploy"):
        sg.call("/health")  # never deployed: no web_url
    sg.deploy()
    try:
        assert sg.call("/echo", json={"a": [1, 2]}).json() == {"a": [1, 2]}
        assert sg.call("/echo", data=b"\x00raw").content == b"\x00raw"
        with pytest.raises(ValueError, match="json or data"):
            sg.call("/echo", json={}, data=b"x")
        assert sg.call("/nothing-here", method="GET").status_code == 404
        seen = sg.call("/headers", method="GET", headers={"X-Mine": "1"}).json()
        assert seen["X-Mine"] == "1" and seen.get("X-Forwarded-For") == "127.0.0.1"
        # A streaming answer arrives chunk by chunk, not at the end.
        with httpx.stream("GET", f"{sg.web_url}/stream", timeout=10) as r:
            chunks = r.iter_lines()
            t0 = time.monotonic()
            first = next(chunks)
            first_at = time.monotonic() - t0
            rest = list(chunks)
        assert first == "chunk 0" and rest == ["chunk 1", "chunk 2"] and first_at < 0.35
        body = os.urandom(8 << 20)  # a large body both ways
        assert sg.call("/echo", data=body, timeout=60).content == body
    finally:
        sg.delete()


@pytest.mark.timeout(180)
def test_an_authenticated_group_and_its_secret(on_groups, monkeypatch):
    monkeypatch.setenv("GROUP_TEST_TOKEN", "s3cr3t-value")
    sg = ScalingGroup(image=app_image(), name="private", authenticated=True,
                      secrets=[Secret.from_local_env("GROUP_TEST_TOKEN", "TOKEN")])
    sg.deploy()
    try:
        assert sg.info is not None and sg.info.auth_key
        assert httpx.get(f"{sg.web_url}/health").status_code == 401
        assert httpx.get(f"{sg.web_url}/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert sg.call("/health", method="GET").text == "ok"
        seen = sg.call("/headers", method="GET").json()
        assert "Authorization" not in seen  # the group's key is not the app's business
        assert sg.call("/secret", method="GET").json() == {"has_token": True}
        for c in containers_of(on_groups.home, group=sg.id):  # the secret is not in the container's config
            assert not any("s3cr3t-value" in e for e in c["Config"]["Env"])
    finally:
        sg.delete()


@pytest.mark.timeout(180)
def test_an_app_that_exits_at_start_fails_the_group_with_its_output(on_groups):
    sg = ScalingGroup(image=app_image(FAIL_AT_START="1"), name="crashy")
    try:
        with pytest.raises(ScalingGroupError, match="refusing to start") as exc:
            sg.deploy(ready_timeout=120)
        assert "5 replicas in a row failed to start" in str(exc.value)
        info = sg.refresh()
        assert info.status == "Failed" and info.ready_replicas == 0
        resp = httpx.get(f"{sg.web_url}/health", timeout=10)
        assert resp.status_code == 503 and "Failed" in resp.text
        with pytest.raises(ScalingGroupError, match="Failed"):
            sg.wait_ready(timeout=5)
        # Redeploying a working revision brings it back.
        fixed = ScalingGroup(image=app_image(), name="crashy").deploy()
        assert fixed.call("/health", method="GET").text == "ok"
    finally:
        sg.delete()


@pytest.mark.timeout(240)
def test_a_rolling_redeploy_under_load_fails_no_request(on_groups):
    sg = ScalingGroup(image=app_image(VERSION="1"), name="rolling", min_replicas=2, max_replicas=2,
                      readiness_probe=ReadinessProbe.http("/health")).deploy()
    try:
        with Load(sg.web_url or "") as load:
            ScalingGroup(image=app_image(VERSION="2"), name="rolling", min_replicas=2, max_replicas=2,
                         readiness_probe=ReadinessProbe.http("/health")).deploy()
            n = len(load.results)
            deadline = time.monotonic() + 20
            while len(load.results) < n + 50 and time.monotonic() < deadline:
                time.sleep(0.05)
        codes = Counter(code for code, _ in load.results)
        assert codes == Counter({200: len(load.results)}) and not load.errors, (codes, load.errors[:3])
        versions = [httpx.Response(200, text=t).json()["version"] for _, t in load.results]
        assert versions[0] == "1" and versions[-1] == "2"
        info = sg.refresh()
        assert info.revision == 2 and {r.revision for r in info.replicas if r.state == "ready"} == {2}
    finally:
        sg.delete()


@pytest.mark.timeout(240)
def test_a_replica_killed_under_load_loses_no_request(on_groups):
    sg = ScalingGroup(image=app_image(), name="killed", min_replicas=2, max_replicas=2).deploy()
    try:
        with Load(sg.web_url or "", path="/slow?ms=20") as load:
            victim = containers_of(on_groups.home, group=sg.id)[0]["Id"]
            n = len(load.results)
            subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
            deadline = time.monotonic() + 30
            while len(load.results) < n + 100 and time.monotonic() < deadline:
                time.sleep(0.05)
        codes = Counter(code for code, _ in load.results)
        assert codes == Counter({200: len(load.results)}) and not load.errors, (codes, load.errors[:3])
        sg.wait_ready()
        deadline = time.monotonic() + 60
        while sg.refresh().ready_replicas < 2:  # the dead replica is replaced
            assert time.monotonic() < deadline, sg.info
            sg.refresh(wait=5)
    finally:
        sg.delete()


@pytest.mark.timeout(240)
def test_scale_from_zero_to_max_and_back(on_groups):
    sg = ScalingGroup(image=app_image(), name="elastic", min_replicas=0, max_replicas=3).deploy()
    try:
        assert sg.info is not None and sg.info.status == "ScaledToZero" and not sg.info.replicas
        # A request held while a replica starts, then answered.
        assert sg.call("/health", method="GET").text == "ok"
        # A burst of slow requests: more in flight than one replica's share scales up to max.
        results: list[int] = []

        def hit() -> None:
            with httpx.Client(timeout=60) as c:
                for _ in range(6):
                    results.append(c.get(f"{sg.web_url}/slow?ms=400").status_code)

        threads = [threading.Thread(target=hit) for _ in range(24)]
        for t in threads:
            t.start()
        peak = 0
        while any(t.is_alive() for t in threads):
            peak = max(peak, sg.refresh().ready_replicas)
            time.sleep(0.2)
        for t in threads:
            t.join()
        assert results == [200] * 144
        assert peak == 3, sg.info
        deadline = time.monotonic() + 60
        while sg.refresh().status != "ScaledToZero":
            assert time.monotonic() < deadline, sg.info
            sg.refresh(wait=5)
        assert "scale down" in sg.info.last_decision
        assert sg.wait_ready(timeout=60).info.ready_replicas == 1  # wait_ready starts one again
    finally:
        sg.delete()


@pytest.mark.timeout(240)
def test_the_group_serves_again_on_its_port_after_a_restart(docker_engine, tmp_path, monkeypatch):
    d = Daemon(tmp_path / "home", extra_args=("--runtime", "docker", "--group-ports", "52200-52209")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    try:
        sg = ScalingGroup(image=app_image(), name="durable").deploy()
        url = sg.web_url
        d.stop()  # SIGTERM: the replicas stop with the daemon, the record stays
        assert not containers_of(d.home, group=sg.id)
        d.start()
        monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
        again = ScalingGroup.from_name("durable").wait_ready(timeout=120)
        assert again.web_url == url and httpx.get(f"{url}/health", timeout=10).text == "ok"
        # Its port taken while the daemon was down: another one is picked, and the log says so.
        d.stop()
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", int((url or "").rsplit(":", 1)[1])))
        squatter.listen()
        try:
            d.start()
            monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
            moved = ScalingGroup.from_name("durable").wait_ready(timeout=120)
            assert moved.web_url != url and moved.call("/health", method="GET").text == "ok"
            assert "is taken; it now serves on" in d.log()
        finally:
            squatter.close()
        moved.delete()
    finally:
        d.stop()
        remove_home_containers(d.home)


@pytest.mark.timeout(180)
def test_the_cli_lists_shows_logs_and_deletes(on_groups):
    sg = ScalingGroup(image=app_image(), name="clitest").deploy()
    sg.call("/health", method="GET")
    env = {**os.environ, "CHALK_COMPUTE_TARGET": on_groups.target}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chalkd.cli", "groups", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    ls = cli("ls")
    assert ls.returncode == 0 and "clitest" in ls.stdout and "Running" in ls.stdout, ls.stderr
    logs = cli("logs", "clitest", "--tail", "20")
    assert logs.returncode == 0 and "group_app listening on 8080" in logs.stdout and "GET /health" in logs.stdout
    missing = cli("logs", "no-such-group")
    assert missing.returncode == 1 and "no scaling group named 'no-such-group'" in missing.stderr
    gone = cli("delete", "clitest")
    assert gone.returncode == 0, gone.stderr
    assert "clitest" not in cli("ls").stdout


@pytest.mark.timeout(180)
def test_a_sandbox_cannot_reach_a_replica(on_groups):
    from chalkcompute import SandboxClient

    sg = ScalingGroup(image=app_image(), name="walled").deploy()
    try:
        address = sg.refresh().replicas[0].address
        host, port = address.split(":")
        assert httpx.get(f"http://{address}/health", timeout=5).text == "ok"  # the daemon's host reaches it
        sandbox = SandboxClient().create(image=Image.debian_slim())
        try:
            probe = ("import socket,sys\ns=socket.socket();s.settimeout(3)\n"
                     f"sys.exit(0 if s.connect_ex(({host!r},{port}))==0 else 1)")
            assert sandbox.exec("python3", "-c", probe).exit_code == 1
        finally:
            sandbox.terminate()
    finally:
        sg.delete()


@pytest.mark.timeout(120)
def test_a_gpu_the_host_does_not_have_is_refused_at_deploy(on_docker):
    # The shared docker daemon's inventory is one fake NVIDIA L4.
    sg = ScalingGroup(image=app_image(), name="needs-a100", gpu="A100")
    with pytest.raises(ScalingGroupError, match=r"no host has 1 x a100; hosts have: 1 x NVIDIA L4"):
        sg.deploy()
    with pytest.raises(ScalingGroupError, match="needs-a100"):
        ScalingGroup.from_name("needs-a100")  # nothing was recorded


@pytest.mark.timeout(180)
def test_a_failing_image_build_is_a_build_error_with_its_step(on_groups):
    from chalkcompute import ScalingGroupBuildError

    img = app_image().run_commands("echo about-to-fail && exit 7")
    with pytest.raises(ScalingGroupBuildError) as exc:
        ScalingGroup(image=img, name="badbuild").deploy()
    assert "exit 7" in exc.value.step and "about-to-fail" in exc.value.log_tail
    with pytest.raises(ScalingGroupError, match="badbuild"):
        ScalingGroup.from_name("badbuild")  # nothing was deployed
