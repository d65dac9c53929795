"""What handlers print, per call: capture in the worker, the daemon's store, Logs.Read, live lines (issue 17).

A real daemon with the process runtime; lines are read back through the SDK
(``FunctionCall.logs()``), the ``chalkd logs`` CLI and the daemon's files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import _logs
from chalkcompute._client import Client
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("daemon")]


@chalkcompute.function(concurrency=2)
def chatty(tag: str, n: int) -> str:
    import builtins
    import threading

    # One barrier per replica: two calls run at once (or the test fails), their lines interleave.
    both = builtins.__dict__.setdefault("_chalk_test_barrier", threading.Barrier(2, timeout=30))
    for i in range(n):
        print(f"{tag} line {i}")
        if i == 0:
            both.wait()
    print(f"{tag} to stderr", file=sys.stderr)
    logging.getLogger("user.code").warning("%s logged", tag)
    subprocess.run([sys.executable, "-c", f"print('{tag} from a subprocess')"], check=True)
    return tag


@chalkcompute.function(max_batching_size=3, max_buffer_duration=2000)
def batched(xs: list[int]) -> list[int]:
    print(f"batch of {len(xs)}: {sorted(xs)}")
    return [x * 2 for x in xs]


@chalkcompute.function
def inner(x: int) -> int:
    print(f"inner says {x}")
    return x + 1


@chalkcompute.function
def outer(x: int) -> int:
    print(f"outer says {x}")
    return inner(x)


def test_two_calls_at_once_each_get_their_own_lines():
    a, b = chatty.spawn("A", 5), chatty.spawn("B", 5)
    assert a.get(timeout=60) == "A" and b.get(timeout=60) == "B"
    for call, tag, other in ((a, "A", "B"), (b, "B", "A")):
        lines = call.logs()
        assert [x for x in lines if " line " in x] == [f"{tag} line {i}" for i in range(5)]
        assert f"{tag} to stderr" in lines
        assert f"WARNING user.code: {tag} logged" in lines
        assert not any(x.startswith(other) for x in lines), lines
        # Below Python: the subprocess wrote to the replica's file descriptor, not to the call.
        assert f"{tag} from a subprocess" not in lines
    assert a.logs(tail=2) == a.logs()[-2:]


def test_a_subprocess_output_is_in_the_replica_log():
    call = chatty.spawn("S", 1)
    # One replica at a time holds the barrier's other party: run a partner call.
    partner = chatty.spawn("P", 1)
    call.get(timeout=60), partner.get(timeout=60)
    client = Client.get()
    rows = _logs.read_lines(client, pb.ReadLogsRequest(call_id=call.object_id))
    replica = rows[0].replica_id
    assert replica.startswith("r-")
    # The subprocess writes below Python (fd 1), into the replica's own file, which the daemon reads apart
    # from the call's captured lines: it may land a moment after the call's value.
    wait_for(lambda: "S from a subprocess" in [x.text for x in _logs.read_lines(
        client, pb.ReadLogsRequest(replica_id=replica))], timeout=30, what="the subprocess's line in the replica log")


def test_a_batched_invocation_s_lines_go_to_each_of_its_calls():
    calls = [batched.spawn(x) for x in (1, 2, 3)]
    assert sorted(c.get(timeout=60) for c in calls) == [2, 4, 6]
    logs = [c.logs() for c in calls]
    assert all(any(line.startswith("batch of ") for line in x) for x in logs), logs
    # A call ran in one invocation: the batch that held it names it among its inputs.
    for c, x, lines in zip(calls, (1, 2, 3), logs, strict=True):
        rows = _logs.read_lines(Client.get(), pb.ReadLogsRequest(call_id=c.object_id))
        assert all(c.object_id in r.call_ids for r in rows)
        assert any(str(x) in line for line in lines)


def test_follow_yields_lines_and_ends_with_the_call():
    a, b = chatty.spawn("F", 3), chatty.spawn("G", 3)
    seen = list(a.logs(follow=True))  # ends by itself once the call has finished
    b.get(timeout=60)
    assert [x for x in seen if " line " in x] == [f"F line {i}" for i in range(3)]


def chalkd(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_chalkd_logs_by_call_id_and_by_function_name(daemon):
    a, b = chatty.spawn("C", 4), chatty.spawn("D", 4)
    a.get(timeout=60), b.get(timeout=60)
    out = chalkd(daemon, "logs", a.object_id)
    assert out.returncode == 0, out.stderr
    assert "C line 3" in out.stdout and "D line" not in out.stdout
    tail = chalkd(daemon, "logs", a.object_id, "--tail", "1")
    assert tail.stdout.strip().endswith("C logged") and len(tail.stdout.strip().splitlines()) == 1
    followed = chalkd(daemon, "logs", a.object_id, "-f")  # a finished call: its lines, then the follow ends
    assert followed.returncode == 0 and "C line 3" in followed.stdout, followed.stderr
    fn = chalkd(daemon, "logs", "chatty", "--since", "10m")
    assert fn.returncode == 0, fn.stderr
    assert a.object_id in fn.stdout and b.object_id in fn.stdout
    assert chalkd(daemon, "logs", "chatty", "--tail", "3").stdout.count("\n") == 3
    missing = chalkd(daemon, "logs", "no_such_function")
    assert missing.returncode == 1 and "no function named 'no_such_function'" in missing.stderr
    sandbox = chalkd(daemon, "logs", "sb-1a2b3c")  # the process runtime has none
    assert sandbox.returncode == 1 and "no sandboxes here: this daemon runs the process runtime" in sandbox.stderr
    bad = chalkd(daemon, "logs", "chatty", "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr


CALLER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.integration.test_call_logs import chatty, outer
    a, b = chatty.spawn("L", 2), chatty.spawn("M", 2)
    a.get(timeout=60), b.get(timeout=60)
    print("outer returned", outer(41))
""")


