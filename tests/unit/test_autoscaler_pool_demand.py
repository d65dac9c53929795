"""A class with shared_replicas: one pool of replicas, a stream (and its slots) per method on each.

Demand is the busiest method's, not the sum over methods: one call of each of two methods runs on one
replica at once, so it needs no second replica (on a GPU box that second replica would hold, or wait
for, another GPU). The queue is a stand-in reporting chosen depths per method; replicas are launched as
table entries (no process).
"""

from __future__ import annotations

import time

import pytest

from chalkd.model import FunctionVersion, Policies
from chalkd.scaling.autoscaler import Autoscaler, HostResources, Replica
from chalkd.specs import FunctionSpec

pytestmark = pytest.mark.timeout(10)


class MethodQueue:
    """Calls waiting and running, per method (function version id)."""

    def __init__(self) -> None:
        self.queued: dict[str, int] = {}
        self.running: dict[str, int] = {}

    def waiting(self, function_id: str) -> int:
        return self.queued.get(function_id, 0)

    def inflight(self, function_id: str) -> int:
        return self.running.get(function_id, 0)

    def oldest_wait(self, function_id: str) -> float:
        return 0.0

    def inflight_count(self, function_id: str, replica_id: str) -> int:
        return self.running.get(function_id, 0)

    def last_done(self, function_id: str, replica_id: str) -> float:
        return 0.0

    def worker_draining(self, replica_id: str, function_id: str) -> None:
        pass


class Catalog:
    def __init__(self, *versions: FunctionVersion) -> None:
        self.by_id = {v.id: v for v in versions}


class TableScaler(Autoscaler):
    def _launch(self, fv, replica_id=None, gpu_uuids=(), pool=()):  # type: ignore[override]
        replica = Replica(replica_id or f"r-{len(self.replicas)}", "t", fv, pool=pool, pool_key="P")
        self.replicas[replica.id] = replica
        return replica


def method(name: str, concurrency: int = 1) -> FunctionVersion:
    spec = FunctionSpec(f"Emb.{name}", replica_pool="P", replica_pool_size=2)
    return FunctionVersion(id=f"f-{name}", name=f"Emb.{name}", version=1, content_hash="h", spec=spec,
                           created_at=time.time(), min_replicas=0, max_replicas=3,
                           policies=Policies(max_concurrent=concurrency))


def setup(concurrency: int = 1) -> tuple[TableScaler, MethodQueue, FunctionVersion, FunctionVersion]:
    a, b = method("embed", concurrency), method("embed_batch", concurrency)
    queue = MethodQueue()
    scaler = TableScaler(None, queue, Catalog(a, b), host=HostResources(4000, 2**30))  # type: ignore[arg-type]
    scaler.replicas["r-pool"] = Replica("r-pool", "t", a, state="ready", pool=(a, b), pool_key="P")
    return scaler, queue, a, b


def count(scaler: Autoscaler) -> int:
    return sum(r.state in ("starting", "ready") for r in scaler.replicas.values())


def test_one_call_of_each_method_fits_on_one_replica() -> None:
    scaler, queue, a, b = setup()
    queue.running = {a.id: 1, b.id: 1}
    scaler._reconcile()
    assert count(scaler) == 1 and scaler.status(a).desired == 1 and scaler.status(b) is scaler.status(a)


def test_the_busiest_method_sets_the_need() -> None:
    scaler, queue, a, b = setup(concurrency=2)
    queue.running, queue.queued = {a.id: 2, b.id: 1}, {a.id: 3}  # embed: 5 calls, 2 per replica -> 3
    scaler._reconcile()
    assert count(scaler) == 3 and scaler.status(a).desired == 3
    assert scaler.status(a).decision == ("scale up 1 -> 3: 3 call(s) waiting, 3 running, 2 per replica and "
                                         "method")
    assert all(r.pool == (a, b) for r in scaler.replicas.values())  # each new replica serves both


# -- batches: a slot holds a batch of any size --------------------------------------------------


class ReplicaQueue(MethodQueue):
    """Items in flight per replica (one function)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_replica: dict[str, int] = {}

    def inflight(self, function_id: str) -> int:
        return sum(self.on_replica.values())

    def inflight_count(self, function_id: str, replica_id: str) -> int:
        return self.on_replica.get(replica_id, 0)


def batched(max_concurrent: int) -> tuple[Autoscaler, ReplicaQueue, FunctionVersion]:
    fv = FunctionVersion(id="f-b", name="b", version=1, content_hash="h", spec=FunctionSpec("b"),
                         created_at=time.time(), min_replicas=0, max_replicas=3,
                         policies=Policies(max_concurrent=max_concurrent, batch_size=4, batch_wait=0.05))
    queue = ReplicaQueue()
    scaler = Autoscaler(None, queue, Catalog(fv), host=HostResources(4000, 2**30))  # type: ignore[arg-type]
    scaler.replicas["r-1"] = Replica("r-1", "t", fv, state="ready")
    return scaler, queue, fv


def test_a_replica_running_a_batch_of_one_is_full_at_one_slot() -> None:
    scaler, queue, fv = batched(max_concurrent=1)
    queue.on_replica, queue.queued = {"r-1": 1}, {fv.id: 1}
    assert scaler._needed(fv) == 2  # the waiting item cannot join the running batch
    queue.queued = {}
    assert scaler._needed(fv) == 1


def test_items_in_flight_count_as_slots_up_to_max_concurrent() -> None:
    scaler, queue, fv = batched(max_concurrent=2)
    queue.on_replica, queue.queued = {"r-1": 1}, {fv.id: 3}
    assert scaler._needed(fv) == 1  # one slot busy, one free for the next batch of up to 4
    queue.on_replica = {"r-1": 4}  # one batch of 4 or up to 4 batches: counted as both slots busy
    assert scaler._needed(fv) == 2
