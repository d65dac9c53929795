"""Sandboxes on the Docker runtime, as the reference shows them (a real engine, a real daemon)."""

from __future__ import annotations

import gc
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from chalkcompute import (
    ExecError,
    Image,
    Sandbox,
    SandboxBuildError,
    SandboxClient,
    SandboxCreationError,
    SandboxNotFoundError,
    SandboxTerminatedError,
)

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def sandbox(docker_daemon):
    """One ready sandbox shared by the exec tests of this module (debian_slim of this Python)."""
    client = SandboxClient(target=docker_daemon.target)
    sb = client.create(image=Image.debian_slim(PY), name="shared-exec")
    yield sb
    sb.terminate(grace_period_seconds=1)


def test_quickstart(tmp_path, docker_daemon):
    script = tmp_path / "analyze.py"
    script.write_text("import argparse, csv, requests\n"
                      "p = argparse.ArgumentParser(); p.add_argument('--input')\n"
                      "rows = list(csv.DictReader(open(p.parse_args().input)))\n"
                      "print(f'{len(rows)} rows, requests {requests.__version__}')\n")
    client = SandboxClient(target=docker_daemon.target)
    img = Image.debian_slim(PY).pip_install(["requests"]).add_local_file(str(script), "/app/analyze.py").workdir("/app")
    sandbox = client.create(image=img, name="analysis-scratchpad", cpu="1", memory="1Gi")
    try:
        assert sandbox.info.status == "ready"
        assert sandbox.info.name == "analysis-scratchpad"
        assert (sandbox.info.cpu, sandbox.info.memory) == ("1", str(1 << 30))
        assert sandbox.fs.write_bytes("/data/in.csv", b"a,b\n1,2\n3,4\n") == 12
        result = sandbox.exec("python", "/app/analyze.py", "--input", "/data/in.csv")
        assert result.exit_code == 0, result.stderr_text
        assert re.fullmatch(r"2 rows, requests \d+\.\d+\.\d+\n", result.stdout_text)
        assert sandbox.exec("pwd").stdout_text == "/app\n"  # the image's workdir
        assert [s.id for s in client.list() if s.name == "analysis-scratchpad"] == [sandbox.id]
        assert client.get(sandbox.id).refresh().status == "ready"
    finally:
        sandbox.terminate()
    assert sandbox.info.status == "terminated"
    sandbox.terminate()  # harmless twice
    with pytest.raises(SandboxTerminatedError):
        sandbox.exec("true")


def test_numpy_example(docker_daemon):
    sandbox = SandboxClient(target=docker_daemon.target).create(
        image=Image.debian_slim(PY).pip_install(["numpy"]))
    try:
        result = sandbox.exec("python", "-c", "import numpy; print(numpy.__version__)")
        assert re.fullmatch(r"\d+\.\d+\.\d+", result.stdout_text.strip()), result
    finally:
        sandbox.terminate()


def test_a_python_the_machine_cannot_bootstrap_fails_clearly(docker_daemon):
    missing = next(v for v in ("3.12", "3.10", "3.13") if v != PY)
    with pytest.raises(SandboxBuildError, match=r"python:" + re.escape(missing)) as info:
        SandboxClient(target=docker_daemon.target).create(image=Image.debian_slim(missing))
    if missing == "3.12":  # Debian has no 3.12: the message names the versions bootstrap can make
        assert "3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)" in str(info.value)


def test_bad_run_commands_step_names_it(docker_daemon):
    img = Image.debian_slim(PY).run_commands("echo starting", "exit 3")
    with pytest.raises(SandboxBuildError, match="exit 3") as info:
        SandboxClient(target=docker_daemon.target).create(image=img)
    assert "exit 3" in info.value.step


