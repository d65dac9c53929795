"""``chalkd nodes`` / ``chalkd node gpus``: reading the swarm (chalkd.swarm.nodes), the Nodes RPC, the CLI.

The engine JSON under tests/fixtures/swarm/ is real, captured from Docker 20.10.24 engines on this machine:

* ``info.json``, ``nodes.json``, ``tasks.json``, ``services.json``: a one-node swarm whose dockerd advertised
  ``node-generic-resources: ["gpu=GPU-fake-0", "gpu=GPU-fake-1", "fpga=2"]``, running services made by
  ``chalkd.swarm.spec.service_spec`` with chalkd's labels: ``r-cpu1`` (add), ``r-gpu1`` (train, 1 GPU:
  given GPU-fake-0), ``sgr-web1`` (a group replica), ``r-gpu9`` (2 GPUs: pending, "insufficient
  resources") for home ``/srv/chalkd``, and ``r-other`` of another home (``/home/other/chalkd``);
  ``tasks.json`` is the unfiltered ``GET /tasks``. ``capture.sh`` there makes them again.
* ``info-2.json``, ``nodes-2.json``: the 2-node lab of ../shared/swarm-lab (manager swnode1, worker swnode2).
* ``info-worker.json``, ``info-inactive.json``: ``GET /info`` of that lab's worker and of an engine in no swarm.

The engine-facing function (``read_cluster``) is run against a stand-in engine: an HTTP server on a unix
socket answering with the recorded JSON (the real engines are in tests/swarm/); a silent one checks the
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import aiodocker
import pytest
from aiohttp import web
from rich.console import Console

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.errors import FailedPrecondition, Unavailable
from chalkd.gpus import FAKE_GPUS_ENV, GpuDevice
from chalkd.services.errors import status_of
from chalkd.services.nodes import node_pb
from chalkd.swarm.cli import nodes_json, render_nodes, safe
from chalkd.swarm.nodes import (
    EngineUnavailable,
    NodesError,
    NotAManager,
    _check_manager,
    gpu_setting,
    gpu_setting_text,
    parse_cluster,
    parse_generic,
    read_cluster,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "swarm"
ROOT = Path(__file__).resolve().parents[2]
HOME = "/srv/chalkd"
NODE = "9tw7z85b5723u4ky49qt6fhp7"   # the one node of the GPU capture


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


def cluster(home: str = HOME, **changes):
    parts = {"info": load("info.json"), "nodes": load("nodes.json"), "tasks": load("tasks.json"),
             "services": load("services.json"), **changes}
    return parse_cluster(parts["info"], parts["nodes"], parts["tasks"], home, parts["services"])


# --- parsing the engine's JSON ---------------------------------------------------------------


def test_a_node_with_gpus_and_the_replicas_on_it():
    c = cluster()
    [node] = c.nodes
    assert (node.id, node.name, node.address, node.role, node.leader) == (NODE, "h2node", "127.0.0.1", "manager",
                                                                          True)
    assert (node.state, node.availability, node.engine_version) == ("ready", "active", "20.10.24+dfsg1")
    assert node.cpu_nanos == 2_000_000_000 and node.memory_bytes > 0
    assert node.generic == {"gpu": ["GPU-fake-0", "GPU-fake-1"], "fpga": 2}
    assert node.is_daemon_node  # /info's Swarm.NodeID
    got = [(r.replica_id, r.function, r.kind, r.state, r.service, r.generic) for r in node.replicas]
    assert got == [
        ("r-cpu1", "add", "replica", "running", "chalkd-r-cpu1", {}),
        ("r-gpu1", "train", "replica", "running", "chalkd-r-gpu1", {"gpu": ["GPU-fake-0"]}),  # the GPU it was given
        ("sgr-web1", "web", "group-replica", "running", "chalkd-sgr-web1", {}),
    ]
    assert all(r.message == "" for r in node.replicas)


def test_a_replica_swarm_cannot_place_is_listed_with_its_reason():
    [pending] = cluster().unplaced
    assert (pending.replica_id, pending.state, pending.service) == ("r-gpu9", "pending", "chalkd-r-gpu-pending")
    assert pending.message == "no suitable node (insufficient resources on 1 node)"


def test_another_homes_replicas_are_not_shown():
    # tasks.json is the unfiltered GET /tasks: the engine's label filter is not the only guard.
    c = cluster()
    shown = {r.replica_id for n in c.nodes for r in n.replicas} | {r.replica_id for r in c.unplaced}
    assert "r-other" not in shown and shown == {"r-cpu1", "r-gpu1", "sgr-web1", "r-gpu9"}
    other = cluster(home="/home/other/chalkd")
    assert [r.replica_id for r in other.nodes[0].replicas] == ["r-other"] and not other.unplaced
    assert cluster(home="/srv").nodes[0].replicas == []   # a prefix of a home is another home


def test_tasks_swarm_no_longer_keeps_running_are_left_out():
    tasks = load("tasks.json")
    for t in tasks:
        if t["Spec"]["ContainerSpec"]["Labels"]["dev.chalkd.replica"] == "r-cpu1":
            t["DesiredState"], t["Status"]["State"] = "shutdown", "complete"
    assert "r-cpu1" not in {r.replica_id for r in cluster(tasks=tasks).nodes[0].replicas}


def test_a_service_not_listed_shows_its_id():
    c = cluster(services=[])
    assert {r.service for r in c.nodes[0].replicas} == {"tvl5vwpo1ce0dkb3zmpnovf1g", "jnwh6bccykubsy64h57w95ql3",
                                                         "kp4j32rbesc72f912fugxp582"}


def test_two_nodes_daemon_node_first():
    c = parse_cluster(load("info-2.json"), list(reversed(load("nodes-2.json"))), [], HOME)
    assert [(n.name, n.role, n.is_daemon_node, n.generic) for n in c.nodes] == [
        ("swnode1", "manager", True, {}), ("swnode2", "worker", False, {})]
    assert [n.address for n in c.nodes] == ["10.231.0.11", "10.231.0.12"]


def test_a_down_node_keeps_its_state_and_its_replicas():
    nodes = load("nodes.json")
    nodes[0]["Status"]["State"] = "down"   # what GET /nodes says of a node whose dockerd was killed
    [node] = cluster(nodes=nodes).nodes
    assert node.state == "down" and len(node.replicas) == 3


def test_parse_generic():
    assert parse_generic(None) == {} and parse_generic([]) == {}
    both = [{"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-0"}},
            {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]
    assert parse_generic(both) == {"gpu": 3}   # a kind given both ways is a count, the names counted in
    assert parse_generic([{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 1}},
                          {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]) == {"gpu": 3}


# --- not a manager ---------------------------------------------------------------------------


def test_a_worker_engine_is_refused_naming_the_managers():
    with pytest.raises(NotAManager, match=r"this engine is not a swarm manager: it is a worker .*10\.231\.0\.11:2377"):
        _check_manager(load("info-worker.json"))


def test_an_engine_in_no_swarm_is_refused():
    with pytest.raises(NotAManager, match=r"this engine is not a swarm manager: .*'inactive'.*docker swarm init"):
        _check_manager(load("info-inactive.json"))
    _check_manager(load("info.json"))
    _check_manager(load("info-2.json"))


def test_errors_map_to_statuses():
    assert isinstance(NotAManager("x"), NodesError) and isinstance(EngineUnavailable("x"), NodesError)
    assert status_of(NotAManager("no"))[0].name == "FAILED_PRECONDITION"
    assert status_of(EngineUnavailable("silent"))[0].name == "UNAVAILABLE"
    assert isinstance(NotAManager("x"), FailedPrecondition) and isinstance(EngineUnavailable("x"), Unavailable)


# --- the engine calls, against a stand-in engine ----------------------------------------------


@contextlib.asynccontextmanager
async def engine(sock: Path, answers: dict[str, object], seen: list):
    """An HTTP server on a unix socket answering the Docker API paths in ``answers`` (by their last part);
    ``(status, body)`` tuples answer with that status."""

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.query)))
        body = answers[request.path.rsplit("/", 1)[-1]]
        status = 200
        if isinstance(body, tuple):
            status, body = body
        # As dockerd sends it: "application/json" with no charset (aiodocker reads the message only then).
        return web.Response(body=json.dumps(body).encode(), status=status,
                            headers={"Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()
    try:
        yield f"unix://{sock}"
    finally:
        await runner.cleanup()


RECORDED = {"version": {"ApiVersion": "1.41"}, "info": load("info.json"), "nodes": load("nodes.json"),
            "tasks": load("tasks.json"), "services": load("services.json")}


def test_read_cluster_asks_for_this_homes_running_tasks(tmp_path):
    seen: list = []

    async def go():
        async with engine(tmp_path / "e.sock", RECORDED, seen) as url:
            docker = aiodocker.Docker(url)
            try:
                return await read_cluster(docker, HOME, timeout=5)
            finally:
                await docker.close()

    c = asyncio.run(go())
    assert [r.replica_id for r in c.nodes[0].replicas] == ["r-cpu1", "r-gpu1", "sgr-web1"]
    queries = {path.rsplit("/", 1)[-1]: q for path, q in seen}
    assert json.loads(queries["tasks"]["filters"]) == {"label": [f"dev.chalkd.home={HOME}"],
                                                       "desired-state": ["running"]}
    assert json.loads(queries["services"]["filters"]) == {"label": [f"dev.chalkd.home={HOME}"]}


def test_a_worker_engine_refuses_nodes(tmp_path):
    # What a worker's engine answers for GET /nodes (captured), should /info not have told already.
    refused = (503, {"message": "This node is not a swarm manager. Worker nodes can't be used to view or modify "
                                "cluster state. Please run this command on a manager node or promote the current "
                                "node to a manager."})
    answers = {**RECORDED, "nodes": refused}

    async def go():
        async with engine(tmp_path / "e.sock", answers, []) as url:
            docker = aiodocker.Docker(url)
            try:
                await read_cluster(docker, HOME, timeout=5)
            finally:
                await docker.close()

    with pytest.raises(NotAManager, match="this engine is not a swarm manager: This node is not a swarm manager"):
        asyncio.run(go())


def test_a_silent_engine_is_unavailable_after_the_deadline(tmp_path):
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)   # accepts (the kernel does) and never answers: a dockerd gone silent

    async def go():
        docker = aiodocker.Docker(f"unix://{path}", api_version="v1.41")
        try:
            await read_cluster(docker, HOME, timeout=0.3)
        finally:
            await docker.close()

    try:
        with pytest.raises(EngineUnavailable, match=r"did not answer GET /info within 0\.3 s"):
            asyncio.run(go())
    finally:
        listener.close()


def test_no_engine_is_unavailable(tmp_path):
    async def go():
        docker = aiodocker.Docker(f"unix://{tmp_path}/none.sock", api_version="v1.41")
        try:
            await read_cluster(docker, HOME, timeout=5)
        finally:
            await docker.close()

    with pytest.raises(EngineUnavailable, match="cannot be reached for GET /info"):
        asyncio.run(go())


# --- the RPC's message and the CLI's rendering -------------------------------------------------


def response(c) -> pb.ListNodesResponse:
    from chalkd.services.nodes import _replica_pb

    return pb.ListNodesResponse(nodes=[node_pb(n) for n in c.nodes], unplaced=[_replica_pb(r) for r in c.unplaced])


def test_the_wire_message_round_trips_to_json():
    resp = pb.ListNodesResponse.FromString(response(cluster()).SerializeToString())
    out = nodes_json(resp)
    [node] = out["nodes"]
    assert node["generic"] == {"gpu": ["GPU-fake-0", "GPU-fake-1"], "fpga": 2}
    assert node["is_daemon_node"] and node["leader"] and node["name"] == "h2node"
    assert [r["replica_id"] for r in node["replicas"]] == ["r-cpu1", "r-gpu1", "sgr-web1"]
    assert node["replicas"][1]["generic"] == {"gpu": ["GPU-fake-0"]}
    assert out["unplaced"][0]["message"].startswith("no suitable node")


def render(resp, width: int = 160) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    try:
        render_nodes(resp, console)
        return console.export_text()
    finally:
        console.file.close()


def test_the_table():
    text = render(response(cluster()))
    for header in ("NAME", "ROLE", "STATE", "AVAILABILITY", "CPU", "MEMORY", "GPUS", "REPLICAS"):
        assert header in text
    assert "h2node (chalkd)" in text and "manager*" in text and "23.5 GiB" in text
    assert "GPU-fake-0" in text and "GPU-fake-1" in text and "fpga: 2" in text
    assert "r-gpu1 train running GPU-fake-0" in text
    assert "not placed yet: r-gpu9 train pending: no suitable node (insufficient resources on 1 node)" in text


def test_a_hostile_node_cannot_write_escape_sequences_or_markup():
    # A node that joins the swarm picks its own hostname; labels and function names pass through too.
    nodes = load("nodes.json")
    nodes[0]["Description"]["Hostname"] = "evil\x1b]0;owned\x07\x1b[2J[bold red]x[/]"
    nodes[0]["Spec"]["Labels"] = {"k": "\x1b[31m"}
    resp = response(cluster(nodes=nodes))
    text = render(resp)
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b]0;owned\\x07\\x1b[2J[bold red]x[/]" in text   # shown, escaped, markup not applied
    assert "\x1b" not in json.dumps(nodes_json(resp))               # JSON escapes control characters
    assert safe("a\u202eb") == "a\\u202eb"                          # a right-to-left override is not printable


# --- chalkd node gpus ---------------------------------------------------------------------------


def test_gpu_setting():
    devices = [GpuDevice(1, "GPU-bbb", "NVIDIA L4"), GpuDevice(0, "GPU-aaa", "NVIDIA L4")]
    assert gpu_setting(devices) == {"node-generic-resources": ["gpu=GPU-aaa", "gpu=GPU-bbb"]}
    text = gpu_setting_text(devices)
    assert '"gpu=GPU-aaa"' in text and "--node-generic-resource gpu=GPU-aaa --node-generic-resource gpu=GPU-bbb" in text
    assert 'swarm-resource = "DOCKER_RESOURCE_GPU"' in text and "/etc/nvidia-container-runtime/config.toml" in text
    # the label the swarm runtime's constraint for gpu="nvidia-l4" looks for (node.labels.chalkd.gpu==nvidia-l4)
    assert "docker node update --label-add chalkd.gpu=nvidia-l4 <this node>" in text
    assert "one label per node" not in text
    mixed = gpu_setting_text([GpuDevice(0, "GPU-a", "NVIDIA L4"), GpuDevice(1, "GPU-b", "NVIDIA A100-SXM4-80GB")])
    assert "chalkd.gpu=nvidia-a100-sxm4-80gb" in mixed and "one label per node" in mixed


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **env})


def test_node_gpus_prints_the_dockerd_setting():
    fake = json.dumps([{"name": "NVIDIA L4", "uuid": "GPU-5c1f-0"}, {"name": "NVIDIA L4", "uuid": "GPU-5c1f-1"}])
    out = cli("node", "gpus", env={FAKE_GPUS_ENV: fake})
    assert out.returncode == 0, out.stderr
    assert "gpu=GPU-5c1f-0" in out.stdout and "dockerd --node-generic-resource gpu=GPU-5c1f-0" in out.stdout
    assert 'swarm-resource = "DOCKER_RESOURCE_GPU"' in out.stdout
    j = cli("node", "gpus", "--json", env={FAKE_GPUS_ENV: fake})
    assert j.returncode == 0 and json.loads(j.stdout) == {"node-generic-resources": ["gpu=GPU-5c1f-0",
                                                                                      "gpu=GPU-5c1f-1"]}


def test_node_gpus_without_gpus_says_so_and_fails():
    out = cli("node", "gpus", env={FAKE_GPUS_ENV: "[]"})
    assert out.returncode == 1 and out.stdout == ""
    assert "no GPUs found on this host" in out.stderr and "nothing for this node to advertise" in out.stderr
    bad = cli("node", "gpus", env={FAKE_GPUS_ENV: "[{}]"})
    assert bad.returncode == 2 and FAKE_GPUS_ENV in bad.stderr


def test_nodes_on_another_runtime_names_it(daemon):
    out = cli("nodes", "--target", daemon.target, env={})
    assert out.returncode == 1
    assert "chalkd nodes needs --runtime swarm (this daemon runs the process runtime)" in out.stderr

