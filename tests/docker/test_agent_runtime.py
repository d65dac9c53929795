"""The injected agent runtime (chalkd.sandboxes.agent_runtime) on a real engine.

An image with no Python at all (the base image with python3 and its standard
library removed) runs the agent from the runtime the daemon extracted, mounted
read-only; what the agent starts are the image's own binaries, with nothing of
the runtime in their environment or their address space::

    rt = await prepare_agent_runtime(docker, home, BASE_IMAGE)
    config = {"Image": NO_PYTHON, "Entrypoint": agent_entrypoint(rt, SOCK), "Cmd": [],
              "HostConfig": host_config(binds=[runtime_bind(rt), f"{agent_dir}:/run/chalk-agent"])}
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiodocker
import pytest

from chalkcompute.image import Image
from chalkd.containers.agent_client import AgentSocket, agent_exec, wait_agent_ready
from chalkd.images.docker_build import BuiltImage, DockerImageBuilder
from chalkd.runtime.docker import host_config
from chalkd.sandboxes.agent_runtime import (
    AgentRuntime,
    AgentRuntimeError,
    agent_entrypoint,
    check_image_arch,
    prepare_agent_runtime,
    runtime_bind,
)
from chalkd.services.convert import decode_image
from tests.docker.conftest import BASE_IMAGE

pytestmark = pytest.mark.timeout(300)

SOCK = "/run/chalk-agent/agent.sock"
STRIP = ("rm -f /usr/bin/python* /usr/local/bin/python* /usr/bin/pydoc* /usr/bin/pip* "
         "&& rm -rf /usr/lib/python3* /usr/local/lib/python3*")
# Built bare (no runtime layer, no python3 check), as the sandbox manager builds every sandbox image.
NO_PYTHON = Image.debian_slim().run_commands(STRIP)
NO_PYTHON_USER = NO_PYTHON.dockerfile_commands(["USER 1000:1000"])
# Nothing but a shell and the libc it links: no /usr, no /etc, no coreutils (a "FROM scratch" image).
SHELL_ONLY = Image().dockerfile_commands([
    f"FROM {BASE_IMAGE} AS src",
    "RUN mkdir -p /out/bin && cp /usr/bin/dash /out/bin/sh && for f in $(ldd /usr/bin/dash | grep -o '/[^ ]*'); "
    "do mkdir -p /out$(dirname $f) && cp -L $f /out$f; done",
    "FROM scratch",
    "COPY --from=src /out/ /",
])
IMPORT_ALL = """
import importlib, os, sys
dynload = [p for p in sys.path if p.endswith("lib-dynload")][0]
names = sorted(f.split(".")[0] for f in os.listdir(dynload) if f.endswith(".so"))
for name in names + ["ctypes", "asyncio", "json", "selectors", "subprocess", "logging", "tarfile", "hashlib", "pty"]:
    importlib.import_module(name)
import ctypes
assert ctypes.CDLL(None).getpid() == os.getpid()
print(" ".join(names))
"""


async def _bare(home: Path, *images: Image) -> list[BuiltImage]:
    async with aiodocker.Docker() as docker:
        builder = DockerImageBuilder(docker, home)
        return [await builder.build(decode_image(img.to_proto()), bare=True) for img in images]


def _rmi(*tags: str) -> None:
    """Remove images the tests built; a busy shared engine may be slow to, which is not a failure."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["docker", "rmi", *tags], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def images(docker_engine, home):
    """Tags of the base image without Python, as root and as USER 1000; removed at the end of the module."""
    built = asyncio.run(_bare(home, NO_PYTHON, NO_PYTHON_USER))
    yield [b.tag for b in built]
    _rmi(*(b.tag for b in reversed(built)))


