"""Policies that need a daemon of their own settings: a short cancel grace, a fast result sweep."""

from __future__ import annotations

import pytest

import chalkcompute
from chalkcompute import FunctionCall, FunctionNotFoundError, FunctionTimeoutError, QueuePolicy
from tests.conftest import Daemon, wait_for


@pytest.fixture
def quick_daemon(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--cancel-grace", "0.5", "--sweep-interval", "0.2")).start()
    yield d
    d.stop()


def stubborn(path: str, n: int) -> int:
    import os
    import time

    if n == 0:
        open(os.path.join(path, "started"), "w").close()
        while True:  # swallows every attempt to stop it
            try:
                time.sleep(0.01)
            except BaseException:
                open(os.path.join(path, "ignored"), "w").close()
    return os.getpid()


def test_a_stuck_sync_handler_is_replaced(quick_daemon, tmp_path):
    fn = chalkcompute.RemoteFunction(stubborn, timeout=1.0, retries=0, max_replicas=1,
                                     target=quick_daemon.target)
    fn.wait_ready()
    stuck = fn.spawn(str(tmp_path), 0)
    wait_for(lambda: (tmp_path / "started").exists(), what="the stuck handler to start")
    # The next call waits: the stuck attempt holds the only slot until its replica is gone.
    after = fn.spawn(str(tmp_path), 1)
    with pytest.raises(FunctionTimeoutError, match="did not finish within its timeout of 1s"):
        stuck.get(timeout=30)
    wait_for(lambda: (tmp_path / "ignored").exists(), what="the handler to swallow its cancellation")
    pid = after.get(timeout=60)       # ran on the replacement replica
    assert pid != 0
    wait_for(lambda: "did not stop within 0.5s of being cancelled" in quick_daemon.log(),
             what="the daemon to say why it killed the replica")


def quick(x: int) -> int:
    return x * 2


def test_results_expire_after_their_ttl(quick_daemon):
    fn = chalkcompute.RemoteFunction(quick, queue_policy=QueuePolicy(result_ttl_seconds=0.5),
                                     target=quick_daemon.target)
    call = fn.spawn(21)
    assert call.get(timeout=60) == 42
    again = FunctionCall.from_id(call.object_id, target=quick_daemon.target)
    assert again.get(timeout=10) == 42

    def gone() -> bool:
        try:
            FunctionCall.from_id(call.object_id, target=quick_daemon.target)
        except FunctionNotFoundError:
            return True
        return False

    wait_for(gone, timeout=20, what="the result to expire")
