"""Where a warm call's microseconds go: py-spy over the caller, the daemon and the worker.

    pip install -e '.[bench]'       # py-spy
    python benchmarks/profile_call_path.py [--calls 20000] [--rate 2000] [--top 12] [--out FILE]

Starts its own chalkd (process runtime, durable store on), makes ``--calls``
sequential warm calls of ``add`` while one ``py-spy record`` per process samples
it (the caller: this process; the daemon; the worker replica), and prints JSON:
per process, the functions with the most self time and the most inclusive time,
each as microseconds per call (share of samples x wall time / calls). Sampling
(not tracing): the figures are approximate, and py-spy itself takes CPU on a
small machine. Idle samples (a thread waiting in select/epoll/a lock) are left
out, so a process's rows add up to its CPU time per call, not to the latency.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit  # noqa: E402


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _worker_pid(daemon_pid: int) -> int:
    """The replica: a descendant of the daemon running chalkcompute.worker."""
    todo = _children(daemon_pid)
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"chalkcompute.worker" in cmd:
            return pid
        todo += _children(pid)
    raise RuntimeError("no worker process found under the daemon")


def _summarize(raw: Path, calls: int, rate: int, top: int) -> dict:
    """py-spy's raw (collapsed stacks) output as microseconds per call, self and inclusive."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")" if " (" in f else f
                  for f in stack.split(";")[1:]]  # the first frame is the thread
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    # Each sample stands for 1/rate seconds of one thread on CPU.
    per_sample_us = 1e6 / rate / calls

    def rows(counter: collections.Counter[str]) -> list[list]:
        return [[name, round(n * per_sample_us, 2)] for name, n in counter.most_common(top)]

    return {"busy_us_per_call": round(total * per_sample_us, 1), "self_us_per_call": rows(own),
            "inclusive_us_per_call": rows(incl)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=2000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        sys.exit(0)

    daemon = start_daemon()
    import chalkcompute

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    tmp = Path(tempfile.mkdtemp(prefix="chalkd-profile-"))
    results: dict = {"calls": args.calls, "rate": args.rate}
    try:
        add.wait_ready()
        for i in range(500):
            add(i, 1)
        assert daemon.proc is not None
        pids = {"caller": os.getpid(), "daemon": daemon.proc.pid, "worker": _worker_pid(daemon.proc.pid)}
        spies = {name: subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format",
                                         "raw", "--nonblocking", "--threads", "-o", str(tmp / f"{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items()}
        time.sleep(1.0)  # py-spy attaches
        t = time.perf_counter()
        for i in range(args.calls):
            add(i, 1)
        wall = time.perf_counter() - t
        for p in spies.values():
            p.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for p in spies.values():
            p.wait(60)
        results["wall_us_per_call"] = round(wall * 1e6 / args.calls, 1)
        for name in pids:
            raw = tmp / f"{name}.txt"
            if raw.exists():
                results[name] = _summarize(raw, args.calls, args.rate, args.top)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    emit(results, args.out)


if __name__ == "__main__":
    main()
