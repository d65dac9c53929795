"""Scaling: replicas between min and max, scale-down, placement, memory caps, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from chalkcompute import FunctionTimeoutError, RemoteFunction, WorkerLostError
from chalkcompute._client import Client, run_sync
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.runtime.limits import MemoryLimiter
from chalkd.scaling.autoscaler import HostResources
from tests.conftest import wait_for


def replicas(name: str, target: str | None = None) -> tuple[int, int]:
    """(ready, total) replicas of the latest version of ``name``, as the daemon reports them."""
    resp = run_sync(Client.get(target).rpc("GetFunction", pb.GetFunctionRequest(name=name)))
    return resp.function.ready_replicas, resp.function.replicas


def calls_of(name: str, target: str | None = None) -> list[str]:
    """States of the calls of ``name`` the daemon knows (newest first)."""
    resp = run_sync(Client.get(target).rpc("ListCalls", pb.ListCallsRequest(function_name=name, limit=50)))
    return [c.state for c in resp.calls]


class Calls:
    """Calls run on threads; results and errors collected by call argument."""

    def __init__(self) -> None:
        self.results: dict[object, object] = {}
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def start(self, fn: RemoteFunction, key, *args) -> None:
        def run() -> None:
            try:
                self.results[key] = fn(*args)
            except BaseException as exc:  # reported by join()
                self.errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout: float = 60.0) -> dict:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a call did not return"
        assert not self.errors, self.errors
        return self.results


def gated(x: int, gate_dir: str) -> int:
    """Announce the start (with this worker's pid), wait for the gate, announce the end."""
    import os
    import time

    ends = sorted(n for n in os.listdir(gate_dir) if n.startswith("end-"))
    with open(os.path.join(gate_dir, f"start-{x}-{os.getpid()}"), "w") as f:
        f.write("\n".join(ends))  # which calls had finished when this one started
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    with open(os.path.join(gate_dir, f"end-{x}"), "w"):
        pass
    return 2 * x


def started(gate: Path) -> dict[int, tuple[int, list[str]]]:
    """x -> (worker pid, end markers present when it started)."""
    out = {}
    for p in gate.glob("start-*"):
        _, x, pid = p.name.split("-")
        out[int(x)] = (int(pid), [line for line in p.read_text().splitlines() if line])
    return out


@pytest.fixture
def gate(tmp_path):
    """The gated calls' directory; opened at teardown so a failed test leaves no call blocked."""
    path = tmp_path / "gate"
    path.mkdir()
    yield path
    (path / "go").touch()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- max_replicas ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_max_replicas_two_runs_two_calls_at_once(daemon, gate):
    fn = RemoteFunction(gated, name="scale_two_at_once", max_replicas=2)
    calls = Calls()
    calls.start(fn, 1, 1, str(gate))
    calls.start(fn, 2, 2, str(gate))
    # Both run before the gate opens, each on its own replica.
    both = wait_for(lambda: len(started(gate)) == 2 and started(gate), what="both calls to start")
    assert both[1][0] != both[2][0], "two calls ran in one worker"
    assert replicas("scale_two_at_once") == (2, 2)
    (gate / "go").touch()
    assert calls.join() == {1: 2, 2: 4}


@pytest.mark.timeout(120)
def test_default_max_replicas_one_runs_calls_one_after_the_other(daemon, gate):
    name = "scale_one_at_a_time"
    fn = RemoteFunction(gated, name=name)  # max_replicas defaults to 1
    fn.wait_ready()
    calls = Calls()
    calls.start(fn, 1, 1, str(gate))
    first = wait_for(lambda: list(started(gate)), what="the first call to start")[0]
    calls.start(fn, 2, 2, str(gate))
    # The second call reached the daemon and waits in the queue while the first runs.
    wait_for(lambda: sorted(calls_of(name)) == ["queued", "running"], what="one call running, one queued")
    assert list(started(gate)) == [first]
    assert replicas(name) == (1, 1)
    (gate / "go").touch()
    assert calls.join() == {1: 2, 2: 4}
    runs = started(gate)
    second = 2 if first == 1 else 1
    # The second call started only once the first had finished, on the same single replica.
    assert runs[first][1] == [] and runs[second][1] == [f"end-{first}"]
    assert runs[first][0] == runs[second][0]


# -- scale down ------------------------------------------------------------------------------


def _run_two_on_two_replicas(fn: RemoteFunction, gate: Path) -> set[int]:
    """Run two gated calls at once (two replicas), return the two worker pids."""
    calls = Calls()
    calls.start(fn, 1, 1, str(gate))
    calls.start(fn, 2, 2, str(gate))
    runs = wait_for(lambda: len(started(gate)) == 2 and started(gate), what="both calls to start")
    (gate / "go").touch()
    assert calls.join() == {1: 2, 2: 4}
    pids = {pid for pid, _ in runs.values()}
    assert len(pids) == 2
    return pids


@pytest.mark.timeout(120)
def test_idle_replicas_scale_down_to_zero(daemon, gate):
    name = "scale_down_to_zero"
    fn = RemoteFunction(gated, name=name, min_replicas=0, max_replicas=2, suspend_cooldown_period=0.5)
    pids = _run_two_on_two_replicas(fn, gate)
    wait_for(lambda: replicas(name) == (0, 0), timeout=20, what="replicas to drop to 0")
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=20, what="the worker processes to exit")


