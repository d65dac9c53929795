"""The swarm runtime's pure parts: the service a replica runs as, a task's state, the settings.

The runtime against a real swarm is tested in tests/swarm/.
"""

from __future__ import annotations

import hashlib

import pytest

from chalkcompute import RemoteFunction
from chalkd.config import Config
from chalkd.images.blobs import BlobError, BlobStore
from chalkd.runtime.base import RuntimeUnsupported, refuse_placement
from chalkd.specs import FunctionSpec, ImageSpec, ImageStep, Resources, VolumeMount
from chalkd.swarm.images import parse_node_engines, registry_ref
from chalkd.swarm.runtime import bake_lazy_files
from chalkd.swarm.spec import CA_FILE, KEY_FILE, SecretFile, ServiceRequest, service_spec, template_literal
from chalkd.swarm.watch import task_state

pytestmark = [pytest.mark.timeout(30)]


def _request(**kw) -> ServiceRequest:
    base = dict(name="chalkd-ab-r-1", image="chalkd-img:1", env={"A": "1"}, labels={"dev.chalkd.replica": "r-1"},
                network="net1", secrets=[SecretFile("s-ca", "ca", CA_FILE), SecretFile("s-key", "key", KEY_FILE)])
    base.update(kw)
    return ServiceRequest(**base)


def test_a_replica_is_one_task_that_swarm_never_restarts_and_its_key_is_a_file_not_env():
    spec = service_spec(_request(env={"CHALK_REPLICA_KEY_FILE": KEY_FILE}))
    task = spec["TaskTemplate"]
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert task["RestartPolicy"] == {"Condition": "none"}
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}  # no VIP: replicas dial out
    container = task["ContainerSpec"]
    assert [s["File"]["Name"] for s in container["Secrets"]] == [CA_FILE, KEY_FILE]
    assert all(s["File"]["Mode"] == 0o444 for s in container["Secrets"])
    assert container["Env"] == [f"CHALK_REPLICA_KEY_FILE={KEY_FILE}"]  # a path, never the key
    assert container["CapabilityDrop"] == ["ALL"] and container["Init"] is True
    assert task["Networks"] == [{"Target": "net1"}]


def test_cpu_and_memory_are_reserved_and_limited():
    spec = service_spec(_request(cpu_millis=1500, memory_bytes=2**30, pids_limit=99,
                                 constraints=("node.hostname==swnode2",)))
    res = spec["TaskTemplate"]["Resources"]
    assert res["Limits"] == {"Pids": 99, "NanoCPUs": 1_500_000_000, "MemoryBytes": 2**30}
    # No generic resources reserved: chalkd hands out GPUs itself (chalkd.swarm.gpus, moby/moby#44378).
    assert res["Reservations"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 2**30}
    assert spec["TaskTemplate"]["Placement"] == {"Constraints": ["node.hostname==swnode2"]}


def test_a_published_port_is_host_mode_on_a_port_the_engine_picks():
    spec = service_spec(_request(publish=(8080,)))
    assert spec["EndpointSpec"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}]


def test_function_env_values_are_escaped_from_swarms_templates():
    assert template_literal("plain") == "plain"
    assert template_literal("{{.Node.ID}}") == '{{"{{"}}.Node.ID}}'


NODES = {
    "n1": {"ID": "n1", "Description": {"Hostname": "swnode1"}, "Status": {"State": "ready", "Addr": "10.0.0.11"}},
    "n2": {"ID": "n2", "Description": {"Hostname": "swnode2"}, "Status": {"State": "down", "Addr": "10.0.0.12"}},
}


def _task(state: str, node: str = "n1", **status) -> dict:
    return {"ID": "t", "NodeID": node, "Status": {"State": state, **status}, "Version": {"Index": 5}}


def test_a_running_task_on_a_node_that_is_down_is_lost_with_its_node():
    s = task_state(_task("running", "n2"), NODES)
    assert (s.state, s.ended, s.node_name) == ("lost", True, "swnode2")
    assert "swnode2 is down" in s.message
    s = task_state(_task("running", "n1"), NODES)
    assert (s.state, s.ended, s.node_addr) == ("running", False, "10.0.0.11")


