"""Autoscaling against a real chalkd (process runtime): bursts up to max_replicas and back, replicas killed
mid-burst, draining on scale-down (calls keep being answered while a class's @after runs), GPU waits
with a fake inventory, and what ``chalkd functions -v`` shows.

Calls run on threads (``Calls`` from test_scaling); each handler leaves a file per run so a test can tell
that every call ran, and ran once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import FunctionTimeoutError, RemoteClass, RemoteFunction
from tests.conftest import ROOT, Daemon, wait_for
from tests.integration.test_scaling import Calls, calls_of, replicas


def counted(x: int, gate_dir: str) -> int:
    """Leave ``run-<x>-<pid>-<n>`` (one per run), wait for the gate, return 2x."""
    import os
    import time

    n = sum(1 for name in os.listdir(gate_dir) if name.startswith(f"run-{x}-"))
    with open(os.path.join(gate_dir, f"run-{x}-{os.getpid()}-{n}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    return 2 * x


def runs(gate: Path) -> dict[int, list[int]]:
    """x -> the pids that ran it (one entry per run)."""
    out: dict[int, list[int]] = {}
    for p in gate.glob("run-*"):
        _, x, pid, _n = p.name.split("-")
        out.setdefault(int(x), []).append(int(pid))
    return out


def chalkd_cli(*args: str) -> str:
    wide = dict(os.environ, COLUMNS="250")
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", *args], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env=wide)
    assert out.returncode == 0, out.stderr
    return out.stdout


def scaling_lines(name: str, target: str) -> list[str]:
    """The lines ``chalkd functions -v`` prints about ``name``'s scaling (its header and what follows)."""
    lines = chalkd_cli("functions", "-v", "--target", target).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} v"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return lines[start:end]


@pytest.mark.timeout(180)
def test_burst_scales_from_zero_to_max_and_back_with_every_call_answered_once(daemon, tmp_path):
    name = "as_burst"
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(counted, name=name, min_replicas=0, max_replicas=3, suspend_cooldown_period=0.5)
    fn._ensure_registered()
    assert replicas(name) == (0, 0)
    calls = Calls()
    for x in range(9):
        calls.start(fn, x, x, str(gate))
    # Nine calls wait, one at a time per replica: the autoscaler goes to max_replicas (3), not beyond.
    wait_for(lambda: len({pid for pids in runs(gate).values() for pid in pids}) == 3, timeout=60,
             what="three replicas running calls")
    assert replicas(name) == (3, 3)
    header, *details = scaling_lines(name, daemon.target)
    assert "desired 3, ready 3, replicas 3" in header
    assert any("scale up " in line and " -> 3: " in line and "call(s) waiting" in line for line in details), details
    (gate / "go").touch()
    assert calls.join(90) == {x: 2 * x for x in range(9)}
    ran = runs(gate)
    assert sorted(ran) == list(range(9)) and all(len(pids) == 1 for pids in ran.values()), ran
    assert sorted(calls_of(name)) == ["succeeded"] * 9
    # Idle past the cooldown: back to min_replicas (0), each stop a logged decision with its reason.
    wait_for(lambda: replicas(name) == (0, 0), timeout=30, what="replicas back to 0")
    header, *details = scaling_lines(name, daemon.target)
    assert "desired 0, ready 0, replicas 0" in header
    assert any("scale down 1 -> 0: replica r-" in line and "(suspend_cooldown_period)" in line
               for line in details), details
    assert f"INFO chalkd.scaling.autoscaler: scaling {name} v1: scale up 0 -> " in daemon.log()


@pytest.mark.timeout(180)
def test_a_replica_killed_mid_burst_loses_no_call(daemon, tmp_path):
    name = "as_killed"
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(counted, name=name, min_replicas=0, max_replicas=2, suspend_cooldown_period=0.5)
    calls = Calls()
    for x in range(6):
        calls.start(fn, x, x, str(gate))
    two = wait_for(lambda: len(started := runs(gate)) == 2 and started, timeout=60, what="two calls running")
    victim_x, (victim,) = sorted(two.items())[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"of {name} was lost" in daemon.log(), what="the daemon to see the replica gone")
    (gate / "go").touch()
    # Its call runs again (it had sent nothing back), on a replica the autoscaler starts in its place.
    assert calls.join(90) == {x: 2 * x for x in range(6)}
    assert sorted(calls_of(name)) == ["succeeded"] * 6
    ran = runs(gate)
    assert len(ran[victim_x]) == 2, ran
    assert all(len(pids) == 1 for x, pids in ran.items() if x != victim_x), ran
    assert victim not in {pid for x, pids in ran.items() if x != victim_x for pid in pids}


