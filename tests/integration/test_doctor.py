"""`chalkd --version` and `chalkd doctor`, against a real daemon (and the engine when there is one)."""

from __future__ import annotations

import os
import subprocess
import sys

import chalkcompute
import chalkd
from chalkd.doctor import DISK_FAIL_BYTES, GiB, disk_check, version_check
from chalkd.testing import docker_problem
from tests.conftest import ROOT, free_port

FAKE_GPUS = '[{"name": "NVIDIA L4", "uuid": "GPU-fake-l4-0", "memory_bytes": 24000000000}]'


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=60)


def lines_by_check(stdout: str) -> dict[str, str]:
    """``{"engine": "ok    engine  Docker ...", ...}``: the report line of each check."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("ok", "warn", "fail"):
            out[parts[1]] = line
    return out


def test_version():
    out = cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"chalkd {chalkd.__version__} (chalkcompute {chalkcompute.__version__}, Python 3.")


def test_doctor_with_a_daemon_reports_every_check_and_exits_0(daemon):
    out = cli("doctor", "--target", daemon.target, env={"CHALKD_FAKE_GPUS": FAKE_GPUS})
    assert out.returncode == 0, out.stdout + out.stderr
    checks = lines_by_check(out.stdout)
    assert set(checks) == {"engine", "image", "gpus", "daemon", "disk"}, out.stdout
    assert checks["daemon"].startswith("ok ")
    assert f"chalkd {chalkd.__version__} at {daemon.target} (runtime process), the same version" in checks["daemon"]
    assert checks["gpus"].startswith("ok ") and "1 GPU(s): NVIDIA L4" in checks["gpus"]
    # No --home: the disk checked is the answering daemon's home.
    assert checks["disk"].startswith(("ok ", "warn ")) and f"free in {daemon.home}" in checks["disk"]
    problem = docker_problem()
    if problem is None:  # with an engine and the base image, both are reported as such
        assert checks["engine"].startswith("ok ") and "Docker " in checks["engine"], out.stdout
        assert checks["image"].startswith("ok ") and "present" in checks["image"], out.stdout
    else:  # the process runtime works without them: warnings with a hint, not failures
        assert not checks["engine"].startswith("fail") and not checks["image"].startswith("fail"), out.stdout


def test_doctor_without_an_engine_warns_and_says_how(daemon):
    out = cli("doctor", "--target", daemon.target, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert out.returncode == 0, out.stdout + out.stderr
    checks = lines_by_check(out.stdout)
    assert checks["engine"].startswith("warn ") and "no Docker engine" in checks["engine"]
    assert "hint: start the Docker engine" in out.stdout
    assert checks["image"].startswith("warn ") and "not checked" in checks["image"]


def test_doctor_without_a_daemon_warns(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    out = cli("doctor", "--target", target, "--home", str(tmp_path / "home"))
    assert out.returncode == 0, out.stdout + out.stderr
    checks = lines_by_check(out.stdout)
    assert checks["daemon"].startswith("warn ") and f"no daemon answers at {target}" in checks["daemon"]
    assert "(not made yet; on " in checks["disk"]


def test_doctor_with_a_wrong_token_fails(daemon):
    # A daemon that answers but refuses us (a stranger's token) is a failure: nothing would work.
    out = cli("doctor", "--target", daemon.target, env={"CHALK_COMPUTE_TOKEN": "not-the-token"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert lines_by_check(out.stdout)["daemon"].startswith("fail ")
    assert "hint: set CHALK_COMPUTE_TOKEN" in out.stdout
    assert "1 check(s) failed: daemon" in out.stderr


def test_doctor_with_a_malformed_fake_inventory_fails(daemon):
    out = cli("doctor", "--target", daemon.target, env={"CHALKD_FAKE_GPUS": "[not json"})
    assert out.returncode == 1
    assert lines_by_check(out.stdout)["gpus"].startswith("fail ")
    assert "CHALKD_FAKE_GPUS" in out.stdout


def test_doctor_rejects_a_malformed_target():
    out = cli("doctor", "--target", "no-port-here")
    assert out.returncode == 1
    assert "--target must be HOST:PORT, got 'no-port-here'" in out.stdout


def test_disk_check_levels(tmp_path):
    # Thresholds above the real free space of tmp_path: the same function, its two other verdicts.
    assert disk_check(tmp_path).level in ("ok", "warn")
    huge = 1 << 60
    warned = disk_check(tmp_path, warn_bytes=huge, fail_bytes=DISK_FAIL_BYTES)
    assert warned.level == "warn" and "below" in warned.message and "chalkd image prune" in warned.hint
    failed = disk_check(tmp_path, warn_bytes=huge, fail_bytes=huge)
    assert failed.level == "fail" and f"below {huge / GiB:g} GiB" in failed.message


def test_version_check_mismatch_is_a_warning():
    same = version_check("127.0.0.1:1", "0.1.0", "process", "0.1.0")
    assert same.level == "ok"
    other = version_check("127.0.0.1:1", "0.0.9", "docker", "0.1.0")
    assert other.level == "warn" and "chalkd 0.0.9" in other.message and "this SDK is 0.1.0" in other.message



def test_image_commands_without_an_engine_say_so(tmp_path):
    # `chalkd image ls|prune` (tests/docker/test_image_cli.py on the engine) name the engine they could not reach.
    for args in (("image", "ls"), ("image", "prune", "--dry-run")):
        out = cli(*args, env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
        assert out.returncode == 1
        assert f"no Docker engine answers at unix://{tmp_path}/no-engine.sock" in out.stderr