@pytest.mark.timeout(120)
def test_idle_replicas_scale_down_to_min_replicas(daemon, gate):
    name = "scale_down_to_one"
    fn = RemoteFunction(gated, name=name, min_replicas=1, max_replicas=2, suspend_cooldown_period=0.5)
    pids = _run_two_on_two_replicas(fn, gate)
    wait_for(lambda: replicas(name) == (1, 1), timeout=20, what="replicas to drop to 1")
    wait_for(lambda: sum(pid_alive(p) for p in pids) == 1, timeout=20, what="one worker process to exit")
    # Both were idle past the cooldown when one was stopped; the other stays for min_replicas.
    # Watch it over several cooldowns (each autoscaler pass would stop it if it were going to).
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert replicas(name) == (1, 1)
        time.sleep(0.1)
    assert sum(pid_alive(p) for p in pids) == 1
    assert fn(5, str(gate)) == 10  # and it still serves


@pytest.mark.timeout(120)
def test_wait_ready_at_min_zero_brings_a_replica_up(daemon):
    name = "scale_wait_ready_min_zero"
    fn = RemoteFunction(gated, name=name, min_replicas=0, max_replicas=1)
    fn._ensure_registered()
    assert replicas(name) == (0, 0)
    fn.wait_ready(timeout=60)
    assert replicas(name) == (1, 1)


# -- placement ---------------------------------------------------------------------------------


def ident(x: int) -> int:
    return x


def _three_quarters_of_host_cpu() -> str:
    # On a 2-CPU host: 1500m. Two of these cannot fit at once.
    return f"{HostResources.detect().cpu_millis * 3 // 4}m"


@pytest.mark.timeout(120)
def test_placement_waits_for_cpu_until_the_holder_is_deleted(fresh_daemon):
    cpu = _three_quarters_of_host_cpu()
    first = RemoteFunction(ident, name="cpu_holder", cpu=cpu, target=fresh_daemon.target)
    first.deploy()
    second = RemoteFunction(ident, name="cpu_waiter", cpu=cpu, target=fresh_daemon.target)
    with pytest.raises(FunctionTimeoutError):
        second.wait_ready(timeout=3)
    assert replicas("cpu_waiter", fresh_daemon.target) == (0, 0)
    first.delete()
    second.wait_ready(timeout=60)
    assert second(7) == 7
    assert replicas("cpu_waiter", fresh_daemon.target) == (1, 1)


@pytest.mark.timeout(120)
def test_placement_timeout_says_what_holds_the_cpu(fresh_daemon):
    cpu = _three_quarters_of_host_cpu()
    host = HostResources.detect().cpu_millis
    RemoteFunction(ident, name="cpu_holder", cpu=cpu, target=fresh_daemon.target).deploy()
    second = RemoteFunction(ident, name="cpu_waiter", cpu=cpu, target=fresh_daemon.target)
    with pytest.raises(FunctionTimeoutError) as info:
        second.wait_ready(timeout=3)
    message = str(info.value)
    assert f"it needs {cpu} CPU" in message
    assert f"replicas and sandboxes hold {cpu} of {host}m" in message


# -- memory ------------------------------------------------------------------------------------


def allocate(mb: int) -> int:
    data = bytearray(mb * 2**20)
    for i in range(0, len(data), 4096):  # touch every page so it is really resident
        data[i] = 1
    return len(data) // 2**20


@pytest.mark.timeout(180)
def test_memory_limit_kills_a_replica_over_its_cap(daemon):
    if not MemoryLimiter.detect().available:
        pytest.skip("memory limits need root with a writable cgroup (v1 or v2) on this host")
    small = RemoteFunction(allocate, name="alloc_over_cap", memory="64Mi", min_replicas=0)
    with pytest.raises(WorkerLostError) as info:
        small(400)
    assert "killed by SIGKILL: out of memory (over its memory limit of 64Mi)" in str(info.value)
    big = RemoteFunction(allocate, name="alloc_under_cap", memory="1Gi", min_replicas=0)
    assert big(400) == 400


# -- SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_drains_the_running_call_then_exits_0(fresh_daemon, gate):
    fn = RemoteFunction(gated, name="drained", target=fresh_daemon.target)
    fn.wait_ready()
    calls = Calls()
    calls.start(fn, 21, 21, str(gate))
    wait_for(lambda: started(gate), what="the call to start")
    fresh_daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "chalkd shutting down" in fresh_daemon.log(), what="the daemon to begin its shutdown")
    assert fresh_daemon.proc.poll() is None  # draining, not gone
    (gate / "go").touch()
    assert calls.join() == {21: 42}
    assert fresh_daemon.proc.wait(40) == 0
