"""Docker runtime benchmarks: cold start, image cache hit, warm calls, container exec.

    python benchmarks/bench_docker.py [--calls 1000] [--execs 200] [--out FILE]

Needs a Docker engine and the base image (``chalkd image bootstrap``). Starts
two chalkd daemons on free ports with temporary homes, one per runtime, and
prints one JSON object:

* ``cold_start_ms``: from ``deploy()`` of a function whose image is already
  built (a new function version, so no replica exists) to its first result;
* ``cache_hit_ms``: ``Images.Build`` of an image that is already built;
* ``warm_call_*``: sequential calls of a trivial function through a container
  replica and through a process replica (the same code, the same machine);
* ``exec_*``: ``Container.exec("echo", "hi")`` round trips.

Numbers are for the machine it runs on; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import emit, summary  # noqa: E402
from tests.conftest import Daemon  # noqa: E402  (the same daemon harness the tests use)


def add(x: int, y: int) -> int:
    return x + y


def warm_calls(target: str, image, n: int) -> list[float]:
    from chalkcompute import RemoteFunction

    fn = RemoteFunction(add, name=f"bench_add_{int(time.time() * 1000)}", image=image, target=target)
    fn.deploy()
    for i in range(50):
        fn(i, 1)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i, 1)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--colds", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ["CHALK_REGISTER_AT_EXIT"] = "0"
    os.environ["CHALK_BUILD_LOG"] = "0"

    from chalkcompute import Container, Image, RemoteFunction
    from chalkcompute._build import prepare_image
    from chalkcompute._client import Client, run_sync

    docker = Daemon(Path(tempfile.mkdtemp(prefix="chalkd-bench-docker-")),
                    extra_args=("--runtime", "docker", "--log-level", "WARNING")).start()
    process = Daemon(Path(tempfile.mkdtemp(prefix="chalkd-bench-proc-")),
                     extra_args=("--runtime", "process", "--log-level", "WARNING")).start()
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    image = Image.debian_slim()
    try:
        client = Client.get(docker.target)
        t = time.perf_counter()
        run_sync(prepare_image(client, image, what="bench"))
        results["first_build_s"] = round(time.perf_counter() - t, 2)
        hits = []
        for _ in range(20):
            t = time.perf_counter()
            out = run_sync(prepare_image(client, image, what="bench"))
            hits.append((time.perf_counter() - t) * 1000)
            assert out.cached
        results["cache_hit_ms"] = summary(hits)

        colds = []
        for i in range(args.colds):
            fn = RemoteFunction(add, name=f"bench_cold_{i}_{int(time.time())}", image=image, target=docker.target,
                                min_replicas=0)
            t = time.perf_counter()
            fn.deploy()
            fn(1, 2)
            colds.append((time.perf_counter() - t) * 1000)
        results["cold_start_ms"] = summary(colds)

        results["warm_call_docker"] = summary(warm_calls(docker.target, image, args.calls))
        results["warm_call_process"] = summary(warm_calls(process.target, image, args.calls))
        results["warm_call_docker_vs_process"] = round(
            results["warm_call_docker"]["p50_ms"] / results["warm_call_process"]["p50_ms"], 3)

        c = Container(image=image, name=f"bench-exec-{int(time.time())}", target=docker.target).run()
        try:
            for _ in range(20):
                c.exec("echo", "hi")
            execs = []
            for _ in range(args.execs):
                t = time.perf_counter()
                r = c.exec("echo", "hi")
                execs.append((time.perf_counter() - t) * 1000)
                assert r.stdout_text == "hi\n"
            results["exec_echo"] = summary(execs)
        finally:
            c.stop()
    finally:
        docker.stop()
        process.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
