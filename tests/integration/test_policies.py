"""Queue policies observed through the SDK against a real chalkd: retries, rate
limits, concurrency, the deadlock refusal, queue bounds and timeouts.

Handlers count their runs in files under a per-test directory (the worker is
another process), and gates are files the test creates: no test waits on a
wall-clock sleep for something to happen.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import (
    ConcurrencyDeadlockError,
    ConcurrencyPolicy,
    FunctionError,
    FunctionTimeoutError,
    QueuePolicy,
    RateLimitPolicy,
    RemoteExecutionError,
    ResourceExhaustedError,
    RetryPolicy,
    WorkerLostError,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("daemon")


def runs(d: Path, name: str = "run") -> int:
    return len(list(d.glob(f"{name}-*")))


# -- retries ------------------------------------------------------------------------------------


@chalkcompute.function(retries=RetryPolicy.linear(attempts=3, delay=0.01, retry_on=(ConnectionError,)))
def flaky(path: str, fail_times: int, error: str) -> int:
    import builtins
    import os
    import uuid

    n = len([f for f in os.listdir(path) if f.startswith("run-")]) + 1
    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    if n <= fail_times:
        raise getattr(builtins, error)(f"failure {n}")
    return n


def test_retry_until_success(tmp_path):
    assert flaky(str(tmp_path), 2, "ConnectionError") == 3
    assert runs(tmp_path) == 3


def test_retries_exhausted_raise_the_last_error(tmp_path):
    with pytest.raises(RemoteExecutionError, match="ConnectionError: failure 4") as info:
        flaky(str(tmp_path), 10, "ConnectionError")
    assert info.value.exception_type == "builtins.ConnectionError"
    assert runs(tmp_path) == 4     # attempts=3 means up to 4 runs


def test_subclass_of_a_retry_on_type_is_retried(tmp_path):
    assert flaky(str(tmp_path), 1, "ConnectionRefusedError") == 2


def test_exception_outside_retry_on_propagates_at_once(tmp_path):
    with pytest.raises(RemoteExecutionError, match="ValueError: failure 1"):
        flaky(str(tmp_path), 5, "ValueError")
    assert runs(tmp_path) == 1


class ScriptError(Exception):
    """Defined in the caller's module, so shipped as source: the worker must name it as we do."""


class ScriptSubError(ScriptError):
    pass


@chalkcompute.function(retries=RetryPolicy.linear(attempts=3, delay=0.01, retry_on=(ScriptError,)))
def raises_script_errors(path: str, fail_times: int, sub: bool) -> int:
    import os
    import uuid

    n = len([f for f in os.listdir(path) if f.startswith("run-")]) + 1
    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    if n <= fail_times:
        raise (ScriptSubError if sub else ScriptError)(f"failure {n}")
    return n


def test_retry_on_a_class_defined_in_the_callers_module(tmp_path):
    assert raises_script_errors(str(tmp_path), 2, False) == 3
    assert runs(tmp_path) == 3


def test_retry_on_matches_a_subclass_defined_in_the_callers_module(tmp_path):
    assert raises_script_errors(str(tmp_path), 1, True) == 2
    exhausted = tmp_path / "exhausted"
    exhausted.mkdir()
    with pytest.raises(RemoteExecutionError, match="failure 4") as info:
        raises_script_errors(str(exhausted), 10, True)
    # Reported under the caller's module name (not the worker's __chalk_fn__<hash>), bases included.
    assert info.value.exception_type == f"{__name__}.ScriptSubError"
    assert f"{__name__}.ScriptError" in info.value.exception_mro
    assert runs(exhausted) == 4


@chalkcompute.function(retries=2)
def plain_flaky(path: str) -> int:
    import os
    import uuid

    n = len(os.listdir(path)) + 1
    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    if n == 1:
        raise KeyError("first run fails")
    return n


def test_an_int_means_exponential_with_that_many_retries(tmp_path):
    assert plain_flaky(str(tmp_path)) == 2


@chalkcompute.function(retries=RetryPolicy.linear(attempts=5, delay=0.01))
def streams_then_fails(path: str):
    import os
    import uuid

    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    yield 1
    raise ConnectionError("after the first chunk")


