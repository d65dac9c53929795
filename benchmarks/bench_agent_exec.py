"""Agent protocol v2 benchmark: exec-session stdout/stdin throughput and echo round trips.

    python benchmarks/bench_agent_exec.py [--mib 1024] [--repeat 3] [--execs 200] [--loop uvloop|asyncio] [--out FILE]

Starts the agent (``chalkcompute/agent/__main__.py``) as a local subprocess with its socket in a
temporary directory and drives it through :mod:`chalkd.sandboxes.agent_link` on the loop the daemon
uses (uvloop where installed). Prints one JSON object:

* ``stdout_mb_s``: ``head -c <mib>M /dev/zero`` in a session, every batch of events acked as it
  arrives (window 8 MiB): best of ``--repeat``, MB/s (10^6 bytes), with ``stdout_events`` (how many
  output events carried it) for that run;
* ``stdin_mb_s``: ``--mib`` MiB written to ``cat >/dev/null`` within the stdin credit, best of ``--repeat``;
* ``echo``: p50/p99/mean ms of ``echo hi`` as a session (start, events, ack of the exit, close),
  ``--execs`` times in a row; ``echo_v1``: the same through v1's ``agent_exec`` for comparison.

This is the agent and its link alone: the daemon's gRPC stream to the SDK comes on top. Numbers are
for the machine it runs on (a shared one gives noisy figures); nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stats import emit, summary  # noqa: E402
from chalkd.containers.agent_client import agent_exec, wait_agent_ready  # noqa: E402
from chalkd.sandboxes.agent_link import ExecLink  # noqa: E402

_ids = iter(range(1 << 30))


def _sid(kind: str) -> str:
    return f"{kind}-{next(_ids)}"


async def stdout_run(sock: Path, nbytes: int) -> tuple[float, int]:
    """(seconds, events) to carry ``nbytes`` of stdout."""
    t = time.perf_counter()
    link = await ExecLink.start(sock, _sid("out"), ["head", "-c", str(nbytes), "/dev/zero"])
    got = events = 0
    exit_code = None
    while batch := await link.next_events():
        for ev in batch:
            got += len(ev.data)
            events += ev.kind in ("stdout", "stderr")
            if ev.kind == "exit":
                exit_code = ev.exit_code
        await link.ack(max(ev.seq for ev in batch))
    await link.close()
    elapsed = time.perf_counter() - t
    assert got == nbytes and exit_code == 0, (got, exit_code)
    return elapsed, events


async def stdin_run(sock: Path, nbytes: int) -> float:
    block = bytes(1 << 20)
    t = time.perf_counter()
    link = await ExecLink.start(sock, _sid("in"), ["sh", "-c", "cat >/dev/null"])
    left = nbytes
    pending: list = []
    while left:
        while link.stdin_credit == 0:
            pending += await link.next_events()  # stdin_credit events raise it
        n = min(left, link.stdin_credit, len(block))
        await link.write_stdin(block[:n])
        left -= n
    await link.close_stdin()
    exit_code = None
    while batch := await link.next_events():
        exit_code = next((ev.exit_code for ev in batch if ev.kind == "exit"), exit_code)
        seqs = [ev.seq for ev in batch if ev.seq]
        if seqs:
            await link.ack(max(seqs))
    await link.close()
    assert exit_code == 0, exit_code
    return time.perf_counter() - t


async def echo_session(sock: Path) -> None:
    link = await ExecLink.start(sock, _sid("echo"), ["echo", "hi"])
    out = b""
    while batch := await link.next_events():
        out += b"".join(ev.data for ev in batch if ev.kind == "stdout")
        await link.ack(max(ev.seq for ev in batch))
    await link.close()
    assert out == b"hi\n", out


async def bench(sock: Path, nbytes: int, repeat: int, execs: int) -> dict:
    await wait_agent_ready(sock, 30)
    out: dict = {}
    runs = [await stdout_run(sock, nbytes) for _ in range(repeat)]
    best_t, events = min(runs)
    out["stdout_mb_s"] = round(nbytes / best_t / 1e6, 1)
    out["stdout_runs_mb_s"] = [round(nbytes / t / 1e6, 1) for t, _ in runs]
    out["stdout_events"] = events
    t = min([await stdin_run(sock, nbytes) for _ in range(repeat)])
    out["stdin_mb_s"] = round(nbytes / t / 1e6, 1)
    for _ in range(20):
        await echo_session(sock)
    lat = []
    for _ in range(execs):
        t0 = time.perf_counter()
        await echo_session(sock)
        lat.append((time.perf_counter() - t0) * 1000)
    out["echo"] = summary(lat)
    lat = []
    for _ in range(execs):
        t0 = time.perf_counter()
        await agent_exec(sock, ["echo", "hi"])
        lat.append((time.perf_counter() - t0) * 1000)
    out["echo_v1"] = summary(lat)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024, help="MiB of stdout (and of stdin) per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"],
                        help="the client's event loop (the daemon runs on uvloop where installed)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    run = asyncio.run
    if args.loop == "uvloop":
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            args.loop = "asyncio"

    tmp = Path(tempfile.mkdtemp(prefix="chalk-agent-exec-bench-"))
    sock = tmp / "agent.sock"
    agent = subprocess.Popen([sys.executable, str(ROOT / "chalkcompute" / "agent" / "__main__.py"),
                              "--socket", str(sock)], cwd=tmp)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loop": args.loop},
                     "mib": args.mib}
    try:
        results.update(run(bench(sock, args.mib << 20, args.repeat, args.execs)))
    finally:
        agent.terminate()
        agent.wait(10)
    emit(results, args.out)


if __name__ == "__main__":
    main()