def test_a_task_that_ended_keeps_its_exit_code_and_swarms_words():
    s = task_state(_task("failed", Err="task: non-zero exit (3)", ContainerStatus={"ExitCode": 3}), NODES)
    assert (s.state, s.ended, s.exit_code) == ("failed", True, 3) and "non-zero exit" in s.message
    s = task_state(_task("rejected", Err="No such image: chalkd-img:x"), NODES)
    assert s.ended and "No such image" in s.message
    pending = task_state(_task("pending", "", Message="pending task scheduling",
                               Err="no suitable node (insufficient resources on 2 nodes)"), NODES)
    assert not pending.ended and "insufficient resources" in pending.message


def test_a_tasks_published_ports_and_generic_resources_are_read():
    task = _task("running", PortStatus={"Ports": [{"TargetPort": 8080, "PublishedPort": 30001}]})
    task["GenericResources"] = [{"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-fake-0"}}]
    s = task_state(task, NODES)
    assert s.ports == ((8080, 30001),) and s.generic == ("gpu=GPU-fake-0",)


def test_advertise_addr_and_the_swarm_flags_are_checked():
    assert Config(runtime="swarm", advertise_addr="10.0.0.5:7000").advertise() == ("10.0.0.5", 7000)
    assert Config(runtime="swarm", advertise_addr="[fd00::5]:7000").advertise() == ("fd00::5", 7000)
    assert Config(runtime="swarm", port=0, advertise_addr="node-a.lan").advertise() == ("node-a.lan", 0)
    with pytest.raises(ValueError, match="--runtime swarm needs --advertise-addr"):
        Config(runtime="swarm").validate()
    with pytest.raises(ValueError, match="wildcard"):
        Config(runtime="swarm", advertise_addr="0.0.0.0").validate()
    with pytest.raises(ValueError, match="port must be 0-65535"):
        Config(runtime="swarm", advertise_addr="10.0.0.5:99999").validate()
    for bad in ("http://10.0.0.1:5000", "10.0.0.1:5000/path", "reg istry", ""):
        with pytest.raises(ValueError, match="--registry must be HOST\\[:PORT\\]"):
            Config(runtime="swarm", advertise_addr="10.0.0.5", registry=bad).validate()
    Config(runtime="swarm", advertise_addr="10.0.0.5", registry="registry.lan:5000").validate()
    with pytest.raises(ValueError, match="--registry is for --runtime swarm"):
        Config(runtime="docker", registry="10.0.0.1:5000").validate()
    with pytest.raises(ValueError, match="--engine must be a Docker engine address"):
        Config(runtime="swarm", advertise_addr="10.0.0.5", engine="/var/run/docker.sock").validate()


