"""/metrics on the Docker runtime: the sandbox, scaling-group and GPU collectors read a real daemon's
managers (the process runtime has no sandboxes or groups), the fake L4 of the docker daemon included."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chalkcompute import Image, ReadinessProbe, SandboxClient, ScalingGroup
from tests.conftest import ROOT

APP = ROOT / "tests" / "docker" / "apps" / "group_app.py"

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def scrape(daemon) -> dict[str, dict[tuple, float]]:
    """/metrics at the URL `chalkd status` prints (the session daemon's HTTP port is a free one)."""
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "status", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    url = re.search(r"metrics: (http://\S+/metrics)", out.stdout)
    assert url, out.stdout
    token = (daemon.home / "token").read_text().strip()
    resp = httpx.get(url.group(1), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    metrics: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            metrics.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return metrics


def test_sandboxes_and_gpus_on_docker(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    before = scrape(docker_daemon).get("chalkd_sandboxes", {}).get((("status", "ready"),), 0.0)
    sb = client.create(image=Image.debian_slim(PY), name="metrics-sandbox")
    try:
        m = scrape(docker_daemon)
        assert m["chalkd_sandboxes"][(("status", "ready"),)] == before + 1
        l4 = (("gpu", "0"), ("name", "NVIDIA L4"), ("uuid", "GPU-fake-l4-0"))
        assert m["chalkd_gpu_memory_total_bytes"][l4] == 24000000000
        assert m["chalkd_gpu_allocated"][l4] in (0.0, 1.0)
        assert (("runtime", "docker"),) == tuple(k for k in next(iter(m["chalkd_info"])) if k[0] == "runtime")
    finally:
        sb.terminate(grace_period_seconds=1)
    m = scrape(docker_daemon)
    assert m["chalkd_sandboxes"].get((("status", "ready"),), 0.0) == before
    assert "metrics: reading" not in docker_daemon.log()  # no collector failed (each would be logged)


def test_scaling_group_metrics(docker_daemon):
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python", "/app/app.py"])
    sg = ScalingGroup(image=img, name="metrics-group", readiness_probe=ReadinessProbe.http("/health"))
    sg.deploy().wait_ready()
    try:
        assert sg.call("/health", method="GET").status_code == 200
        m = scrape(docker_daemon)
        assert m["chalkd_group_replicas_ready"][(("group", "metrics-group"),)] >= 1
        assert m["chalkd_group_requests_in_flight"][(("group", "metrics-group"),)] == 0  # none now
    finally:
        sg.delete()
    assert (("group", "metrics-group"),) not in scrape(docker_daemon).get("chalkd_group_replicas_ready", {})
    assert "metrics: reading" not in docker_daemon.log()  # no collector failed (each would be logged)
