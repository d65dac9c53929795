"""Generator streams against a real chalkd: callers that walk away, spawned streams read later,
windows in bytes, and one size limit for results and chunks (memory measured, never time)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import FunctionCall, RemoteFunction
from chalkcompute._bridge import run_sync
from chalkcompute._client import Client
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.exceptions import CallCancelledError, ResourceExhaustedError
from tests.conftest import ROOT, Daemon, wait_for

pytestmark = pytest.mark.timeout(120)


@chalkcompute.function(max_replicas=1)
def st_ticker(n: int):
    """n values, or forever for n < 0 (one replica, one call at a time: a held one blocks the next)."""
    i = 0
    while n < 0 or i < n:
        yield i
        i += 1


@chalkcompute.function
def st_blobs(n: int, size: int, pid_file: str):
    import os

    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    for i in range(n):
        yield bytes([i % 256]) * size


def st_big_result(runs_file: str) -> bytes:
    with open(runs_file, "a") as f:
        f.write("ran\n")
    return b"x" * (100 * 2**20)


def st_big_chunk():
    yield b"small"
    yield b"x" * (100 * 2**20)


def _state(call_id: str, target: str | None = None) -> str:
    client = Client.get(target)
    return run_sync(client.rpc(client.catalog.GetCall, pb.GetCallRequest(call_id=call_id))).call.state


def _caller(code: str, target: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "CHALK_COMPUTE_TARGET": target})


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


# -- callers that walk away ----------------------------------------------------------------------


def test_breaking_out_of_a_loop_cancels_the_call_and_frees_the_replica(daemon):
    stream = st_ticker(-1)
    for i in stream:
        if i == 5:
            break
    call_id = stream.object_id
    del stream  # the loop is left: the call is cancelled at once
    # The one replica is free again: without the cancel this call would wait forever.
    assert list(st_ticker(3)) == [0, 1, 2]
    seen = []
    with pytest.raises(CallCancelledError):
        for value in FunctionCall.from_id(call_id).iter(start=0):
            seen.append(value)
    assert seen[:6] == [0, 1, 2, 3, 4, 5]


def test_an_exception_in_the_loop_cancels_the_call(daemon):
    stream = st_ticker(-1)
    with pytest.raises(KeyError):
        for i in stream:
            if i == 2:
                raise KeyError(i)
    call_id = stream.object_id
    del stream
    assert list(st_ticker(2)) == [0, 1]
    with pytest.raises(CallCancelledError):
        list(FunctionCall.from_id(call_id).iter(start=0))


BREAK_AND_EXIT = """
from tests.integration.test_streams import st_ticker
stream = st_ticker(-1)
for i in stream:
    if i == 2:
        print(stream.object_id, flush=True)
        break
