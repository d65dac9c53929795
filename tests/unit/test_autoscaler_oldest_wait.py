"""Scale-up on the oldest wait: a queued call that has waited past the window gets its function one more
replica, one at a time, bounded by max_replicas and the host; not for waits a replica cannot shorten.

The queue is a stand-in reporting chosen depths and waits, and replicas are launched as table entries
(no process), so each decision is seen alone; tests/integration/test_autoscaling.py runs real bursts.
"""

from __future__ import annotations

import logging
import time

import pytest

from chalkd.model import FunctionVersion, Policies
from chalkd.scaling.autoscaler import OLDEST_WAIT_WINDOW, Autoscaler, HostResources, Replica
from chalkd.specs import FunctionSpec

pytestmark = pytest.mark.timeout(10)


class WaitQueue:
    """What the autoscaler reads of the queue in a pass: depth, calls in flight, the oldest wait."""

    def __init__(self) -> None:
        self.queued = 0
        self.running = 0
        self.oldest = 0.0

    def waiting(self, function_id: str) -> int:
        return self.queued

    def inflight(self, function_id: str) -> int:
        return self.running

    def oldest_wait(self, function_id: str) -> float:
        return self.oldest

    def inflight_count(self, function_id: str, replica_id: str) -> int:
        return 0

    def last_done(self, function_id: str, replica_id: str) -> float:
        return 0.0

    def worker_draining(self, replica_id: str, function_id: str) -> None:
        pass


class Catalog:
    def __init__(self, *versions: FunctionVersion) -> None:
        self.by_id = {v.id: v for v in versions}


class TableScaler(Autoscaler):
    """Launches a replica as an entry in its table, starting (no process: the decisions are the subject)."""

    def _launch(self, fv, replica_id=None, gpu_uuids=(), pool=()):  # type: ignore[override]
        replica = Replica(replica_id or f"r-{len(self.replicas)}", "t", fv, pool=pool)
        self.replicas[replica.id] = replica
        return replica


def setup(*, max_replicas: int = 3, cpu_millis: int = 0, host_cpu: int = 4000,
          **policies) -> tuple[TableScaler, WaitQueue, FunctionVersion]:
    fv = FunctionVersion(id="f-1", name="f", version=1, content_hash="h", spec=FunctionSpec("f"),
                         created_at=time.time(), min_replicas=0, max_replicas=max_replicas, cooldown=60.0,
                         cpu_millis=cpu_millis, policies=Policies(**policies))
    queue = WaitQueue()
    scaler = TableScaler(None, queue, Catalog(fv), host=HostResources(host_cpu, 2**30))  # type: ignore[arg-type]
    ready = Replica("r-ready", "t", fv, state="ready")
    scaler.replicas[ready.id] = ready
    # One call running on the one replica and one waiting behind it, but counted as fitting (depth 1 per
    # replica says one replica is enough), as when a slot is held by an attempt being cancelled.
    queue.queued, queue.running = 1, 0
    return scaler, queue, fv


def count(scaler: Autoscaler) -> int:
    return sum(r.state in ("starting", "ready") for r in scaler.replicas.values())


def test_a_short_wait_adds_nothing() -> None:
    scaler, queue, fv = setup()
    queue.oldest = OLDEST_WAIT_WINDOW / 2
    scaler._reconcile()
    assert count(scaler) == 1 and scaler.status(fv).desired == 1 and scaler.status(fv).decision == ""


def test_a_long_wait_adds_one_replica_at_a_time_up_to_max(caplog) -> None:
    scaler, queue, fv = setup(max_replicas=3)
    queue.oldest = 0.5
    with caplog.at_level(logging.INFO, logger="chalkd.scaling.autoscaler"):
        scaler._reconcile()
    assert count(scaler) == 2
    status = scaler.status(fv)
    expected = ("scale up 1 -> 2: the oldest queued call has waited 0.50s (over 0.2s), "
                "1 call(s) waiting, 0 running")
    assert status.desired == 2 and status.decision == expected and status.decision_at > 0
    assert f"scaling f v1: {expected}" in caplog.text
    # The new replica is still starting: no second one yet, and the one starting is kept (not scaled down).
    scaler._reconcile()
    assert count(scaler) == 2 and scaler.status(fv).desired == 2
    for r in scaler.replicas.values():
        r.state = "ready"
    scaler._reconcile()  # ready, and the call still waits: one more
    assert count(scaler) == 3
    for r in scaler.replicas.values():
        r.state = "ready"
    scaler._reconcile()
    assert count(scaler) == 3 and scaler.status(fv).desired == 3  # max_replicas
    # Once nothing waits, desire falls back to depth (the extra replicas drain after the cooldown).
    queue.queued, queue.oldest = 0, 0.0
    scaler._reconcile()
    assert scaler.status(fv).desired == 0


def test_max_replicas_bounds_it() -> None:
    scaler, queue, fv = setup(max_replicas=1)
    queue.oldest = 5.0
    scaler._reconcile()
    assert count(scaler) == 1 and scaler.status(fv).desired == 1


def test_the_host_bounds_it_and_says_so() -> None:
    scaler, queue, fv = setup(cpu_millis=1000, host_cpu=1000)
    queue.oldest = 5.0
    scaler._reconcile()
    status = scaler.status(fv)
    assert count(scaler) == 1 and status.desired == 2
    assert status.waiting.startswith("waiting: it needs 1000m CPU"), status.waiting


def test_a_batch_window_is_not_a_wait() -> None:
    scaler, queue, fv = setup(batch_size=8, batch_wait=1.0)
    queue.oldest = 0.9  # the batch fills for up to a second by design
    scaler._reconcile()
    assert count(scaler) == 1
    queue.oldest = 1.0 + OLDEST_WAIT_WINDOW + 0.1
    scaler._reconcile()
    assert count(scaler) == 2


@pytest.mark.parametrize("policy", [{"rate_per_second": 1.0}, {"rate_limit_key": "provider"},
                                    {"concurrency_key": "provider"}])
def test_waits_for_a_token_or_a_shared_slot_add_nothing(policy) -> None:
    scaler, queue, fv = setup(**policy)
    queue.oldest = 5.0
    scaler._reconcile()
    assert count(scaler) == 1


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wait_window must be a positive number of seconds, got 0"):
        Autoscaler(None, WaitQueue(), Catalog(), host=HostResources(1000, 2**30), wait_window=0)  # type: ignore[arg-type]


# -- what the real queue reports ------------------------------------------------------------------


def test_the_queue_reports_the_wait_of_the_first_in_line(tmp_path) -> None:
    import asyncio

    from tests.unit.test_queue import ARGS, Sub, connect, make_fv, new_queue, open_store, settle

    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            assert q.oldest_wait(fv.id) == 0.0  # nothing queued
            first = q.submit(sub, 1, fv, ARGS)
            second = q.submit(sub, 2, fv, ARGS)
            await settle(store)
            assert first.queued_at <= second.queued_at
            before = time.monotonic()
            assert q.oldest_wait(fv.id) >= before - first.queued_at  # the first's wait, not the second's
            connect(q, "r-1", credit=1)  # takes the first: the second is now first in line
            await settle(store)
            assert first.replica_id == "r-1" and q.waiting(fv.id) == 1
            assert q.oldest_wait(fv.id) <= time.monotonic() - second.queued_at
            connect(q, "r-2", credit=1)
            await settle(store)
            assert q.waiting(fv.id) == 0 and q.oldest_wait(fv.id) == 0.0
        finally:
            await store.close()

    asyncio.run(main())