def test_wait_false_then_exec_waits_for_the_build_or_raises_its_failure(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    pending = client.create(image=Image.debian_slim(PY).run_commands("echo wait-false > /marker"), wait=False)
    try:
        assert pending.exec("cat", "/marker").stdout_text == "wait-false\n"  # waited until it was ready
    finally:
        pending.terminate(0)
    broken = client.create(image=Image.debian_slim(PY).run_commands("exit 7"), wait=False)
    with pytest.raises(SandboxBuildError, match="exit 7"):
        broken.exec("true")
    assert broken.refresh().status == "error"
    assert "exit 7" in broken.info.status_details.get("failed_step", "")


def test_a_sandbox_that_does_not_fit_waits_then_fails_saying_why(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    with pytest.raises(SandboxCreationError, match="waiting for|bytes of memory"):
        client.create(image=Image.debian_slim(PY), memory="100000Gi", timeout=3)
    assert not [s for s in client.list() if s.status == "building"]  # the SDK terminated what it made


def test_exec_results(sandbox):
    missing_script = sandbox.exec("python3", "/no/such/script.py")
    assert missing_script.exit_code == 2
    assert "No such file or directory" in missing_script.stderr_text
    missing_binary = sandbox.exec("no-such-program", "x")
    assert missing_binary.exit_code == 127
    assert "no-such-program" in (missing_binary.error or "")
    both = sandbox.exec("sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2")
    assert (both.stdout_text, both.stderr_text) == ("out1\nout2\n", "err1\nerr2\n")
    assert list(both.stdout) == ["out1\n", "out2\n"]
    env = sandbox.exec("sh", "-c", "echo $GREETING; pwd", env={"GREETING": "hi"}, workdir="/tmp")
    assert env.stdout_text == "hi\n/tmp\n"
    slow = sandbox.exec("sleep", "60", timeout_secs=0.5)
    assert slow.signal == signal.SIGKILL and slow.exit_code is None
    assert "timed out after" in (slow.error or "")


def test_stdin_and_signals(sandbox):
    cat = sandbox.exec_start("cat")
    assert cat.pid and cat.session_id
    cat.write_stdin("hello ")
    cat.write_stdin(b"world\n")
    cat.close_stdin()
    result = cat.wait()
    assert (result.exit_code, result.stdout_text) == (0, "hello world\n")

    sleeper = sandbox.exec_start("sleep", "1000")
    sleeper.send_signal(signal.SIGINT)
    assert sleeper.wait().signal == signal.SIGINT


def test_exec_and_files_over_grpc(sandbox, docker_daemon):
    """``metadata`` rides only on gRPC: the same exec and files over HTTP/2 instead of the local lane."""
    over_grpc = SandboxClient(target=docker_daemon.target, metadata=[("x-chalk-test", "grpc")]).get(sandbox.id)
    cat = over_grpc.exec_start("sh", "-c", "cat; echo done >&2")
    cat.write_stdin(b"x" * (3 << 20))  # beyond the first stdin credit: waits for more as the agent writes
    cat.close_stdin()
    result = cat.wait()
    assert (len(result.stdout_text), result.stderr_text, result.exit_code) == (3 << 20, "done\n", 0)
    over_grpc.fs.write_bytes("/tmp/grpc.bin", b"g" * (2 << 20) + b"end")
    assert over_grpc.fs.read_bytes("/tmp/grpc.bin")[-3:] == b"end"
    assert [e.name for e in over_grpc.fs.listdir("/tmp") if e.name == "grpc.bin"] == ["grpc.bin"]


def test_exec_stream_delivers_the_first_line_before_the_command_ends(sandbox):
    events = sandbox.exec_stream(
        "sh", "-c", "echo first; while [ ! -e /tmp/go-stream ]; do sleep 0.05; done; echo second >&2")
    seen = []
    for event in events:
        if event.stdout == "first\n":
            # The command is still waiting for this file: the line came while it ran.
            sandbox.fs.write_bytes("/tmp/go-stream", b"")
        seen.append(event)
    assert [e.stdout for e in seen if e.stdout] == ["first\n"]
    # Leaving a loop early detaches (no stream left open); the command runs on and can be reattached.
    for event in sandbox.exec_stream("sh", "-c", "echo go; sleep 0.5; echo gone"):
        if event.stdout:
            break
    gc.collect()
    assert [e.stderr for e in seen if e.stderr] == ["second\n"]
    assert seen[0].pid is not None and seen[-1].exit_code == 0


def test_a_dropped_caller_reattaches_without_losing_output(sandbox):
    proc = sandbox.exec_start("sh", "-c", "seq 1 200000")
    got: list[str] = []
    last = 0
    for event in proc:
        if event.stdout:
            got.append(event.stdout)
            last = event.seq
            if len(got) == 3:
                break
    proc.close()  # detached: the command goes on in the sandbox, its output held by the agent
    again = sandbox.exec_attach(proc.session_id, after=last)
    rest = again.wait()
    # A second handle taking a session over ends the first one's stream, which does not take it back.
    sleeper = sandbox.exec_start("sleep", "30")
    taker = sandbox.exec_attach(sleeper.session_id)
    with pytest.raises(ExecError, match="taken over"):
        sleeper.wait()
    taker.send_signal(signal.SIGKILL)
    assert taker.wait().signal == signal.SIGKILL
    assert rest.exit_code == 0
    text = "".join(got) + rest.stdout_text
    assert text == "".join(f"{i}\n" for i in range(1, 200001))


def test_files_round_trip(sandbox, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    assert sandbox.fs.upload_file(src, "/tmp/files/nested/big.bin") == 100 << 20
    out = tmp_path / "back.bin"
    assert sandbox.fs.download_file("/tmp/files/nested/big.bin", out) == 100 << 20
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    inside = sandbox.exec("sha256sum", "/tmp/files/nested/big.bin").stdout_text.split()[0]
    assert inside == digest
    sandbox.fs.write_bytes("/tmp/files/a.txt", b"alpha")
    assert sandbox.fs.read_bytes("/tmp/files/a.txt") == b"alpha"
    names = {(e.name, e.type) for e in sandbox.fs.listdir("/tmp/files")}
    assert names == {("a.txt", "file"), ("nested", "dir")}
    with pytest.raises(FileNotFoundError, match="/tmp/files/missing"):
        sandbox.fs.read_bytes("/tmp/files/missing")
    with pytest.raises(IsADirectoryError):
        sandbox.fs.read_bytes("/tmp/files")


def test_an_image_without_python(docker_daemon):
    no_python = Image.debian_slim(PY).run_commands(
        "rm -f /usr/bin/python3* /usr/local/bin/python3* && rm -rf /usr/lib/python3*")
    sandbox = SandboxClient(target=docker_daemon.target).create(image=no_python)
    try:
        probe = sandbox.exec("sh", "-c", "command -v python3 || echo none; echo ${PYTHONHOME:-unset}")
        assert probe.stdout_text == "none\nunset\n"
        assert sandbox.exec("python3", "-V").exit_code == 127
        cat = sandbox.exec_start("cat")
        cat.write_stdin("no python needed\n")
        cat.close_stdin()
        assert cat.wait().stdout_text == "no python needed\n"
        sandbox.fs.write_bytes("/tmp/x", b"y")
        assert sandbox.exec("cat", "/tmp/x").stdout_text == "y"
    finally:
        sandbox.terminate()


def test_isolation(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    sandbox = client.create(image=Image.debian_slim(PY))
    offline = client.create(image=Image.debian_slim(PY), network=False)
    try:
        iso = sandbox.info.isolation
        assert iso["privileged"] == "false" and iso["no_new_privileges"] == "true"
        assert "bridge" in iso["network"] and iso["pids_limit"] == "1024"
        assert offline.info.isolation["network"] == "none"
        # No daemon socket, token or run directory inside: only its own agent directory is mounted.
        mounts = sandbox.exec("cat", "/proc/self/mounts").stdout_text
        assert str(docker_daemon.home) not in mounts.replace("/run/chalk-agent", "")
        assert sandbox.exec("sh", "-c", "ls /run/chalk-agent").stdout_text.split() == ["agent.sock"]
        # The daemon's port is not reachable from the sandbox's network, nor anything on the host's loopback.
        probe = ("import socket, struct\n"
                 "gw = [l.split() for l in open('/proc/net/route') if l.split()[1] == '00000000'][0][2]\n"
                 "ip = socket.inet_ntoa(struct.pack('<L', int(gw, 16)))\n"
                 "s = socket.socket(); s.settimeout(2)\n"
                 f"print(s.connect_ex((ip, {docker_daemon.port})) != 0)\n")
        assert sandbox.exec("python3", "-c", probe).stdout_text == "True\n"
        # Nor is a container on the engine's default bridge, where replicas and Container API containers run,
        # though another container there reaches it (so the probe itself works).
        listener = subprocess.run(["docker", "run", "-d", "--rm", "--label", "dev.chalkd.test=listener",
                                   f"python:{PY}-slim", "python3", "-m", "http.server", "8000"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        try:
            ip = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", listener],
                                capture_output=True, text=True, check=True).stdout.strip()
            connect = ("import socket, time\n"
                       "for _ in range(50):\n"
                       "    s = socket.socket(); s.settimeout(1)\n"
                       f"    ok = s.connect_ex(('{ip}', 8000)) == 0; s.close()\n"
                       "    if ok: break\n"
                       "    time.sleep(0.1)\n"
                       "print(ok)\n")
            peer = subprocess.run(["docker", "run", "--rm", f"python:{PY}-slim", "python3", "-c", connect],
                                  capture_output=True, text=True, check=True).stdout
            assert peer == "True\n"
            assert sandbox.exec("python3", "-c", connect.replace("range(50)", "range(3)")).stdout_text == "False\n"
        finally:
            subprocess.run(["docker", "rm", "-f", listener], capture_output=True)
        links = offline.exec("cat", "/proc/net/dev").stdout_text
        assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]
        # Capabilities: no CAP_SYS_ADMIN, so no mounts.
        assert sandbox.exec("sh", "-c", "mount -t tmpfs none /mnt").exit_code != 0
    finally:
        sandbox.terminate(0)
        offline.terminate(0)


def test_slow_reader_keeps_the_daemon_memory_bounded(sandbox, docker_daemon):
    psutil = pytest.importorskip("psutil")
    daemon = psutil.Process(docker_daemon.proc.pid)
    baseline = daemon.memory_info().rss
    peak = baseline
    total = 0
    proc = sandbox.exec_start("head", "-c", str(256 << 20), "/dev/zero")
    for n, event in enumerate(proc):
        if event.stdout:
            total += len(event.stdout)
            if n % 16 == 0:
                time.sleep(0.01)  # a slow reader: the agent's window fills and the process waits
                peak = max(peak, daemon.memory_info().rss)
    assert proc.wait().exit_code == 0 and total == 256 << 20
    assert peak - baseline < 30 << 20, f"the daemon grew by {(peak - baseline) >> 20} MiB"


def test_lifetime_ends_a_sandbox(docker_daemon):
    sandbox = SandboxClient(target=docker_daemon.target).create(image=Image.debian_slim(PY), lifetime="5s")
    assert sandbox.info.expires_at is not None
    deadline = time.monotonic() + 60
    while sandbox.refresh().status == "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandbox.info.status == "terminated"
    assert "lifetime" in sandbox.info.status_message
    with pytest.raises(SandboxTerminatedError):
        sandbox.exec("true")


def test_code_in_a_sandbox_cannot_point_the_daemon_at_another_socket(docker_daemon):
    """The agent directory is writable from inside: a symlink planted in the socket's place is refused,
    never followed (it could name the daemon's own socket on the host)."""
    sandbox = SandboxClient(target=docker_daemon.target).create(image=Image.debian_slim(PY))
    try:
        planted = sandbox.exec("sh", "-c", "rm /run/chalk-agent/agent.sock && "
                               "ln -s /var/run/docker.sock /run/chalk-agent/agent.sock && echo planted")
        assert planted.stdout_text == "planted\n"
        with pytest.raises(Exception, match="symbolic link|not a socket|refused") as info:
            sandbox.exec("true")
        assert not isinstance(info.value, AssertionError)
    finally:
        sandbox.terminate(0)


def test_secrets_reach_the_commands_not_the_container_config(docker_daemon, monkeypatch):
    from chalkcompute import Secret

    monkeypatch.setenv("LOCAL_SB_SECRET", "sb-secret-7731")
    sandbox = SandboxClient(target=docker_daemon.target).create(
        image=Image.debian_slim(PY), env={"PLAIN": "p"},
        secrets=[Secret.from_local_env("LOCAL_SB_SECRET", env_var_name="INSIDE")])
    try:
        assert sandbox.exec("sh", "-c", "echo $INSIDE $PLAIN").stdout_text == "sb-secret-7731 p\n"
        config = subprocess.run(["docker", "inspect", f"chalkd-sandbox-{sandbox.id[3:]}"], capture_output=True,
                                text=True, check=True).stdout
        assert "sb-secret-7731" not in config and "PLAIN=p" in config
    finally:
        sandbox.terminate(0)


def test_volumes_mount_by_tuple_or_volume_mount(docker_daemon):
    from chalkcompute import VolumeClient, VolumeMount

    vol = VolumeClient(docker_daemon.target).create("sb-vol")
    vol.put("in.txt", b"from the volume")
    sandbox = SandboxClient(target=docker_daemon.target).create(
        image=Image.debian_slim(PY), volumes=[VolumeMount(volume="sb-vol", path="/vol"), (vol, "/again")])
    try:
        assert sandbox.exec("cat", "/vol/in.txt").stdout_text == "from the volume"
        assert sandbox.exec("sh", "-c", "echo written > /again/out.txt").exit_code == 0
        assert vol.get("out.txt") == b"written\n"
    finally:
        sandbox.terminate(0)


def test_gpus_are_reserved_and_requested_from_the_engine(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    # The daemon's fake inventory has one NVIDIA L4 and the engine no NVIDIA runtime: the engine's
    # refusal shows the device request was made; an A100 can never be placed, which is said at once.
    with pytest.raises(SandboxCreationError, match=r'could not select device driver "nvidia"'):
        client.create(image=Image.debian_slim(PY), gpu="nvidia-l4")
    with pytest.raises(SandboxCreationError, match="no host has 1 x nvidia-a100"):
        client.create(image=Image.debian_slim(PY), gpu="nvidia-a100")
    # Both released their reservations: nothing waits on the L4.
    with pytest.raises(SandboxCreationError, match=r'could not select device driver "nvidia"'):
        client.create(image=Image.debian_slim(PY), gpu="nvidia-l4", timeout=30)


def test_not_found_and_bad_input(docker_daemon):
    client = SandboxClient(target=docker_daemon.target)
    with pytest.raises(SandboxNotFoundError):
        client.get("sb-nosuch").refresh()
    with pytest.raises(ValueError, match="lifetime"):
        client.create(lifetime="soon")
    with pytest.raises(TypeError, match="part of the command"):
        client.get("sb-nosuch").exec("echo", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"1000000 characters\): longer than 128"):
        client.create(name="a" * 1_000_000)
    with pytest.raises(SandboxNotFoundError, match="no sandbox named"):
        Sandbox.from_name("nobody-has-this-name", client=client)


def test_an_oversized_command_is_refused_naming_the_limit(sandbox):
    from chalkcompute import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"over the limit of 1048576 bytes"):
        sandbox.exec("echo", "x" * (2 << 20))
    assert sandbox.exec("echo", "still fine").stdout_text == "still fine\n"


def test_cli_exec_passes_stdin_output_and_exit_code(sandbox, docker_daemon):
    chalkd = os.path.join(os.path.dirname(sys.executable), "chalkd")
    out = subprocess.run([chalkd, "sandbox", "exec", "--target", docker_daemon.target, sandbox.id, "--",
                          "sh", "-c", "cat; echo err >&2; exit 3"],
                         input=b"piped\n", capture_output=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (3, b"piped\n", b"err\n")
    listed = subprocess.run([chalkd, "sandbox", "ls", "--target", docker_daemon.target], capture_output=True,
                            text=True, timeout=60)
    assert sandbox.id in listed.stdout



def test_the_daemon_checks_what_a_raw_client_sends(docker_daemon):
    """Not only the SDK: a Create with a huge name or env is refused by the daemon, naming the limit."""
    from chalkcompute._bridge import run_sync
    from chalkcompute._client import Client
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import SandboxesStub

    async def create(spec):
        try:
            await SandboxesStub(Client.get(docker_daemon.target).channel).Create(pb.CreateSandboxRequest(spec=spec))
        except Exception as exc:
            return f"{getattr(exc, 'status', '')} {getattr(exc, 'message', exc)}"
        return "created"

    image = Image.debian_slim(PY).to_proto()
    assert "longer than 128 characters" in run_sync(create(pb.SandboxSpec(name="n" * 5000, image=image)))
    assert "control character" in run_sync(create(pb.SandboxSpec(name="a\nb", image=image)))
    big_env = run_sync(create(pb.SandboxSpec(image=image, env={"A": "x" * (2 << 20)})))
    assert "INVALID_ARGUMENT" in big_env and "1048576 bytes" in big_env
