"""A batch call is durable like a single call: chalkd killed with SIGKILL mid-batch and restarted,
the caller (alive all along) re-attaches and gets every row's result once, and the rows that had
finished before the kill do not run again."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from chalkcompute import RemoteFunction, RetryPolicy
from chalkcompute._batch import BatchOutcome, call_batch
from chalkcompute._client import run_sync
from tests.conftest import wait_for


def gated_rows(x: int, gate_dir: str) -> int:
    import os
    import time

    with open(os.path.join(gate_dir, "runs"), "a") as f:  # one line per run of a row
        f.write(f"{x}\n")
    if x == 2:
        failed_once = os.path.join(gate_dir, "failed-once")
        if not os.path.exists(failed_once):
            open(failed_once, "w").close()
            raise RuntimeError("row 2 fails on its first run")
        # Its retry (the only row left) waits for the test, across the daemon's death.
        open(os.path.join(gate_dir, f"retry-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(gate_dir, "go")):
            time.sleep(0.01)
    return x + 100


@pytest.mark.timeout(180)
def test_kill9_mid_batch_reattaches_and_every_row_arrives_once(fresh_daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(gated_rows, name="gated_rows", target=fresh_daemon.target,
                        retries=RetryPolicy(max_retries=3, initial_wait_seconds=0.0))
    fn.wait_ready()
    outcomes: list[BatchOutcome] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            outcomes.append(run_sync(call_batch(fn, pa.record_batch({
                "x": list(range(6)), "gate_dir": [str(gate)] * 6}))))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_for(lambda: list(gate.glob("retry-*")), what="row 2's retry to start")
    # The settled rows were stored before the retry was dispatched: nothing to wait for.
    fresh_daemon.kill9()
    fresh_daemon.start()
    # The restarted daemon runs row 2 again (a new replica); then it may finish.
    wait_for(lambda: len(list(gate.glob("retry-*"))) >= 2, what="row 2 to run again after the restart")
    (gate / "go").touch()
    thread.join(120)
    assert not errors, errors
    (out,) = outcomes
    assert out.values.to_pylist() == [100, 101, 102, 103, 104, 105] and out.errors == {}
    runs = (gate / "runs").read_text().split()
    # Rows that had finished before the kill ran once; only row 2 ran again.
    assert sorted(r for r in runs if r != "2") == ["0", "1", "3", "4", "5"]
    assert runs.count("2") >= 3


def gated_map(x: int, gate_dir: str) -> int:
    import os
    import time

    with open(os.path.join(gate_dir, "runs"), "a") as f:
        f.write(f"{x}\n")
    if x == 60:  # its batch waits for the test, across the daemon's death
        open(os.path.join(gate_dir, f"waiting-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(gate_dir, "go")):
            time.sleep(0.01)
    return x * 2


@pytest.mark.timeout(180)
def test_kill9_mid_map_completes_in_order_with_every_result_once(fresh_daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(gated_map, name="gated_map", target=fresh_daemon.target)
    fn.wait_ready()
    got: list[list[int]] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            got.append(list(fn.map(range(200), kwargs={"gate_dir": str(gate)})))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_for(lambda: list(gate.glob("waiting-*")), what="input 60 to start")
    fresh_daemon.kill9()
    fresh_daemon.start()
    wait_for(lambda: len(list(gate.glob("waiting-*"))) >= 2, what="input 60 to run again after the restart")
    (gate / "go").touch()
    thread.join(120)
    assert not errors, errors
    assert got == [[x * 2 for x in range(200)]]
    assert set((gate / "runs").read_text().split()) == {str(x) for x in range(200)}
