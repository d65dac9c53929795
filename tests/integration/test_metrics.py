"""The daemon's HTTP port and /metrics (issue 17): a real daemon, real HTTP, the hostile cases too.

The guards (chalkd.web.guards) are what the dashboard will stand behind as well: no token, a rebinding
Host, a cross-origin or cross-site request are all refused before any handler runs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chalkcompute import RateLimitPolicy, RemoteFunction, RetryPolicy
from tests.conftest import ROOT, Daemon, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

FAMILIES = {
    "chalkd_calls", "chalkd_call_duration_seconds", "chalkd_call_queue_wait_seconds", "chalkd_call_retries",
    "chalkd_rate_limit_waits", "chalkd_chunks_streamed", "chalkd_image_build_duration_seconds", "chalkd_queue_depth",
    "chalkd_calls_in_flight", "chalkd_replicas", "chalkd_sandboxes", "chalkd_group_replicas_ready",
    "chalkd_group_requests_in_flight", "chalkd_volume_bytes", "chalkd_gpu_utilization_ratio",
    "chalkd_gpu_memory_used_bytes", "chalkd_gpu_memory_total_bytes", "chalkd_info", "chalkd_calls_submitted",
}


def metric_square(x: int) -> int:
    return x * x


def metric_boom(x: str) -> int:
    raise ValueError(f"handler failed on {x}")


def metric_count(n: int):
    yield from range(n)


def metric_flaky(path: str) -> int:
    import os

    n = len(os.listdir(path)) + 1
    open(os.path.join(path, f"run-{n}"), "w").close()
    if n == 1:
        raise ConnectionError("first attempt fails")
    return n


class Http:
    """A daemon with its HTTP port known (given explicitly: the tests' default is a random one)."""

    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon, self.port = daemon, port
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.token = (daemon.home / "token").read_text().strip()

    def get(self, *, token: str | None = "", **headers: str) -> httpx.Response:
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token or self.token}")
        return httpx.get(self.url, headers=headers, timeout=10)

    def scrape(self) -> dict[str, dict[tuple, float]]:
        resp = self.get()
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(resp.text)


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """{family name: {sorted label items: value}} with each sample's own name as a label "__name__"."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        values = out.setdefault(family.name, {})
        for s in family.samples:
            values[tuple(sorted({**s.labels, "__name__": s.name}.items()))] = s.value
    return out


def value(metrics: dict, family: str, sample: str | None = None, **labels: str) -> float:
    key = tuple(sorted({**labels, "__name__": sample or family}.items()))
    return metrics.get(family, {}).get(key, 0.0)


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Http:
    port = free_port()
    d = Daemon(tmp_path / "home", extra_args=("--http-port", str(port), *args), env=env).start()
    return Http(d, port)


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    h = start(tmp_path_factory.mktemp("metrics"))
    yield h
    h.daemon.stop()


def test_metrics_needs_the_token(http):
    for token, what in ((None, "no header"), ("not-the-token", "a wrong token"), (http.token[:-1], "a prefix")):
        resp = http.get(token=token)
        assert resp.status_code == 401, what
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "chalkd_" not in resp.text and http.token not in resp.text
        assert "Authorization: Bearer <token>" in resp.text and "--metrics-open" in resp.text
    assert http.get(Authorization=f"Basic {http.token}", token=None).status_code == 401  # the scheme matters
    assert http.get().status_code == 200


def test_calls_are_counted_once_by_outcome(http):
    square = RemoteFunction(metric_square, name="metric_square", target=http.daemon.target)
    boom = RemoteFunction(metric_boom, name="metric_boom", target=http.daemon.target)
    count = RemoteFunction(metric_count, name="metric_count", target=http.daemon.target)
    before = http.scrape()
    assert FAMILIES <= set(before), FAMILIES - set(before)
    assert [square(i) for i in range(3)] == [0, 1, 4]
    with pytest.raises(Exception, match="handler failed"):
        boom("s3cr3t-argument")
    assert list(count(5)) == [0, 1, 2, 3, 4]
    after = http.scrape()
    again = http.scrape()

    def moved(family: str, sample: str | None = None, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert moved("chalkd_calls", "chalkd_calls_total", function="metric_square", outcome="succeeded") == 3
    assert moved("chalkd_calls", "chalkd_calls_total", function="metric_square", outcome="failed") == 0
    assert moved("chalkd_calls", "chalkd_calls_total", function="metric_boom", outcome="failed") == 1
    assert moved("chalkd_calls", "chalkd_calls_total", function="metric_boom", outcome="succeeded") == 0
    assert moved("chalkd_call_duration_seconds", "chalkd_call_duration_seconds_count", function="metric_square") == 3
    assert moved("chalkd_call_queue_wait_seconds", "chalkd_call_queue_wait_seconds_count",
                 function="metric_square") == 3  # one attempt each
    assert moved("chalkd_chunks_streamed", "chalkd_chunks_streamed_total", function="metric_count") == 5
    assert moved("chalkd_calls_submitted", "chalkd_calls_submitted_total") == 5
    assert value(after, "chalkd_replicas", function="metric_square", state="ready") >= 1
    assert value(after, "chalkd_calls_in_flight", function="metric_square") == 0
    assert value(after, "chalkd_queue_depth", function="metric_square") == 0
    # A scrape counts nothing itself: the same totals twice.
    assert again["chalkd_calls"] == after["chalkd_calls"]
    # Names only: never an argument or an error's text.
    text = http.get().text
    assert "s3cr3t" not in text and "handler failed" not in text
    assert "metrics: reading" not in http.daemon.log()  # no collector failed (each would be logged)


def test_retries_rate_limit_waits_and_cancellations(http, tmp_path):
    flaky = RemoteFunction(metric_flaky, name="metric_flaky", target=http.daemon.target,
                           retries=RetryPolicy.linear(attempts=2, delay=0.01, retry_on=(ConnectionError,)),
                           rate_limit=RateLimitPolicy(rate=2, per="hour"))
    fam = "chalkd_calls"

    def calls(m: dict, outcome: str) -> float:
        return value(m, fam, "chalkd_calls_total", function="metric_flaky", outcome=outcome)

    before = http.scrape()
    (tmp_path / "a").mkdir()
    assert flaky(str(tmp_path / "a")) == 2  # a failed attempt, then its retry: both tokens spent
    after = http.scrape()
    assert calls(after, "succeeded") - calls(before, "succeeded") == 1  # one call, counted once
    assert calls(after, "failed") == calls(before, "failed")
    assert value(after, "chalkd_call_retries", "chalkd_call_retries_total", function="metric_flaky") == 1
    assert value(after, "chalkd_call_queue_wait_seconds", "chalkd_call_queue_wait_seconds_count",
                 function="metric_flaky") == 2  # each attempt waited once
    (tmp_path / "b").mkdir()
    blocked = flaky.spawn(str(tmp_path / "b"))  # no token left this hour: it waits in the queue
    waits = wait_for(lambda: value(m := http.scrape(), "chalkd_rate_limit_waits",
                                   "chalkd_rate_limit_waits_total", function="metric_flaky") >= 1 and m,
                     what="a rate-limit wait counted")
    assert value(waits, "chalkd_queue_depth", function="metric_flaky") == 1
    blocked.cancel()
    wait_for(lambda: calls(http.scrape(), "cancelled") == 1, what="the cancelled call counted")


def test_dns_rebinding_host_is_refused(http):
    for host in (f"evil.example:{http.port}", "evil.example", f"127.0.0.1:{http.port + 1}", "127.0.0.1",
                 f"localhost.evil.example:{http.port}", ""):
        resp = http.get(Host=host)  # the token would be right: the Host alone refuses it
        assert resp.status_code == 421, host
        assert "chalkd_" not in resp.text
    for host in (f"localhost:{http.port}", f"127.0.0.1:{http.port}", f"LOCALHOST:{http.port}"):
        assert http.get(Host=host).status_code == 200, host


def test_cross_origin_requests_are_refused(http):
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{http.port + 1}"},  # another port: another origin
                    {"Origin": f"https://127.0.0.1:{http.port}"},     # another scheme too
                    {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):  # e.g. a scaling group's page on this host: user code
        resp = http.get(**headers)
        assert resp.status_code == 403, headers
        assert "chalkd_" not in resp.text
    # A POST from another site is refused before routing (not a 405 that says the path exists).
    resp = httpx.post(http.url, headers={"Origin": "http://evil.example", "Authorization": f"Bearer {http.token}"},
                      timeout=10)
    assert resp.status_code == 403
    for headers in ({"Origin": f"http://127.0.0.1:{http.port}"}, {"Origin": f"http://localhost:{http.port}"},
                    {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        assert http.get(**headers).status_code == 200, headers


def test_metrics_open_needs_no_token_but_keeps_the_other_guards(tmp_path):
    h = start(tmp_path, "--metrics-open")
    try:
        resp = h.get(token=None)
        assert resp.status_code == 200 and "chalkd_info" in resp.text
        assert h.get(token=None, Host=f"evil.example:{h.port}").status_code == 421
        assert h.get(token=None, Origin="http://evil.example").status_code == 403
        # Open means /metrics only: any other path still needs the token (and is not found with it).
        other = f"http://127.0.0.1:{h.port}/other"
        assert httpx.get(other, timeout=10).status_code == 401
        assert httpx.get(other, headers={"Authorization": f"Bearer {h.token}"}, timeout=10).status_code == 404
    finally:
        h.daemon.stop()


def chalkd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env)


def test_a_taken_http_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        grpc_port = free_port()
        out = chalkd("serve", "--runtime", "process", "--home", str(tmp_path / "home"), "--port", str(grpc_port),
                     "--http-port", str(port))
    assert out.returncode == 1
    assert f"--http-port {port}" in out.stderr and "in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    with socket.socket() as s:  # the failed start closed the gRPC port it had bound first
        s.bind(("127.0.0.1", grpc_port))
    bad = chalkd("serve", "--home", str(tmp_path / "home"), "--http-port", "70000")
    assert bad.returncode == 2 and "--http-port must be 0-65535" in bad.stderr


def test_port_zero_and_status_shows_the_url(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--http-port", "0")).start()
    try:
        out = chalkd("status", "--target", d.target, env={**os.environ, "CHALKD_HOME": str(d.home)})
        assert out.returncode == 0, out.stderr
        url = re.search(r"metrics: (http://127\.0\.0\.1:(\d+)/metrics)", out.stdout)
        assert url, out.stdout
        assert int(url.group(2)) not in (0, d.port)
        token = (d.home / "token").read_text().strip()
        resp = httpx.get(url.group(1), headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200 and "chalkd_info" in resp.text
    finally:
        d.stop()


def test_fake_gpu_metrics(tmp_path):
    inventory = tmp_path / "gpus.json"

    def write(util: float, used: int) -> None:
        inventory.write_text(json.dumps([
            {"name": "NVIDIA L4", "uuid": "GPU-fake-0", "memory_bytes": 24 * 2**30,
             "utilization_percent": util, "memory_used_bytes": used},
            {"name": "NVIDIA L4", "uuid": "GPU-fake-1", "memory_bytes": 24 * 2**30},  # says nothing of its use
        ]))

    write(42, 3 * 2**30)
    h = start(tmp_path, env={"CHALKD_FAKE_GPUS": str(inventory)})
    try:
        gpu0 = {"gpu": "0", "uuid": "GPU-fake-0", "name": "NVIDIA L4"}
        gpu1 = {"gpu": "1", "uuid": "GPU-fake-1", "name": "NVIDIA L4"}
        m = h.scrape()
        assert value(m, "chalkd_gpu_utilization_ratio", **gpu0) == pytest.approx(0.42)
        assert value(m, "chalkd_gpu_memory_used_bytes", **gpu0) == 3 * 2**30
        assert value(m, "chalkd_gpu_memory_total_bytes", **gpu0) == 24 * 2**30
        assert value(m, "chalkd_gpu_memory_total_bytes", **gpu1) == 24 * 2**30
        key1 = tuple(sorted({**gpu1, "__name__": "chalkd_gpu_utilization_ratio"}.items()))
        assert key1 not in m["chalkd_gpu_utilization_ratio"]  # unknown is absent, not a made-up 0
        assert value(m, "chalkd_gpu_allocated", **gpu0) == 0
        write(97.5, 20 * 2**30)  # read at each scrape: the values move
        m = h.scrape()
        assert value(m, "chalkd_gpu_utilization_ratio", **gpu0) == pytest.approx(0.975)
        assert value(m, "chalkd_gpu_memory_used_bytes", **gpu0) == 20 * 2**30
    finally:
        h.daemon.stop()


def test_volume_bytes(tmp_path):
    h = start(tmp_path)
    try:
        env = {**os.environ, "CHALKD_HOME": str(h.daemon.home)}
        for path, size in (("a.bin", 1000), ("dir/b.bin", 2345)):
            put = subprocess.run([sys.executable, "-m", "chalkd.cli", "volume", "put", "--target", h.daemon.target,
                                  "metrics-vol", path, "-"], input=b"x" * size, capture_output=True, timeout=60,
                                 cwd=ROOT, env=env)
            assert put.returncode == 0, put.stderr
        m = h.scrape()  # the first scrape measures (later ones reuse it for up to 15 s)
        assert value(m, "chalkd_volume_bytes", volume="metrics-vol") == 3345
        assert value(m, "chalkd_volume_files", volume="metrics-vol") == 2
    finally:
        h.daemon.stop()


def test_top_once_shows_a_function_row(http):
    square = RemoteFunction(metric_square, name="metric_square", target=http.daemon.target)
    assert square(7) == 49
    env = {**os.environ, "CHALKD_HOME": str(http.daemon.home), "COLUMNS": "200"}
    out = chalkd("top", "--target", http.daemon.target, "--once", "--interval", "0.2", env=env)
    assert out.returncode == 0, out.stderr
    row = next((line for line in out.stdout.splitlines() if "metric_square" in line), None)
    assert row is not None, out.stdout
    assert "ready" in row  # its replica
    assert "FUNCTION" in out.stdout and "CALLS/S" in out.stdout


def test_top_without_a_daemon_says_so():
    out = chalkd("top", "--target", f"127.0.0.1:{free_port()}", "--once")
    assert out.returncode == 1 and "no daemon answers" in out.stderr