# -- batches ------------------------------------------------------------------------------------


def batch_held(xs: list[int], gate_dirs: list[str]) -> list[int]:
    """Leave ``start-<x>-<replica id>`` per item, wait for ``go``, return 2x each."""
    import os
    import time

    for x, gate_dir in zip(xs, gate_dirs, strict=True):
        with open(os.path.join(gate_dir, f"start-{x}-{os.environ['CHALK_REPLICA_ID']}"), "w"):
            pass
    while not os.path.exists(os.path.join(gate_dirs[0], "go")):
        time.sleep(0.01)
    return [2 * x for x in xs]


@pytest.mark.timeout(180)
def test_an_item_arriving_while_the_replica_runs_a_batch_gets_a_replica_and_no_busy_one_is_drained(
        daemon, tmp_path):
    # A replica runs one batch at a time (max_concurrent=1), however few items it carries: an item that
    # arrives while a batch of one runs needs a replica of its own. (Counting items against
    # max_concurrent x batch_size said one replica held both, and the second replica, once added, was
    # drained after the cooldown while still busy.)
    name = "as_batch_busy"
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(batch_held, name=name, min_replicas=0, max_replicas=2, max_batching_size=4,
                        max_buffer_duration=50, suspend_cooldown_period=0.5)
    calls = Calls()
    calls.start(fn, 1, 1, str(gate))
    first = wait_for(lambda: placed(gate).get(1), timeout=60, what="the first item running")
    calls.start(fn, 2, 2, str(gate))
    second = wait_for(lambda: placed(gate).get(2), timeout=60, what="the second item running")
    assert second != first  # on a replica of its own, not after the first
    header, *details = scaling_lines(name, daemon.target)
    assert "scale up 1 -> 2: 1 call(s) waiting, 1 running, 1 batch(es) of up to 4 per replica" in \
        " ".join(details), details
    # A sentinel with the same cooldown, idle from now: once it has scaled down, a cooldown has passed
    # with both batch replicas busy, and neither was chosen to drain.
    sentinel = RemoteFunction(visible_devices, name="as_batch_sentinel", min_replicas=0, suspend_cooldown_period=0.5)
    sentinel()
    wait_for(lambda: replicas("as_batch_sentinel") == (0, 0), timeout=30, what="the sentinel's scale-down")
    assert replicas(name) == (2, 2)
    assert f"scaling {name} v1: scale down" not in daemon.log()
    (gate / "go").touch()
    assert calls.join(60) == {1: 2, 2: 4}
    wait_for(lambda: replicas(name) == (0, 0), timeout=30, what="replicas back to 0")


# -- draining ------------------------------------------------------------------------------------


