"""Scaling groups on the swarm: replicas on both nodes behind one proxy, a secret that travels as a Swarm secret
only, and a replica whose node dies replaced on the node left.

The app is ``tests/swarm/apps/node_app.py`` (stdlib only: the lab has no package index), baked into an image
from the default base; node 2 starts with no image at all, so its replica runs what chalkd shipped there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from chalkcompute import Image, ReadinessProbe, ScalingGroup, ScalingGroupError, Secret, VolumeClient
from chalkd.testing import _SdkPointer
from tests.conftest import wait_for
from tests.swarm.conftest import FAKE_GPUS

pytestmark = [pytest.mark.timeout(420)]

APP = Path(__file__).parent / "apps" / "node_app.py"
TOKEN = "swarm-group-secret-" + uuid.uuid4().hex


def whoami(url: str, n: int = 40) -> list[dict]:
    """``n`` answers of the app through the group's proxy (a fresh connection each: no keep-alive pinning)."""
    out = []
    for _ in range(n):
        r = httpx.get(f"{url}/whoami", timeout=30)
        assert r.status_code == 200, (r.status_code, r.text)
        out.append(r.json())
    return out


def ready_nodes(sg: ScalingGroup, lab) -> dict[str, str]:
    """Ready replica id -> its node's number, from the address the proxy dials (node address:published port)."""
    info = sg.refresh()
    by_addr = {lab.node_addr(n): str(n) for n in range(1, lab.nodes + 1)}
    return {r.id: by_addr.get(r.address.rpartition(":")[0], r.address) for r in info.replicas if r.state == "ready"}


@pytest.fixture(scope="module")
def spread_group(swarm_daemon, request):
    mp = pytest.MonkeyPatch()
    mp.setenv("SWARM_GROUP_TOKEN", TOKEN)
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    sg = ScalingGroup(image=img, name=f"spread-{uuid.uuid4().hex[:6]}", port=8080, min_replicas=2, max_replicas=2,
                      secrets=[Secret.from_local_env("SWARM_GROUP_TOKEN", "TOKEN")],
                      readiness_probe=ReadinessProbe.http("/health", period_seconds=1))
    t0 = time.monotonic()
    sg.deploy()
    sg.wait_ready(timeout=300)
    print(f"group of 2 replicas ready (build, ship, place, start) in {time.monotonic() - t0:.1f}s")
    yield sg
    mp.undo()
    sg.delete()


def test_replicas_on_both_nodes_answer_through_one_proxy(spread_group, swarm_daemon):
    lab = swarm_daemon.lab
    sg = spread_group
    # Swarm spreads one-task services over the nodes with the fewest tasks: one replica lands on each.
    nodes = wait_for(lambda: len(n := ready_nodes(sg, lab)) == 2 and n, timeout=120, what="two ready replicas")
    assert sorted(nodes.values()) == ["1", "2"], nodes
    answers = whoami(sg.web_url)
    assert {a["node"] for a in answers} == {lab.node_name(1), lab.node_name(2)}, answers  # the proxy balances
    assert len({a["host"] for a in answers}) == 2
    assert all(a["has_token"] for a in answers)  # the secret reached the app on both nodes

    # Hostile: the secret's value is in no service's or task's spec on the manager, nor in any container's env
    # on either node (a Swarm secret's data cannot be read back through the API at all).
    services = lab.docker(1, "service", "ls", "-q", "--filter", f"label=dev.chalkd.home={swarm_daemon.home.resolve()}")
    inspected = lab.docker(1, "service", "inspect", *services.split())
    assert TOKEN not in inspected and "/run/secrets/chalkd-group-env" in inspected
    for s in json.loads(inspected):
        assert not any("TOKEN" in e for e in s["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env", []))
    for n in (1, 2):
        ids = lab.docker(n, "ps", "-q", "--filter", "label=dev.chalkd.kind=group-replica").split()
        assert ids
        assert TOKEN not in lab.docker(n, "inspect", *ids)
    secrets = lab.docker(1, "secret", "inspect", *lab.docker(1, "secret", "ls", "-q").split())
    assert TOKEN not in secrets

    # `chalkd nodes` shows each replica on its node, under the group's name.
    shown = subprocess.run([sys.executable, "-m", "chalkd.cli", "nodes", "--json", "--target", swarm_daemon.target],
                           capture_output=True, text=True, timeout=90)
    assert shown.returncode == 0, shown.stderr
    listed = {r["replica_id"]: (n["name"], r["function"], r["kind"]) for n in json.loads(shown.stdout)["nodes"]
              for r in n["replicas"]}
    for rid, n in nodes.items():
        assert listed.get(rid) == (lab.node_name(int(n)), sg.name, "group-replica"), listed

    # The replicas' output, from both nodes, through the daemon (`chalkd groups logs`).
    logs = subprocess.run([sys.executable, "-m", "chalkd.cli", "groups", "logs", sg.name, "--tail", "50"],
                          capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                           "CHALK_COMPUTE_TARGET": swarm_daemon.target})
    assert logs.returncode == 0, logs.stderr
    for rid in nodes:
        assert any(rid in line and "node_app GET /whoami" in line for line in logs.stdout.splitlines()), logs.stdout


