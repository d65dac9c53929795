"""``chalkd nodes`` on the 2-node lab: both nodes, node 2's fake GPUs, a running replica on its node.

What the command shows is checked against the lab's own facts (its node names, the fake GPU ids node 2's dockerd
was started with, the replica id the function reports from inside its container), never against chalkd's
word alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chalkcompute import RemoteFunction
from tests.swarm.conftest import FAKE_GPUS, GPU_NODE, SwarmDaemon

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


def chalkd(daemon: SwarmDaemon, *args: str) -> subprocess.CompletedProcess:
    # A wide terminal: at 80 columns the table folds GPU UUIDs across lines (nothing is cut short).
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=90, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})


def nodes(daemon: SwarmDaemon) -> dict:
    out = chalkd(daemon, "nodes", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def where() -> dict:
    import os  # in the replica

    return {"replica": os.environ["CHALK_REPLICA_ID"]}


def test_nodes_shows_both_nodes_the_gpus_and_a_replica_where_it_runs(swarm_daemon: SwarmDaemon) -> None:
    lab = swarm_daemon.lab
    first = nodes(swarm_daemon)
    by_name = {n["name"]: n for n in first["nodes"]}
    assert set(by_name) == {lab.node_name(1), lab.node_name(2)}
    one, two = by_name[lab.node_name(1)], by_name[lab.node_name(GPU_NODE)]
    assert (one["role"], one["leader"], one["is_daemon_node"], one["state"]) == ("manager", True, True, "ready")
    assert (two["role"], two["is_daemon_node"], two["state"]) == ("worker", False, "ready")
    assert (one["address"], two["address"]) == (lab.node_addr(1), lab.node_addr(GPU_NODE))
    assert two["generic"] == {"gpu": list(FAKE_GPUS)} and one["generic"] == {}
    assert one["cpu_nanos"] > 0 and one["memory_bytes"] > 0

    # Placed on node 2 by name, not by a GPU: Docker 20.10's Swarm rejects a running task that holds a generic
    # resource at the node's next update (moby/moby#44378, fixed in 23.0); the GPUs a replica was given are
    # shown from the task's GenericResources (tests/unit/test_swarm_nodes.py, on captured engine JSON).
    fn = RemoteFunction(where, name="sw_nodes_on_2", node=lab.node_name(GPU_NODE), max_replicas=1)
    try:
        fn.wait_ready(timeout=120)   # else: says why Swarm has not placed it
        out = fn()
        # The replica keeps running after its call (idle timeout); wait for the manager's word to catch up.
        deadline = time.monotonic() + 60
        while True:
            seen = nodes(swarm_daemon)
            on_two = {r["replica_id"]: r for n in seen["nodes"] if n["name"] == lab.node_name(GPU_NODE)
                      for r in n["replicas"]}
            mine = on_two.get(out["replica"])
            if mine is not None and mine["state"] == "running":
                break
            assert time.monotonic() < deadline, f"replica {out['replica']} never shown running on node 2: {seen}"
            time.sleep(0.5)  # another process's state (the swarm manager's), read over the CLI
        assert (mine["function"], mine["kind"], mine["generic"]) == ("sw_nodes_on_2", "replica", {})
        on_one = [r["replica_id"] for n in seen["nodes"] if n["name"] == lab.node_name(1) for r in n["replicas"]]
        assert out["replica"] not in on_one

        table = chalkd(swarm_daemon, "nodes")
        assert table.returncode == 0, table.stderr
        for text in (lab.node_name(1), lab.node_name(2), *FAKE_GPUS, out["replica"]):
            assert text in table.stdout, (text, table.stdout)
    finally:
        fn.delete()


def _list_nodes_with_my_credential() -> str:
    """Runs inside a replica: try the Nodes RPC with the replica's own scoped credential (over TLS)."""
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import NodesStub

    async def call() -> None:  # made and awaited on the SDK's loop, where its channel lives
        await NodesStub(Client.get().channel).List(pb.ListNodesRequest(), timeout=10)

    try:
        run_sync(call())
        return "allowed"
    except Exception as exc:  # a GRPCError from the raw stub
        return f"{getattr(exc, 'status', '')} {getattr(exc, 'message', exc)}"


def test_a_replicas_credential_cannot_list_the_nodes(swarm_daemon: SwarmDaemon) -> None:
    # Node addresses and every function's replicas are the operator's: a replica (function code, on any node,
    # dialing the advertise address) must not read them.
    fn = RemoteFunction(_list_nodes_with_my_credential, name="sw_nodes_probe", max_replicas=1)
    try:
        result = fn()
        assert "PERMISSION_DENIED" in result and "Nodes/List" in result, result
    finally:
        fn.delete()


def test_a_node_whose_engine_was_killed_is_shown_down(swarm_daemon: SwarmDaemon) -> None:
    lab = swarm_daemon.lab
    lab.kill_node(GPU_NODE)   # kill -9 of node 2's dockerd
    try:
        deadline = time.monotonic() + 60
        while True:
            states = {n["name"]: n["state"] for n in nodes(swarm_daemon)["nodes"]}
            if states.get(lab.node_name(GPU_NODE)) == "down":
                break
            assert time.monotonic() < deadline, f"node 2 never shown down: {states}"
            time.sleep(0.5)  # the manager's heartbeat (1 s in the lab) decides; read over the CLI
        assert states[lab.node_name(1)] == "ready"
        table = chalkd(swarm_daemon, "nodes")
        assert table.returncode == 0 and "down" in table.stdout, table.stdout
    finally:
        lab.restart_node(GPU_NODE)
    assert {n["name"]: n["state"] for n in nodes(swarm_daemon)["nodes"]}[lab.node_name(GPU_NODE)] == "ready"