@pytest.fixture(scope="module")
def home(docker_engine, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("agent-runtime-home")


async def _prepare(home: Path) -> AgentRuntime:
    async with aiodocker.Docker() as docker:
        return await prepare_agent_runtime(docker, home, BASE_IMAGE)


async def _with_agent(rt: AgentRuntime, image: str, agent_dir: Path, uid: int, env: list[str], check) -> None:
    """Start ``image`` with the agent from ``rt`` as its entrypoint, run ``check(socket)``, remove it."""
    agent_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(agent_dir, uid, uid)
        mode = "600"
    else:  # as the container manager does when it cannot chown
        os.chmod(agent_dir, 0o777)
        mode = "666"
    config = {
        "Image": image,
        "Entrypoint": agent_entrypoint(rt, SOCK, extra=("--socket-mode", mode)),
        "Cmd": [],
        "Env": env,
        "Labels": {"dev.chalkd.test": "agent-runtime"},
        "HostConfig": host_config(binds=[runtime_bind(rt), f"{agent_dir}:/run/chalk-agent"], pids_limit=256),
    }
    async with aiodocker.Docker() as docker:
        container = await docker.containers.create(config)
        try:
            await container.start()
            sock = AgentSocket(agent_dir / "agent.sock", uid)
            ready = asyncio.ensure_future(wait_agent_ready(sock, 60))
            exited = asyncio.ensure_future(container.wait())
            done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                logs = "".join(await container.log(stdout=True, stderr=True))
                pytest.fail(f"the agent exited before it answered: {exited.result()}\n{logs}")
            exited.cancel()
            ready.result()
            await check(sock)
        finally:
            await container.delete(force=True)


def test_an_image_without_python_runs_the_agent_and_the_images_own_commands(images, home, tmp_path):
    rt = asyncio.run(_prepare(home))
    seen: dict = {}

    async def check(sock: AgentSocket) -> None:
        seen["sh"] = await agent_exec(sock, ["sh", "-c", "echo hi; echo err >&2; exit 3"], timeout=30)
        seen["env"] = await agent_exec(sock, ["env"], timeout=30)
        seen["python"] = await agent_exec(sock, ["python3", "-c", "print(1)"], timeout=30)
        seen["maps"] = await agent_exec(sock, ["cat", "/proc/self/maps"], timeout=30)
        seen["ls"] = await agent_exec(sock, ["sh", "-c", "ls -d /usr/lib/python3* /usr/bin/python3*"], timeout=30)
        seen["id"] = await agent_exec(sock, ["id", "-u"], timeout=30)
        # The runtime's own Python, run as the agent is: every extension module it kept loads (their
        # libraries were all found), and so does what the agent imports lazily.
        runtime_python = agent_entrypoint(rt, SOCK)[:7]
        seen["imports"] = await agent_exec(sock, [*runtime_python, "-c", IMPORT_ALL], timeout=60)

    # LANG empty: the locale is C, so the agent's Python coerces it (PEP 538) and the boot script must undo it.
    asyncio.run(_with_agent(rt, images[0], tmp_path / "agent", 0, ["LANG=", "CHALK_TEST_VAR=kept"], check))
    sh = seen["sh"]
    assert (sh.stdout, sh.stderr, sh.exit_code, sh.signal) == (b"hi\n", b"err\n", 3, None)
    env = dict(line.split("=", 1) for line in seen["env"].stdout.decode().splitlines())
    assert env["CHALK_TEST_VAR"] == "kept" and env["LANG"] == ""
    leaked = {k: v for k, v in env.items()
              if k.startswith(("PYTHON", "LD_")) or k in ("LC_CTYPE", "LC_ALL") or "/.chalkd" in v}
    assert leaked == {}, f"the injected runtime leaked into the environment: {leaked}"
    py = seen["python"]
    assert (py.exit_code, py.pid) == (127, None) and "python3" in (py.error or ""), py
    # `cat` ran with the image's loader and libc: nothing of /.chalkd is mapped into it.
    maps = seen["maps"].stdout.decode()
    assert "libc.so.6" in maps and "/.chalkd" not in maps
    assert seen["ls"].exit_code != 0, seen["ls"].stdout  # really no Python in the image
    assert seen["id"].stdout == b"0\n"
    imports = seen["imports"]
    assert (imports.exit_code, imports.stderr) == (0, b""), imports
    loaded = imports.stdout.decode().split()
    assert "_ctypes" in loaded and "_asyncio" in loaded and "termios" in loaded, loaded


def test_a_scratch_image_with_only_a_shell_runs_the_agent(home, tmp_path):
    built, = asyncio.run(_bare(home, SHELL_ONLY))
    seen: dict = {}

    async def check(sock: AgentSocket) -> None:
        seen["sh"] = await agent_exec(sock, ["sh", "-c", "echo hi $X; export -p; exit 5"], env={"X": "there"},
                                      timeout=30)
        seen["ls"] = await agent_exec(sock, ["ls", "/"], timeout=30)

    try:
        asyncio.run(_with_agent(asyncio.run(_prepare(home)), built.tag, tmp_path / "agent", 0, [], check))
    finally:
        _rmi(built.tag)
    sh = seen["sh"]
    assert sh.exit_code == 5 and sh.stdout.startswith(b"hi there\n"), sh
    assert b"/.chalkd" not in sh.stdout and b"LD_" not in sh.stdout and b"PYTHON" not in sh.stdout
    assert (seen["ls"].exit_code, seen["ls"].pid) == (127, None)  # no coreutils: the image's own, not ours


def test_a_non_root_image_user_starts_the_agent(images, home, tmp_path):
    rt = asyncio.run(_prepare(home))
    seen: dict = {}

    async def check(sock: AgentSocket) -> None:
        seen["id"] = await agent_exec(sock, ["id", "-u"], timeout=30)
        seen["caps"] = await agent_exec(sock, ["grep", "-E", "^(CapEff|NoNewPrivs):", "/proc/self/status"],
                                        timeout=30)
        seen["ro"] = await agent_exec(sock, ["sh", "-c", "touch /.chalkd/x"], timeout=30)

    asyncio.run(_with_agent(rt, images[1], tmp_path / "agent", 1000, [], check))
    assert seen["id"].stdout == b"1000\n"
    assert seen["caps"].stdout.split() == [b"CapEff:", b"0000000000000000", b"NoNewPrivs:", b"1"]
    assert seen["ro"].exit_code == 1 and b"Read-only" in seen["ro"].stderr


def test_a_bare_debian_slim_build_has_python_but_no_runtime_layer(home):
    built, = asyncio.run(_bare(home, Image.debian_slim().run_commands("echo bare > /marker")))
    try:
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", built.tag, "-c",
                              "cat /marker; python3 -c 'import sys; print(sys.version_info[0])'; "
                              "python3 -c 'import chalkcompute' 2>&1 | tail -1; ls /usr/local/share/chalkd"],
                             capture_output=True, text=True, timeout=120)
        labels = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", built.tag],
                                capture_output=True, text=True, timeout=60).stdout
    finally:
        _rmi(built.tag)
    assert out.stdout.splitlines() == ["bare", "3", "ModuleNotFoundError: No module named 'chalkcompute'",
                                       "build-ca.pem"], out
    assert '"dev.chalkd.runtime":"bare"' in labels and built.python_version == ""