def test_a_replica_whose_node_dies_is_replaced_on_the_node_left(spread_group, swarm_daemon):
    lab = swarm_daemon.lab
    sg = spread_group
    nodes = wait_for(lambda: len(n := ready_nodes(sg, lab)) == 2 and n, timeout=120, what="two ready replicas")
    on_2 = [rid for rid, n in nodes.items() if n == "2"]
    assert on_2, nodes
    lab.kill_node(2)
    try:
        # Swarm calls the node down; chalkd drops its replica from the proxy and starts another, placed on node 1.
        after = wait_for(lambda: len(n := ready_nodes(sg, lab)) == 2 and set(n.values()) == {"1"} and n,
                         timeout=180, what="two ready replicas on node 1")
        assert on_2[0] not in after
        answers = whoami(sg.web_url, 20)
        assert {a["node"] for a in answers} == {lab.node_name(1)}, answers
        assert len({a["host"] for a in answers}) == 2  # both replicas, the replacement among them, serve
        assert sg.refresh().status == "Running"
    finally:
        lab.restart_node(2)


def test_a_group_that_mounts_a_volume_runs_on_the_daemons_node(swarm_daemon):
    lab = swarm_daemon.lab
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    # Two replicas, each its own service: unpinned, Swarm would spread them over both nodes.
    sg = ScalingGroup(image=img, name=f"vol-{uuid.uuid4().hex[:6]}", port=8080, min_replicas=2, max_replicas=2,
                      volumes=[("sw-gvol", "/data")])
    try:
        sg.deploy(ready_timeout=180)
        nodes = wait_for(lambda: len(n := ready_nodes(sg, lab)) == 2 and n, timeout=120, what="two ready replicas")
        assert sorted(nodes.values()) == ["1", "1"], nodes
        token = uuid.uuid4().hex
        assert httpx.get(f"{sg.web_url}/write/{token}", timeout=30).text == "written"
        assert VolumeClient().lookup("sw-gvol").get(token).decode() == lab.node_name(1)  # the daemon's volume
    finally:
        sg.delete()


def test_a_group_asking_for_a_gpu_runs_where_swarm_has_one(swarm_daemon):
    lab = swarm_daemon.lab
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    sg = ScalingGroup(image=img, name=f"gpu-{uuid.uuid4().hex[:6]}", port=8080, gpu="any")
    try:
        sg.deploy(ready_timeout=180)  # not refused for want of a GPU on the daemon's host: Swarm places it
        assert list(ready_nodes(sg, lab).values()) == ["2"]
        answer = httpx.get(f"{sg.web_url}/whoami", timeout=30).json()
        assert answer["node"] == lab.node_name(2) and answer["gpus"] in FAKE_GPUS, answer
    finally:
        sg.delete()


def overlay_ips(lab, group_id: str) -> dict[str, str]:
    """Replica id -> its overlay address, for a group's running tasks (from the manager's task records)."""
    ips = {}
    for service in lab.docker(1, "service", "ls", "-q", "--filter", f"label=dev.chalkd.group={group_id}").split():
        replica = json.loads(lab.docker(1, "service", "inspect", service))[0]["Spec"]["Labels"]["dev.chalkd.replica"]
        for task in lab.docker(1, "service", "ps", "-q", "--filter", "desired-state=running", service).split():
            info = json.loads(lab.docker(1, "inspect", task))[0]
            for att in info.get("NetworksAttachments") or []:
                ips[replica] = att["Addresses"][0].split("/")[0]
    return ips


