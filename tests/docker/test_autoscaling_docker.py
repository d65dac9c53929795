"""Autoscaling on the Docker runtime: replicas are containers.

A burst scales 0 -> max_replicas containers and back to the floor after the cooldown with each call
answered once; a replica container killed (``docker kill``) mid-burst loses no call; the reference's
``Embedder`` (stand-in model) runs ``@before`` once per container and ``@after`` on ``delete()`` and on
the daemon's SIGTERM; a class whose two GPU methods' floors want more GPUs than the host has is refused
before any container starts.

Handlers leave a file per run in a volume mounted at ``/gate`` (a directory of the daemon's home on
this host, read and written here directly), and wait for ``/gate/go``, so a test holds a burst in
flight while it looks at the containers.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import Image, RemoteFunction
from tests.conftest import Daemon, wait_for
from tests.docker.conftest import remove_home_containers
from tests.integration.test_classes import Embedder, StandInModel, lines
from tests.integration.test_scaling import Calls, calls_of

pytestmark = [pytest.mark.timeout(300)]

IMAGE = Image.debian_slim()


def gated_run(x: int) -> int:
    """Leave ``run-<x>-<replica id>-<nonce>`` (one per run), wait for the gate, return 2x."""
    import os
    import time
    import uuid

    with open(f"/gate/run-{x}-{os.environ['CHALK_REPLICA_ID']}-{uuid.uuid4().hex[:8]}", "w"):
        pass
    while not os.path.exists("/gate/go"):
        time.sleep(0.02)
    return 2 * x


def runs(gate: Path) -> dict[int, list[str]]:
    """x -> the replica ids that ran it (one entry per run)."""
    out: dict[int, list[str]] = {}
    for p in gate.glob("run-*"):
        _, x, replica = p.name.rsplit("-", 1)[0].split("-", 2)
        out.setdefault(int(x), []).append(replica)
    return out


def running_containers(home: Path, name: str | None = None) -> set[str]:
    """Replica ids of this home's (``name``'s) containers running now, in one ``docker ps`` (a container
    removed between a listing and an inspect would fail a two-step look)."""
    args = ["docker", "ps", "--filter", f"label=dev.chalkd.home={home.resolve()}",
            "--format", '{{.Label "dev.chalkd.replica"}}']
    if name is not None:
        args[2:2] = ["--filter", f"label=dev.chalkd.function={name}"]
    return set(subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout.split())


def volume_dir(home: Path, volume: str) -> Path:
    return home / "volumes" / volume


def test_a_burst_scales_from_zero_to_three_containers_and_back_with_every_call_answered_once(on_docker):
    name, volume = f"dka_burst_{uuid.uuid4().hex[:6]}", f"dka-gate-{uuid.uuid4().hex[:8]}"
    fn = RemoteFunction(gated_run, name=name, image=IMAGE, min_replicas=0, max_replicas=3,
                        suspend_cooldown_period=1, volumes=[(volume, "/gate")])
    fn._ensure_registered()
    assert running_containers(on_docker.home, name) == set()
    gate = volume_dir(on_docker.home, volume)
    calls = Calls()
    for x in range(9):
        calls.start(fn, x, x)
    # Nine calls, one at a time per replica: three containers (max_replicas), each running a call.
    busy = wait_for(lambda: len(r := {rid for rids in runs(gate).values() for rid in rids}) == 3 and r,
                    timeout=120, what="three containers running calls")
    assert running_containers(on_docker.home, name) == busy
    info = fn.refresh()
    assert (info.desired_replicas, info.ready_replicas, info.replicas) == (3, 3, 3), info
    assert info.scaling_decision.startswith("scale up ") and "call(s) waiting" in info.scaling_decision
    (gate / "go").touch()
    assert calls.join(120) == {x: 2 * x for x in range(9)}
    ran = runs(gate)
    assert sorted(ran) == list(range(9)) and all(len(rids) == 1 for rids in ran.values()), ran
    assert sorted(calls_of(name)) == ["succeeded"] * 9
    # Idle past the cooldown: every container stops (min_replicas 0), each a logged decision.
    wait_for(lambda: not running_containers(on_docker.home, name), timeout=60, what="the containers to stop")
    # The engine lists a container as gone a moment before the daemon has seen its replica exit.
    info = wait_for(lambda: (i := fn.refresh()).replicas == 0 and i, timeout=30, what="the daemon to count no replica")
    assert (info.desired_replicas, info.ready_replicas, info.replicas) == (0, 0, 0), info
    assert info.scaling_decision.startswith("scale down 1 -> 0: replica r-"), info
    fn.delete()


def test_a_replica_container_killed_mid_burst_loses_no_call(on_docker):
    name, volume = f"dka_killed_{uuid.uuid4().hex[:6]}", f"dka-gate-{uuid.uuid4().hex[:8]}"
    fn = RemoteFunction(gated_run, name=name, image=IMAGE, min_replicas=0, max_replicas=2,
                        suspend_cooldown_period=1, volumes=[(volume, "/gate")])
    gate = volume_dir(on_docker.home, volume)
    calls = Calls()
    for x in range(4):
        calls.start(fn, x, x)
    two = wait_for(lambda: len(r := runs(gate)) == 2 and len({rid for rids in r.values() for rid in rids}) == 2
                   and r, timeout=120, what="two calls running in two containers")
    victim_x, (victim,) = sorted(two.items())[0]
    subprocess.run(["docker", "kill", f"chalkd-{victim}"], check=True, capture_output=True, timeout=60)
    wait_for(lambda: f"replica {victim} of {name} was lost" in on_docker.log(), timeout=60,
             what="the daemon to see the container gone")
    (gate / "go").touch()
    # Its call runs again (it had sent nothing back) on another container; no call fails or runs twice else.
    assert calls.join(120) == {x: 2 * x for x in range(4)}
    assert sorted(calls_of(name)) == ["succeeded"] * 4
    ran = runs(gate)
    assert len(ran[victim_x]) == 2 and ran[victim_x].count(victim) == 1, ran  # on the victim, then elsewhere
    assert all(len(rids) == 1 and victim not in rids for x, rids in ran.items() if x != victim_x), ran
    fn.delete()


def test_embedder_runs_before_once_per_container_and_after_on_delete_and_on_sigterm(docker_engine, tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--runtime", "docker")).start()
    volume = "dka-hooks"
    hooks = volume_dir(d.home, volume)
    try:
        def deploy(name: str) -> chalkcompute.RemoteClass:
            return chalkcompute.cls(name=name, image=IMAGE, env={"HOOK_DIR": "/hooks"}, volumes=[(volume, "/hooks")],
                                    min_replicas=1, max_replicas=1, target=d.target)(Embedder).deploy()

        emb = deploy("DkEmbedder")
        # Ready means @before returned in each method's container (three methods, one container each).
        assert len(lines(hooks / "before")) == 3
        assert len(running_containers(d.home)) == 3
        e = emb()
        for text in ("hello world", "x", "yy"):
            assert e.embed(text) == StandInModel().encode(text)
        assert e.embed_batch(["a", "b"]) == StandInModel().encode(["a", "b"])
        assert list(e.words("ab cd")) == [[*StandInModel().encode(w), 1.0] for w in ("ab", "cd")]
        assert len(lines(hooks / "before")) == 3  # once per container, not per call
        emb.delete()
        wait_for(lambda: len(lines(hooks / "after")) == 3, timeout=60, what="@after in every container on delete")
        # Again, then the daemon is told to stop: each container runs @after before it goes.
        again = deploy("DkEmbedder2")
        assert again().embed("q") == StandInModel().encode("q")
        assert len(lines(hooks / "before")) == 6
        d.stop()
        assert len(lines(hooks / "after")) == 6, d.log()[-3000:]
        assert running_containers(d.home) == set()
    finally:
        d.stop()
        remove_home_containers(d.home)


class TwoGpuMethods:
    @chalkcompute.method()
    def one(self) -> int:
        return 1

    @chalkcompute.method()
    def two(self) -> int:
        return 2


def test_two_gpu_methods_at_min_replicas_1_are_refused_on_a_one_gpu_host(on_docker):
    # The Docker daemon's fake inventory is one NVIDIA L4 (tests/docker/conftest.py).
    pair = chalkcompute.cls(name="DkGpuPair", image=IMAGE, gpu="nvidia-l4", min_replicas=1)(TwoGpuMethods)
    with pytest.raises(chalkcompute.ClassError) as refused:
        pair.deploy()
    assert str(refused.value).startswith(
        "class 'DkGpuPair' (methods one, two) cannot be deployed on this host: 2 methods with replicas of their own "
        "(the default) at min_replicas=1, each replica with 1 x nvidia-l4: 2 GPUs of type nvidia-l4 wanted, this "
        "host has 1 x NVIDIA L4; use @chalkcompute.cls(..., shared_replicas=True)"), refused.value
    assert running_containers(on_docker.home, "DkGpuPair.one") == set()
