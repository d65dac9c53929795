"""ScalerHooks: the queue's calls into scaling, made before the queue and the autoscaler and given to both."""

from __future__ import annotations

import asyncio
import time

import pytest

from chalkd.model import FunctionVersion
from chalkd.scaling.autoscaler import Autoscaler, HostResources, Replica
from chalkd.scaling.hooks import PREFETCH, ScalerHooks
from chalkd.specs import FunctionSpec

pytestmark = pytest.mark.timeout(10)


class KillRecorder:
    """A replica's process handle, reduced to what on_stuck uses (no process can be killed here)."""

    def __init__(self) -> None:
        self.killed = 0

    def kill(self) -> None:
        self.killed += 1


def version(max_replicas: int = 2) -> FunctionVersion:
    return FunctionVersion(id="f-1", name="f", version=1, content_hash="h", spec=FunctionSpec("f"),
                           created_at=time.time(), max_replicas=max_replicas)


def test_prefetch_only_once_the_function_cannot_add_replicas() -> None:
    fv = version(max_replicas=2)
    hooks = ScalerHooks({fv.id: fv})
    assert hooks.prefetch("unknown") == 0
    hooks.replicas["r-1"] = Replica("r-1", "t", fv, state="ready")
    assert hooks.prefetch(fv.id) == 0  # a second replica may still come: work stays queued
    hooks.replicas["r-2"] = Replica("r-2", "t", fv, state="starting")
    assert hooks.prefetch(fv.id) == 0  # one is still starting
    hooks.replicas["r-2"].state = "ready"
    assert hooks.prefetch(fv.id) == PREFETCH


def test_a_pools_replicas_count_for_every_method_they_serve() -> None:
    # A class with shared_replicas: replicas are started for its first method and serve the others too,
    # so the second method at the pool's max_replicas may prefetch as the first does.
    first, second = version(max_replicas=1), version(max_replicas=1)
    second.id, second.name = "f-2", "g"
    hooks = ScalerHooks({first.id: first, second.id: second})
    hooks.replicas["r-1"] = Replica("r-1", "t", first, state="ready", pool=(first, second))
    assert hooks.prefetch(first.id) == hooks.prefetch(second.id) == PREFETCH


def test_on_stuck_kills_a_running_replica_once_and_says_why() -> None:
    fv = version()
    hooks = ScalerHooks({fv.id: fv})
    handle = KillRecorder()
    hooks.replicas["r-1"] = Replica("r-1", "t", fv, state="ready", handle=handle)  # type: ignore[arg-type]
    hooks.on_stuck(fv.id, "r-1", "handler ignored cancellation")
    assert handle.killed == 1 and hooks.replicas["r-1"].stop_reason == "handler ignored cancellation"
    hooks.replicas["r-1"].state = "stopped"
    hooks.on_stuck(fv.id, "r-1", "again")
    hooks.on_stuck(fv.id, "r-gone", "unknown replica")
    assert handle.killed == 1


def test_on_demand_sets_the_event_the_autoscaler_waits_on() -> None:
    class NoCatalog:
        by_id: dict = {}

    hooks = ScalerHooks({})
    scaler = Autoscaler(None, None, NoCatalog(), host=HostResources(1000, 2**30), hooks=hooks)  # type: ignore[arg-type]
    assert scaler.replicas is hooks.replicas  # one replica table, read by the queue's prefetch question

    async def main() -> None:
        waiter = asyncio.ensure_future(scaler._wake.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        hooks.on_demand("f-1")
        await asyncio.wait_for(waiter, 5)

    asyncio.run(main())