def test_no_retry_after_the_first_chunk(tmp_path):
    got = []
    with pytest.raises(RemoteExecutionError, match="after the first chunk"):
        for value in streams_then_fails(str(tmp_path)):
            got.append(value)
    assert got == [1]
    assert runs(tmp_path) == 1


@chalkcompute.function(retries=RetryPolicy.linear(attempts=1, delay=0.01, retry_on=(KeyError,)))
def dies(path: str) -> int:
    import os
    import uuid

    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    os._exit(3)


def test_lost_workers_spend_the_same_budget(tmp_path):
    # retry_on does not name it, yet a lost worker is retried: infrastructure always is.
    with pytest.raises(WorkerLostError, match="gave up after 2 attempt"):
        dies(str(tmp_path))
    assert runs(tmp_path) == 2


def test_backoff_sequence_and_jitter_bounds():
    import random

    from chalkd.model import Retry

    exp = RetryPolicy.exponential(attempts=6, initial=0.5, multiplier=2.0, max_wait=3.0, jitter=False)
    assert [exp.wait_before(k) for k in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert [RetryPolicy.linear(attempts=3, delay=2.0).wait_before(k) for k in (1, 2, 3)] == [2.0, 2.0, 2.0]
    rng = random.Random(7)
    jittered = RetryPolicy.exponential(attempts=4, initial=1.0, max_wait=60.0)
    for k in range(1, 5):
        for _ in range(200):
            wait = 2.0 ** (k - 1)
            assert wait / 2 <= jittered.wait_before(k, rng) <= wait
    # The daemon's copy of the policy computes the same sequence.
    daemon_side = Retry(max_retries=6, initial_wait=0.5, multiplier=2.0, max_wait=3.0, jitter=False)
    assert [daemon_side.wait_before(k, rng) for k in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert RetryPolicy.exponential(attempts=2).to_dict() == {
        "max_retries": 2, "initial_wait_seconds": 1.0, "backoff_multiplier": 2.0, "max_wait_seconds": 60.0,
        "jitter": True}
    assert RetryPolicy.linear(retry_on=(TimeoutError,)).to_dict()["retry_on"] == ["builtins.TimeoutError"]


# -- rate limits ----------------------------------------------------------------------------------


@chalkcompute.function(rate_limit=RateLimitPolicy(rate=2, per="hour"),
                       retries=RetryPolicy.linear(attempts=3, delay=0.01))
def scarce(path: str, fail_first: bool) -> int:
    import os
    import uuid

    n = len(os.listdir(path)) + 1
    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    if fail_first and n == 1:
        raise ConnectionError("first attempt fails")
    return n


def call_state(call_id: str) -> str:
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    resp = run_sync(Client.get().rpc("GetCall", pb.GetCallRequest(call_id=call_id)))
    return resp.call.state


def test_each_attempt_takes_a_token(tmp_path):
    # Two tokens an hour: the failed first attempt and its retry spend both.
    assert scarce(str(tmp_path), True) == 2
    blocked = scarce.spawn(str(tmp_path / "other"), False)
    with pytest.raises(FunctionTimeoutError):
        blocked.get(timeout=1.0)
    assert call_state(blocked.object_id) == "queued"   # waiting for a token, not running
    blocked.cancel()


@chalkcompute.function(rate_limit=RateLimitPolicy(rate=3, per="hour", key="test-shared-provider"))
def provider_a(x: int) -> int:
    return x


@chalkcompute.function(rate_limit=RateLimitPolicy(rate=3, per="hour", key="test-shared-provider"))
def provider_b(x: int) -> int:
    return -x


def test_a_shared_key_caps_two_functions_together():
    assert [provider_a(1), provider_b(2), provider_a(3)] == [1, -2, 3]
    blocked = provider_b.spawn(4)
    with pytest.raises(FunctionTimeoutError):
        blocked.get(timeout=1.0)
    assert call_state(blocked.object_id) == "queued"
    blocked.cancel()


@chalkcompute.function(rate_limit=20)
def fast_limited(x: int) -> int:
    return x


def test_rate_limit_spaces_calls_beyond_the_burst():
    # 20 per second with a burst of 20: 40 calls cannot finish in under ~1 s.
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(fast_limited, range(40))) == list(range(40))
    assert time.monotonic() - start >= 0.9


def cli(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=60)


def test_named_rate_limit_defined_in_the_daemon(daemon, tmp_path):
    def uses_named(x: int) -> int:
        return x

    fn = chalkcompute.RemoteFunction(uses_named, rate_limit_key="test-provider-api-limit")
    with pytest.raises(FunctionError, match="chalkd rate-limit set test-provider-api-limit"):
        fn.deploy()
    out = cli(daemon, "rate-limit", "set", "test-provider-api-limit", "--rate", "1", "--per", "hour")
    assert out.returncode == 0, out.stderr
    assert "defined" in out.stdout
    assert fn(5) == 5                    # takes the one token of the hour
    listed = cli(daemon, "rate-limit", "list")
    assert "test-provider-api-limit" in listed.stdout and "uses_named" in listed.stdout
    refused = cli(daemon, "rate-limit", "delete", "test-provider-api-limit")
    assert refused.returncode == 1 and "used by uses_named" in refused.stderr
    blocked = fn.spawn(6)
    with pytest.raises(FunctionTimeoutError):
        blocked.get(timeout=1.0)
    # Raising the limit lets the waiting call through.
    assert cli(daemon, "rate-limit", "set", "test-provider-api-limit",
               "--rate", "3600", "--per", "hour").returncode == 0
    assert blocked.get(timeout=30) == 6
    bad = cli(daemon, "rate-limit", "set", "x", "--rate", "0")
    assert bad.returncode == 1 and "--rate must be a positive number" in bad.stderr


# -- concurrency ----------------------------------------------------------------------------------


@chalkcompute.function(max_replicas=1)
def one_at_a_time(path: str, n: int) -> int:
    import os
    import time
    import uuid

    mark = os.path.join(path, f"running-{uuid.uuid4().hex}")
    open(mark, "w").close()
    seen = len([f for f in os.listdir(path) if f.startswith("running-")])
    time.sleep(0.05)
    os.remove(mark)
    return seen


def test_default_concurrency_serialises_calls_on_one_replica(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(lambda n: one_at_a_time(str(tmp_path), n), range(6)))
    assert seen == [1] * 6


@chalkcompute.function(concurrency=3, max_replicas=1)
async def barrier_async(path: str, n: int) -> int:
    import asyncio
    import os
    import uuid

    open(os.path.join(path, f"in-{uuid.uuid4().hex}"), "w").close()
    for _ in range(2000):
        count = len(os.listdir(path))
        if count >= n:
            return count
        await asyncio.sleep(0.005)
    return len(os.listdir(path))


@chalkcompute.function(concurrency=ConcurrencyPolicy(max_concurrent=2), max_replicas=1)
def barrier_sync(path: str, n: int) -> int:
    import os
    import time
    import uuid

    open(os.path.join(path, f"in-{uuid.uuid4().hex}"), "w").close()
    for _ in range(2000):
        count = len(os.listdir(path))
        if count >= n:
            return count
        time.sleep(0.005)
    return len(os.listdir(path))


def test_concurrency_n_runs_n_at_once(tmp_path):
    # Each handler waits until n of them are inside: only possible if n run at once.
    a, s = tmp_path / "async", tmp_path / "sync"
    a.mkdir(), s.mkdir()
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda _: barrier_async(str(a), 3), range(3))) == [3, 3, 3]
        assert list(pool.map(lambda _: barrier_sync(str(s), 2), range(2))) == [2, 2]