@pytest.mark.parametrize("show", ["1", "0"])
def test_live_output_reaches_the_caller_s_stderr(daemon, show):
    env = {**os.environ, "CHALK_COMPUTE_TARGET": daemon.target, "CHALK_SHOW_OUTPUT": show}
    out = subprocess.run([sys.executable, "-c", CALLER.format(root=str(ROOT))], capture_output=True, text=True,
                         timeout=90, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert "outer returned 42" in out.stdout
    if show == "0":
        assert "line 0" not in out.stderr and "says" not in out.stderr
        return
    # Two calls at once: each line names its call.
    assert "[chatty fc-" in out.stderr and "] L line 1" in out.stderr and "] M line 1" in out.stderr
    assert "[outer] outer says 41" in out.stderr
    assert "[inner] inner says 41" in out.stderr  # a nested call's line, relayed by the outer replica


def test_no_secret_value_in_any_log(daemon):
    from chalkcompute import RemoteFunction, Secret

    value = "tok-9c1e-never-in-a-log"
    set_ = subprocess.run([sys.executable, "-m", "chalkd.cli", "secret", "set", "LOGS_TEST_TOKEN",
                           "--target", daemon.target], input=value, capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert set_.returncode == 0, set_.stderr

    fn = RemoteFunction(_uses_secret, name="logs_secret_user", secrets=[Secret.from_name("LOGS_TEST_TOKEN")])
    call = fn.spawn()
    assert call.get(timeout=60) == len(value)
    assert call.logs() == ["using the token"]
    for path in Path(daemon.home, "logs").rglob("*"):
        if path.is_file():
            assert value not in path.read_text(errors="replace"), path


def _uses_secret() -> int:
    import os

    print("using the token")
    return len(os.environ["LOGS_TEST_TOKEN"])


@chalkcompute.function
def snoop(call_id: str) -> str:
    from chalkcompute import _logs
    from chalkcompute._client import Client
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    try:
        _logs.read_lines(Client.get(), pb.ReadLogsRequest(call_id=call_id))
    except Exception as exc:  # noqa: BLE001 - the test wants the refusal's words
        return f"{type(exc).__name__}: {exc}"
    return "read another call's logs"


def test_a_handler_cannot_read_logs_with_its_replica_credential():
    victim = chatty.spawn("V", 1)
    partner = chatty.spawn("W", 1)
    victim.get(timeout=60), partner.get(timeout=60)
    refused = snoop(victim.object_id)
    assert "read another call's logs" not in refused
    assert "Logs/Read" in refused or "permission" in refused.lower(), refused


@chalkcompute.function
def flood(n: int) -> int:
    for i in range(n):
        print(f"flood line {i:06d} " + "x" * 80)
    return n


FLOOD_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.integration.test_call_logs import flood
    for _ in range(4):
        assert flood(2000) == 2000
    print(flood.spawn(10).logs()[-1])
""")


def test_small_log_max_bytes_caps_the_disk(tmp_path):
    from tests.conftest import Daemon

    d = Daemon(tmp_path / "home", extra_args=("--log-max-bytes", "65536")).start()
    try:
        env = {**os.environ, "CHALK_COMPUTE_TARGET": d.target, "CHALK_SHOW_OUTPUT": "0"}
        out = subprocess.run([sys.executable, "-c", FLOOD_SCRIPT.format(root=str(ROOT))], capture_output=True,
                             text=True, timeout=90, cwd=ROOT, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("flood line 000009")  # the newest call's lines are kept
        stored = sum(p.stat().st_size for p in (tmp_path / "home" / "logs" / "calls").rglob("*.log"))
        # ~800 KB printed; one replica keeps a quarter of 64 KiB, plus the segment being written (4 KiB).
        assert 0 < stored <= 65536 // 4 + 4096 + 200, stored
    finally:
        d.stop()


@chalkcompute.function
def forger(victim: str) -> str:
    import sys

    sys.stdout._capture.write((victim,), 1, "forged into another call\n")  # the worker's own capture
    print("my own line")
    return "tried"


def test_a_replica_cannot_write_lines_into_another_replica_s_call():
    victim = inner.spawn(1)
    assert victim.get(timeout=60) == 2
    assert forger(victim.object_id) == "tried"
    assert "forged into another call" not in victim.logs()
    client = Client.get()
    rows = _logs.read_lines(client, pb.ReadLogsRequest(function_name="forger"))
    # Kept as the forging replica's own output, named to no call.
    assert [list(r.call_ids) for r in rows if r.text == "forged into another call"] == [[]]
    assert any(r.text == "my own line" and len(r.call_ids) == 1 for r in rows)


@chalkcompute.function
def no_newline(x: int) -> int:
    print("done", x, end="")
    return x


@chalkcompute.function
async def no_newline_async(x: int) -> int:
    print("async done", x, end="")
    return x


def test_a_last_line_without_its_newline_is_there_when_the_call_returns():
    call = no_newline.spawn(3)
    assert call.get(timeout=60) == 3
    assert call.logs() == ["done 3"]
    call = no_newline_async.spawn(4)
    assert call.get(timeout=60) == 4
    assert call.logs() == ["async done 4"]


def test_following_a_function_gets_lines_of_calls_made_after_it_started():
    assert inner(77) == 78
    lines = _logs.follow_lines(Client.get(), pb.ReadLogsRequest(function_name="inner"))
    try:
        for line in lines:
            if line.text == "inner says 77":  # history: read after the follow subscribed
                inner.spawn(78)             # so this call's line can only come live
            if line.text == "inner says 78":
                assert line.replica_id.startswith("r-") and len(line.call_ids) == 1
                break
    finally:
        lines.close()


def test_logs_aio_twin():
    import asyncio

    a, b = chatty.spawn("Y", 2), chatty.spawn("Z", 2)

    async def main() -> tuple[list[str], list[str]]:
        followed = [line async for line in a.logs.aio(follow=True)]  # ends with the call
        await b.get.aio(timeout=60)
        return followed, await b.logs.aio(tail=1)

    followed, last = asyncio.run(main())
    assert [x for x in followed if " line " in x] == ["Y line 0", "Y line 1"]
    assert last == ["WARNING user.code: Z logged"]
