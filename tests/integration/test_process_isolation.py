"""The process runtime cannot isolate, and says so; what it can do it does: a clean environment for
replicas, private logs and home (tested against a real daemon, through the public SDK)."""

from __future__ import annotations

import os
import stat

import pytest

from chalkcompute import RemoteFunction
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.timeout(120)

ONLY_DAEMON = "CHALKD_TEST_DAEMON_ONLY_VAR"
PASSED = "CHALKD_TEST_PASSED_VAR"


def read_env() -> dict:
    import os

    return {name: os.environ.get(name) for name in
            ("CHALKD_TEST_DAEMON_ONLY_VAR", "CHALKD_TEST_PASSED_VAR", "PATH", "HOME", "CHALK_COMPUTE_TOKEN")}


@pytest.fixture
def isolated_daemon(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--replica-env", PASSED),
               env={ONLY_DAEMON: "daemon-only-value", PASSED: "passed-value"}).start()
    yield d
    d.stop()


def test_a_variable_only_the_daemon_has_does_not_reach_a_replica(isolated_daemon):
    fn = RemoteFunction(read_env, name="env_reader", target=isolated_daemon.target)
    out = fn()
    assert out[ONLY_DAEMON] is None  # the daemon's environment stays with the daemon
    assert out[PASSED] == "passed-value"  # --replica-env NAME passes it on
    assert out["PATH"] == os.environ["PATH"] and out["HOME"] == os.environ["HOME"]  # the pass-through set
    assert out["CHALK_COMPUTE_TOKEN"] is None
    # The daemon says plainly that it does not isolate user code.
    assert "function code can act as you" in isolated_daemon.log()


def test_home_and_logs_are_private(isolated_daemon):
    fn = RemoteFunction(read_env, name="env_reader_logs", target=isolated_daemon.target)
    fn()
    home = isolated_daemon.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for d in (home / "logs", home / "logs" / "replicas"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    replica_logs = list((home / "logs" / "replicas").glob("*.log"))
    assert replica_logs
    for f in replica_logs:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_bad_replica_env_name_is_refused(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--replica-env", "NOT-A-NAME"))
    with pytest.raises(RuntimeError, match=r"--replica-env 'NOT-A-NAME' is not an environment variable name"):
        d.start()


def fails_with_user_text() -> None:
    raise ValueError("user-text-9f3b-must-not-be-logged")


def test_retry_logs_name_the_exception_type_not_its_message(isolated_daemon):
    from chalkcompute import FunctionError, RetryPolicy

    fn = RemoteFunction(fails_with_user_text, name="fails_logged", target=isolated_daemon.target,
                        retries=RetryPolicy(max_retries=1, initial_wait_seconds=0.0))
    with pytest.raises(FunctionError, match="user-text-9f3b"):  # the caller still gets the message
        fn()
    log = isolated_daemon.log()
    assert "retrying" in log and "raised builtins.ValueError" in log
    assert "user-text-9f3b" not in log


def code_dir() -> dict:
    import os

    path = os.environ.get("CHALK_WORKER_CODE_DIR", "")
    return {"path": path, "files": sorted(os.listdir(path)) if path else []}


def test_a_replicas_code_dir_goes_with_the_replica(isolated_daemon):
    # One temp dir per replica start used to pile up: the runtime now names it and removes it.
    fn = RemoteFunction(code_dir, name="code_dir_owner", target=isolated_daemon.target)
    out = fn()
    path = out["path"]
    assert path.startswith(str(isolated_daemon.home / "replicas")) and out["files"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    fn.delete()  # stops its replicas
    wait_for(lambda: not os.path.exists(path), what=f"{path} to be removed")
