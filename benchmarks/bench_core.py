"""Core benchmarks: warm call latency, throughput, streaming, first chunk, cold start.

    python benchmarks/bench_core.py [--calls 3000] [--inflight 5000] [--chunks 20000] [--out FILE]

Starts its own chalkd (process runtime, durable store on with the default
``--durability normal``) on a free port with a temporary home, and prints one
JSON object. Numbers are for the machine it runs on; nothing here asserts.
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
from benchmarks.stats import emit, percentile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--inflight", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--durability", default="normal", choices=["normal", "full"])
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    daemon = start_daemon("--durability", args.durability)
    import chalkcompute
    from chalkcompute import RemoteFunction

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    @chalkcompute.function
    def stream(n: int):
        for i in range(n):
            yield {"i": i, "v": 1.5}

    @chalkcompute.function
    async def first():
        yield 1

    @chalkcompute.function
    async def busy(n: int):
        for i in range(n):  # never awaits: the worker's link must still get the first chunk out at once
            yield {"i": i, "v": 1.5}

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "durability": args.durability}}
    try:
        add.wait_ready()
        for i in range(300):  # warm up both ends
            add(i, 1)
        lat = []
        for i in range(args.calls):
            t = time.perf_counter()
            add(i, 1)
            lat.append((time.perf_counter() - t) * 1000)
        results["call_latency_ms"] = {"p50": round(statistics.median(lat), 3), "p99": round(percentile(lat, 99), 3),
                                      "mean": round(statistics.fmean(lat), 3), "n": len(lat)}

        async def burst(n: int) -> float:
            t = time.perf_counter()
            out = await asyncio.gather(*(add.aio(i, 1) for i in range(n)))
            assert out == [i + 1 for i in range(n)]
            return time.perf_counter() - t

        asyncio.run(burst(500))
        elapsed = asyncio.run(burst(args.inflight))
        results["throughput"] = {"calls_in_flight": args.inflight, "seconds": round(elapsed, 3),
                                 "calls_per_second": round(args.inflight / elapsed)}

        stream.wait_ready()
        sum(1 for _ in stream(1000))
        t = time.perf_counter()
        n = sum(1 for _ in stream(args.chunks))
        elapsed = time.perf_counter() - t
        assert n == args.chunks
        results["streaming"] = {"chunks": n, "seconds": round(elapsed, 3), "chunks_per_second": round(n / elapsed)}

        first.wait_ready()
        fc = []
        for _ in range(300):
            t = time.perf_counter()
            it = first()
            next(it)
            fc.append((time.perf_counter() - t) * 1000)
            list(it)
        results["first_chunk_ms"] = {"p50": round(statistics.median(fc[50:]), 3),
                                     "p99": round(percentile(fc[50:], 99), 3)}

        busy.wait_ready()
        fb = []
        for _ in range(40):
            t = time.perf_counter()
            it = busy(args.chunks)
            next(it)
            fb.append((time.perf_counter() - t) * 1000)
            assert sum(1 for _ in it) == args.chunks - 1
        results["first_chunk_busy_generator_ms"] = {"chunks": args.chunks, "p50": round(statistics.median(fb[5:]), 3),
                                                    "p99": round(percentile(fb[5:], 99), 3)}

        cold = []
        for i in range(5):
            def cold_fn(x: int) -> int:
                return x

            fn = RemoteFunction(cold_fn, name=f"cold_{i}", min_replicas=0, env={"RUN": str(i)})
            fn._ensure_registered()
            t = time.perf_counter()
            fn.wait_ready()
            fn(1)
            cold.append(time.perf_counter() - t)
        results["cold_start_seconds"] = {"p50": round(statistics.median(cold), 3), "max": round(max(cold), 3)}
    finally:
        daemon.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
