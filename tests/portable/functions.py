"""Function tests that run unchanged on every runtime: the same SDK code against process, docker and swarm.

The tests are methods of :class:`FunctionSuite`, which pytest does not collect by itself (its name does not
start with ``Test``). Each runtime's directory subclasses it under a ``Test`` name and supplies the daemon
with a ``runtime_daemon`` fixture (class scope or wider), so its conftest decides the markers, the skips and
the CI job::

    # tests/swarm/test_swarm_functions.py
    from tests.portable.functions import FunctionSuite

    @pytest.fixture(scope="module")
    def runtime_daemon(swarm_daemon):
        return swarm_daemon

    class TestFunctionsOnSwarm(FunctionSuite):
        pass

The suite points the SDK at that daemon for its tests (:class:`chalkd.testing._SdkPointer`: the default target,
and handles registered with an earlier daemon register again). The functions below are module-level
handles, as users write them; their bodies use nothing of the caller's machine (no shared files: on Docker
and Swarm a replica sees only its own filesystem), only the default base image (a swarm lab has no
internet) and no timing: a stream that only arrived at its end would hang the test rather than fail an
assertion about seconds.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import FunctionCall, RemoteExecutionError, RetryPolicy, Secret
from chalkd.testing import Daemon, _SdkPointer

__all__ = ["FunctionSuite"]

ROOT = Path(__file__).resolve().parents[2]
SECRET_VALUE = "pf-secret-51c2-never-in-a-log"

# One replica each: several tests count on a call's attempts running where the first one ran.
ONE = {"min_replicas": 0, "max_replicas": 1}


@chalkcompute.function(name="pf_add", **ONE)
def pf_add(x: int, y: int) -> int:
    return x + y


@chalkcompute.function(name="pf_square")
def pf_square(x: int) -> int:
    return x * x


@chalkcompute.function(name="pf_divide", **ONE)
def pf_divide(a: float, b: float) -> float:
    return a / b


@chalkcompute.function(name="pf_count", **ONE)
def pf_count(n: int):
    for i in range(n):
        yield {"i": i, "square": i * i}


@chalkcompute.function(name="pf_agen", **ONE)
async def pf_agen(n: int):
    for i in range(n):
        yield f"chunk-{i}"
    raise ValueError(f"after {n} chunks")


@chalkcompute.function(name="pf_endless", **ONE)
def pf_endless():
    i = 0
    while True:
        yield i
        i += 1


@chalkcompute.function(name="pf_double", **ONE)
def pf_double(x: int) -> int:
    return 2 * x


@chalkcompute.function(name="pf_nested", **ONE)
def pf_nested(x: int) -> dict:
    """Calls pf_double from inside its replica: through the daemon's queue, with the replica's own credential."""
    import os

    return {"value": pf_double(x) + 1, "replica": os.environ["CHALK_REPLICA_ID"]}


class SuiteError(Exception):
    """Defined in the caller's module, so shipped as source: the worker must report it under our name."""


class SuiteSubError(SuiteError):
    pass


def _attempt(token: str) -> int:
    """This call's attempt number, counted in a file of the replica's own temporary directory (all attempts of
    a call run on the function's one replica)."""
    import os
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"pf-attempts-{token}")
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        return len(f.read())


@chalkcompute.function(name="pf_flaky", retries=RetryPolicy.linear(attempts=3, delay=0.01, retry_on=(ConnectionError,
                                                                                                      SuiteError)),
                       **ONE)
def pf_flaky(token: str, fail_times: int, error: str) -> int:
    import builtins

    n = _attempt(token)
    if n <= fail_times:
        raise (SuiteSubError if error == "SuiteSubError" else getattr(builtins, error))(f"failure {n}")
    return n


@chalkcompute.function(name="pf_env", secrets=[Secret.from_name("PF_SECRET"),
                                               Secret.from_local_env("PF_LOCAL", env_var_name="PF_RENAMED")],
                       **ONE)
def pf_env() -> dict:
    import os

    return {k: os.environ.get(k, "") for k in ("PF_SECRET", "PF_RENAMED")}


def _cli(daemon: Daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, input=input)


