"""The daemon's memory under sustained load: RSS while N calls run at full speed.

    python benchmarks/bench_memory.py [--calls 1000000] [--inflight 2000] [--every 100000] [--out FILE]

Starts its own chalkd (process runtime, durable store on) on a free port with a
temporary home, submits ``--calls`` small calls from async code, ``--inflight``
at a time, and samples the daemon's resident memory (and the database's WAL
size) every ``--every`` calls and once more after 10 s idle. A daemon whose
buffers are bounded shows a flat line, not one that grows with the count.
Nothing here asserts; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit  # noqa: E402


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--inflight", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    daemon = start_daemon(prefix="chalkd-bench-mem-")
    home = daemon.home
    import chalkcompute

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    proc = psutil.Process(daemon.proc.pid)
    wal = home / "chalkd.db-wal"
    samples: list[dict] = []

    def sample(done: int, started: float) -> None:
        samples.append({"calls": done, "seconds": round(time.perf_counter() - started, 1),
                        "daemon_rss_mib": _mib(proc.memory_info().rss),
                        "wal_mib": _mib(wal.stat().st_size) if wal.exists() else 0.0})
        print(json.dumps(samples[-1]), file=sys.stderr, flush=True)

    async def run() -> float:
        sem = asyncio.Semaphore(args.inflight)
        done = 0
        started = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal done
            try:
                assert await add.aio(i, 1) == i + 1
            finally:
                sem.release()
            done += 1
            if done % args.every == 0:
                sample(done, started)

        tasks: set[asyncio.Task] = set()
        for i in range(args.calls):
            await sem.acquire()
            t = asyncio.get_running_loop().create_task(one(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
        return time.perf_counter() - started

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    try:
        add.wait_ready()
        for i in range(200):
            add(i, 1)
        samples.append({"calls": 0, "seconds": 0.0, "daemon_rss_mib": _mib(proc.memory_info().rss),
                        "wal_mib": _mib(wal.stat().st_size) if wal.exists() else 0.0})
        elapsed = asyncio.run(run())
        time.sleep(10)
        idle = {"daemon_rss_mib": _mib(proc.memory_info().rss),
                "wal_mib": _mib(wal.stat().st_size) if wal.exists() else 0.0}
        results.update(calls=args.calls, inflight=args.inflight, seconds=round(elapsed, 1),
                       calls_per_second=round(args.calls / elapsed), samples=samples, after_10s_idle=idle)
    finally:
        daemon.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