@chalkcompute.function(concurrency=ConcurrencyPolicy(max_concurrent=1, key="test-gpu-pool"), max_replicas=2)
def holds_key(path: str) -> str:
    import os
    import time

    open(os.path.join(path, "holder-started"), "w").close()
    while not os.path.exists(os.path.join(path, "release")):
        time.sleep(0.01)
    return "held"


@chalkcompute.function(concurrency=ConcurrencyPolicy(max_concurrent=1, key="test-gpu-pool"), max_replicas=2)
def shares_key(x: int) -> int:
    return x + 1


def test_a_shared_concurrency_key_caps_two_functions(tmp_path):
    shares_key.wait_ready()
    holder = holds_key.spawn(str(tmp_path))
    wait_for(lambda: (tmp_path / "holder-started").exists(), what="the holder to start")
    waiting = shares_key.spawn(1)
    with pytest.raises(FunctionTimeoutError):
        waiting.get(timeout=0.5)
    assert call_state(waiting.object_id) == "queued"   # the slot is taken before dispatch
    (tmp_path / "release").touch()
    assert holder.get(timeout=30) == "held"
    assert waiting.get(timeout=30) == 2


@chalkcompute.function
def recurse(n: int) -> int:
    import chalkcompute

    # By name, through the queue (the bare name is the plain function inside its own replica).
    return 0 if n == 0 else chalkcompute.RemoteFunction.from_name("recurse")(n - 1) + 1