@pytest.mark.timeout(300)  # the first test of a runtime builds (and on a swarm ships) the image
class FunctionSuite:
    """The portable function tests; see the module docstring for how a runtime runs them."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _sdk_on_runtime(cls, runtime_daemon: Daemon) -> Iterator[Daemon]:
        with _SdkPointer(runtime_daemon):
            yield runtime_daemon

    def test_plain_call(self) -> None:
        pf_add.wait_ready()
        assert pf_add(3, 5) == 8
        assert pf_add(x=1, y=-1) == 0
        info = pf_add.info
        assert info.function_name == "pf_add" and info.version >= 1

    def test_generator_streams_in_order(self) -> None:
        assert [c["square"] for c in pf_count(5)] == [0, 1, 4, 9, 16]
        assert [c["i"] for c in pf_count(3000)] == list(range(3000))

    def test_chunks_arrive_before_the_generator_ends(self) -> None:
        # An endless generator: had chunks left the replica only at its end, next() would never return.
        for _ in range(3):
            stream = pf_endless()
            assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
            stream.close()  # abandoned: cancelled, and the one replica is free for the next
        assert next(pf_endless()) == 0

    def test_async_generator_error_after_its_chunks(self) -> None:
        seen = []
        with pytest.raises(RemoteExecutionError, match="^ValueError: after 2 chunks$"):
            for chunk in pf_agen(2):
                seen.append(chunk)
        assert seen == ["chunk-0", "chunk-1"]

    def test_spawn_and_get(self) -> None:
        call = pf_square.spawn(7)
        assert call.object_id.startswith("fc-")
        assert call.get(timeout=120) == 49
        again = FunctionCall.from_id(call.object_id)
        assert again.function_name == "pf_square" and again.get() == 49

    def test_map_and_starmap(self) -> None:
        assert list(pf_square.map(range(300))) == [x * x for x in range(300)]
        assert sorted(pf_square.map(range(100), order_outputs=False)) == sorted(x * x for x in range(100))
        assert list(pf_add.starmap([(1, 2), (3, 4)])) == [3, 7]
        assert list(pf_add.map([1, 2, 3], kwargs={"y": 100})) == [101, 102, 103]

    def test_exception_travels_back(self) -> None:
        with pytest.raises(RemoteExecutionError) as info:
            pf_divide(1.0, 0.0)
        err = info.value
        assert isinstance(err, chalkcompute.FunctionError) and isinstance(err, RuntimeError)
        assert str(err) == "ZeroDivisionError: float division by zero"
        assert err.function_name == "pf_divide" and err.exception_type == "builtins.ZeroDivisionError"
        assert "a / b" in err.remote_traceback and err.call_id.startswith("fc-")
        results = list(pf_divide.map([1.0, 2.0], [0.0, 4.0], return_exceptions=True))
        assert isinstance(results[0], RemoteExecutionError) and results[1] == 0.5

    def test_nested_call_from_inside_a_replica(self) -> None:
        pf_double.deploy()
        out = pf_nested(20)
        assert out["value"] == 41
        assert out["replica"].startswith("r-")

    def test_secrets_reach_the_replica_and_no_log(self, runtime_daemon: Daemon,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        done = _cli(runtime_daemon, "secret", "set", "PF_SECRET", input=SECRET_VALUE)
        assert done.returncode == 0, done.stderr
        monkeypatch.setenv("PF_LOCAL", "pf-local-value")
        assert pf_env() == {"PF_SECRET": SECRET_VALUE, "PF_RENAMED": "pf-local-value"}
        assert SECRET_VALUE not in runtime_daemon.log() and "pf-local-value" not in runtime_daemon.log()

    def test_retries(self) -> None:
        assert pf_flaky(uuid.uuid4().hex, 2, "ConnectionError") == 3
        with pytest.raises(RemoteExecutionError, match="ConnectionError: failure 4"):
            pf_flaky(uuid.uuid4().hex, 10, "ConnectionError")           # attempts=3: four runs, then the error
        with pytest.raises(RemoteExecutionError, match="^ValueError: failure 1$"):
            pf_flaky(uuid.uuid4().hex, 5, "ValueError")                 # not in retry_on: no second run
        assert pf_flaky(uuid.uuid4().hex, 1, "SuiteSubError") == 2     # a subclass of a caller-defined type
        with pytest.raises(RemoteExecutionError) as info:
            pf_flaky(uuid.uuid4().hex, 10, "SuiteSubError")
        assert info.value.exception_type == f"{__name__}.SuiteSubError"
        assert f"{__name__}.SuiteError" in info.value.exception_mro
