"""Queue-policy benchmarks: overhead on the warm call path, map throughput, batching.

    python benchmarks/bench_policies.py [--calls 2000] [--map 100000] [--batch-items 20000] [--out FILE]
                                        [--only overhead|map|batching]   (repeatable; default: all)

Starts its own chalkd (process runtime, default durability) on a free port with
a temporary home and prints one JSON object:

- ``policy_overhead``: p50 of sequential warm calls of the same handler with no
  policy and with each policy on (a generous rate limit, a concurrency key, a
  retry policy, a timeout), and each one's overhead against the baseline.
  Target: < 5% on p50.
- ``map``: ``fn.map`` over N inputs, inputs/s. Target: >= 20,000 on 2 cores.
- ``batching``: items/s through a handler with ``max_batching_size=32`` fed by map.

Variants take turns call by call so machine noise spreads evenly; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per variant")
    parser.add_argument("--map", type=int, default=100_000, help="inputs for the map benchmark")
    parser.add_argument("--batch-items", type=int, default=20_000)
    parser.add_argument("--out", default="")
    parser.add_argument("--only", action="append", choices=("overhead", "map", "batching"),
                        help="run only this part (repeat for several); all by default")
    args = parser.parse_args()
    parts = set(args.only or ("overhead", "map", "batching"))

    daemon = start_daemon()
    import chalkcompute
    from chalkcompute import ConcurrencyPolicy, RateLimitPolicy, RemoteFunction, RetryPolicy

    def inc(x: int) -> int:
        return x + 1

    def inc_batch(xs: list[int]) -> list[int]:
        return [x + 1 for x in xs]

    variants = {
        "none": RemoteFunction(inc, name="inc_none"),
        "rate_limit": RemoteFunction(inc, name="inc_rate", rate_limit=RateLimitPolicy(rate=1_000_000)),
        "concurrency_key": RemoteFunction(inc, name="inc_key",
                                          concurrency=ConcurrencyPolicy(max_concurrent=1, key="bench")),
        "retries": RemoteFunction(inc, name="inc_retries", retries=RetryPolicy.exponential(attempts=3)),
        "timeout": RemoteFunction(inc, name="inc_timeout", timeout=60),
    }
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    if "overhead" not in parts:
        variants = {"none": variants["none"]}
    try:
        for fn in variants.values():
            fn.wait_ready()
            for i in range(300):
                fn(i)
        lat: dict[str, list[float]] = {name: [] for name in variants}
        # Variants take turns call by call, so drift on the machine hits them all alike.
        for i in range(args.calls if "overhead" in parts else 0):
            for name, fn in variants.items():
                t = time.perf_counter()
                fn(i)
                lat[name].append((time.perf_counter() - t) * 1000)
        if "overhead" in parts:
            base = statistics.median(lat["none"])
            results["policy_overhead"] = {
                name: {"p50_ms": round(statistics.median(v), 3),
                       "overhead_pct": round((statistics.median(v) / base - 1) * 100, 1)}
                for name, v in lat.items()
            }

        mapped = variants["none"]
        if "map" in parts:
            list(mapped.map(range(2000)))  # warm up
            t = time.perf_counter()
            out = list(mapped.map(range(args.map)))
            took = time.perf_counter() - t
            assert out == [i + 1 for i in range(args.map)]
            results["map"] = {"inputs": args.map, "seconds": round(took, 2),
                              "inputs_per_s": round(args.map / took)}
        if "batching" in parts:
            batched = chalkcompute.RemoteFunction(inc_batch, name="inc_batch", max_batching_size=32,
                                                  max_buffer_duration=5)
            batched.wait_ready()
            list(batched.map(range(1000)))
            t = time.perf_counter()
            out = list(batched.map(range(args.batch_items)))
            took = time.perf_counter() - t
            assert out == [i + 1 for i in range(args.batch_items)]
            results["batching"] = {"max_batching_size": 32, "items": args.batch_items, "seconds": round(took, 2),
                                   "items_per_s": round(args.batch_items / took)}
    finally:
        daemon.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
