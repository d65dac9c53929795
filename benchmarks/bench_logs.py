"""Call logs: the warm call with output capture, silent and printing; lines/s from a chatty handler.

    python benchmarks/bench_logs.py [--calls 3000] [--lines 10000] [--out FILE]

Starts its own chalkd (process runtime) and prints one JSON object:

- ``warm_p50_ms``: a handler that prints nothing and one that prints a line per
  call, the caller showing live output (``CHALK_SHOW_OUTPUT=1``, stderr
  counted, not written); compare the silent one with ``bench_core.py``'s
  ``add`` before capture existed (the README has both);
- ``chatty``: one call printing ``--lines`` lines: the lines/s reaching the
  caller live (to the last line), and reading them back with ``FunctionCall.logs()``.

Numbers are for the machine it runs on; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("CHALK_SHOW_OUTPUT", "1")

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit, percentile  # noqa: E402


class _Counter:
    """A stderr that counts the live lines it is given (and the last one seen)."""

    def __init__(self) -> None:
        self.lines = 0
        self.seen = threading.Event()
        self.wait_for = ""

    def write(self, s: str) -> int:
        self.lines += s.count("\n")
        if self.wait_for and self.wait_for in s:
            self.seen.set()
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    daemon = start_daemon()
    import chalkcompute

    @chalkcompute.function
    def silent(x: int) -> int:
        return x + 1

    @chalkcompute.function
    def one_line(x: int) -> int:
        print(f"got {x}")
        return x + 1

    @chalkcompute.function
    def chatty(n: int) -> int:
        for i in range(n):
            print(f"line {i} of {n}")
        return n

    counter = _Counter()
    real_err, sys.stderr = sys.stderr, counter  # type: ignore[assignment]
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    try:
        p50 = {}
        for fn in (silent, one_line):
            fn.wait_ready()
            for i in range(300):
                fn(i)
            lat = []
            for i in range(args.calls):
                t = time.perf_counter()
                fn(i)
                lat.append((time.perf_counter() - t) * 1000)
            p50[fn.info.function_name] = {"p50": round(statistics.median(lat), 3),
                                          "p99": round(percentile(lat, 99), 3)}
        results["warm_ms"] = p50

        chatty.wait_ready()
        chatty(10)
        last = f"line {args.lines - 1} of {args.lines}"
        counter.wait_for = last
        counter.seen.clear()
        t = time.perf_counter()
        call = chatty.spawn(args.lines)
        call.get(timeout=300)
        returned = time.perf_counter() - t
        counter.seen.wait(60)
        live = time.perf_counter() - t
        t = time.perf_counter()
        stored = call.logs()
        read_back = time.perf_counter() - t
        results["chatty"] = {
            "lines": args.lines, "returned_s": round(returned, 3),
            "live_lines_per_s": round(args.lines / live) if counter.seen.is_set() else 0,
            "stored_lines": len(stored), "logs_read_s": round(read_back, 3),
            "logs_read_lines_per_s": round(len(stored) / read_back) if read_back else 0,
        }
    finally:
        sys.stderr = real_err
        daemon.stop()
    emit(results, args.out)


if __name__ == "__main__":
    main()