def held(x: int, gate_dir: str) -> int:
    """Leave ``start-<x>-<replica id>``, wait for ``go-<x>``, return 2x."""
    import os
    import time

    with open(os.path.join(gate_dir, f"start-{x}-{os.environ['CHALK_REPLICA_ID']}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, f"go-{x}")):
        time.sleep(0.01)
    return 2 * x


def placed(gate: Path) -> dict[int, list[str]]:
    """x -> the replica ids that ran it."""
    out: dict[int, list[str]] = {}
    for p in gate.glob("start-*"):
        _, x, replica = p.name.split("-", 2)
        out.setdefault(int(x), []).append(replica)
    return out


@pytest.mark.timeout(180)
def test_a_replica_chosen_for_scale_down_finishes_its_call_and_takes_no_new_one(daemon, tmp_path):
    name = "as_drain_busy"
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(held, name=name, min_replicas=0, max_replicas=2, concurrency=2,
                        suspend_cooldown_period=0.5)
    calls = Calls()
    for x in range(4):
        calls.start(fn, x, x, str(gate))
    # Two calls per replica (max_concurrent=2): two replicas.
    at = wait_for(lambda: len(p := placed(gate)) == 4 and len({r for rs in p.values() for r in rs}) == 2 and p,
                  timeout=60, what="four calls on two replicas")
    by_replica: dict[str, list[int]] = {}
    for x, (replica,) in sorted(at.items()):
        by_replica.setdefault(replica, []).append(x)
    for xs in by_replica.values():  # one call left on each: one replica is more than two calls want
        (gate / f"go-{xs[0]}").touch()
    decision = wait_for(lambda: next((line for line in scaling_lines(name, daemon.target)
                                      if "drains its 1 call(s)" in line), None), timeout=30,
                        what="a busy replica chosen for scale-down")
    drained = decision.split("replica ", 1)[1].split()[0]
    assert drained in by_replica, decision
    # A call now goes to a replica that is not draining, and is answered while the drained one's call runs.
    (gate / "go-10").touch()
    assert fn(10, str(gate)) == 20
    assert placed(gate)[10] != [drained]
    assert not (set(calls.results) & {by_replica[drained][1]})  # still in flight on the draining replica
    for xs in by_replica.values():
        (gate / f"go-{xs[1]}").touch()
    assert calls.join(60) == {x: 2 * x for x in range(4)}
    assert sorted(calls_of(name)) == ["succeeded"] * 5
    assert all(len(replicas_) == 1 for replicas_ in placed(gate).values())  # each ran once
    wait_for(lambda: replicas(name) == (0, 0), timeout=30, what="replicas back to 0")


# -- draining: a class's @after runs while calls go elsewhere ---------------------------------


def _note(kind: str) -> None:
    with open(os.path.join(os.environ["HOOK_DIR"], kind), "a") as f:
        f.write(f"{os.getpid()}\n")


class SlowAfter:
    @chalkcompute.before()
    def load(self):
        _note("before")

    @chalkcompute.method()
    def pid(self) -> int:
        return os.getpid()

    @chalkcompute.after()
    def close(self):
        import time

        _note("after-started")
        # Held until the test opens the gate: the scale-down is visibly in progress meanwhile.
        while not os.path.exists(os.path.join(os.environ["HOOK_DIR"], "go")):
            time.sleep(0.01)
        _note("after-done")


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.timeout(180)
def test_scale_down_drains_and_calls_meanwhile_are_answered_elsewhere(daemon, tmp_path):
    cls = chalkcompute.cls(name="AsDrain", env={"HOOK_DIR": str(tmp_path)}, min_replicas=0, max_replicas=1,
                           suspend_cooldown_period=0.3)(SlowAfter)
    try:
        first = cls().pid()
        # Idle past the cooldown: the replica is drained, then told to stop; its @after is running now.
        wait_for(lambda: lines(tmp_path / "after-started") == [str(first)], timeout=30,
                 what="@after in the idle replica")
        assert lines(tmp_path / "after-done") == []
        # A call now is not given to the draining replica: a new one starts for it and answers.
        second = cls().pid()
        assert second != first
        assert lines(tmp_path / "before") == [str(first), str(second)]
    finally:
        (tmp_path / "go").touch()
    wait_for(lambda: str(first) in lines(tmp_path / "after-done"), timeout=30, what="the first @after to finish")
    assert sorted(calls_of("AsDrain.pid")) == ["succeeded", "succeeded"]


# -- GPUs ---------------------------------------------------------------------------------------

THREE_L4 = ('[{"name": "NVIDIA L4", "uuid": "GPU-fake-0"}, {"name": "NVIDIA L4", "uuid": "GPU-fake-1"}, '
            '{"name": "NVIDIA L4", "uuid": "GPU-fake-2"}]')


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.timeout(180)
def test_a_function_that_cannot_get_its_gpus_says_so(tmp_path):
    d = Daemon(tmp_path / "home", env={"CHALKD_FAKE_GPUS": THREE_L4}).start()
    try:
        holder = RemoteFunction(visible_devices, name="gpu_holder", gpu="2:nvidia-l4", target=d.target)
        holder.deploy()
        assert holder() == "GPU-fake-0,GPU-fake-1"  # the fake UUIDs it was given
        waiter = RemoteFunction(visible_devices, name="gpu_waiter", gpu="2:nvidia-l4", target=d.target)
        with pytest.raises(FunctionTimeoutError) as info:
            waiter.wait_ready(timeout=2)
        wanted = "waiting: 2 GPUs of type nvidia-l4 wanted, 1 free (held by gpu_holder)"
        assert wanted in str(info.value)
        assert f"pending, {wanted}" in next(line for line in chalkd_cli("functions", "--target", d.target)
                                            .splitlines() if "gpu_waiter" in line)
        header, *details = scaling_lines("gpu_waiter", d.target)
        assert "desired 1, ready 0, replicas 0" in header and f"  {wanted}" in details
        # The SDK sees the same: what it wants, has, and waits for.
        info = waiter.refresh()
        assert (info.desired_replicas, info.ready_replicas, info.replicas, info.waiting) == (1, 0, 0, wanted)
        assert "scaling gpu_waiter: 1 of 1 wanted replica(s) cannot start now, " + wanted in d.log()
        holder.delete()
        waiter.wait_ready(timeout=60)
        assert sorted(waiter().split(",")) in (["GPU-fake-0", "GPU-fake-1"], ["GPU-fake-0", "GPU-fake-2"],
                                               ["GPU-fake-1", "GPU-fake-2"])
        assert "waiting" not in scaling_lines("gpu_waiter", d.target)[1]
    finally:
        d.stop()


def gpu_gated(gate_dir: str) -> str:
    """Leave ``run-<its GPU>``, wait for the gate, return its GPU's UUID."""
    import os
    import time

    uuid = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    with open(os.path.join(gate_dir, f"run-{uuid}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    return uuid


@pytest.mark.timeout(180)
def test_a_burst_scales_only_as_far_as_the_gpus_go(tmp_path):
    d = Daemon(tmp_path / "home", env={"CHALKD_FAKE_GPUS": THREE_L4}).start()
    gate = tmp_path / "gate"
    gate.mkdir()
    try:
        fn = RemoteFunction(gpu_gated, name="gpu_burst", gpu="nvidia-l4", min_replicas=0, max_replicas=5,
                            target=d.target)
        calls = Calls()
        for x in range(5):
            calls.start(fn, x, str(gate))
        # Five calls want five replicas; the host has three L4s: three run, the rest wait and say why.
        wait_for(lambda: len(list(gate.glob("run-*"))) == 3, timeout=60, what="three replicas running calls")
        wanted = "waiting: 1 GPU of type nvidia-l4 wanted, 0 free (held by gpu_burst)"
        header, *details = wait_for(lambda: (lines := scaling_lines("gpu_burst", d.target))
                                    and f"  {wanted}" in lines and lines, what="the wait to be shown")
        assert "desired 5, ready 3, replicas 3" in header
        assert sorted(p.name for p in gate.glob("run-*")) == ["run-GPU-fake-0", "run-GPU-fake-1", "run-GPU-fake-2"]
        (gate / "go").touch()
        results = calls.join(90)
        assert sorted(results) == list(range(5)) and set(results.values()) <= {"GPU-fake-0", "GPU-fake-1",
                                                                             "GPU-fake-2"}
        assert sorted(calls_of("gpu_burst", d.target)) == ["succeeded"] * 5
    finally:
        d.stop()


# -- GPUs the floor could never hold: refused up front ----------------------------------------------

ONE_L4 = '[{"name": "NVIDIA L4", "uuid": "GPU-fake-0"}]'


class GpuPair:
    @chalkcompute.method()
    def first(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    @chalkcompute.method()
    def second(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.timeout(180)
def test_min_replicas_wanting_more_gpus_than_the_host_has_are_refused_at_registration(tmp_path):
    d = Daemon(tmp_path / "home", env={"CHALKD_FAKE_GPUS": ONE_L4}).start()
    try:
        # A plain function: two replicas kept up, one L4 each, on a one-L4 host (it used to register,
        # and its second replica waited forever).
        fn = RemoteFunction(visible_devices, name="gpu_floor", gpu="nvidia-l4", min_replicas=2, max_replicas=2,
                            target=d.target)
        with pytest.raises(chalkcompute.FunctionError) as info:
            fn.deploy()
        assert ("function 'gpu_floor' is unschedulable: min_replicas=2, each replica with 1 x nvidia-l4: "
                "2 GPUs of type nvidia-l4 wanted, this host has 1 x NVIDIA L4") in str(info.value)
        # A class with replicas per method (the default): two GPU methods at min_replicas=1 want two.
        pair = chalkcompute.cls(name="GpuPair", gpu="nvidia-l4", min_replicas=1, target=d.target)(GpuPair)
        for attempt in (pair.deploy, lambda: pair().first()):  # deploy(), and the first use's registration
            with pytest.raises(chalkcompute.ClassError) as refused:
                attempt()
            message = str(refused.value)
            assert message.startswith("class 'GpuPair' (methods first, second) cannot be deployed on this host: "
                                      "2 methods with replicas of their own (the default) at min_replicas=1, "
                                      "each replica with 1 x nvidia-l4: 2 GPUs of type nvidia-l4 wanted, this "
                                      "host has 1 x NVIDIA L4; use @chalkcompute.cls(..., shared_replicas=True)"), \
                message
        # A replica's own request that no host here has: sharing would not help, so it is not suggested.
        huge = chalkcompute.cls(name="GpuPairHuge", gpu="2:nvidia-l4", min_replicas=0, target=d.target)(GpuPair)
        with pytest.raises(chalkcompute.ClassError) as refused:
            huge.deploy()
        assert str(refused.value) == ("class 'GpuPairHuge' (methods first, second) cannot be deployed on this host: "
                                      "no host has 2 x nvidia-l4; hosts have: 1 x NVIDIA L4")
        # Refused before anything was registered: no method of it holds the GPU.
        assert "GpuPair" not in chalkd_cli("functions", "--target", d.target)
        with pytest.raises(chalkcompute.ClassError, match="no class named 'GpuPair'"):
            RemoteClass.from_name("GpuPair", target=d.target)
        # min_replicas=0 fits: the methods take turns on the one GPU as calls come.
        lazy = chalkcompute.cls(name="GpuPairLazy", gpu="nvidia-l4", min_replicas=0, suspend_cooldown_period=60,
                                target=d.target)(GpuPair)
        assert lazy().first() == "GPU-fake-0"
        # Each method's scaling, from the SDK: the one called has scaled up for its call, the other never.
        infos = lazy.refresh()
        first, second = infos["first"], infos["second"]
        assert first.scaling_decision.startswith("scale up 0 -> 1: 1 call(s) waiting, 0 running"), first
        assert first.scaling_decision_at is not None and first.scaling_decision_at <= time.time()
        assert (second.desired_replicas, second.replicas, second.scaling_decision, second.scaling_decision_at,
                second.waiting) == (0, 0, "", None, "")
        # Waiting for the GPU a sibling method holds: wait_ready says so and points to shared_replicas.
        with pytest.raises(FunctionTimeoutError) as timed_out:
            lazy.wait_ready(timeout=2)
        assert ("waiting: 1 GPU of type nvidia-l4 wanted, 0 free (held by GpuPairLazy.first) (each method of "
                "class 'GpuPairLazy' has replicas of its own") in str(timed_out.value)
        assert "with shared_replicas=True one replica serves every method" in str(timed_out.value)
        # One pool for the class: one replica holds the one L4 and serves both methods.
        shared = chalkcompute.cls(name="GpuPairShared", gpu="nvidia-l4", min_replicas=1, shared_replicas=True,
                                  target=d.target)(GpuPair)
        lazy.delete()
        shared.deploy()
        assert shared().first() == shared().second() == "GPU-fake-0"
        infos = shared.refresh()  # the pool's numbers, seen from each method
        assert {(i.desired_replicas, i.ready_replicas, i.replicas) for i in infos.values()} == {(1, 1, 1)}
        assert {i.scaling_decision for i in infos.values()} == {"scale up 0 -> 1: min_replicas 1"}
        # A pool whose own floor wants too many is refused too, without suggesting what it already is.
        big = chalkcompute.cls(name="GpuPairBig", gpu="nvidia-l4", min_replicas=2, max_replicas=2,
                               shared_replicas=True, target=d.target)(GpuPair)
        with pytest.raises(chalkcompute.ClassError, match=r"min_replicas=2, each replica with 1 x nvidia-l4: "
                           r"2 GPUs of type nvidia-l4 wanted, this host has 1 x NVIDIA L4; lower min_replicas"):
            big.deploy()
    finally:
        d.stop()


# -- a shared pool's slots are per method ---------------------------------------------------------


class PoolHeld:
    @chalkcompute.method()
    def left(self, x: int, gate_dir: str) -> int:
        return _held_in_pool("left", x, gate_dir)

    @chalkcompute.method()
    def right(self, x: int, gate_dir: str) -> int:
        return _held_in_pool("right", x, gate_dir)


def _held_in_pool(method: str, x: int, gate_dir: str) -> int:
    import os
    import time

    with open(os.path.join(gate_dir, f"start-{method}-{x}-{os.getpid()}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    return x


@pytest.mark.timeout(180)
def test_a_shared_pool_runs_each_methods_concurrency_on_one_replica(daemon, tmp_path):
    # concurrency=2 per method, counted on the shared replica: two calls of each method (four in all) run
    # at once on the pool's one replica (max_replicas=1 for the class).
    gate = tmp_path / "gate"
    gate.mkdir()
    pool = chalkcompute.cls(name="AsPoolSlots", concurrency=2, min_replicas=0, max_replicas=1,
                            shared_replicas=True, suspend_cooldown_period=0.5)(PoolHeld)
    p = pool()
    calls = Calls()
    for x in range(2):
        calls.start(p.left, ("left", x), x, str(gate))
        calls.start(p.right, ("right", x), x, str(gate))
    started = wait_for(lambda: len(s := list(gate.glob("start-*"))) == 4 and s, timeout=60,
                       what="four calls running at once")
    assert len({path.name.rsplit("-", 1)[1] for path in started}) == 1  # in one replica process
    (gate / "go").touch()
    assert calls.join(60) == {("left", 0): 0, ("left", 1): 1, ("right", 0): 0, ("right", 1): 1}
    pool.delete()
