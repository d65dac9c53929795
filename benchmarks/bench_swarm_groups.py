"""Scaling groups on a 2-node Docker Swarm lab (tests/swarm/lab): scale-from-zero and proxy latency, with the
replica on the daemon's node (node 1) and on a remote node (node 2), side by side.

    python benchmarks/bench_swarm_groups.py --out benchmarks/results/swarm_groups.json [--requests 500]

Needs root (the lab: network namespaces, a dockerd per node) and the base image on the host's engine. The lab
is stood up in a free slot and torn down at the end. The group (the stdlib app of tests/swarm/apps) is built
once and shipped to node 2 with save|load; each round then puts its one replica on one node by draining the
other, and measures:

* ``scale_from_zero_s``: the first request through the proxy of a group scaled to zero, until its answer (the
  service made, placed, its container and app started, its probe passed, the request forwarded): the image is
  on the node already;
* ``proxy_*``: sequential GET /health on one keep-alive connection through the group's proxy (in the daemon, on
  the host) to the replica at node address:published port, and ``direct_*`` to that same address without the
  proxy (what the proxy adds is the difference).

Numbers are for the machine it runs on (every node of the lab shares its CPUs); nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from benchmarks.stats import emit, percentile  # noqa: E402
from chalkcompute import Image, ReadinessProbe, ScalingGroup  # noqa: E402
from chalkd.testing import _SdkPointer  # noqa: E402
from tests.swarm.conftest import BASE_IMAGE, SwarmDaemon  # noqa: E402
from tests.swarm.lab import SwarmLab  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "tests" / "swarm" / "apps" / "node_app.py"


def latencies(url: str, n: int) -> dict:
    ms = []
    with httpx.Client(timeout=30) as client:
        for _ in range(20):
            client.get(url)
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.get(url)
            ms.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:g}s")


def round_on(lab: SwarmLab, sg: ScalingGroup, node: int, requests: int) -> dict:
    other = 2 if node == 1 else 1
    lab.docker(1, "node", "update", "--availability", "active", lab.node_name(node))
    lab.docker(1, "node", "update", "--availability", "drain", lab.node_name(other))
    wait(lambda: sg.refresh().status == "ScaledToZero", 120, "scaled to zero")
    t0 = time.perf_counter()
    r = httpx.get(f"{sg.web_url}/health", timeout=300)
    cold = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    info = sg.refresh()
    address = next(x.address for x in info.replicas if x.state == "ready")
    assert address.rpartition(":")[0] == lab.node_addr(node), (address, node)
    out = {"node": lab.node_name(node), "replica_address": address, "scale_from_zero_s": round(cold, 3)}
    out |= {f"proxy_{k}": v for k, v in latencies(f"{sg.web_url}/health", requests).items()}
    out |= {f"direct_{k}": v for k, v in latencies(f"http://{address}/health", requests).items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    lab = SwarmLab.claim(images=[BASE_IMAGE], image_nodes=(1,))
    daemon = None
    try:
        lab.up()
        home = Path(tempfile.mkdtemp(prefix="chalkd-bench-swarm-"))
        daemon = SwarmDaemon(home, lab, ("--group-cooldown", "1", "--log-level", "WARNING")).start(timeout=120)
        os.environ["CHALK_REGISTER_AT_EXIT"] = "0"
        with _SdkPointer(daemon):
            img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
            sg = ScalingGroup(image=img, name="bench", port=8080, min_replicas=0, max_replicas=1,
                              readiness_probe=ReadinessProbe.http("/health", period_seconds=5))
            t0 = time.perf_counter()
            sg.deploy(build_timeout=600)
            deploy_s = time.perf_counter() - t0
            rounds = [round_on(lab, sg, node, args.requests) for _ in range(args.rounds) for node in (1, 2)]
            sg.delete()
        emit({"benchmark": "swarm_groups", "lab_up_s": round(lab.up_seconds or 0, 1),
              "deploy_with_build_and_ship_s": round(deploy_s, 1), "requests_per_latency_run": args.requests,
              "cpus": os.cpu_count(), "rounds": rounds}, args.out)
    finally:
        if daemon is not None:
            daemon.stop()
        lab.down()
        lab.release()


if __name__ == "__main__":
    main()