"""


def test_a_caller_that_breaks_and_exits_at_once_leaves_nothing_running(daemon):
    proc = _caller(BREAK_AND_EXIT, daemon.target)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    call_id = out.strip()
    assert call_id.startswith("fc-")
    assert list(st_ticker(2)) == [0, 1]  # the replica was freed
    with pytest.raises(CallCancelledError):
        list(FunctionCall.from_id(call_id).iter(start=0))


VANISH = """
import os
from tests.integration.test_streams import st_ticker
stream = st_ticker(-1)
next(stream)
print(stream.object_id, flush=True)
os._exit(0)   # no cancel, no goodbye: as if the process were killed
"""


def test_a_stream_nobody_reads_is_cancelled_after_the_detached_timeout(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--detached-stream-timeout", "1")).start()
    try:
        fn = RemoteFunction(st_ticker.fn, name="st_ticker", target=d.target, max_replicas=1)
        fn.wait_ready()
        proc = _caller(VANISH, d.target)
        out, _ = proc.communicate(timeout=60)
        call_id = out.strip()
        wait_for(lambda: _state(call_id, d.target) == "cancelled", timeout=60,
                 what="the unread stream to be cancelled")
        assert list(fn(2)) == [0, 1]  # its replica is free
        with pytest.raises(CallCancelledError, match="nobody read its stream for 1s"):
            list(FunctionCall.from_id(call_id, target=d.target).iter(start=0))
    finally:
        d.stop()


# -- spawned streams, read later -------------------------------------------------------------------


READ_BY_ID = """
import sys
from chalkcompute import FunctionCall
print(list(FunctionCall.from_id(sys.argv[1])), flush=True)
"""


def test_a_spawned_generator_runs_unread_and_is_read_later_from_anywhere(daemon):
    call = st_ticker.spawn(50)
    assert call.object_id.startswith("fc-")
    wait_for(lambda: _state(call.object_id) == "succeeded", what="the spawned stream to finish unread")
    # Another process reattaches by id and reads it from the start.
    proc = _caller(READ_BY_ID, daemon.target, call.object_id)
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == str(list(range(50)))
    # Here: part of it, then the rest from where it stopped, then all of it again.
    first = []
    for value in call:
        first.append(value)
        if value == 9:
            break
    assert first == list(range(10))
    assert list(call) == list(range(10, 50))
    assert list(call.iter(start=0)) == list(range(50))
    assert list(call.iter(start=45)) == list(range(45, 50))

    async def read_async() -> list:
        again = await FunctionCall.from_id.aio(call.object_id)
        return [v async for v in again.iter(start=40)]

    assert asyncio.run(read_async()) == list(range(40, 50))
    with pytest.raises(ValueError, match="chunk index >= 0"):
        call.iter(start=-1)


def test_a_streaming_call_is_read_by_id_while_it_streams(daemon):
    stream = st_ticker(30)
    assert next(stream) == 0
    other = FunctionCall.from_id(stream.object_id)
    assert list(stream) == list(range(1, 30))
    assert list(other.iter(start=0)) == list(range(30))


def test_a_spawned_generator_past_its_budget_pauses_then_is_cancelled(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=(
        "--spawned-stream-budget", "0", "--chunk-window-bytes", "64KiB", "--detached-stream-timeout", "1")).start()
    try:
        fn = RemoteFunction(st_blobs.fn, name="st_blobs", target=d.target)
        fn.wait_ready()
        call = fn.spawn(10_000, 10_000, str(tmp_path / "pid"))
        wait_for(lambda: _state(call.object_id, d.target) == "cancelled", timeout=60,
                 what="the paused spawned stream to be cancelled")
        kept = []
        with pytest.raises(CallCancelledError):
            for value in call.iter(start=0):
                kept.append(value)
        # Paused by the 64 KiB byte window (10 KB chunks), far below the 8,192-chunk count window.
        assert 1 <= len(kept) < 64, len(kept)
        assert kept[0] == b"\x00" * 10_000
    finally:
        d.stop()


# -- windows in bytes, one size limit ----------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_stream_of_large_chunks_to_a_slow_reader_keeps_every_process_bounded(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--chunk-window-bytes", "4MiB")).start()
    try:
        fn = RemoteFunction(st_blobs.fn, name="st_blobs", target=d.target)
        fn.wait_ready()
        pid_file = tmp_path / "pid"
        assert d.proc is not None
        stream = fn(256, 2**20, str(pid_file))   # 256 MiB in chunks of 1 MiB
        first = next(stream)
        assert len(first) == 2**20
        worker = int(pid_file.read_text())
        base = {"daemon": _rss(d.proc.pid), "worker": _rss(worker), "caller": _rss(os.getpid())}
        peak = dict(base)
        n = 1
        for value in stream:
            assert len(value) == 2**20 and value[0] == n % 256
            n += 1
            time.sleep(0.005)  # a slow reader: the generator must wait for it, not pile up
            if n % 8 == 0:
                for name, pid in (("daemon", d.proc.pid), ("worker", worker), ("caller", os.getpid())):
                    peak[name] = max(peak[name], _rss(pid))
        assert n == 256
        grown = {name: (peak[name] - base[name]) / 2**20 for name in base}
        # A 4 MiB window: each process holds a few windows at most, never the 256 MiB stream.
        assert all(g < 80 for g in grown.values()), grown
    finally:
        d.stop()


def test_a_result_over_the_limit_is_refused_clearly_and_not_retried(daemon, tmp_path):
    fn = RemoteFunction(st_big_result, name="st_big_result")
    runs = tmp_path / "runs"
    with pytest.raises(ResourceExhaustedError, match=r"the result is \d+ bytes, over the 67108864-byte limit"):
        fn(str(runs))
    assert runs.read_text() == "ran\n"


def test_a_chunk_over_the_limit_ends_the_stream_with_the_same_error(daemon):
    fn = RemoteFunction(st_big_chunk, name="st_big_chunk")
    seen = []
    with pytest.raises(ResourceExhaustedError, match="chunk 1 is .* over the 67108864-byte limit"):
        for value in fn():
            seen.append(value[:10])
        raise AssertionError(f"the stream ended without an error after {seen}")
    assert seen == [b"small"]
