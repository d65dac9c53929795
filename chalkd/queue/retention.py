"""Finished calls are kept for their function's ``result_ttl_seconds``, then dropped.

    removed = expire_results(queue, now=time.time())   # the server runs this every sweep interval

Rows go from the database (calls and their chunks) and from the queue's
memory of recently finished calls. Idempotency keys of finished calls are
kept for ``Queue.idempotency_window`` seconds (a caller resubmits only after
a reconnect), then dropped.
One pass per distinct TTL (usually one: the default), through the index on
``finished_at``, so a sweep reads only what it removes.
"""

from __future__ import annotations

import logging
from collections import defaultdict

log = logging.getLogger(__name__)


def expire_results(queue, now: float) -> int:
    """Drop finished calls older than their function's TTL; returns how many left memory."""
    by_ttl: dict[float, list[str]] = defaultdict(list)
    ttl_of: dict[str, float] = {}
    for fv in queue.known_functions().values():
        by_ttl[fv.policies.result_ttl].append(fv.id)
        ttl_of[fv.id] = fv.policies.result_ttl
    for ttl, ids in by_ttl.items():
        marks = ",".join("?" * len(ids))
        where = f"finished_at IS NOT NULL AND finished_at < ? AND function_id IN ({marks})"
        params = (now - ttl, *ids)
        queue.store.write(f"DELETE FROM chunks WHERE call_id IN (SELECT id FROM calls WHERE {where})", params)
        queue.store.write(f"DELETE FROM calls WHERE {where}", params)
    # Idempotency keys matter while a caller may resubmit after a reconnect; then they go.
    expiry = queue.idem_expiry
    while expiry and expiry[0][0] < now - queue.idempotency_window:
        _, key, call_id = expiry.popleft()
        if queue._idem.get(key) == call_id:
            del queue._idem[key]
    removed = 0
    for call_id, call in list(queue.finished.items()):
        ttl = ttl_of.get(call.function.id, 86_400.0)
        if call.finished_at is not None and call.finished_at < now - ttl:
            del queue.finished[call_id]
            queue._finished_bytes -= call.result_bytes
            call.result_bytes = 0
            if call.idempotency_key:
                queue._idem.pop((call.function.id, call.idempotency_key), None)
            removed += 1
    if removed:
        log.debug("expired %d finished call(s)", removed)
    return removed
