"""Draining on scale-down: a stopping replica takes no new call and gets SIGTERM only once it holds none.

The queue is a stand-in that reports a chosen number of calls in flight, so each step is seen alone
(tests/integration/test_autoscaling.py drains a busy replica against a real daemon).
"""

from __future__ import annotations

import time

import pytest

from chalkd.model import FunctionVersion
from chalkd.scaling.autoscaler import Autoscaler, HostResources, Replica
from chalkd.specs import FunctionSpec

pytestmark = pytest.mark.timeout(10)


class Handle:
    """A replica's process handle, reduced to the signals (no process exists here)."""

    def __init__(self) -> None:
        self.terminated = 0

    def terminate(self) -> None:
        self.terminated += 1

    def kill(self) -> None:
        raise AssertionError("a draining replica is never killed")


class InflightQueue:
    """The queue's answers the autoscaler reads while draining: calls in flight, who drains."""

    def __init__(self) -> None:
        self.inflight: dict[str, int] = {}
        self.draining: set[tuple[str, str]] = set()

    def worker_draining(self, replica_id: str, function_id: str) -> None:
        self.draining.add((replica_id, function_id))

    def inflight_count(self, function_id: str, replica_id: str) -> int:
        return self.inflight.get(replica_id, 0)


class Catalog:
    def __init__(self) -> None:
        self.by_id: dict[str, FunctionVersion] = {}


def setup(drain_timeout: float = 30.0) -> tuple[Autoscaler, InflightQueue, Replica, Handle]:
    fv = FunctionVersion(id="f-1", name="f", version=1, content_hash="h", spec=FunctionSpec("f"),
                         created_at=time.time(), max_replicas=2)
    queue = InflightQueue()
    scaler = Autoscaler(None, queue, Catalog(), host=HostResources(2000, 2**30),  # type: ignore[arg-type]
                        drain_timeout=drain_timeout)
    handle = Handle()
    replica = Replica("r-1", "t", fv, state="ready", handle=handle)  # type: ignore[arg-type]
    scaler.replicas[replica.id] = replica
    return scaler, queue, replica, handle


def test_sigterm_waits_until_the_call_in_flight_is_done() -> None:
    scaler, queue, replica, handle = setup()
    queue.inflight["r-1"] = 1
    scaler._stop(replica, "idle for 60s (suspend_cooldown_period)")
    assert replica.state == "stopping" and ("r-1", "f-1") in queue.draining  # no new call reaches it
    scaler._reconcile()
    assert handle.terminated == 0  # its call is still running
    queue.inflight["r-1"] = 0
    scaler._reconcile()
    assert handle.terminated == 1
    scaler._reconcile()
    scaler._stop(replica, "again")
    assert handle.terminated == 1  # once


def test_an_idle_replica_gets_sigterm_at_once() -> None:
    scaler, _, replica, handle = setup()
    scaler._stop(replica, "idle")
    assert handle.terminated == 1


def test_a_drain_outlasts_the_daemons_drain_timeout() -> None:
    # drain_timeout bounds a daemon's shutdown, not a scale-down: calls are never cut short by scaling.
    scaler, queue, replica, handle = setup(drain_timeout=0.0)
    queue.inflight["r-1"] = 2
    scaler._stop(replica, "idle")
    scaler._reconcile()
    assert handle.terminated == 0
    queue.inflight["r-1"] = 0
    scaler._reconcile()
    assert handle.terminated == 1


def test_a_delete_during_a_drain_stops_it_now() -> None:
    scaler, queue, replica, handle = setup()
    queue.inflight["r-1"] = 1
    scaler._stop(replica, "idle")
    assert handle.terminated == 0
    scaler._stop(replica, "function deleted", drain=False)
    assert handle.terminated == 1 and replica.stop_reason == "function deleted"
