"""Sandboxes under gVisor: ``chalkd serve --runtime docker --sandbox-runtime runsc`` (a real engine and runsc).

The engine must have ``runsc`` registered with ``--host-uds=create`` (the agent's socket is made inside the
sandbox and reached from the host) and, on kernels where every network namespace shows
``/proc/sys/net/core/rmem_default`` (Linux >= 6.x with Debian's 2022 runsc), ``--network=host`` (see
README, "gVisor"). ``.ci/run`` registers it; elsewhere these tests are skipped when the engine lacks runsc,
unless ``CHALK_REQUIRE_DOCKER=1``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chalkcompute import Image, SandboxClient
from tests.docker.conftest import REQUIRED, remove_home_containers

pytestmark = [pytest.mark.usefixtures("docker_engine"), pytest.mark.timeout(300)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _engine_runtimes() -> list[str]:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                         timeout=20)
    return sorted(json.loads(out.stdout or "{}") or {}) if out.returncode == 0 else []


@pytest.fixture(scope="module")
def gvisor_daemon(docker_engine, tmp_path_factory):
    """A chalkd whose sandboxes run under runsc (its own daemon: the shared one uses runc)."""
    from tests.conftest import Daemon

    runtimes = _engine_runtimes()
    if "runsc" not in runtimes:
        problem = (f"the Docker engine has no runsc runtime (it has {', '.join(runtimes) or 'none'}): "
                   "install runsc and register it in /etc/docker/daemon.json (README, gVisor)")
        if REQUIRED:
            pytest.fail(f"CHALK_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    d = Daemon(tmp_path_factory.mktemp("chalkd-gvisor"),
               extra_args=("--runtime", "docker", "--sandbox-runtime", "runsc")).start(timeout=60)
    yield d
    d.stop()
    remove_home_containers(d.home)


def test_a_sandbox_runs_under_gvisor(gvisor_daemon):
    client = SandboxClient(target=gvisor_daemon.target)
    sandbox = client.create(image=Image.debian_slim(PY), name="under-gvisor")
    try:
        assert sandbox.info.status == "ready"
        assert sandbox.info.isolation["runtime"] == "runsc"
        assert "--host-uds=create" in sandbox.info.isolation["runtime_args"]  # what the engine passes it
        engine = subprocess.run(["docker", "ps", "--filter", f"label=dev.chalkd.sandbox={sandbox.id}",
                                 "--format", "{{.ID}}"], capture_output=True, text=True, check=True).stdout.split()
        assert len(engine) == 1
        runtime = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.Runtime}}", engine[0]],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert runtime == "runsc"
        # gVisor's own kernel answers, not the host's.
        assert "Starting gVisor" in sandbox.exec("dmesg").stdout_text
        host_version = Path("/proc/version").read_text()
        assert sandbox.exec("cat", "/proc/version").stdout_text != host_version

        echo = sandbox.exec("echo", "hi")
        assert (echo.stdout_text, echo.exit_code) == ("hi\n", 0)
        assert sandbox.exec("sh", "-c", "echo oops >&2; exit 3").exit_code == 3
        cat = sandbox.exec_start("cat")
        cat.write_stdin("hello ")
        cat.write_stdin(b"gvisor\n")
        cat.close_stdin()
        assert cat.wait().stdout_text == "hello gvisor\n"
        sleeper = sandbox.exec_start("sleep", "1000")
        sleeper.send_signal(signal.SIGINT)
        assert sleeper.wait().signal == signal.SIGINT

        data = bytes(range(256)) * 4096  # 1 MiB
        assert sandbox.fs.write_bytes("/tmp/gv/data.bin", data) == len(data)
        assert sandbox.fs.read_bytes("/tmp/gv/data.bin") == data
        assert [e.name for e in sandbox.fs.listdir("/tmp/gv")] == ["data.bin"]
        assert sandbox.exec("wc", "-c", "/tmp/gv/data.bin").stdout_text.split()[0] == str(len(data))

        # runsc --network=host uses the sandbox's own network namespace (Docker's bridge for sandboxes):
        # the daemon's port stays out of reach through the bridge's gateway.
        probe = ("import socket, struct\n"
                 "gw = [l.split() for l in open('/proc/net/route') if l.split()[1] == '00000000'][0][2]\n"
                 "ip = socket.inet_ntoa(struct.pack('<L', int(gw, 16)))\n"
                 "s = socket.socket(); s.settimeout(2)\n"
                 f"print(s.connect_ex((ip, {gvisor_daemon.port})) != 0)\n")
        assert sandbox.exec("python3", "-c", probe).stdout_text == "True\n"
    finally:
        sandbox.terminate(0)


def test_an_offline_sandbox_under_gvisor_has_only_loopback(gvisor_daemon):
    sandbox = SandboxClient(target=gvisor_daemon.target).create(image=Image.debian_slim(PY), network=False)
    try:
        assert sandbox.info.isolation["network"] == "none"
        links = sandbox.exec("cat", "/proc/net/dev").stdout_text
        assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]
    finally:
        sandbox.terminate(0)


def test_an_unregistered_sandbox_runtime_stops_the_daemon_naming_it(docker_engine, tmp_path):
    from tests.conftest import Daemon

    d = Daemon(tmp_path / "home", extra_args=("--runtime", "docker", "--sandbox-runtime", "nosuch"))
    with pytest.raises(RuntimeError, match=r"chalkd exited with [1-9]") as info:
        d.start(timeout=60)
    message = str(info.value)
    assert "--sandbox-runtime nosuch: the Docker engine has no runtime named 'nosuch'" in message
    registered = _engine_runtimes()
    assert "runc" in registered
    assert f"(it has {', '.join(registered)})" in message
