"""Durability end to end: a real full disk (a small tmpfs as the home) and poison calls (kill -9).

The full-disk test needs to mount a tmpfs (root, or CAP_SYS_ADMIN); elsewhere it
is skipped with the reason. tests/unit/test_queue_durability.py covers the same
paths everywhere with SQLite's max_page_count.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from chalkcompute import FunctionCall, RemoteFunction, ResourceExhaustedError
from chalkcompute.exceptions import FunctionError
from tests.conftest import Daemon, wait_for


def gated_blob(x: int, gate_dir: str) -> str:
    import os
    import time

    with open(os.path.join(gate_dir, f"started-{x}-{os.getpid()}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    return str(x) * 300_000     # 300 KB: its commit needs new pages


def echo(s: str) -> int:
    return len(s)


def hang_forever(gate_dir: str) -> None:
    import os
    import time

    with open(os.path.join(gate_dir, f"started-{os.getpid()}"), "w"):
        pass
    while True:
        time.sleep(1)


@pytest.fixture
def small_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(home)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a small home (needs root): {proc.stderr.strip()}")
    yield home
    subprocess.run(["umount", "-l", str(home)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of path's filesystem."""
    with open(path, "wb", buffering=0) as f:   # unbuffered: ENOSPC shows in write(), not in close()
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
        # The last partial MiB too.
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.mark.timeout(240)
def test_a_full_disk_refuses_new_calls_holds_running_ones_and_loses_nothing(small_home, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    d = Daemon(small_home)
    d.log_path = tmp_path / "daemon.log"   # not on the disk that fills
    d.start()
    try:
        fn = RemoteFunction(gated_blob, name="gated_blob", target=d.target, max_replicas=1)
        small = RemoteFunction(echo, name="echo", target=d.target)
        fn.wait_ready()
        small.wait_ready()
        # One call runs, two wait; all three are accepted (committed) before the disk fills.
        calls = [fn.spawn(i, str(gate)) for i in range(3)]
        wait_for(lambda: list(gate.glob("started-0-*")), what="the first call to start")
        fill(small_home / "filler")

        # A new call is refused with the clear error and never accepted.
        with pytest.raises(ResourceExhaustedError, match=f"chalkd's disk is full at {small_home}: .* MB free"):
            small("x" * 400_000)
        with pytest.raises(ResourceExhaustedError, match="chalkd's disk is full"):
            small("y")   # even a small one, while the disk is known full

        # The running call finishes; its result waits in memory for space.
        results: dict[int, str] = {}
        done = threading.Event()

        def collect() -> None:
            for i, c in enumerate(calls):
                results[i] = c.get(timeout=120)
            done.set()
        threading.Thread(target=collect, daemon=True).start()
        (gate / "go").touch()
        wait_for(lambda: "holding" in d.log(), what="the daemon to hold writes")
        assert not results   # nothing delivered before it is stored
        # Reads keep being served meanwhile.
        assert RemoteFunction.from_name("echo", target=d.target).info is not None

        (small_home / "filler").unlink()       # space returns; the daemon recovers by itself
        assert done.wait(120)
        assert results == {i: str(i) * 300_000 for i in range(3)}
        assert small("z") == 1

        # No accepted call lost after a restart.
        d.stop()
        d.start()
        for i, c in enumerate(calls):
            assert FunctionCall.from_id(c.object_id, target=d.target).get(timeout=60) == str(i) * 300_000
    finally:
        d.stop()


@pytest.mark.timeout(240)
def test_a_call_running_each_time_the_daemon_dies_fails_after_three(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    d = Daemon(tmp_path / "home").start()
    try:
        fn = RemoteFunction(hang_forever, name="hang_forever", target=d.target)
        fn.wait_ready()
        call = fn.spawn(str(gate))
        for n in range(1, 4):
            # wait_for calls the predicate before this iteration ends: n is the current one.
            wait_for(lambda: len(list(gate.glob("started-*"))) == n, what=f"attempt {n} to start")  # noqa: B023
            # Its "attempt started" mark commits right after dispatch, before the worker can start it.
            d.kill9()
            d.start()
        with pytest.raises(FunctionError, match="was running each of the last 3 times chalkd died; "
                                                "not running it again"):
            FunctionCall.from_id(call.object_id, target=d.target).get(timeout=60)
        assert len(list(gate.glob("started-*"))) == 3
    finally:
        d.stop()

