"""chalkd beside Ray on the same five figures, in one run.

    pip install -e '.[bench]'      # Ray (optional: without it, chalkd runs alone)
    python benchmarks/compare_ray.py [--calls 3000] [--inflight 5000] [--chunks 20000] [--out FILE]

The figures: a trivial function called sequentially (warm p50 and p99), calls/s
for ``--inflight`` calls submitted at once from async code, chunks/s for one
generator of ``--chunks`` dicts, and the first-chunk latency of a generator of
``--chunks`` dicts that never awaits. chalkd runs first, as bench_core.py runs
it (its own daemon, process runtime, durable store on), and is stopped; then
Ray (``ray.init`` on this machine, outside every timing). Both get warmups.
Prints a table (stderr) with the ratios (>1: chalkd is better) and one JSON
object (stdout). Numbers are for the machine it runs on; nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit, percentile  # noqa: E402

# (key, unit, higher is better)
FIGURES = [
    ("call_p50_ms", "ms", False),
    ("call_p99_ms", "ms", False),
    ("burst_calls_per_second", "calls/s", True),
    ("stream_chunks_per_second", "chunks/s", True),
    ("first_chunk_busy_p50_ms", "ms", False),
]


def measure(call: Callable[[int], Any], burst: Callable[[int], float], stream: Callable[[int], Iterator[Any]],
            busy: Callable[[int], Iterator[Any]], args: argparse.Namespace) -> dict[str, float]:
    """The five figures, the same way for both systems (each callable wraps one system's API)."""
    for i in range(300):  # warm up both ends
        call(i)
    lat = []
    for i in range(args.calls):
        t = time.perf_counter()
        call(i)
        lat.append((time.perf_counter() - t) * 1000)
    burst(500)
    elapsed = burst(args.inflight)
    sum(1 for _ in stream(1000))
    t = time.perf_counter()
    n = sum(1 for _ in stream(args.chunks))
    streamed = time.perf_counter() - t
    assert n == args.chunks, n
    first = []
    for _ in range(args.first_reps + 2):
        t = time.perf_counter()
        it = busy(args.chunks)
        next(it)
        first.append((time.perf_counter() - t) * 1000)
        assert sum(1 for _ in it) == args.chunks - 1
    first = first[2:]  # the first two are warmups
    return {"call_p50_ms": round(statistics.median(lat), 3), "call_p99_ms": round(percentile(lat, 99), 3),
            "burst_calls_per_second": round(args.inflight / elapsed),
            "stream_chunks_per_second": round(n / streamed),
            "first_chunk_busy_p50_ms": round(statistics.median(first), 3),
            "first_chunk_busy_p99_ms": round(percentile(first, 99), 3)}


def run_chalkd(args: argparse.Namespace) -> dict[str, float]:
    daemon = start_daemon("--durability", "normal", prefix="chalkd-bench-ray-")
    try:
        import chalkcompute

        @chalkcompute.function
        def add(x: int, y: int) -> int:
            return x + y

        @chalkcompute.function
        def stream(n: int):
            for i in range(n):
                yield {"i": i, "v": 1.5}

        @chalkcompute.function
        async def busy(n: int):
            for i in range(n):  # never awaits
                yield {"i": i, "v": 1.5}

        def burst(n: int) -> float:
            async def go() -> float:
                t = time.perf_counter()
                out = await asyncio.gather(*(add.aio(i, 1) for i in range(n)))
                assert out == [i + 1 for i in range(n)]
                return time.perf_counter() - t
            return asyncio.run(go())

        for f in (add, stream, busy):
            f.wait_ready()
        return measure(lambda i: add(i, 1), burst, stream, busy, args)
    finally:
        daemon.stop()


def run_ray(args: argparse.Namespace) -> dict[str, float] | None:
    try:
        import ray
    except ImportError:
        print("Ray is not installed (pip install -e '.[bench]'): running chalkd alone", file=sys.stderr)
        return None
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=True)
    try:
        @ray.remote
        def add(x: int, y: int) -> int:
            return x + y

        @ray.remote(num_returns="streaming")
        def stream(n: int):
            for i in range(n):
                yield {"i": i, "v": 1.5}

        @ray.remote(num_returns="streaming")
        def busy(n: int):
            for i in range(n):  # a sync generator: it never yields the thread either
                yield {"i": i, "v": 1.5}

        def drain(gen) -> Iterator[Any]:
            for ref in gen:
                yield ray.get(ref)

        def burst(n: int) -> float:
            async def go() -> float:
                t = time.perf_counter()
                refs = [add.remote(i, 1) for i in range(n)]
                out = ray.get(refs)
                assert out == [i + 1 for i in range(n)]
                return time.perf_counter() - t
            return asyncio.run(go())

        return measure(lambda i: ray.get(add.remote(i, 1)), burst,
                       lambda n: drain(stream.remote(n)), lambda n: drain(busy.remote(n)), args)
    finally:
        ray.shutdown()


def table(chalkd: dict[str, float], ray: dict[str, float] | None) -> str:
    lines = [f"{'figure':28} {'chalkd':>12} {'ray':>12} {'chalkd better by':>17}"]
    for key, unit, higher in FIGURES:
        c = chalkd[key]
        r = ray[key] if ray else None
        ratio = "" if not r or not c else f"{(c / r if higher else r / c):.2f}x"
        lines.append(f"{key:28} {c:>12} {'-' if r is None else r:>12} {ratio:>17}   ({unit})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--inflight", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--first-reps", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    chalkd = run_chalkd(args)
    ray = run_ray(args)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "chalkd": chalkd,
                     "ray": ray}
    if ray is not None:
        import ray as ray_module
        results["ray_version"] = ray_module.__version__
        results["chalkd_better_by"] = {k: round((chalkd[k] / ray[k]) if higher else (ray[k] / chalkd[k]), 2)
                                       for k, _, higher in FIGURES if chalkd[k] and ray[k]}
    print(table(chalkd, ray), file=sys.stderr)
    emit(results, args.out)


if __name__ == "__main__":
    main()
