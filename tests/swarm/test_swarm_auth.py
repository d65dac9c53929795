"""Who may dial chalkd's worker listener from another node, and what ``docker service inspect`` shows.

Two replicas run on node 2 (``node=``); their workers dialed chalkd at ``--advertise-addr`` over TLS with
the key and CA Swarm mounted as secrets. From a container of our own on node 2, on chalkd's overlay network
(where a worker is), an attacker's worker (``tests/integration/worker_probe.py``, the real
``python -m chalkcompute.worker`` or a hand-made client) tries: without a key, with another replica's key,
with its own credential for another replica's stream, and without TLS. Every try is refused by the daemon
(or, with a key that cannot check the daemon's proof, sends nothing), and no key is in the service's or the
container's inspect output.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from chalkcompute import Image, RemoteFunction
from tests.conftest import wait_for
from tests.swarm.conftest import GPU_NODE
from tests.swarm.lab import SwarmLab

pytestmark = [pytest.mark.timeout(600)]

PROBE = Path(__file__).resolve().parents[1] / "integration" / "worker_probe.py"
KEY_PATH = "/run/secrets/chalkd-replica-key"
CA_PATH = "/run/secrets/chalkd-ca.pem"


def where(x: int) -> str:
    """``"<x> <node>"``: which node answered (CHALK_NODE, set by the swarm runtime)."""
    import os

    return f"{x} {os.environ.get('CHALK_NODE', '?')}"


def _replica(lab: SwarmLab, function: str) -> dict:
    """The one replica of ``function``: its id, service (and its inspect text), container on node 2, key."""
    services = lab.docker(1, "service", "ls", "-q", "--filter", f"label=dev.chalkd.function={function}").split()
    assert len(services) == 1, services
    inspect = lab.docker(1, "service", "inspect", services[0])
    spec = json.loads(inspect)[0]["Spec"]
    rid = spec["Labels"]["dev.chalkd.replica"]
    container = wait_for(lambda: lab.docker(GPU_NODE, "ps", "-q", "--filter", f"label=dev.chalkd.replica={rid}")
                         .strip(), timeout=60, what=f"replica {rid}'s container on node {GPU_NODE}")
    # What an attacker with node 2's engine could read; the test needs it to be another replica.
    key = lab.docker(GPU_NODE, "exec", container, "cat", KEY_PATH).strip()
    assert len(key) >= 16
    env = dict(e.split("=", 1) for e in spec["TaskTemplate"]["ContainerSpec"]["Env"])
    network = lab.docker(1, "network", "inspect", "--format", "{{.Name}}",
                         spec["TaskTemplate"]["Networks"][0]["Target"]).strip()
    return {"id": rid, "service": services[0], "inspect": inspect, "spec": spec, "env": env, "container": container,
            "key": key, "image": spec["TaskTemplate"]["ContainerSpec"]["Image"], "network": network}


@pytest.fixture(scope="module")
def two_on_node_2(swarm_daemon) -> tuple[dict, dict]:
    d = swarm_daemon
    lab = d.lab
    out = []
    for tag in ("a", "b"):
        name = f"swarm_auth_{tag}_{uuid.uuid4().hex[:6]}"
        fn = RemoteFunction(where, name=name, image=Image.debian_slim(), min_replicas=1, max_replicas=1,
                            node=lab.node_name(GPU_NODE))
        fn.wait_ready(timeout=300)
        # Answered by a worker on node 2 that dialed --advertise-addr over TLS (nothing else reaches chalkd there).
        assert fn(7) == f"7 {lab.node_name(GPU_NODE)}"
        out.append(_replica(lab, name))
    a, b = out
    assert a["id"] != b["id"] and a["key"] != b["key"]
    return a, b


def _from_node_2(d, replica: dict, **args: str) -> dict:
    """worker_probe.py in a container of our own on node 2, on chalkd's overlay network, with the replica's image."""
    lab = d.lab
    args = {"target": replica["env"]["CHALK_WORKER_TARGET"], **args}
    out = lab.docker(GPU_NODE, "run", "-i", "--rm", "--network", replica["network"], "--entrypoint", "python3",
                     replica["image"], "-", json.dumps(args), input=PROBE.read_text(), timeout=180)
    return json.loads(out.strip().splitlines()[-1])


def test_replicas_on_node_2_get_key_and_ca_as_files_and_inspect_shows_no_key(swarm_daemon, two_on_node_2):
    d = swarm_daemon
    lab = d.lab
    for r in two_on_node_2:
        assert r["env"]["CHALK_REPLICA_KEY_FILE"] == KEY_PATH and r["env"]["CHALK_COMPUTE_TLS"] == CA_PATH
        assert r["env"]["CHALK_WORKER_TARGET"].rsplit(":", 1)[0] == lab.host_addr  # --advertise-addr
        mounted = {s["File"]["Name"] for s in r["spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]}
        assert mounted == {KEY_PATH, CA_PATH}
        container = lab.docker(GPU_NODE, "inspect", r["container"])
        secrets = lab.docker(1, "secret", "inspect", *(s["SecretID"] for s in
                                                       r["spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]))
        for text in (r["inspect"], container, secrets):
            assert r["key"] not in text
        # The CA it mounted is the daemon's own (the one its certificate chains to).
        ca = lab.docker(GPU_NODE, "exec", r["container"], "cat", CA_PATH)
        assert ca.strip() == (d.home / "tls" / "ca.pem").read_text().strip()


def test_a_worker_on_node_2_without_the_key_cannot_connect(swarm_daemon, two_on_node_2):
    d = swarm_daemon
    a, _ = two_on_node_2
    ca = (d.home / "tls" / "ca.pem").read_text()
    run = _from_node_2(d, a, mode="worker", replica_id=a["id"], key="", ca_pem=ca)
    assert run["returncode"] != 0, run
    assert "UNAUTHENTICATED" in run["stderr"] or "Stream reset by remote party" in run["stderr"], run
    # A client of the attacker's own: the hello (with the replica's real key, even) on a connection with no session.
    got = _from_node_2(d, a, ca_pem=ca, hello_id=a["id"], hello_token=a["key"])
    assert got["messages"] == 0, got
    assert got["status"] == "UNAUTHENTICATED" or got["error"] == "StreamTerminatedError", got


def test_a_worker_on_node_2_with_another_replicas_key_cannot_connect(swarm_daemon, two_on_node_2):
    d = swarm_daemon
    a, b = two_on_node_2
    ca = (d.home / "tls" / "ca.pem").read_text()
    # The real worker as replica A with B's key: the daemon proves itself with A's key, which B's cannot check.
    run = _from_node_2(d, a, mode="worker", replica_id=a["id"], key=b["key"], ca_pem=ca)
    assert run["returncode"] != 0 and "could not prove" in run["stderr"], run
    # B's own credential (its key, its id) asking for A's worker stream: refused by the daemon.
    got = _from_node_2(d, a, ca_pem=ca, session_id=b["id"], session_key=b["key"], hello_id=a["id"],
                       hello_token=b["key"])
    assert got["messages"] == 0 and got["status"] == "PERMISSION_DENIED" and a["id"] in got["message"], got


def test_the_worker_listener_speaks_only_tls(swarm_daemon, two_on_node_2):
    d = swarm_daemon
    a, _ = two_on_node_2
    # Plain HTTP/2 (no CA given): dropped before the challenge is answered (nothing secret is in this try).
    got = _from_node_2(d, a, session_id=a["id"], session_key="x" * 32, hello_id=a["id"], hello_token="x")
    assert got["messages"] == 0 and got["error"] == "StreamTerminatedError", got