def test_the_runtime_is_reused_and_readable_by_any_uid(home):
    first = asyncio.run(_prepare(home))
    marker = (first.root / "runtime.txt").stat().st_ino
    second = asyncio.run(_prepare(home))
    assert second.reused and second.root == first.root and second.agent_dir == first.agent_dir
    assert (second.root / "runtime.txt").stat().st_ino == marker
    assert [p.name for p in second.root.parent.iterdir() if p.name.startswith(".build-")] == []
    for path in [second.root, *second.root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        want = 0o005 if stat.S_ISDIR(st.st_mode) else 0o004
        assert st.st_mode & want == want, f"{path} is not readable by every uid: {stat.filemode(st.st_mode)}"
    assert os.access(second.root / second.loader, os.X_OK)
    # Compiled ahead (the mount is read-only) when the daemon's Python is the runtime's.
    pycs = sorted(p.name.split(".")[0] for p in (second.root / second.agent_dir / "__pycache__").glob("*.pyc"))
    if second.python_version == f"{sys.version_info.major}.{sys.version_info.minor}":
        assert "server" in pycs and "protocol" in pycs and "__main__" not in pycs


def test_concurrent_prepares_extract_once(docker_engine, tmp_path):
    async def both() -> list[AgentRuntime]:
        async with aiodocker.Docker() as docker:
            return list(await asyncio.gather(*(prepare_agent_runtime(docker, tmp_path, BASE_IMAGE)
                                               for _ in range(2))))

    a, b = asyncio.run(both())
    assert a.root == b.root and sorted([a.reused, b.reused]) == [False, True]
    assert sorted(p.name for p in a.root.parent.iterdir()) == [".lock", a.root.name]


def test_another_architecture_and_a_missing_base_are_refused_by_name(docker_engine, tmp_path):
    async def missing() -> None:
        async with aiodocker.Docker() as docker:
            await prepare_agent_runtime(docker, tmp_path, "chalkd-test-no-such-base:1")

    with pytest.raises(AgentRuntimeError, match="chalkd-test-no-such-base:1 is not on this Docker host"):
        asyncio.run(missing())
    rt = asyncio.run(_prepare(tmp_path))
    other = "arm64" if rt.arch == "amd64" else "amd64"
    with pytest.raises(AgentRuntimeError, match=f"img:1 is built for {other}.*use an {rt.arch} image"):
        check_image_arch(rt, {"Id": "sha256:x", "Architecture": other}, "img:1")
    check_image_arch(rt, {"Id": "sha256:x", "Architecture": rt.arch}, "img:1")


