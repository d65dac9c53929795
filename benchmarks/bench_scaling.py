"""Autoscaling benchmarks: scale-from-zero first response, and a burst's time to max replicas ready.

    python benchmarks/bench_scaling.py [--replicas 4] [--runs 3] [--out FILE]

Starts its own chalkd (process runtime) on a free port with a temporary home, and prints one JSON
object. ``burst_to_max_ready_seconds``: from submitting ``4 x replicas`` one-second calls to a
``min_replicas=0, max_replicas=replicas`` function until the daemon reports every replica ready.
``scale_down_seconds``: from the burst's last answer until no replica is left (its cooldown is
``--cooldown``; the rest is the autoscaler's pass and the replicas' exit). Numbers are for the
machine it runs on (a shared machine makes them noisy); nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit  # noqa: E402


def sleepy(x: int) -> int:
    import time

    time.sleep(1.0)
    return x


def echo(x: int) -> int:
    return x


def replicas(name: str) -> tuple[int, int]:
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    resp = run_sync(Client.get().rpc("GetFunction", pb.GetFunctionRequest(name=name)))
    return resp.function.ready_replicas, resp.function.replicas


def wait_until(predicate, timeout: float = 120.0) -> float:
    """Poll ``predicate`` every 10 ms; return when it held (time.perf_counter)."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("the daemon did not get there in time")
        time.sleep(0.01)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cooldown", type=float, default=1.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    daemon = start_daemon()
    from chalkcompute import RemoteFunction

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "runtime": "process"}}
    try:
        first = []
        for i in range(args.runs):
            fn = RemoteFunction(echo, name=f"from_zero_{i}", min_replicas=0)
            fn._ensure_registered()
            t = time.perf_counter()
            assert fn(i) == i
            first.append(time.perf_counter() - t)
        results["scale_from_zero_first_response_seconds"] = {
            "p50": round(statistics.median(first), 3), "max": round(max(first), 3), "runs": args.runs}

        to_max, down = [], []
        for i in range(args.runs):
            name = f"burst_{i}"
            fn = RemoteFunction(sleepy, name=name, min_replicas=0, max_replicas=args.replicas,
                                suspend_cooldown_period=args.cooldown)
            fn._ensure_registered()
            n = 4 * args.replicas

            async def burst(fn: RemoteFunction = fn, n: int = n, name: str = name) -> None:
                t = time.perf_counter()
                calls = asyncio.gather(*(fn.aio(x) for x in range(n)))
                ready = await asyncio.to_thread(wait_until, lambda: replicas(name)[0] == args.replicas)
                to_max.append(ready - t)
                assert sorted(await calls) == list(range(n))  # every call answered

            asyncio.run(burst())
            t = time.perf_counter()
            down.append(wait_until(lambda name=name: replicas(name) == (0, 0)) - t)
        results["burst_to_max_ready_seconds"] = {
            "replicas": args.replicas, "calls": 4 * args.replicas, "p50": round(statistics.median(to_max), 3),
            "max": round(max(to_max), 3), "runs": args.runs}
        results["scale_down_seconds"] = {"cooldown": args.cooldown, "p50": round(statistics.median(down), 3),
                                         "max": round(max(down), 3)}
    finally:
        daemon.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
