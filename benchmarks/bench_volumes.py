"""Volume benchmarks: put/get throughput and many small files in one batch.

    python benchmarks/bench_volumes.py [--big-mib 256] [--small-files 10000] [--repeat 3] [--out FILE]

Starts its own chalkd (process runtime, temporary home) and prints one JSON object:

* ``put_<size>_mb_s`` / ``get_<size>_mb_s``: best of ``--repeat`` runs, MB/s
  (10^6 bytes), for one 1 MiB and one ``--big-mib`` MiB file. Large puts use
  ``put_file`` (streamed from disk), large gets ``get_file`` (streamed to disk);
  the 1 MiB ones ``put``/``get`` in memory. Both through the daemon's local
  lane (its unix socket), which a client on the same machine uses by default;
  ``*_grpc`` rows force gRPC over loopback (``CHALK_TRANSPORT=grpc``).
* ``put_<size>_cpu_s`` / ``get_<size>_cpu_s``: CPU seconds (user + system) of
  the daemon and of this client per large transfer, the mean over the runs:
  steadier than MB/s on a machine others use.
* ``small_files_per_s``: ``--small-files`` files of 100 bytes in one
  ``batch_upload``, committed as one batch.

``--durability full`` runs the daemon so that every commit is fsync'd first
(then a large put is bound by the disk's sync speed).
* ``daemon_peak_rss_mib``: the daemon's peak RSS over the run.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import emit  # noqa: E402
from tests.conftest import Daemon  # noqa: E402  (the same daemon harness the tests use)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def throughput(vol, tmp: Path, big_mib: int, repeat: int, tag: str, daemon_proc) -> dict:
    import psutil

    me = psutil.Process()
    out: dict = {}
    small = os.urandom(2**20)
    t = best(lambda: vol.put("one-mib", small), repeat * 5)
    out[f"put_1mib_mb_s{tag}"] = round(2**20 / t / 1e6, 1)
    t = best(lambda: vol.get("one-mib"), repeat * 5)
    out[f"get_1mib_mb_s{tag}"] = round(2**20 / t / 1e6, 1)
    src, dst = tmp / "big.bin", tmp / "back.bin"
    size = big_mib * 2**20
    for op, fn in (("put", lambda: vol.put_file("big.bin", src)), ("get", lambda: vol.get_file("big.bin", dst))):
        d0, c0 = cpu_seconds(daemon_proc), cpu_seconds(me)
        t = best(fn, repeat)
        out[f"{op}_{big_mib}mib_mb_s{tag}"] = round(size / t / 1e6, 1)
        # CPU per transfer (mean over the runs): less sensitive than MB/s to others on the machine.
        out[f"{op}_{big_mib}mib_cpu_s{tag}"] = {"daemon": round((cpu_seconds(daemon_proc) - d0) / repeat, 3),
                                               "client": round((cpu_seconds(me) - c0) / repeat, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--durability", default="normal", choices=["normal", "full"],
                        help="the daemon's: 'full' fsyncs every committed file")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import psutil

    from chalkcompute import VolumeClient

    with tempfile.TemporaryDirectory(prefix="chalkd-bench-volumes-") as tmpdir:
        tmp = Path(tmpdir)
        block = os.urandom(2**20)
        with open(tmp / "big.bin", "wb") as f:
            for _ in range(args.big_mib):
                f.write(block)
        daemon = Daemon(tmp / "home", extra_args=("--durability", args.durability)).start()
        proc = psutil.Process(daemon.proc.pid)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
                             "durability": args.durability}
            vol = VolumeClient(daemon.target).create("bench")
            results.update(throughput(vol, tmp, args.big_mib, args.repeat, "", proc))
            os.environ["CHALK_TRANSPORT"] = "grpc"
            try:
                results.update(throughput(VolumeClient(daemon.target).get("bench"), tmp, args.big_mib,
                                          args.repeat, "_grpc", proc))
            finally:
                del os.environ["CHALK_TRANSPORT"]
            payload = b"x" * 100

            def many() -> None:
                with vol.batch_upload() as batch:
                    for i in range(args.small_files):
                        batch.put(f"small/{i // 1000}/{i}.txt", payload)

            t = best(many, 1)
            results["small_files_per_s"] = round(args.small_files / t)
            results["small_files_batch_s"] = round(t, 3)
            done.set()
            sampler.join()
            results["daemon_peak_rss_mib"] = round(peak[0] / 2**20, 1)
        finally:
            done.set()
            daemon.stop()
    emit(results, out=args.out)


if __name__ == "__main__":
    main()
