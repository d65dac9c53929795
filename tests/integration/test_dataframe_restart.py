"""A DataFrame query is as durable as its batch calls: chalkd killed with SIGKILL mid-query and
restarted, the caller (alive all along) re-attaches and the query completes with every row once,
in input order."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from chalkcompute import DataFrame, F, RemoteFunction, _
from tests.conftest import wait_for


def gated_df(x: int, gate_dir: str) -> int:
    import os
    import time

    if x == 150:  # its batch waits for the test, across the daemon's death
        open(os.path.join(gate_dir, f"waiting-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(gate_dir, "go")):
            time.sleep(0.01)
    return x * 3


@pytest.mark.timeout(180)
def test_kill9_mid_query_completes_with_every_row_once_in_order(fresh_daemon, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", fresh_daemon.target)
    gate = tmp_path / "gate"
    gate.mkdir()
    RemoteFunction(gated_df, name="gated_df").wait_ready()
    n = 400
    query = DataFrame.from_dict({"x": list(range(n)), "gate": [str(gate)] * n}).project(
        {"x": _.x, "y": F.catalog_call("gated_df", _.x, _.gate)})
    got: list[pa.Table] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            got.append(query.to_arrow())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_for(lambda: list(gate.glob("waiting-*")), what="row 150 to start")
    fresh_daemon.kill9()
    fresh_daemon.start()
    wait_for(lambda: len(list(gate.glob("waiting-*"))) >= 2, what="row 150 to run again after the restart")
    (gate / "go").touch()
    thread.join(120)
    assert not errors, errors
    (table,) = got
    assert table.column_names == ["x", "y"]
    assert table.column("x").to_pylist() == list(range(n))
    assert table.column("y").to_pylist() == [x * 3 for x in range(n)]