def test_a_function_calling_itself_on_its_only_slot_is_refused():
    with pytest.raises(RemoteExecutionError) as info:
        recurse(2)
    # The nested call fails at once; the outer call re-raises it.
    assert "ConcurrencyDeadlockError" in str(info.value) or "would deadlock" in str(info.value)
    assert "recurse (fc-" in str(info.value)


@chalkcompute.function(concurrency=ConcurrencyPolicy(max_concurrent=1, key="test-chain"))
def chain_b(x: int) -> int:
    return x


@chalkcompute.function(concurrency=ConcurrencyPolicy(max_concurrent=1, key="test-chain"))
def chain_a(x: int) -> int:
    return chain_b(x)


def test_two_functions_sharing_a_key_cannot_wait_on_each_other():
    with pytest.raises(RemoteExecutionError, match="would deadlock") as info:
        chain_a(1)
    assert "chain_a (fc-" in str(info.value) and "'test-chain'" in str(info.value)


def test_the_deadlock_error_class_reaches_a_direct_caller():
    from chalkcompute.exceptions import remote_error

    class Err:
        code, message, exception_type, traceback, exception_mro = "DEADLOCK", "would deadlock", "", "", ()

    assert isinstance(remote_error(Err()), ConcurrencyDeadlockError)


# -- queue bounds ---------------------------------------------------------------------------------


@chalkcompute.function(queue_policy=QueuePolicy(max_items=2), max_replicas=1)
def gated(path: str, n: int) -> int:
    import os
    import time

    open(os.path.join(path, f"started-{n}"), "w").close()
    while not os.path.exists(os.path.join(path, "open")):
        time.sleep(0.01)
    return n


def test_a_full_queue_refuses_new_calls(tmp_path):
    gated.wait_ready()
    first = gated.spawn(str(tmp_path), 0)
    wait_for(lambda: (tmp_path / "started-0").exists(), what="the first call to run")
    queued = [gated.spawn(str(tmp_path), n) for n in (1, 2)]
    with pytest.raises(ResourceExhaustedError,
                       match=r"queue of 'gated' is full: 2 calls waiting \(queue_policy max_items=2\)"):
        gated.spawn(str(tmp_path), 3)
    (tmp_path / "open").touch()
    assert [c.get(timeout=30) for c in [first, *queued]] == [0, 1, 2]


# -- timeouts -------------------------------------------------------------------------------------


@chalkcompute.function(timeout=0.5, retries=RetryPolicy.linear(attempts=1, delay=0.01))
async def too_slow(path: str) -> int:
    import asyncio
    import os
    import uuid

    open(os.path.join(path, f"run-{uuid.uuid4().hex}"), "w").close()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        open(os.path.join(path, f"cancelled-{uuid.uuid4().hex}"), "w").close()
        raise
    return 1


def test_timeout_is_retried_then_fails_clearly(tmp_path):
    with pytest.raises(FunctionTimeoutError,
                       match=r"did not finish within its timeout of 0.5s; gave up after 2 attempt"):
        too_slow(str(tmp_path))
    assert runs(tmp_path) == 2
    # Each timed-out attempt saw its cancellation before the next one started.
    wait_for(lambda: runs(tmp_path, "cancelled") == 2, what="both attempts to see their cancellation")


