"""Functions on ``--runtime swarm``: the portable suite, and what only a swarm does (placement across nodes).

The lab (tests/swarm/conftest.py): node 1 is the manager and the daemon's node, with the base image; node 2
advertises the fake GPUs ``GPU-fake-0`` and ``GPU-fake-1`` as the generic resource ``gpu`` and holds no image
until chalkd ships one (``--node-engine swnode2=...``: ``docker save | docker load``).
Where a replica runs is read from the nodes' own engines (its container, found by chalkd's labels), never from
chalkd's word.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from chalkcompute import (
    FunctionBuildError,
    FunctionError,
    FunctionTimeoutError,
    Image,
    RemoteFunction,
    Volume,
    VolumeClient,
)
from tests.portable.functions import FunctionSuite
from tests.swarm.conftest import FAKE_GPUS, GPU_NODE, SwarmDaemon
from tests.swarm.lab import SwarmLab

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")


@pytest.fixture(scope="module")
def runtime_daemon(swarm_daemon: SwarmDaemon) -> SwarmDaemon:
    return swarm_daemon


class TestFunctionsOnSwarm(FunctionSuite):
    """Every test of the portable suite (tests/portable/functions.py), on the swarm: same SDK code, unchanged."""


# -- where replicas run ------------------------------------------------------------------------------------


def containers_on(lab: SwarmLab, n: int, daemon: SwarmDaemon, **labels: str) -> list[str]:
    """Ids of node n's running containers of this daemon's home with the given ``dev.chalkd.*`` labels."""
    args = ["ps", "-q", "--no-trunc", "--filter", f"label=dev.chalkd.home={daemon.home.resolve()}"]
    for key, value in labels.items():
        args += ["--filter", f"label=dev.chalkd.{key}={value}"]
    return lab.docker(n, *args).split()


def node_of(daemon: SwarmDaemon, replica: str) -> int:
    """The lab node whose engine runs ``replica``'s container (exactly one must)."""
    lab = daemon.lab
    found = {n: containers_on(lab, n, daemon, replica=replica) for n in range(1, lab.nodes + 1)}
    nodes = [n for n, ids in found.items() if ids]
    assert len(nodes) == 1 and len(found[nodes[0]]) == 1, f"replica {replica}'s containers by node: {found}"
    return nodes[0]


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str) -> T:
    """Read another process's state (the nodes' engines) twice a second until ``done``; fail naming the last."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last seen {value!r}")
        time.sleep(0.5)  # each read is a few engine calls: no event to wait on across engines


def where() -> dict:
    import os

    return {"replica": os.environ["CHALK_REPLICA_ID"], "gpu": os.environ.get("DOCKER_RESOURCE_GPU", ""),
            "mark": os.environ.get("SW_MARK", "")}


# -- a replica on a remote node ---------------------------------------------------------------------------


def sw_count(n: int):
    yield from range(n)


def sw_inner(x: int) -> dict:
    import os

    return {"value": 2 * x, "node": os.environ.get("CHALK_NODE", "")}


sw_inner_on_1 = RemoteFunction(sw_inner, name="sw_inner_on_1", node="swnode1", max_replicas=1)


def sw_outer(x: int) -> dict:
    """Runs on node 2 and calls a function pinned to node 1: a nested call from a remote node, over its TLS link."""
    import os

    inner = sw_inner_on_1(x)
    return {"value": inner["value"] + 1, "node": os.environ.get("CHALK_NODE", ""), "inner_node": inner["node"]}


def test_a_replica_on_a_remote_node_streams_and_calls_a_function_on_the_daemons_node(
        swarm_daemon: SwarmDaemon) -> None:
    lab = swarm_daemon.lab
    gen = RemoteFunction(sw_count, name="sw_remote_count", node=lab.node_name(2), max_replicas=1)
    assert list(gen(3000)) == list(range(3000))
    stream = gen(10**9)   # endless for practical purposes: had chunks come only at its end, next() would hang
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    outer = RemoteFunction(sw_outer, name="sw_outer_on_2", node=lab.node_name(2), max_replicas=1)
    assert outer(20) == {"value": 41, "node": lab.node_name(2), "inner_node": lab.node_name(1)}
    for fn in (gen, outer, sw_inner_on_1):
        fn.delete()


# -- GPUs as generic resources -----------------------------------------------------------------------------


def test_a_gpu_request_only_node_2_meets_runs_there_with_a_fake_gpu(swarm_daemon: SwarmDaemon) -> None:
    fn = RemoteFunction(where, name="sw_gpu_one", gpu="any", max_replicas=1)
    out = fn()
    assert out["gpu"] in FAKE_GPUS                   # the id chalkd handed the task (DOCKER_RESOURCE_GPU)
    assert node_of(swarm_daemon, out["replica"]) == GPU_NODE
    fn.delete()


def test_a_gpu_request_no_node_can_meet_is_refused_at_deploy_naming_what_nodes_have(
        swarm_daemon: SwarmDaemon) -> None:
    fn = RemoteFunction(where, name="sw_gpu_three", gpu="3:any", max_replicas=1)
    with pytest.raises(FunctionError, match=r"unschedulable: no swarm node has 3 x any GPU .*swnode2: 2 x GPU"):
        fn.deploy()
    lab = swarm_daemon.lab
    assert all(containers_on(lab, n, swarm_daemon, function="sw_gpu_three") == [] for n in (1, 2))


def test_a_gpu_request_waits_while_the_gpus_are_held_and_wait_ready_says_so(swarm_daemon: SwarmDaemon) -> None:
    both = RemoteFunction(where, name="sw_gpu_both", gpu="2:any", min_replicas=1, max_replicas=1)
    one = RemoteFunction(where, name="sw_gpu_wait", gpu="any", max_replicas=1)
    try:
        assert sorted(both()["gpu"].split(",")) == sorted(FAKE_GPUS)
        with pytest.raises(FunctionTimeoutError, match=r"1 GPU of any type wanted, free per node: swnode2 0 of 2 "
                                                       r"\(swnode1 has none\) \(held by sw_gpu_both\)"):
            one.wait_ready(timeout=5)
    finally:
        both.delete()
        one.delete()


# -- placement by name and label ---------------------------------------------------------------------------


def test_node_and_node_labels_place_replicas(swarm_daemon: SwarmDaemon) -> None:
    lab = swarm_daemon.lab
    on_1 = RemoteFunction(where, name="sw_on_node_1", node=lab.node_name(1), max_replicas=1)
    assert node_of(swarm_daemon, on_1()["replica"]) == 1
    zone = f"z{uuid.uuid4().hex[:8]}"
    lab.docker(1, "node", "update", "--label-add", f"chalk-test-zone={zone}", lab.node_name(2))
    try:
        labelled = RemoteFunction(where, name="sw_labelled", node_labels={"chalk-test-zone": zone}, max_replicas=1)
        assert node_of(swarm_daemon, labelled()["replica"]) == 2
    finally:
        lab.docker(1, "node", "update", "--label-rm", "chalk-test-zone", lab.node_name(2))
    for fn in (on_1, labelled):
        fn.delete()


def test_a_node_that_does_not_exist_leaves_the_replica_unplaced(swarm_daemon: SwarmDaemon) -> None:
    fn = RemoteFunction(where, name="sw_no_such_node", node="swnode9", max_replicas=1)
    try:
        with pytest.raises(FunctionTimeoutError, match=r"within 15s: .*scheduling constraints not satisfied"):
            fn.wait_ready(timeout=15)
    finally:
        fn.delete()


# -- images ------------------------------------------------------------------------------------------------


def test_an_image_chalkd_built_runs_on_a_node_that_never_had_it(swarm_daemon: SwarmDaemon) -> None:
    lab = swarm_daemon.lab
    mark = uuid.uuid4().hex
    before = set(lab.docker(2, "images", "-q", "--no-trunc").split())
    fn = RemoteFunction(where, name="sw_shipped", image=Image.debian_slim().env({"SW_MARK": mark}),
                        node=lab.node_name(2), max_replicas=1)
    out = fn()
    assert out["mark"] == mark                       # the new image's own layer
    [cid] = containers_on(lab, 2, swarm_daemon, replica=out["replica"])
    [container] = json.loads(lab.docker(2, "inspect", cid))
    image_id, ref = container["Image"], container["Config"]["Image"]
    assert ref.startswith("chalkd-img:"), ref        # built by chalkd (the tag carries the content hash)
    assert image_id not in before                    # node 2 never had it ...
    assert lab.has_image(2, ref)                     # ... and has it now
    built = lab.docker(1, "image", "inspect", "--format", "{{.Id}}", ref).strip()
    assert built == image_id                         # the same bytes as built on the manager's engine
    fn.delete()


# -- volumes live on the daemon's node ---------------------------------------------------------------------


def write_volume(token: str) -> str:
    import os

    with open(f"/data/{token}", "w") as f:
        f.write(os.environ["CHALK_REPLICA_ID"])
    return token


def test_a_volume_mounting_function_runs_on_the_daemons_node(swarm_daemon: SwarmDaemon) -> None:
    lab = swarm_daemon.lab
    # Two replicas, each its own service: unpinned, Swarm would spread them over both nodes.
    fn = RemoteFunction(write_volume, name="sw_volume", volumes=[(Volume("sw-vol"), "/data")], min_replicas=2,
                        max_replicas=2)
    fn.deploy()
    counts = poll(lambda: [len(containers_on(lab, n, swarm_daemon, function="sw_volume")) for n in (1, 2)],
                  lambda c: sum(c) >= 2, 120, "two replicas of sw_volume running")
    assert counts == [2, 0]
    token = uuid.uuid4().hex
    assert fn(token) == token
    written = VolumeClient().lookup("sw-vol").get(token).decode()
    assert node_of(swarm_daemon, written) == 1       # the daemon's volume directory, written on node 1
    fn.delete()


def test_a_volume_and_a_gpu_only_node_2_has_is_unplaced_and_wait_ready_says_why(swarm_daemon: SwarmDaemon) -> None:
    fn = RemoteFunction(where, name="sw_volume_gpu", gpu="any", volumes=[("sw-vol", "/data")], max_replicas=1)
    try:
        with pytest.raises(FunctionTimeoutError, match=r"no matching GPU on the nodes it may run on \(swnode1 has "
                                                       r"none\); not placed on swnode2 \(it mounts volumes, which "
                                                       r"live on the daemon's node\)"):
            fn.wait_ready(timeout=10)
    finally:
        fn.delete()


def test_a_volume_mounting_function_on_another_node_is_refused_at_registration(swarm_daemon: SwarmDaemon) -> None:
    fn = RemoteFunction(where, name="sw_volume_node_2", node="swnode2", volumes=[("sw-vol", "/data")])
    with pytest.raises(FunctionError, match=r"function 'sw_volume_node_2' mounts volumes, which live on the "
                                            r"daemon's node swnode1, so it cannot run on node='swnode2'"):
        fn.deploy()
    assert all(containers_on(swarm_daemon.lab, n, swarm_daemon, function="sw_volume_node_2") == [] for n in (1, 2))


# -- builds ------------------------------------------------------------------------------------------------


def test_a_failing_build_raises_function_build_error_with_its_step(swarm_daemon: SwarmDaemon) -> None:
    bad = Image.debian_slim().run_commands(f"echo about to fail {uuid.uuid4().hex[:8]} && exit 3")
    fn = RemoteFunction(where, name="sw_bad_build", image=bad)
    with pytest.raises(FunctionBuildError) as info:
        fn.deploy(build_timeout=300, ready_timeout=60)
    assert "exit 3" in str(info.value) and "about to fail" in str(info.value)
