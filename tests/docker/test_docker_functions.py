"""Functions on the Docker runtime: each replica a container built from its Image."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from chalkcompute import FunctionBuildError, FunctionError, Image, RemoteFunction
from chalkcompute._build import prepare_image
from chalkcompute._client import Client, run_sync
from tests.conftest import Daemon, wait_for
from tests.docker.conftest import containers_of

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

# One image for most tests, so the session builds it once.
IMAGE = Image.debian_slim().pip_install(["six"]).run_commands("echo built > /marker").env({"GREETING": "hi there"})


def inside() -> dict:
    import os

    import six

    with open("/marker") as f:
        marker = f.read().strip()
    with open("/proc/1/cgroup") as f:
        cgroup = f.read()
    return {"six": six.__version__, "marker": marker, "greeting": os.environ["GREETING"],
            "hostname": os.uname().nodename, "in_container": os.path.exists("/.dockerenv"), "cgroup": cgroup}


def test_function_runs_in_a_container_with_its_image():
    fn = RemoteFunction(inside, name="dk_inside", image=IMAGE)
    out = fn()
    assert out["six"]
    assert out["marker"] == "built"             # run_commands took effect
    assert out["greeting"] == "hi there"        # env took effect
    assert out["in_container"] is True


def count(n: int):
    for i in range(n):
        yield {"i": i, "square": i * i}


def test_streaming_from_a_container():
    gen = RemoteFunction(count, name="dk_count", image=IMAGE)
    assert [c["square"] for c in gen(5)] == [0, 1, 4, 9, 16]


def double(x: int) -> int:
    return 2 * x


dk_double = RemoteFunction(double, name="dk_double", image=IMAGE)


def double_then_add(x: int) -> int:
    return dk_double(x) + 1


def test_nested_calls_from_a_container():
    outer = RemoteFunction(double_then_add, name="dk_nested", image=IMAGE)
    assert outer(20) == 41


def test_same_image_is_not_rebuilt():
    client = Client.get()
    first = run_sync(prepare_image(client, IMAGE, what="test"))
    again = run_sync(prepare_image(client, IMAGE, what="test"))
    assert again.cached is True
    assert again.image_ref == first.image_ref


def whoami() -> str:
    import os

    return os.environ["CHALK_REPLICA_ID"]


def test_limits_pids_and_unprivileged_are_on_the_container(on_docker):
    fn = RemoteFunction(whoami, name="dk_limits", image=IMAGE, cpu="500m", memory="256Mi")
    replica = fn()
    [c] = containers_of(on_docker.home, replica=replica)
    hc = c["HostConfig"]
    assert hc["NanoCpus"] == 500_000_000
    assert hc["Memory"] == 256 * 2**20
    assert hc["MemorySwap"] == 256 * 2**20
    assert hc["PidsLimit"] == 4096
    assert hc["Privileged"] is False
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert c["Config"]["Labels"]["dev.chalkd.kind"] == "replica"


def list_tree() -> list[str]:
    import os

    out = []
    for root in ("/srv/volume", "/srv/copied"):
        for dirpath, _, names in os.walk(root):
            out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


def test_add_local_dir_honours_ignore_files(tmp_path):
    src = tmp_path / "proj"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    (src / ".gitignore").write_text("*.log\nbuild/\n")
    (src / "sub" / ".chalkignore").write_text("secret.txt\n!keep.log\n")
    (src / "a.py").write_text("a")
    (src / "x.log").write_text("ignored")
    (src / "build").mkdir()
    (src / "build" / "out.bin").write_text("ignored")
    (src / "sub" / "secret.txt").write_text("ignored")
    (src / "sub" / "keep.log").write_text("re-included")
    (src / "sub" / "deep" / "b.py").write_text("b")
    image = (IMAGE.add_local_dir(src, "/srv/volume")
             .add_local_dir(src, "/srv/copied", strategy="copy", exclude=["sub/deep/**"]))
    fn = RemoteFunction(list_tree, name="dk_ignore", image=image)
    assert fn() == [
        "/srv/copied/.gitignore", "/srv/copied/a.py", "/srv/copied/sub/.chalkignore", "/srv/copied/sub/keep.log",
        "/srv/volume/.gitignore", "/srv/volume/a.py", "/srv/volume/sub/.chalkignore",
        "/srv/volume/sub/deep/b.py", "/srv/volume/sub/keep.log",
    ]


def test_failing_build_raises_function_build_error_with_its_step(capfd):
    bad = IMAGE.run_commands("echo about to fail && exit 3")
    fn = RemoteFunction(whoami, name="dk_bad_build", image=bad)
    with pytest.raises(FunctionBuildError) as info:
        fn.deploy()
    message = str(info.value)
    assert "exit 3" in message
    assert "about to fail" in message  # the log tail
    assert "about to fail" in capfd.readouterr().err  # the log streamed to the terminal as it came


def test_build_timeout_bounds_the_image_build():
    # A step that outlasts the budget: deploy gives up at build_timeout, naming it. The daemon's
    # build goes on (other callers may share it) and a finished one is cached by the engine, so
    # each run uses a step of its own: on a reused machine the image must not be there yet.
    slow = IMAGE.run_commands(f"echo build-timeout-probe-{uuid.uuid4().hex} && sleep 120")
    fn = RemoteFunction(whoami, name="dk_slow_build", image=slow)
    with pytest.raises(FunctionBuildError, match=r"build_timeout=3s"):
        fn.deploy(build_timeout=3)
    with pytest.raises(ValueError, match="build_timeout must be a positive number"):
        fn.deploy(build_timeout=0)


def test_unschedulable_gpu_request_says_why():
    fn = RemoteFunction(whoami, name="dk_gpu", image=IMAGE, gpu="2:nvidia-a100")
    with pytest.raises(FunctionError, match=r"no host has 2 x nvidia-a100; hosts have: 1 x NVIDIA L4"):
        fn.deploy()


def test_a_dead_replica_container_is_replaced(on_docker):
    fn = RemoteFunction(whoami, name="dk_replaced", image=IMAGE)
    first = fn()
    subprocess.run(["docker", "kill", f"chalkd-{first}"], check=True, capture_output=True)
    second = fn()
    assert second != first


@pytest.mark.timeout(600)
def test_restart_removes_leftover_containers(tmp_path, docker_engine, monkeypatch):
    d = Daemon(tmp_path / "home", extra_args=("--runtime", "docker")).start()
    try:
        monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
        fn = RemoteFunction(whoami, name="dk_leftover", image=IMAGE)
        old = fn()
        assert containers_of(d.home, replica=old)
        d.kill9()
        assert containers_of(d.home, replica=old)  # still there: nobody removed it
        d.start()
        wait_for(lambda: not containers_of(d.home, replica=old), 30, "the leftover container to go")
        assert RemoteFunction.from_name("dk_leftover")() != old
    finally:
        d.stop()


def test_a_placeable_gpu_is_handed_out_as_a_device_request(on_docker):
    # The fake inventory has one NVIDIA L4 but the engine has no NVIDIA runtime, so the
    # container cannot start: the engine's refusal shows the device request was made.
    fn = RemoteFunction(whoami, name="dk_gpu_l4", image=IMAGE, gpu="nvidia-l4")
    with pytest.raises(FunctionError, match=r'could not select device driver "nvidia"') as info:
        fn.deploy(ready_timeout=60)
    assert not isinstance(info.value, FunctionBuildError)
