"""Faults: a daemon killed with -9, workers killed mid-call, callers cut off."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from chalkcompute import CallInterruptedError, RemoteFunction, WorkerLostError
from tests.conftest import wait_for


def gated_double(x: int, gate_dir: str) -> int:
    import os
    import time

    # Announce that this attempt runs (with this worker's pid), then wait for the test.
    with open(os.path.join(gate_dir, f"started-{x}-{os.getpid()}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    return 2 * x


@pytest.mark.timeout(180)
def test_daemon_kill9_with_calls_queued_and_running(fresh_daemon, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(gated_double, name="gated_double", target=fresh_daemon.target)
    fn.wait_ready()
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results.setdefault(i, []).append(fn(i, str(gate)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    # One call is running (max_replicas=1), the other four wait in the queue.
    first = wait_for(lambda: list(gate.glob("started-*")), what="a call to start")[0]
    old_worker = int(first.name.rsplit("-", 1)[1])
    time.sleep(0.3)  # let the other submits reach the daemon and commit
    fresh_daemon.kill9()
    fresh_daemon.start()
    (gate / "go").touch()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {i: [2 * i] for i in range(5)}
    # The orphaned worker of the killed daemon exits by itself after its grace period.
    wait_for(lambda: not _alive(old_worker), what="the old daemon's worker to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stream_then_wait(gate_dir: str):
    import os
    import time

    yield 1
    with open(os.path.join(gate_dir, f"pid-{os.getpid()}"), "w"):
        pass
    while not os.path.exists(os.path.join(gate_dir, "go")):
        time.sleep(0.01)
    yield 2


def _pid_from(gate: Path, prefix: str) -> int:
    files = wait_for(lambda: list(gate.glob(f"{prefix}-*")), what=f"{prefix} file")
    return int(files[0].name.rsplit("-", 1)[1])


@pytest.mark.timeout(120)
def test_worker_killed_before_first_chunk_reruns(daemon, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(gated_double, name="rerun_double")
    fn.wait_ready()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(fn(21, str(gate))))
    t.start()
    first = wait_for(lambda: list(gate.glob("started-21-*")), what="the first attempt")[0]
    os.kill(int(first.name.rsplit("-", 1)[1]), signal.SIGKILL)
    # The call runs again on a new replica.
    wait_for(lambda: len(list(gate.glob("started-21-*"))) == 2, what="the second attempt")
    (gate / "go").touch()
    t.join(60)
    assert result == [42]


@pytest.mark.timeout(120)
def test_worker_killed_after_first_chunk_fails_clearly(daemon, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(stream_then_wait, name="stream_then_wait")
    stream = fn(str(gate))
    assert next(stream) == 1
    os.kill(_pid_from(gate, "pid"), signal.SIGKILL)
    with pytest.raises(CallInterruptedError, match="interrupted mid-stream after 1 chunk"):
        next(stream)


def suicidal(x: int) -> int:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.timeout(120)
def test_handler_that_kills_its_worker_fails_after_the_cap(daemon):
    fn = RemoteFunction(suicidal, name="suicidal")
    with pytest.raises(WorkerLostError) as info:
        fn(1)
    assert "3 attempt(s)" in str(info.value)
    assert "SIGKILL" in str(info.value)


def numbered(n: int, gate_dir: str):
    import os
    import time

    for i in range(n):
        if i == n // 2:
            while not os.path.exists(os.path.join(gate_dir, "go")):
                time.sleep(0.01)
        yield i


@pytest.mark.timeout(120)
def test_dropped_caller_resumes_stream_without_loss_or_duplicates(daemon, tmp_path, monkeypatch):
    from tests.proxy import CuttableProxy

    # Through a TCP proxy we can cut, so the gRPC transport (a local caller would
    # otherwise take the daemon's unix socket, around the proxy).
    monkeypatch.setenv("CHALK_TRANSPORT", "grpc")
    proxy = CuttableProxy(daemon.port).start()
    try:
        gate = tmp_path / "gate"
        gate.mkdir()
        RemoteFunction(numbered, name="numbered").deploy()
        fn = RemoteFunction.from_name("numbered", target=f"127.0.0.1:{proxy.port}")
        stream = fn(3000, str(gate))
        got = [next(stream) for _ in range(500)]
        proxy.cut()
        (gate / "go").touch()
        got.extend(stream)
        assert got == list(range(3000))
        assert proxy.connections >= 2  # it really reconnected
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_dropped_caller_resumes_on_the_local_socket(daemon, tmp_path):
    from chalkcompute._client import Client
    from chalkcompute._framing import FramedStream

    gate = tmp_path / "gate"
    gate.mkdir()
    fn = RemoteFunction(numbered, name="numbered_local")
    stream = fn(2000, str(gate))
    got = [next(stream) for _ in range(300)]
    session = Client.get().session
    assert isinstance(session.stream, FramedStream)
    first_stream = session.stream
    client = Client.get()
    client.loop.call_soon_threadsafe(first_stream.writer.transport.abort)
    (gate / "go").touch()
    got.extend(stream)
    assert got == list(range(2000))
    assert session.stream is not first_stream


def spin(seconds: float) -> int:
    import time

    # CPU-bound on the handler's thread: heartbeats must still go out.
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return 1


async def blocks_its_loop(seconds: float):
    import time

    time.sleep(seconds)  # blocks the worker's main event loop, like a sync nested call would
    yield 1


@pytest.mark.timeout(120)
def test_blocking_handlers_do_not_stall_heartbeats(daemon):
    # The session daemon declares a worker lost after 5 s without a heartbeat.
    a = RemoteFunction(spin, name="spin")
    b = RemoteFunction(blocks_its_loop, name="blocks_its_loop")
    a.wait_ready()
    b.wait_ready()
    out: list = []
    t = threading.Thread(target=lambda: out.append(list(b(7.0))))
    t.start()
    assert a(7.0) == 1
    t.join(60)
    assert out == [[1]]