def test_a_groups_replicas_reach_each_other_but_no_other_groups_and_nothing_joins_their_network(spread_group,
                                                                                                 swarm_daemon):
    lab = swarm_daemon.lab
    a = spread_group
    wait_for(lambda: len(ready_nodes(a, lab)) == 2, timeout=120, what="two ready replicas")
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    b = ScalingGroup(image=img, name=f"other-{uuid.uuid4().hex[:6]}", port=8080).deploy(ready_timeout=180)
    try:
        own, other = overlay_ips(lab, a.refresh().id), list(overlay_ips(lab, b.refresh().id).values())
        assert len(own) == 2 and len(other) == 1, (own, other)
        # Each of A's replicas, asked directly at its node's published port: it reaches A's other replica on
        # their group's network (the check works), and B's replica on no overlay address.
        direct = {r.id: r.address for r in a.refresh().replicas if r.state == "ready"}
        assert set(direct) == set(own), (direct, own)
        for rid, address in direct.items():
            peer = next(ip for r, ip in own.items() if r != rid)
            assert httpx.get(f"http://{address}/connect/{peer}/8080", timeout=30).text == "open"
            answer = httpx.get(f"http://{address}/connect/{other[0]}/8080", timeout=30).text
            assert answer.startswith("closed"), answer
        # A group's network is not attachable: no container outside chalkd's services joins it.
        net = lab.docker(1, "network", "ls", "-q", "--filter", f"label=dev.chalkd.group={a.refresh().id}").split()
        assert len(net) == 1
        probe = lab.probe_image(1)
        joined = subprocess.run(["docker", "-H", lab.node_url(1), "run", "--rm", "--network", net[0], probe,
                                 "/bin/bash", "-c", "true"], capture_output=True, text=True, timeout=60)
        assert joined.returncode != 0 and "attach" in joined.stderr.lower(), joined.stderr
    finally:
        b.delete()


def home_objects(lab, home: Path) -> dict[str, list[str]]:
    """This home's group replica services, their secrets and the groups' networks on the manager (by the labels
    chalkd puts on each; the functions' network and chalkd's CA secret are not the groups')."""
    home_label = f"label=dev.chalkd.home={home.resolve()}"
    kinds = {"service": "group-replica", "secret": "group-env", "network": "group-network"}
    return {what: lab.docker(1, what, "ls", "-q", "--filter", home_label, "--filter",
                             f"label=dev.chalkd.kind={kind}").split() for what, kind in kinds.items()}


def test_an_authenticated_group_is_refused_on_a_swarm_before_anything_is_built(swarm_daemon):
    """A replica's port is published on its node, where a caller could skip the proxy's token check."""
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    sg = ScalingGroup(image=img, name=f"auth-{uuid.uuid4().hex[:6]}", port=8080, authenticated=True)
    with pytest.raises(ScalingGroupError, match=r"authenticated=True is not supported on --runtime swarm yet: "
                                                r"each replica's port is published on its node's address"):
        sg.deploy(ready_timeout=30)


def test_a_group_no_node_has_room_for_waits_saying_why_in_swarms_words(swarm_daemon):
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    sg = ScalingGroup(image=img, name=f"huge-{uuid.uuid4().hex[:6]}", port=8080, cpu=64)
    try:
        with pytest.raises(ScalingGroupError, match="insufficient resources") as exc:
            sg.deploy(ready_timeout=30)
        assert "Swarm has not placed replica sgr-" in str(exc.value)
        info = sg.refresh()
        assert info.status == "Pending" and info.ready_replicas == 0
    finally:
        sg.delete()


def test_a_daemon_stop_leaves_no_group_object_and_a_restart_serves_the_group_again(swarm_daemon_factory,
                                                                                   monkeypatch):
    d = swarm_daemon_factory()
    lab = d.lab
    monkeypatch.setenv("SWARM_GROUP_TOKEN", TOKEN)
    img = Image.debian_slim().add_local_file(str(APP), "/app/app.py").entrypoint(["python3", "/app/app.py"])
    with _SdkPointer(d):
        sg = ScalingGroup(image=img, name="durable", port=8080,
                          secrets=[Secret.from_local_env("SWARM_GROUP_TOKEN", "TOKEN")]).deploy()
        assert all(home_objects(lab, d.home).values())  # a service, its secret, the group's network
        d.stop()  # SIGTERM: the replicas stop with the daemon, the record stays
        assert home_objects(lab, d.home) == {"service": [], "secret": [], "network": []}
        d.start()
    with _SdkPointer(d):
        again = ScalingGroup.from_name("durable").wait_ready(timeout=180)
        assert again.web_url == sg.web_url  # its port is kept across the restart
        answer = httpx.get(f"{again.web_url}/whoami", timeout=30).json()
        assert answer["has_token"] and answer["node"] in (lab.node_name(1), lab.node_name(2))
        again.delete()
        # Deleted: its replica's service, its secret and the group's network go.
        wait_for(lambda: home_objects(lab, d.home) == {"service": [], "secret": [], "network": []},
                 timeout=60, what="the group's service, secret and network removed")
