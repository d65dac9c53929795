"""Sandbox benchmarks: exec round trip, stdout throughput, create-to-ready, many sandboxes at once.

    python benchmarks/bench_sandbox.py [--execs 200] [--gib 1] [--many 50] [--out FILE]

Starts its own chalkd on the Docker runtime (temporary home; the engine and the
bootstrapped base image must be there) and prints one JSON object:

* ``exec_echo``: ``sandbox.exec("echo", "hi")`` on a warm sandbox, p50/p99 ms
  (issue 14's target: p50 <= 10 ms);
* ``stdout_mb_s``: one exec of ``head -c <gib>GiB /dev/zero`` read to the end
  through ``exec_start`` (target >= 500 MB/s), and the daemon's peak RSS growth;
* ``create_ready_s``: ``client.create(image)`` of an image already built, to
  ready, p50 of 5 (target <= 0.8 s);
* ``many``: ``--many`` sandboxes with default resources alive at once: the
  time to create them all, one exec in each, and the daemon's RSS with them up.

Numbers are for the machine it runs on; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import emit, summary  # noqa: E402
from tests.conftest import Daemon  # noqa: E402  (the same daemon harness the tests use)
from tests.docker.conftest import remove_home_containers  # noqa: E402

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class PeakRss:
    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--many", type=int, default=50)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from chalkcompute import Image, SandboxClient

    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}"}
    with tempfile.TemporaryDirectory(prefix="chalkd-bench-sandbox-") as tmpdir:
        home = Path(tmpdir) / "home"
        daemon = Daemon(home, extra_args=("--runtime", "docker")).start()
        try:
            client = SandboxClient(daemon.target)
            image = Image.debian_slim(PY)
            sb = client.create(image=image)
            for _ in range(10):
                sb.exec("echo", "hi")
            ms = []
            for _ in range(args.execs):
                t = time.perf_counter()
                out = sb.exec("echo", "hi")
                ms.append((time.perf_counter() - t) * 1000)
                assert out.stdout_text == "hi\n"
            results["exec_echo"] = summary(ms)

            size = int(args.gib * 2**30)
            with PeakRss(daemon.proc.pid) as rss:
                t = time.perf_counter()
                proc = sb.exec_start("head", "-c", str(size), "/dev/zero")
                got = sum(len(e.stdout) for e in proc if e.stdout)
                elapsed = time.perf_counter() - t
            assert got == size, got
            results["stdout_mb_s"] = round(size / elapsed / 1e6, 1)
            results["stdout_bytes"] = size
            results["stdout_daemon_rss_growth_mib"] = round((rss.peak - rss.base) / 2**20, 1)

            times = []
            for _ in range(5):
                t = time.perf_counter()
                extra = client.create(image=image)
                times.append(time.perf_counter() - t)
                extra.terminate(0)
            results["create_ready_s"] = {"p50": round(sorted(times)[len(times) // 2], 3),
                                         "min": round(min(times), 3)}

            import psutil

            before = psutil.Process(daemon.proc.pid).memory_info().rss
            t = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                many = list(pool.map(lambda _: client.create(image=image), range(args.many)))
            created = time.perf_counter() - t
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda s: s.exec("echo", "alive").stdout_text, many))
            assert outs == ["alive\n"] * args.many
            rss = psutil.Process(daemon.proc.pid).memory_info().rss
            results["many"] = {"sandboxes": args.many, "create_all_s": round(created, 2),
                               "daemon_rss_mib": round(rss / 2**20, 1),
                               "daemon_rss_growth_mib": round((rss - before) / 2**20, 1)}
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda s: s.terminate(0), [*many, sb]))
        finally:
            daemon.stop()
            remove_home_containers(home)
    emit(results, out=args.out)


if __name__ == "__main__":
    main()
