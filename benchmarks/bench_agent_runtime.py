"""The injected agent runtime (sandboxes): preparing it, and an agent's start and exec under it.

    python benchmarks/bench_agent_runtime.py [--prepares 3] [--starts 5] [--execs 100] [--out FILE]

Needs the Docker engine and the bootstrapped base image (``chalkd image bootstrap``).
Prints one JSON object:

* ``first_prepare_s``: :func:`prepare_agent_runtime` into an empty home (extracting
  the interpreter, loader, libraries and standard library from the base image);
  ``reused_prepare_ms``: the same call once the directory exists; ``runtime_bytes``:
  the size of that directory;
* ``start_to_ready_ms``: container create + start until the agent answers a ping,
  ``injected`` (an image without Python, the agent under the runtime's loader) and
  ``image_python`` (the base image's own ``python3`` running the same agent files);
* ``exec_true_ms``: sequential ``true`` execs through ``agent_exec``, both ways.

Numbers are for the machine it runs on (a shared 2-core box during development);
nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiodocker  # noqa: E402

from benchmarks.stats import emit, summary  # noqa: E402
from chalkcompute.image import Image  # noqa: E402
from chalkd.containers.agent_client import agent_exec, wait_agent_ready  # noqa: E402
from chalkd.images.docker_build import DockerImageBuilder  # noqa: E402
from chalkd.runtime.docker import host_config  # noqa: E402
from chalkd.sandboxes.agent_runtime import AgentRuntime, agent_entrypoint, prepare_agent_runtime, runtime_bind  # noqa: E402
from chalkd.services.convert import decode_image  # noqa: E402

BASE = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
SOCK = "/run/chalk-agent/agent.sock"
NO_PYTHON = Image.debian_slim().run_commands("rm -f /usr/bin/python* && rm -rf /usr/lib/python3*")


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


async def start_and_execs(docker: aiodocker.Docker, image: str, entrypoint: list[str], rt: AgentRuntime,
                          work: Path, execs: int) -> tuple[float, list[float]]:
    agent_dir = Path(tempfile.mkdtemp(dir=work))
    os.chmod(agent_dir, 0o700)
    config = {"Image": image, "Entrypoint": entrypoint, "Cmd": [],
              "HostConfig": host_config(binds=[runtime_bind(rt), f"{agent_dir}:/run/chalk-agent"])}
    t = time.perf_counter()
    c = await docker.containers.create(config)
    try:
        await c.start()
        await wait_agent_ready(agent_dir / "agent.sock", 60)
        ready = (time.perf_counter() - t) * 1000
        out = []
        for _ in range(execs):
            t = time.perf_counter()
            r = await agent_exec(agent_dir / "agent.sock", ["true"])
            out.append((time.perf_counter() - t) * 1000)
            assert r.exit_code == 0, r
        return ready, out
    finally:
        await c.delete(force=True)


async def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-agent-runtime-"))
    async with aiodocker.Docker() as docker:
        try:
            firsts, sizes = [], []
            rt = None
            for i in range(args.prepares):
                t = time.perf_counter()
                rt = await prepare_agent_runtime(docker, work / f"home{i}", BASE)
                firsts.append(time.perf_counter() - t)
                assert not rt.reused
                sizes.append(du(rt.root))
            assert rt is not None
            reused = []
            for _ in range(20):
                t = time.perf_counter()
                assert (await prepare_agent_runtime(docker, rt.root.parents[2], BASE)).reused
                reused.append((time.perf_counter() - t) * 1000)
            built = await DockerImageBuilder(docker, work / "builds").build(decode_image(NO_PYTHON.to_proto()),
                                                                            bare=True)
            own = ["python3", "-I", "-S", f"/.chalkd/{rt.agent_dir}/__main__.py", "--socket", SOCK, "--"]
            results: dict[str, dict[str, list[float]]] = {"injected": {"ready": [], "execs": []},
                                                          "image_python": {"ready": [], "execs": []}}
            for _ in range(args.starts):
                for name, image, entry in (("injected", built.tag, agent_entrypoint(rt, SOCK)),
                                           ("image_python", BASE, own)):
                    ready, execs = await start_and_execs(docker, image, entry, rt, work, args.execs)
                    results[name]["ready"].append(ready)
                    results[name]["execs"] += execs
            subprocess.run(["docker", "rmi", built.tag], capture_output=True, timeout=120)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "first_prepare_s": [round(x, 2) for x in firsts],
        "reused_prepare_ms": summary(reused),
        "runtime_bytes": sizes[-1],
        "start_to_ready_ms": {k: summary(v["ready"]) for k, v in results.items()},
        "exec_true_ms": {k: summary(v["execs"]) for k, v in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prepares", type=int, default=3)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    emit(asyncio.run(run(args)), out=args.out)


if __name__ == "__main__":
    main()
