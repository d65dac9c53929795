"""A swarm node lost mid-burst loses no accepted call.

Four replicas of one function spread over the lab's two nodes; 2,000 calls are spawned (accepted: each has
its id) and, once a fifth of them are answered, node 2's dockerd is killed with ``kill -9``. Its containers
keep running (their shims outlive dockerd, as on a real crash of the engine), so its workers still answer
for the ~3 s Swarm takes to call the node down (``--dispatcher-heartbeat 1s``); then chalkd declares their
replicas lost, runs their calls again elsewhere, fences off whatever the old workers still send, and starts
replacements, which Swarm places on node 1. By the caller's count every call is answered exactly once.
"""

from __future__ import annotations

import collections
import json
import uuid

import pytest

from chalkcompute import Image, RemoteFunction
from chalkd.testing import _SdkPointer
from tests.conftest import wait_for

pytestmark = [pytest.mark.timeout(600)]

CALLS = 2000


def work(i: int) -> str:
    """``"<i> <node>"``: which node ran it (CHALK_NODE, set by the swarm runtime)."""
    import os
    import time

    time.sleep(0.01)
    return f"{i} {os.environ.get('CHALK_NODE', '?')}"


def running_nodes(lab, name: str) -> list[str]:
    """The nodes of the function's tasks that Swarm wants running (one per replica)."""
    out = lab.docker(1, "service", "ls", "-q", "--filter", f"label=dev.chalkd.function={name}").split()
    nodes = []
    for service in out:
        tasks = lab.docker(1, "service", "ps", service, "--filter", "desired-state=running",
                           "--format", "{{json .}}", check=False)
        for line in tasks.splitlines():
            task = json.loads(line)
            if task.get("CurrentState", "").startswith("Running"):
                nodes.append(task["Node"])
    return sorted(nodes)


def test_a_node_killed_mid_burst_loses_no_call_and_its_replicas_come_back_on_the_node_left(swarm_daemon_factory):
    d = swarm_daemon_factory()
    lab = d.lab
    name = f"swarm_loss_{uuid.uuid4().hex[:6]}"
    fn = RemoteFunction(work, name=name, image=Image.debian_slim(), min_replicas=4, max_replicas=4)
    with _SdkPointer(d):
        fn.wait_ready(timeout=240)
        # Swarm spreads single-task services over the nodes with the fewest tasks: both nodes hold replicas.
        spread = wait_for(lambda: len(n := running_nodes(lab, name)) == 4 and n, timeout=120,
                          what="four running replicas")
        assert set(spread) == {lab.node_name(1), lab.node_name(2)}, spread
        wait_for(lambda: (i := fn.refresh()).ready_replicas == 4 and i, timeout=120, what="four ready replicas")

        calls = [fn.spawn(i) for i in range(CALLS)]
        assert len({c.object_id for c in calls}) == CALLS  # accepted: each has its own id
        answered: collections.Counter[int] = collections.Counter()
        by_node: collections.Counter[str] = collections.Counter()
        killed_at = None
        for n, call in enumerate(calls):
            i, node = call.get(timeout=300).split()
            answered[int(i)] += 1
            by_node[node] += 1
            if n == CALLS // 5:
                lab.kill_node(2)
                killed_at = n
        assert killed_at is not None
        assert sorted(answered) == list(range(CALLS)), f"missing: {sorted(set(range(CALLS)) - set(answered))[:10]}"
        assert set(answered.values()) == {1}, [i for i, c in answered.items() if c != 1][:10]
        assert by_node[lab.node_name(1)] and by_node[lab.node_name(2)], by_node  # both nodes served the burst
        # The lost replicas were replaced, on the node left.
        nodes = wait_for(lambda: len(n := running_nodes(lab, name)) == 4 and set(n) == {lab.node_name(1)} and n,
                         timeout=120, what="four replicas running on node 1")
        assert nodes == [lab.node_name(1)] * 4
        info = wait_for(lambda: (i := fn.refresh()).ready_replicas == 4 and i, timeout=120,
                        what="four ready replicas again")
        assert info.replicas == 4, info
        fn.delete()


def slow_count(n: int):
    """Yield 0..n-1, one every 50 ms."""
    import time

    for i in range(n):
        yield i
        time.sleep(0.05)


def test_a_stream_from_a_node_that_is_lost_fails_clearly_and_the_function_runs_on_the_node_left(
        swarm_daemon_factory):
    from chalkcompute.exceptions import CallInterruptedError

    d = swarm_daemon_factory()
    lab = d.lab
    name = f"swarm_stream_{uuid.uuid4().hex[:6]}"
    on_two = RemoteFunction(slow_count, name=name, image=Image.debian_slim(), node=lab.node_name(2),
                            min_replicas=0, max_replicas=1)
    anywhere = RemoteFunction(slow_count, name=f"{name}_any", image=Image.debian_slim(), min_replicas=0)
    with _SdkPointer(d):
        on_two.wait_ready(timeout=240)
        got = []
        with pytest.raises(CallInterruptedError, match=r"interrupted mid-stream.*lost.*node .*down"):
            for i in on_two(100_000):
                got.append(i)
                if i == 20:
                    lab.kill_node(2)
        assert got[:21] == list(range(21))
        # A function not pinned to the lost node runs on the one left.
        assert list(anywhere(3)) == [0, 1, 2]
        on_two.delete()
        anywhere.delete()


def test_a_daemon_whose_swarm_manager_is_gone_still_stops_cleanly(swarm_daemon_factory):
    """The manager's engine dies (the control plane's box): chalkd cannot stop its replicas there, so it gives
    them up and exits on SIGTERM instead of waiting for task states nobody reports."""
    d = swarm_daemon_factory()
    lab = d.lab
    fn = RemoteFunction(work, name=f"swarm_mgr_{uuid.uuid4().hex[:6]}", image=Image.debian_slim(),
                        node=lab.node_name(2), min_replicas=1)
    with _SdkPointer(d):
        assert fn(1) == f"1 {lab.node_name(2)}"
    lab.kill_node(1)
    try:
        assert d.proc is not None
        d.proc.terminate()
        assert d.proc.wait(60) == 0, d.log()[-3000:]
        log = d.log()
        assert "the manager's engine cannot be reached" in log, log[-3000:]  # said, and given up
        assert "Task exception was never retrieved" not in log, log[-3000:]
    finally:
        lab.restart_node(1)
        lab.wait_ready((1, 2), timeout=120)
