"""A caller that stops reading does not grow the daemon without bound (RSS measured, not timed).

The caller, a subprocess, spawns calls whose results are 1 MB each, then is
stopped (SIGSTOP): every result the daemon would send it piles up. With
``--memory-budget 64MiB`` and 4 MiB messages its session's outbox may hold
12 MiB; past that, once the caller has read nothing for 3 s, the session is
dropped with RESOURCE_EXHAUSTED and the results wait in the store, where a
caller asking by call id finds them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from chalkcompute import FunctionCall, RemoteFunction
from tests.conftest import ROOT, Daemon, wait_for

N_CALLS = 200
RESULT_BYTES = 1_000_000


def megabyte(i: int, gate: str) -> bytes:
    import os
    import time

    while not os.path.exists(gate):   # held until the caller is stopped, so it reads none of them
        time.sleep(0.01)
    time.sleep(0.05)                  # 20 MB/s: results keep coming well past the stall the daemon allows
    return bytes([i % 256]) * 1_000_000


CALLER = f"""
import sys
from chalkcompute import RemoteFunction
from tests.integration.test_memory_bounds import megabyte
fn = RemoteFunction.from_name("megabyte")
for i in range({N_CALLS}):
    print(fn.spawn(i, sys.argv[1]).object_id, flush=True)
print("all accepted", flush=True)
sys.stdin.read()   # then the test stops this process: it reads nothing more
"""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.timeout(300)
def test_a_caller_that_stops_reading_is_dropped_and_the_daemon_stays_bounded(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--memory-budget", "64MiB", "--max-message-size", str(4 * 2**20)))
    d.start()
    caller = None
    try:
        fn = RemoteFunction(megabyte, name="megabyte", target=d.target, max_replicas=1)
        fn.wait_ready()
        gate = tmp_path / "go"
        gate.touch()
        assert fn(1, str(gate)) == b"\x01" * RESULT_BYTES
        gate.unlink()
        assert d.proc is not None
        before = rss(d.proc.pid)
        caller = subprocess.Popen([sys.executable, "-c", CALLER, str(gate)], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "CHALK_COMPUTE_TARGET": d.target})
        assert caller.stdout is not None
        ids = [caller.stdout.readline().strip() for _ in range(N_CALLS)]
        assert caller.stdout.readline().strip() == "all accepted"
        caller.send_signal(signal.SIGSTOP)
        gate.touch()
        # Every call runs; its results have nowhere to go but the store.
        last = FunctionCall.from_id(ids[-1], target=d.target).get(timeout=240)
        assert last == bytes([(N_CALLS - 1) % 256]) * RESULT_BYTES
        wait_for(lambda: "dropping a caller session: the caller stopped reading" in d.log(),
                 what="the daemon to drop the stopped caller")
        grown = rss(d.proc.pid) - before
        # 200 MB of results were produced for that caller; the daemon kept a fraction (what came in the stall).
        assert grown < 150 * 2**20, f"the daemon grew by {grown / 2**20:.0f} MiB"
        # Nothing is lost: another caller re-attaches and gets a result the dropped one never read.
        assert FunctionCall.from_id(ids[0], target=d.target).get(timeout=60) == b"\x00" * RESULT_BYTES
    finally:
        if caller is not None:
            caller.kill()
            caller.wait(10)
            for pipe in (caller.stdin, caller.stdout):
                if pipe is not None:
                    pipe.close()
        d.stop()
