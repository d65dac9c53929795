"""Scaling groups on the swarm, the pure parts: the service a group replica runs as, how its task's end is
worded, and the agent's ``--env-file`` (the group's secrets as a Swarm secret's file), run as a real process.

The launcher against a real swarm is tested in tests/swarm/test_swarm_groups.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chalkcompute.agent.server import read_env_file
from chalkd.groups.replicas import KIND, LaunchFailed, ReplicaLaunch
from chalkd.groups.swarm_replicas import AGENT_SOCKET, ENV_FILE, ended_words, group_service_spec
from chalkd.specs import GroupSpec, ImageSpec, Resources, VolumeMount
from chalkd.swarm.spec import SecretFile
from chalkd.swarm.watch import TaskState

pytestmark = [pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[2]


def _launch(**spec_kw) -> ReplicaLaunch:
    spec = GroupSpec(**{"name": "web", "image": ImageSpec(base="python:3.11-slim"), "port": 8080,
                        "entrypoint": ("python3", "/app/app.py"), **spec_kw})
    return ReplicaLaunch(group_id="sg-1", group_name="web", replica_id="sgr-abc", revision=3, spec=spec,
                         image_tag="chalkd-img:1", image_command=["nginx", "-g", "daemon off;"],
                         secret_env={"TOKEN": "s3cret"})


def _spec(launch: ReplicaLaunch | None = None, **kw) -> dict:
    args: dict = {"image": "10.0.0.1:5000/chalkd-img:1", "home_label": "/srv/chalkd", "home_hash": "1a2b3c4d",
                  "network": "net-g", "env_secret": SecretFile("sec-1", "chalkd-1a2b3c4d-genv-sgr-abc", ENV_FILE)}
    args.update(kw)
    return group_service_spec(launch or _launch(), **args)


def test_a_group_replica_is_one_never_restarted_task_with_its_port_published_on_its_node():
    spec = _spec()
    task = spec["TaskTemplate"]
    assert spec["Name"] == "chalkd-1a2b3c4d-sgr-abc"
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}} and task["RestartPolicy"] == {"Condition": "none"}
    # Host mode, no PublishedPort: the engine picks a free port on whichever node runs it.
    assert spec["EndpointSpec"] == {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": 8080,
                                                                  "PublishMode": "host"}]}
    assert task["Networks"] == [{"Target": "net-g"}]
    assert spec["Labels"] == {"dev.chalkd.home": "/srv/chalkd", "dev.chalkd.kind": KIND, "dev.chalkd.owner": "chalkd",
                              "dev.chalkd.group": "sg-1", "dev.chalkd.function": "web", "dev.chalkd.replica": "sgr-abc",
                              "dev.chalkd.revision": "3"}
    container = task["ContainerSpec"]
    assert container["Image"] == "10.0.0.1:5000/chalkd-img:1"
    assert container["CapabilityDrop"] == ["ALL"] and "CapabilityAdd" not in container
    assert container["StopGracePeriod"] == 10 * 10**9


def test_the_agent_runs_the_app_and_reads_the_secrets_from_the_swarm_secret_file_never_env():
    container = _spec()["TaskTemplate"]["ContainerSpec"]
    argv = container["Command"]
    sep = argv.index("--")
    assert argv[sep + 1:] == ["python3", "/app/app.py"]
    agent = argv[:sep]
    assert agent[:2] == ["python3", "-c"] and agent[agent.index("--socket") + 1] == AGENT_SOCKET
    assert "--exit-with-main" in agent and agent[agent.index("--env-file") + 1] == ENV_FILE
    assert [s["File"]["Name"] for s in container["Secrets"]] == [ENV_FILE]
    assert not any("s3cret" in e or e.startswith("TOKEN=") for e in container["Env"])
    assert "s3cret" not in json.dumps(_spec())
    # With no secrets: no file, and the agent is not told to read one.
    plain = _spec(env_secret=None)["TaskTemplate"]["ContainerSpec"]
    assert "--env-file" not in plain["Command"] and plain["Secrets"] == []


def test_the_image_command_runs_when_the_group_gives_none_and_no_command_at_all_is_refused():
    argv = _spec(_launch(entrypoint=()))["TaskTemplate"]["ContainerSpec"]["Command"]
    assert argv[argv.index("--") + 1:] == ["nginx", "-g", "daemon off;"]
    bare = _launch(entrypoint=())
    bare.image_command = []
    with pytest.raises(LaunchFailed, match="no command to run"):
        _spec(bare)


def test_env_values_are_escaped_from_swarm_templates_and_the_node_is_told():
    env = _spec(_launch(env={"A": "{{.Node.ID}}", "B": "plain"}))["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "A={{\"{{\"}}.Node.ID}}" in env and "B=plain" in env and "PORT=8080" in env
    assert "CHALK_NODE={{.Node.Hostname}}" in env


def test_placement_reservations_gpus_and_constraints():
    res = Resources(cpu_millis=1500, memory_bytes=256 << 20, gpu="2:nvidia-a100", node="gpu-box",
                    node_labels={"zone": "b"})
    launch = _launch(resources=res)
    launch.gpu_uuids = ("GPU-a", "GPU-b")
    spec = _spec(launch, excluded=("n-far",), gpu_node="n-gpu")
    task = spec["TaskTemplate"]
    # Swarm reserves cpu/memory; GPUs are chalkd's (chalkd.swarm.gpus): pinned to their node, named in env.
    assert task["Resources"]["Reservations"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 256 << 20}
    assert task["Placement"]["Constraints"] == ["node.id!=n-far", "node.hostname==gpu-box", "node.labels.zone==b",
                                                "node.id==n-gpu"]
    env = task["ContainerSpec"]["Env"]
    assert "DOCKER_RESOURCE_GPU=GPU-a,GPU-b" in env and "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b" in env
    with pytest.raises(LaunchFailed, match="holds no swarm GPUs"):
        _spec(launch)  # no node for its GPUs: never started unpinned


def test_a_group_with_volumes_runs_on_the_daemons_node_only():
    launch = _launch(volumes=(VolumeMount("data", "/data"),))
    spec = _spec(launch, excluded=("n-far",), daemon_node="n-home", binds=(("/srv/chalkd/volumes/data", "/data"),))
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==n-home"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Mounts"] == [
        {"Type": "bind", "Source": "/srv/chalkd/volumes/data", "Target": "/data", "ReadOnly": False}]
    with pytest.raises(LaunchFailed, match="daemon's swarm node is not known"):
        _spec(launch)


def test_a_low_port_gets_net_bind_service_back_and_the_stop_grace_is_the_managers():
    container = _spec(_launch(port=80), stop_grace=3)["TaskTemplate"]["ContainerSpec"]
    assert container["CapabilityAdd"] == ["CAP_NET_BIND_SERVICE"] and container["CapabilityDrop"] == ["ALL"]
    assert container["StopGracePeriod"] == 3 * 10**9


def test_how_a_task_ended_in_words():
    assert ended_words(TaskState("lost", node_name="n2", message="its node n2 is down", ended=True)) == \
        "its node n2 is down"
    assert ended_words(TaskState("failed", exit_code=3, message="task: non-zero exit (3)", ended=True)) == \
        "the app exited with code 3"
    assert ended_words(TaskState("rejected", message="No such image: x", ended=True)) == \
        "Swarm could not start it: No such image: x"
    assert ended_words(TaskState("shutdown", ended=True)) == "its task ended shutdown"


@pytest.mark.parametrize("content, error", [
    ("not json", "not JSON"),
    ('["A", "b"]', "JSON object of strings"),
    ('{"A": 1}', "JSON object of strings"),
    ('{"A=B": "x"}', "holds '='"),
    ('{"": "x"}', "empty"),
    ('{"A": "x\\u0000y"}', "NUL"),
])
def test_env_file_refuses_what_is_not_a_map_of_names_to_strings_without_echoing_values(tmp_path, content, error):
    path = tmp_path / "env"
    path.write_text(content)
    with pytest.raises(ValueError, match=error) as exc:
        read_env_file(str(path))
    assert "x\x00y" not in str(exc.value)


def _run_agent(tmp_path: Path, env_file: Path, code: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "chalkcompute.agent", "--socket", str(tmp_path / "a.sock"), "--exit-with-main",
            "--env-file", str(env_file), "--", sys.executable, "-c", code]
    env = {k: v for k, v in os.environ.items() if k != "TOKEN"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT, env=env)


def test_the_agent_gives_the_app_the_env_file_and_exits_with_it(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text(json.dumps({"TOKEN": "s3cret", "OTHER": "x y"}))
    out = _run_agent(tmp_path, env_file, "import os, sys; print(os.environ['TOKEN'], os.environ['OTHER']); sys.exit(4)")
    assert out.stdout.strip() == "s3cret x y" and out.returncode == 4, out
    assert "s3cret" not in out.stderr


def test_the_agent_refuses_a_bad_env_file_before_the_app_starts(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text('{"TOKEN": 5}')
    out = _run_agent(tmp_path, env_file, "print('the app ran')")
    assert out.returncode == 2 and "the app ran" not in out.stdout
    assert "--env-file" in out.stderr and "strings to strings" in out.stderr
    missing = _run_agent(tmp_path, tmp_path / "nowhere", "print('the app ran')")
    assert missing.returncode == 2 and "the app ran" not in missing.stdout and "nowhere" in missing.stderr
