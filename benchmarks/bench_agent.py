"""In-container agent benchmark: ``echo hi`` round trips through ``agent_exec``.

    python benchmarks/bench_agent.py [--execs 200] [--loop uvloop|asyncio] [--out FILE]

Starts the agent (``chalkcompute/agent/__main__.py``) as a local subprocess with
its socket in a temporary directory, runs ``--execs`` sequential ``echo hi``
execs through :func:`chalkd.containers.agent_client.agent_exec` on the loop the
daemon uses (uvloop where installed), and prints one JSON object: ``p50_ms``,
``p99_ms``, ``mean_ms`` of those round trips, and for scale
``spawn_baseline``, the same ``echo`` run by ``subprocess.run`` in this process
(the part of a round trip that is process creation, not the agent). In a
container the daemon adds about 1 ms. Numbers are for the machine it runs on;
nothing here asserts.
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


async def echo_round_trips(sock: Path, n: int, warmup: int = 20) -> list[float]:
    await wait_agent_ready(sock, 30)
    for _ in range(warmup):
        await agent_exec(sock, ["echo", "hi"])
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await agent_exec(sock, ["echo", "hi"])
        out.append((time.perf_counter() - t) * 1000)
        assert r.stdout == b"hi\n" and r.exit_code == 0, r
    return out


def spawn_baseline(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(["echo", "hi"], stdout=subprocess.PIPE, check=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
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

    tmp = Path(tempfile.mkdtemp(prefix="chalk-agent-bench-"))
    sock = tmp / "agent.sock"
    agent = subprocess.Popen([sys.executable, str(ROOT / "chalkcompute" / "agent" / "__main__.py"),
                              "--socket", str(sock)], cwd=tmp)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loop": args.loop}}
    try:
        lat = run(echo_round_trips(sock, args.execs))
        results.update(summary(lat))
        results["spawn_baseline"] = summary(spawn_baseline(args.execs))
    finally:
        agent.terminate()
        agent.wait(10)
    emit(results, args.out)


if __name__ == "__main__":
    main()
