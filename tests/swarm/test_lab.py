"""The swarm lab itself (tests/swarm/lab): what the other swarm tests take for granted about it."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.swarm.conftest import BASE_IMAGE, FAKE_GPUS, GPU_NODE, REQUIRED
from tests.swarm.lab import LabError, SwarmLab

pytestmark = pytest.mark.timeout(180)


def test_two_ready_nodes_gpus_on_node_2_and_the_base_image_on_node_1_only(swarm_lab: SwarmLab) -> None:
    assert swarm_lab.node_states() == {"swnode1": "ready", "swnode2": "ready"}
    info = json.loads(swarm_lab.docker(1, "info", "--format", "{{json .Swarm}}"))
    assert info["ControlAvailable"] is True and info["Nodes"] == 2, info
    gpus = {}
    for n in (1, 2):
        node = json.loads(swarm_lab.docker(1, "node", "inspect", swarm_lab.node_name(n)))[0]
        gpus[n] = sorted(r["NamedResourceSpec"]["Value"] for r in node["Description"]["Resources"].get(
            "GenericResources") or [] if r.get("NamedResourceSpec", {}).get("Kind") == "gpu")
        assert node["Status"]["Addr"] == swarm_lab.node_addr(n)
    assert gpus == {1: [], GPU_NODE: sorted(FAKE_GPUS)}
    # chalkd must ship what it builds to node 2: the base image is not there (its layers travel in chalkd's images)
    assert swarm_lab.has_image(1, BASE_IMAGE)
    assert not swarm_lab.has_image(2, BASE_IMAGE)


class _Listener:
    """A TCP server on the lab's host address that records the first line of each connection."""

    def __init__(self, addr: str) -> None:
        self.sock = socket.create_server((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.got = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn, conn.makefile() as f:
                line = f.readline().strip()
            with self.got:
                self.lines.append(line)
                self.got.notify_all()

    def wait_line(self, line: str, timeout: float) -> bool:
        with self.got:
            return self.got.wait_for(lambda: line in self.lines, timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(swarm_lab: SwarmLab) -> Iterator[_Listener]:
    srv = _Listener(swarm_lab.host_addr)
    yield srv
    srv.close()


def _task_end(lab: SwarmLab, service: str, timeout: float = 60.0) -> tuple[str, str, str]:
    """(node, state, error) of the service's one task once it has ended (restart-condition none)."""
    deadline = time.monotonic() + timeout
    rows: list[str] = []
    while time.monotonic() < deadline:
        rows = lab.docker(1, "service", "ps", service, "--no-trunc", "--format",
                          "{{.Node}}|{{.CurrentState}}|{{.Error}}").splitlines()
        if rows:
            node, state, err = rows[0].split("|", 2)
            if state.split()[0] in ("Complete", "Failed", "Rejected", "Shutdown"):
                return node, state.split()[0], err
        time.sleep(0.2)  # Swarm's progress: nothing to wait on
    raise LabError(f"service {service}: its task did not end within {timeout:g}s: {rows}")


def test_a_task_on_node_2_reaches_the_host_over_an_attachable_overlay_and_not_without_one(
        swarm_lab: SwarmLab, listener: _Listener) -> None:
    image = swarm_lab.probe_image(GPU_NODE)
    net = f"lab-{secrets.token_hex(4)}"
    swarm_lab.docker(1, "network", "create", "-d", "overlay", "--attachable", net)
    services = {"with": f"{net}-with", "without": f"{net}-without"}
    tokens = {k: secrets.token_hex(8) for k in services}
    try:
        for kind, name in services.items():
            swarm_lab.docker(
                1, "service", "create", "--detach", "--quiet", "--no-resolve-image", "--name", name,
                "--restart-condition", "none", "--endpoint-mode", "dnsrr",
                "--constraint", f"node.hostname=={swarm_lab.node_name(GPU_NODE)}",
                *(("--network", net) if kind == "with" else ()),
                image, "/bin/bash", "-c",
                f"echo {tokens[kind]} >/dev/tcp/{swarm_lab.host_addr}/{listener.port}")
        with_end = _task_end(swarm_lab, services["with"])
        without_end = _task_end(swarm_lab, services["without"])
        assert with_end[:2] == (swarm_lab.node_name(GPU_NODE), "Complete"), with_end
        assert listener.wait_line(tokens["with"], timeout=10)
        assert without_end[:2] == (swarm_lab.node_name(GPU_NODE), "Failed"), without_end
        assert tokens["without"] not in listener.lines
    finally:
        swarm_lab.docker(1, "service", "rm", *services.values(), check=False)
        # the network goes once its tasks' containers are gone (a moment after the services)
        deadline = time.monotonic() + 30
        while swarm_lab.docker(1, "network", "rm", net, check=False, timeout=20) == "" \
                and time.monotonic() < deadline:
            time.sleep(0.5)


def test_kill_9_of_node_2_and_its_restart_with_the_same_flags(swarm_lab: SwarmLab) -> None:
    before = swarm_lab.node_pid(2)
    assert before is not None
    swarm_lab.kill_node(2)
    assert swarm_lab.node_pid(2) is None
    with pytest.raises(LabError, match="exited"):
        swarm_lab.docker(2, "version", timeout=20)
    swarm_lab.wait_node_state(2, "down", timeout=60)
    swarm_lab.restart_node(2)
    after = swarm_lab.node_pid(2)
    assert after is not None and after != before
    assert swarm_lab.node_states() == {"swnode1": "ready", "swnode2": "ready"}
    node = json.loads(swarm_lab.docker(1, "node", "inspect", swarm_lab.node_name(2)))[0]
    assert sorted(r["NamedResourceSpec"]["Value"] for r in node["Description"]["Resources"]["GenericResources"]) \
        == sorted(FAKE_GPUS)


def test_the_scripts_refuse_a_live_base_and_the_recipes_names(swarm_lab: SwarmLab, tmp_path) -> None:
    """A second lab on a live BASE, and the developer's lab of the recipe (swhub/swhost/10.231.0.x), are refused."""
    clash = SwarmLab(swarm_lab.base, swarm_lab.net, swarm_lab.ns_prefix)
    with pytest.raises(LabError, match="already"):
        clash._script("swarm-up.sh", timeout=30)
    theirs = SwarmLab(tmp_path / "lab", "10.231.0", "sw", host_if="swhost")
    with pytest.raises(LabError, match="belong to the recipe"):
        theirs.down()
    assert swarm_lab.node_states() == {"swnode1": "ready", "swnode2": "ready"}


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie has ended: this machine's init may never reap what is left to it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_up_tears_down_a_crashed_labs_leftovers_first(swarm_lab: SwarmLab) -> None:
    """A lab whose dockerd was killed -9 (its containerd and a container left running), then up() again in the
    same slot: the leftovers go by their pidfiles and the new lab comes up; down() leaves nothing behind."""
    try:
        lab = SwarmLab.claim(nodes=1)
    except LabError as exc:
        if REQUIRED:
            raise
        pytest.skip(f"no second slot free for this test: {exc}")
    try:
        lab.up()
        lab.probe_image(1)
        # -i keeps its stdin open (and empty): `read` blocks without spinning
        lab.docker(1, "run", "-d", "-i", "--name", "left", "chalk-lab-probe:bash", "/bin/bash", "-c", "read -t 600")
        shim_pids = [int(p.read_text()) for p in (lab.base / "n1" / "exec").rglob("init.pid")]
        assert shim_pids, "the container has no init.pid under the node's exec-root"
        lab.kill_node(1)
        lab.up()  # as the next session would: down first (by the crashed lab's pidfiles), then up
        assert lab.node_states() == {"swnode1": "ready"}
        for pid in shim_pids:
            assert not _alive(pid), f"the crashed lab's container init {pid} survived"
    finally:
        lab.down()
        lab.release()
    assert not lab.base.exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    assert not {f"{lab.ns_prefix}hub", f"{lab.ns_prefix}ns1"} & set(netns)
    assert subprocess.run(["ip", "link", "show", lab.host_if], capture_output=True).returncode != 0
