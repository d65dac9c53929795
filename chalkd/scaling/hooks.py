"""What the queue asks of the autoscaler, as one object made before either.

The queue and the autoscaler need each other: the queue says when work waits
(demand), asks how far a worker may prefetch, and reports a replica whose
cancelled handler will not stop; the autoscaler drives the queue. Rather than
the autoscaler rebinding the queue's callbacks after both exist, the server
makes a :class:`ScalerHooks` first, over the state both read (the catalog and
the replica table), and hands it to both constructors:

    >>> from chalkd.scaling.hooks import ScalerHooks
    >>> hooks = ScalerHooks(by_id={})
    >>> hooks.prefetch("f-1")                # an unknown function: no prefetch
    0
    >>> hooks.on_demand("f-1"); hooks.wake.is_set()
    True

(then ``Queue(store, hooks=hooks)`` and ``Autoscaler(runtime, queue, catalog, hooks=hooks)``,
which reads ``hooks.wake`` and owns the replicas in ``hooks.replicas``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalkd.model import FunctionVersion
    from chalkd.scaling.autoscaler import Replica

log = logging.getLogger(__name__)

__all__ = ["ScalerHooks", "PREFETCH"]

PREFETCH = 512  # inputs a replica may hold ahead, at most (see queue.dispatch)


class ScalerHooks:
    """The queue's three calls into scaling, over the replica table the autoscaler fills."""

    def __init__(self, by_id: dict[str, FunctionVersion]) -> None:
        self.by_id = by_id                        # the catalog's versions by id (the same dict, read live)
        self.replicas: dict[str, Replica] = {}    # replica id -> replica: the autoscaler's table
        self.wake = asyncio.Event()               # set on demand: the autoscaler's loop waits on it

    def on_demand(self, function_id: str) -> None:
        """Work waits for ``function_id``: wake the autoscaler now rather than at its next tick."""
        self.wake.set()

    def prefetch(self, function_id: str) -> int:
        """How many inputs beyond its free slots a worker of ``function_id`` may hold queued."""
        fv = self.by_id.get(function_id)
        if fv is None:
            return 0
        # A pooled replica (shared_replicas) serves every method of its class: each counts it as its own.
        mine = [r for r in self.replicas.values() if fv in r.serves and r.state in ("starting", "ready")]
        # Only once no replica can be added and none is still starting: before that,
        # waiting work must stay in the queue, where the autoscaler and new replicas see it.
        if len(mine) < fv.max_replicas or any(r.state == "starting" for r in mine):
            return 0
        return PREFETCH

    def on_stuck(self, function_id: str, replica_id: str, reason: str) -> None:
        """A cancelled handler would not stop: kill its replica (a new one replaces it)."""
        replica = self.replicas.get(replica_id)
        if replica is None or replica.handle is None or replica.state == "stopped":
            return
        log.warning("killing replica %s of %s: %s", replica_id, replica.function.name, reason)
        replica.stop_reason = reason
        replica.handle.kill()