@chalkcompute.function(timeout=0.3, max_replicas=1)
def sync_too_slow(path: str) -> int:
    import os
    import time

    open(os.path.join(path, "started"), "w").close()
    try:
        time.sleep(60)
    except BaseException as exc:  # the worker raises its cancellation in this thread
        with open(os.path.join(path, "seen"), "w") as f:
            f.write(type(exc).__name__)
        raise
    return 1


def test_a_sync_handler_sees_its_timeout(tmp_path):
    with pytest.raises(FunctionTimeoutError, match="gave up after 3 attempt"):
        sync_too_slow(str(tmp_path))
    # (The caller hears of the timeout before the last attempt has finished its except block.)
    wait_for(lambda: (tmp_path / "seen").exists() and (tmp_path / "seen").read_text() == "CallCancelled",
             what="the handler to record its cancellation")


# -- cancellation ---------------------------------------------------------------------------------


@chalkcompute.function
async def waits_for_cancel(path: str) -> int:
    import asyncio
    import os

    open(os.path.join(path, "started"), "w").close()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        open(os.path.join(path, "cancelled"), "w").close()
        raise
    return 1


@chalkcompute.function
def sync_waits_for_cancel(path: str) -> int:
    import os
    import time

    open(os.path.join(path, "started"), "w").close()
    try:
        time.sleep(60)
    except BaseException as exc:
        with open(os.path.join(path, "cancelled"), "w") as f:
            f.write(type(exc).__name__)
        raise
    return 1


@pytest.mark.parametrize("fn", [waits_for_cancel, sync_waits_for_cancel], ids=["async", "sync"])
def test_cancel_reaches_the_handler(fn, tmp_path):
    call = fn.spawn(str(tmp_path))
    wait_for(lambda: (tmp_path / "started").exists(), what="the handler to start")
    call.cancel()
    wait_for(lambda: (tmp_path / "cancelled").exists(), what="the handler to see its cancellation")
    with pytest.raises(chalkcompute.CallCancelledError):
        call.get(timeout=30)


CTRL_C_SCRIPT = """
import faulthandler, os, signal, sys
faulthandler.register(signal.SIGUSR1)  # the test dumps the stacks if the caller hangs
# As in a terminal: a test run started in the background inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
import chalkcompute
fn = chalkcompute.RemoteFunction.from_name("sync_waits_for_cancel")
print("calling", flush=True)
try:
    fn(sys.argv[1])
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_in_a_blocking_caller_cancels_its_call(daemon, tmp_path):
    sync_waits_for_cancel.wait_ready()
    env = {**os.environ, "CHALK_COMPUTE_TARGET": daemon.target, "CHALK_REGISTER_AT_EXIT": "0"}
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="the call to start")
        proc.send_signal(2)  # SIGINT, as Ctrl-C sends
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the caller did not stop on SIGINT; its threads:\n{err}") from None
        assert "interrupted" in out
        wait_for(lambda: (tmp_path / "cancelled").exists(), what="the handler to see the cancellation")
    finally:
        # Reaped here, so a failure cannot leak a running process into later tests' warnings.
        proc.kill()
        proc.communicate(timeout=10)


def test_policy_parameters_are_validated():
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="rate_limit per must be one of"):
        RateLimitPolicy(rate=1, per="day")
    with pytest.raises(ValueError, match="max_concurrent must be a positive int"):
        chalkcompute.RemoteFunction(f, concurrency=0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        chalkcompute.RemoteFunction(f, timeout=-1)
    with pytest.raises(TypeError, match="retries must be an int or a RetryPolicy"):
        chalkcompute.RemoteFunction(f, retries="3")
    with pytest.raises(ValueError, match="max_items must be a positive int"):
        QueuePolicy(max_items=0)


def test_async_twin_of_a_retried_call(tmp_path):
    async def main():
        return await flaky.aio(str(tmp_path), 1, "ConnectionError")

    assert asyncio.run(main()) == 2
