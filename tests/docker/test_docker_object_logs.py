"""`chalkd logs` of a sandbox and of a container: the entrypoint's output and a line per exec (command,
exit code, duration), never the exec's output (issue 17)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chalkcompute import Image, SandboxClient
from tests.conftest import ROOT

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def chalkd(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_a_sandbox_s_logs_hold_each_exec_s_record_not_its_output(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    sb = client.create(image=Image.debian_slim(PY), name="logs-records")
    try:
        assert sb.exec("sh", "-c", "echo secret-output-never-logged; exit 3").exit_code == 3
        out = chalkd(docker_daemon, "logs", sb.id)
        assert out.returncode == 0, out.stderr
        assert "exec ['sh', '-c', 'echo secret-output-never-logged; exit 3']" in out.stdout
        assert "exit code 3 after " in out.stdout
        # The command shows (its start and its end), what it printed does not.
        assert [line for line in out.stdout.splitlines() if line.endswith(" secret-output-never-logged")] == []
        assert out.stdout.count("secret-output-never-logged") == 2
        assert chalkd(docker_daemon, "logs", sb.id, "--tail", "1").stdout.count("\n") == 1
        follow = chalkd(docker_daemon, "logs", sb.id, "-f")
        assert follow.returncode == 1 and "not supported yet" in follow.stderr
    finally:
        sb.terminate(grace_period_seconds=1)
    missing = chalkd(docker_daemon, "logs", "ct-000000000000")
    assert missing.returncode == 1 and "no container 'ct-000000000000'" in missing.stderr


def test_a_container_s_logs_hold_each_exec_s_record(docker_daemon, tmp_path):
    from chalkcompute import Container

    c = Container(image=Image.debian_slim(PY), name="logs-container", target=docker_daemon.target).run()
    try:
        assert c.exec("sh", "-c", "echo printed-not-logged; exit 4").exit_code == 4
        out = chalkd(docker_daemon, "logs", c.id)
        assert out.returncode == 0, out.stderr
        (line,) = [x for x in out.stdout.splitlines() if "exec [" in x]
        assert "exec ['sh', '-c', 'echo printed-not-logged; exit 4']: exit code 4 after " in line
        assert [x for x in out.stdout.splitlines() if x.endswith(" printed-not-logged")] == []
    finally:
        c.stop()
