"""Functions on a 2-node Docker Swarm lab (tests/swarm/lab): cold starts on a remote node, warm calls to a replica on
the daemon's node against one on a remote node, and calls/s with replicas spread over both nodes.

    python benchmarks/bench_swarm.py --out benchmarks/results/swarm.json [--rounds 3] [--calls 1000] [--burst 2000]

Needs root (the lab: network namespaces, a dockerd per node) and the base image on the host's engine; the lab is
stood up in a free slot and torn down at the end. Node 1 (``swnode1``) is the manager and the daemon's node; node 2
starts with no image. What is measured (every call from this process, through the daemon on the host):

* ``first_deploy_s``: the first function: the image built on node 1 (the runtime layer over the base image) and
  copied to node 2 (``docker save | docker load``), a replica started, its first call answered;
* ``cold_image_there_s``: a new function (same image, already on both nodes) pinned with ``node=``, from its first
  call (registration, a Swarm service made and placed, container and worker started, the worker's TLS link to the
  daemon, the call) to the answer; on node 1 and on node 2, side by side;
* ``cold_new_image_save_load``: the same with an image no node has (one more ``env`` layer, which also rebuilds
  the runtime layer above it): ``build_s`` on node 1, ``ship_s`` its save|load to node 2 (done for every
  ``--node-engine`` node before a replica starts, wherever it lands), ``rest_s`` the replica on node 2 and the
  call, split by the daemon's log; ``save_load_cli_s`` is the bare ``docker save | docker load`` of such an image
  from node 1 to node 2 with the CLI;
* ``cold_new_image_registry``: the same with ``--registry`` instead (Debian's docker-registry on the lab's host
  address): ``ship_s`` is the push from node 1, ``rest_s`` includes node 2's pull; skipped, with the reason, when
  no registry binary is found (``CHALK_REGISTRY_BIN``, ``docker-registry`` on PATH, or ``.ci/cache``);
* ``warm_*``: sequential calls of a trivial function, one replica pinned to each node, in interleaved blocks;
* ``burst_*``: 4 replicas placed by Swarm (spread over both nodes) and all pinned to node 1, side by side;
  ``--burst`` calls at once by ``.map`` (inputs travel in batches) and as separate calls in flight (``.aio``,
  gathered), with a trivial handler and a 5 ms one: calls/s, and how many calls each node answered.

Numbers are for the machine it runs on (every node of the lab shares its CPUs); nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import emit, summary  # noqa: E402
from chalkcompute import Image, RemoteFunction  # noqa: E402
from chalkd.testing import _SdkPointer  # noqa: E402
from tests.swarm.conftest import BASE_IMAGE, SwarmDaemon  # noqa: E402
from tests.swarm.lab import SwarmLab  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REGISTRY_CANDIDATES = (os.environ.get("CHALK_REGISTRY_BIN", ""), shutil.which("docker-registry") or "",
                       str(REPO / ".ci" / "cache" / "docker-registry" / "usr" / "bin" / "docker-registry"))


def node_of_call() -> str:
    import os

    return os.environ.get("CHALK_NODE", "")


def work(x: int, ms: float) -> str:
    """The node that answered; ``ms`` of sleep first (0: a trivial call, dispatch-bound)."""
    import os
    import time

    if ms:
        time.sleep(ms / 1000)
    return os.environ.get("CHALK_NODE", "")


def double(x: int) -> int:
    return 2 * x


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def wait(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)  # other processes' progress (the nodes' engines): nothing to wait on
    raise TimeoutError(f"{what}: not within {timeout:g}s")


def containers(lab: SwarmLab, n: int, daemon: SwarmDaemon, function: str) -> int:
    """How many running containers of ``function`` (this daemon's home) node n's engine has."""
    out = lab.docker(n, "ps", "-q", "--filter", f"label=dev.chalkd.home={daemon.home.resolve()}",
                     "--filter", f"label=dev.chalkd.function={function}")
    return len(out.split())


def delete_and_wait_gone(lab: SwarmLab, daemon: SwarmDaemon, fn: RemoteFunction) -> None:
    """Delete the function and wait until no node runs its replicas (so the next round starts from a quiet lab)."""
    name = fn.name
    fn.delete()
    wait(lambda: all(containers(lab, n, daemon, name) == 0 for n in (1, 2)), 60, f"{name}'s replicas to go")


def log_time(line: str) -> float:
    """The timestamp of a daemon log line (``2026-12-05 22:38:58,274 INFO ...``) in seconds."""
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def phases(daemon: SwarmDaemon, ref: str, total: float) -> dict:
    """Split a cold start with a new image by the daemon's log: its build, then its shipping (the save|load to
    node 2, or the push), and the rest (the service placed, a pull when there is a registry, the start, the call)."""
    tag = ref.rpartition("/")[2]
    built = shipped = None
    build_s = 0.0
    for line in daemon.log().splitlines():
        if f"built image {tag} " in line:
            built = log_time(line)
            build_s = float(line.rpartition(" in ")[2].rstrip("s"))
        elif (f"copied image {tag} to node" in line or line.endswith(f"pushed {ref}")) and built is not None:
            shipped = log_time(line)
    if built is None or shipped is None:
        return {"total_s": round(total, 3)}
    ship_s = shipped - built
    return {"total_s": round(total, 3), "build_s": round(build_s, 3), "ship_s": round(ship_s, 3),
            "rest_s": round(total - build_s - ship_s, 3)}


def cold_round(lab: SwarmLab, daemon: SwarmDaemon, node: int, image: Image | None = None) -> float | dict:
    """A new function pinned to ``node``: seconds from its first call to the answer (with a new ``image``: the
    seconds split by :func:`phases`)."""
    name = f"cold_{node}_{uuid.uuid4().hex[:6]}"
    kwargs = {"image": image} if image is not None else {}
    fn = RemoteFunction(node_of_call, name=name, node=lab.node_name(node), max_replicas=1, **kwargs)
    seconds, where = timed(fn)
    assert where == lab.node_name(node), (where, node)
    cid = lab.docker(node, "ps", "-q", "--filter", f"label=dev.chalkd.function={name}").split()[0]
    ref = lab.docker(node, "inspect", "--format", "{{.Config.Image}}", cid).strip()
    delete_and_wait_gone(lab, daemon, fn)
    return round(seconds, 3) if image is None else phases(daemon, ref, seconds)


def new_image() -> Image:
    return Image.debian_slim().env({"BENCH_NONCE": uuid.uuid4().hex})


def save_load_cli(lab: SwarmLab, daemon: SwarmDaemon, image: Image) -> float:
    """Time ``docker save | docker load`` of a freshly built image from node 1 to node 2 (gone from node 2 first)."""
    fn = RemoteFunction(node_of_call, name=f"ship_{uuid.uuid4().hex[:6]}", image=image, node=lab.node_name(1),
                        max_replicas=1)
    fn()
    cid = lab.docker(1, "ps", "-q", "--filter", f"label=dev.chalkd.function={fn.name}").split()[0]
    ref = lab.docker(1, "inspect", "--format", "{{.Config.Image}}", cid).strip()
    delete_and_wait_gone(lab, daemon, fn)
    lab.docker(2, "rmi", "-f", ref)
    t0 = time.perf_counter()
    save = subprocess.Popen(["docker", "-H", lab.node_url(1), "save", ref], stdout=subprocess.PIPE)
    subprocess.run(["docker", "-H", lab.node_url(2), "load", "-q"], stdin=save.stdout, check=True,
                   capture_output=True)
    assert save.wait() == 0
    return round(time.perf_counter() - t0, 3)


def warm(lab: SwarmLab, daemon: SwarmDaemon, calls: int, blocks: int = 5) -> dict:
    fns = {n: RemoteFunction(double, name=f"warm_{n}", node=lab.node_name(n), min_replicas=1, max_replicas=1)
           for n in (1, 2)}
    ms: dict[int, list[float]] = {1: [], 2: []}
    for fn in fns.values():
        fn.deploy()
        for i in range(50):
            fn(i)
    per_block = max(1, calls // blocks)
    for _ in range(blocks):
        for n, fn in fns.items():
            for i in range(per_block):
                t0 = time.perf_counter()
                fn(i)
                ms[n].append((time.perf_counter() - t0) * 1000)
    out = {f"warm_node{n}_{lab.node_name(n)}": summary(v) for n, v in ms.items()}
    for fn in fns.values():
        delete_and_wait_gone(lab, daemon, fn)
    return out


def burst(lab: SwarmLab, daemon: SwarmDaemon, n: int, rounds: int, node: int | None) -> dict:
    """4 replicas (placed by Swarm, or all on ``node``); ``n`` calls at once, trivial and 5 ms each, by ``.map``
    (batched inputs) and as ``n`` separate calls in flight (``.aio`` gathered): calls/s, and who answered."""
    name = f"burst_{'spread' if node is None else f'node{node}'}"
    placement = {"node": lab.node_name(node)} if node is not None else {}
    fn = RemoteFunction(work, name=name, min_replicas=4, max_replicas=4, **placement)
    fn.deploy()
    wait(lambda: sum(containers(lab, k, daemon, name) for k in (1, 2)) == 4, 180, f"4 replicas of {name}")
    out: dict = {"replicas_by_node": {lab.node_name(k): containers(lab, k, daemon, name) for k in (1, 2)}, "calls": n}
    list(fn.map(range(200), kwargs={"ms": 0}))  # every replica warm

    async def gathered(ms: float) -> list[str]:
        return await asyncio.gather(*(fn.aio(i, ms) for i in range(n)))

    runs = {"map": lambda ms: list(fn.map(range(n), kwargs={"ms": ms})), "calls": lambda ms: asyncio.run(gathered(ms))}
    for ms in (0, 5):
        for how, run in runs.items():
            rates, answered = [], collections.Counter()
            for _ in range(rounds):
                seconds, nodes = timed(lambda run=run, ms=ms: run(ms))
                assert len(nodes) == n
                answered.update(nodes)
                rates.append(n / seconds)
            out[f"{how}_{ms}ms"] = {"calls_per_s": [round(r) for r in rates],
                                    "calls_per_s_median": round(statistics.median(rates)),
                                    "answered_by_node": dict(sorted(answered.items()))}
    delete_and_wait_gone(lab, daemon, fn)
    return out


@contextmanager
def registry(lab: SwarmLab, workdir: Path) -> Iterator[str | None]:
    """``HOST:5000`` of a registry on the lab's host address (the lab's engines trust it), or None without one."""
    binary = next((c for c in REGISTRY_CANDIDATES if c and os.access(c, os.X_OK)), None)
    if binary is None:
        yield None
        return
    addr = f"{lab.host_addr}:5000"
    config = workdir / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
                      f"http:\n  addr: {addr}\n")
    with open(workdir / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            def listening() -> bool:
                with socket.socket() as s:
                    return s.connect_ex((lab.host_addr, 5000)) == 0 or proc.poll() is not None
            wait(listening, 30, "the registry to listen")
            if proc.poll() is not None:
                raise RuntimeError(f"the registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
            yield addr
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000, help="warm calls per node")
    parser.add_argument("--burst", type=int, default=2000)
    args = parser.parse_args()
    os.environ["CHALK_REGISTER_AT_EXIT"] = "0"
    work = Path(tempfile.mkdtemp(prefix="chalkd-bench-swarm-"))
    lab = SwarmLab.claim(images=[BASE_IMAGE], image_nodes=(1,))
    results: dict = {"benchmark": "swarm", "cpus": os.cpu_count(), "rounds": args.rounds}
    daemon = None
    try:
        lab.up()
        results["lab_up_s"] = round(lab.up_seconds or 0, 1)
        daemon = SwarmDaemon(work / "home", lab).start(timeout=120)  # INFO: phases() reads build and ship times
        with _SdkPointer(daemon):
            first = RemoteFunction(node_of_call, name="first", node=lab.node_name(2), max_replicas=1)
            seconds, _ = timed(first)
            results["first_deploy_s"] = round(seconds, 1)
            delete_and_wait_gone(lab, daemon, first)
            cold = {n: [cold_round(lab, daemon, n) for _ in range(args.rounds)] for n in (1, 2)}
            results["cold_image_there_s"] = {lab.node_name(n): v for n, v in cold.items()}
            results["cold_new_image_save_load"] = [cold_round(lab, daemon, 2, new_image())
                                                     for _ in range(args.rounds)]
            results["save_load_cli_s"] = save_load_cli(lab, daemon, new_image())
            results |= warm(lab, daemon, args.calls)
            results["burst_spread"] = burst(lab, daemon, args.burst, args.rounds, None)
            results["burst_node1_only"] = burst(lab, daemon, args.burst, args.rounds, 1)
        daemon.stop()
        daemon.remove_swarm_objects()
        daemon = None
        with registry(lab, work) as addr:
            if addr is None:
                results["cold_new_image_registry"] = ("skipped: no docker-registry binary (CHALK_REGISTRY_BIN, "
                                                        "docker-registry on PATH, or .ci/cache)")
            else:
                daemon = SwarmDaemon(work / "home-registry", lab, ("--registry", addr),
                                     with_node_engines=False).start(timeout=120)
                with _SdkPointer(daemon):
                    # The runtime layer is pushed once; each round then pushes and pulls one small layer more.
                    seconds, _ = timed(RemoteFunction(node_of_call, name="reg_first", node=lab.node_name(2),
                                                      max_replicas=1))
                    results["registry_first_deploy_s"] = round(seconds, 1)
                    results["cold_new_image_registry"] = [cold_round(lab, daemon, 2, new_image())
                                                            for _ in range(args.rounds)]
        emit(results, args.out)
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.remove_swarm_objects()
        lab.down()
        lab.release()


if __name__ == "__main__":
    main()
