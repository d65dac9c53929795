"""The WAL's size under load and after it: does the -wal file come back down?

    python benchmarks/bench_wal.py [--calls 1000000] [--batch 5000] [--out FILE]

Starts its own chalkd (process runtime, durable store on, ``--durability normal``),
runs ``--calls`` tiny calls through the public SDK in async batches of ``--batch``,
samples the size of ``chalkd.db-wal`` every 50 ms from a thread, then waits (up to
30 s) for the idle checkpoint, and prints one JSON object: the WAL's peak and
final size, the database's size, and the call rate. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit  # noqa: E402


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--durability", default="normal", choices=["normal", "full"])
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    daemon = start_daemon("--durability", args.durability, prefix="chalkd-bench-wal-")
    db, wal = daemon.home / "chalkd.db", daemon.home / "chalkd.db-wal"
    import chalkcompute

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append(size(wal))

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "durability": args.durability}, "calls": args.calls, "batch": args.batch}
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        add.wait_ready()
        for i in range(300):
            add(i, 1)

        async def run() -> None:
            done = 0
            while done < args.calls:
                n = min(args.batch, args.calls - done)
                out = await asyncio.gather(*(add.aio(i, 1) for i in range(n)))
                assert out[-1] == n
                done += n

        sampler.start()
        t = time.perf_counter()
        asyncio.run(run())
        elapsed = time.perf_counter() - t
        stop.set()
        sampler.join()
        at_end = size(wal)
        # The daemon truncates the WAL once its writer has been idle a moment: poll for it.
        t_idle = time.perf_counter()
        deadline = time.monotonic() + 30
        while size(wal) > 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        mb = 1e6
        results["run"] = {"seconds": round(elapsed, 1), "calls_per_second": round(args.calls / elapsed)}
        results["wal_mb"] = {
            "peak_during": round(max(samples, default=0) / mb, 2),
            "mean_during": round(sum(samples) / max(1, len(samples)) / mb, 2),
            "at_end_of_calls": round(at_end / mb, 2),
            "after_idle": round(size(wal) / mb, 2),
            "seconds_to_shrink": round(time.perf_counter() - t_idle, 2),
        }
        results["db_mb"] = round(size(db) / mb, 2)
    finally:
        stop.set()
        daemon.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