def test_node_engines_and_registry_refs():
    assert parse_node_engines(["b=unix:///s/b.sock", "c=tcp://10.0.0.7:2376"]) == {
        "b": "unix:///s/b.sock", "c": "tcp://10.0.0.7:2376"}
    for bad in (["b"], ["=unix:///x"], ["b=/x.sock"]):
        with pytest.raises(ValueError, match="must be NODE=URL"):
            parse_node_engines(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_node_engines(["b=unix:///1", "b=unix:///2"])
    assert registry_ref("10.0.0.1:5000/", "chalkd-img:ab") == "10.0.0.1:5000/chalkd-img:ab"


def test_lazy_local_files_are_baked_into_the_image_for_other_nodes(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    data = b"print('hi')\n"
    digest = hashlib.sha256(data).hexdigest()
    with blobs.writer(digest) as w:
        w.write(data)
    image = ImageSpec(base="python:3.11-slim", steps=(
        ImageStep("lazy_file", path="/app/main.py", digest=digest, mode=0o755, source="main.py"),
        ImageStep("workdir", path="/app")), content_hash="client-claim")
    baked = bake_lazy_files(image, blobs)
    assert [s.kind for s in baked.steps] == ["copy_file", "workdir"]
    assert (baked.steps[0].path, baked.steps[0].content, baked.steps[0].mode) == ("/app/main.py", data, 0o755)
    assert baked.content_hash == ""  # the builder recomputes the identity of what it builds
    missing = ImageSpec(base="python:3.11-slim", steps=(ImageStep("lazy_file", path="/a", digest="0" * 64),))
    with pytest.raises(BlobError, match="never uploaded"):
        bake_lazy_files(missing, blobs)


def test_node_placement_is_refused_where_there_is_one_node():
    spec = FunctionSpec(name="f", resources=Resources(node="swnode2"))
    with pytest.raises(RuntimeUnsupported, match="node= places replicas on a swarm's nodes.*--runtime swarm"):
        refuse_placement(spec, "docker")
    refuse_placement(FunctionSpec(name="g"), "docker")


def test_the_sdk_checks_node_and_node_labels():
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="node must be a node's hostname"):
        RemoteFunction(f, name="swarm_unit_f", node="bad name")
    with pytest.raises(ValueError, match="node_labels"):
        RemoteFunction(f, name="swarm_unit_f", node_labels={"zone": 'a"b'})


def _node(node_id: str, name: str, gpus: tuple[str, ...], *, state: str = "ready", labels=None) -> dict:
    return {"ID": node_id, "Description": {"Hostname": name, "Resources": {"GenericResources": [
                {"NamedResourceSpec": {"Kind": "gpu", "Value": g}} for g in gpus]}},
            "Status": {"State": state}, "Spec": {"Availability": "active", "Labels": labels or {}}}


def _gpus(nodes: list[dict]):
    from chalkd.swarm.gpus import ClusterGpuAllocator

    g = ClusterGpuAllocator()
    g.daemon_node = "n1"
    g.update(nodes)
    return g


def test_one_replicas_gpus_are_all_on_one_node_and_held_until_released():
    from chalkcompute.gpu import GpuRequest

    g = _gpus([_node("n1", "a", ("A0",)), _node("n2", "b", ("B0", "B1"))])
    two = g.allocate_for("r-1", GpuRequest.parse("2:any"))
    assert [d.uuid for d in two] == ["B0", "B1"] and g.node_of("r-1") == ("n2", "b")
    assert g.allocate_for("r-2", GpuRequest.parse("2:any")) is None   # a node with two free: none now
    assert [d.uuid for d in g.allocate_for("r-3", GpuRequest.parse("any"))] == ["A0"]
    g.release("r-1")
    assert g.node_of("r-1") is None and g.allocate_for("r-2", GpuRequest.parse("2:any")) is not None


def test_gpus_follow_placement_and_node_state_and_models_come_from_the_node_label():
    from chalkcompute.gpu import GpuRequest

    g = _gpus([_node("n1", "a", ("A0",)), _node("n2", "b", ("B0",), labels={"chalkd.gpu": "nvidia-l4"}),
               _node("n3", "c", ("C0",), state="down")])
    pinned = FunctionSpec(name="f", resources=Resources(gpu="any", node="b"))
    assert [d.uuid for d in g.allocate_for("r-1", GpuRequest.parse("any"), pinned)] == ["B0"]
    assert g.allocate_for("r-2", GpuRequest.parse("nvidia-l4")) is None      # B0 is held, C0's node is down
    with_volume = FunctionSpec(name="v", resources=Resources(gpu="any"), volumes=(VolumeMount("data", "/d"),))
    assert [d.uuid for d in g.allocate_for("r-3", GpuRequest.parse("any"), with_volume)] == ["A0"]  # daemon's
    assert g.allocate("r-4", GpuRequest.parse("any")) is None   # sandboxes: the daemon's node's GPUs only
    reason = g.unschedulable_reason(GpuRequest.parse("2:any"))
    assert "no swarm node has 2 x any GPU" in reason and "chalkd node gpus" in reason
    assert g.unschedulable_reason(GpuRequest.parse("nvidia-l4")) is None
