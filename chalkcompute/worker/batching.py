"""Batched handlers: one invocation for the items of an ``AssignmentBatch``.

The daemon gathers calls of a batched function into one ``AssignmentBatch``
(one credit). The worker decodes each item with the per-item codec
(:class:`~chalkcompute._serialization.BatchCodec`), calls the handler once
with lists (or one ``pyarrow.Table``), and splits the returned list into one
result event per item, in order::

    codec = FunctionCodec.for_function(batch_embed, batched=True)
    events, stop = run_batch_sync(batch_embed, codec, list(msg.items), canceller)
    link.send(pb.WorkerRequest(events=events, credit=1))

An item whose arguments cannot be decoded gets its own error and is left out
of the invocation; what the invocation's end becomes for each item (its
result, the handler's exception, a ``chalkcompute.BatchSizeMismatch``) is the
worker's one rule in :class:`~chalkcompute.worker.outcome.Outcome`. A cancel of one item
stops the invocation only once every item of it has been cancelled (the
others still want their results; see :meth:`Canceller.group`); until then the
cancelled item's result is reported like the others and the daemon drops it.

Nested calls made by the handler name the batch's first item as their parent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import BatchCodec
from chalkcompute.worker.cancel import Canceller
from chalkcompute.worker.outcome import CANCELS_ON_LOOP, Key, Outcome
from chalkcompute.worker.output import batch_ids

log = logging.getLogger(__name__)


def as_batch(work: pb.Assignment | pb.AssignmentBatch) -> pb.AssignmentBatch:
    """Work for a batched handler as a batch: a lone Assignment becomes a batch of one."""
    return pb.AssignmentBatch(items=[work]) if isinstance(work, pb.Assignment) else work


def item_keys(items: Sequence[pb.Assignment]) -> tuple[Key, ...]:
    """The attempt keys of a batch's items; as a tuple, also the key of its invocation."""
    return tuple((a.call_id, a.attempt) for a in items)


def decode_batch(codec: BatchCodec, items: Sequence[pb.Assignment],
                 out: Outcome) -> tuple[dict | None, list[pb.Assignment]]:
    """The handler's keyword arguments and the items they hold (``out.live``); the others fail in ``out``.

    The kwargs are None when no item could be decoded (or the rows of a Table
    handler share no type: then every item has failed).
    """
    rows, live = [], []
    for a in items:
        try:
            rows.append(codec.decode_item(a.args.schema, a.args.batch))
            live.append(a)
        except Exception as exc:  # noqa: BLE001 - this item's own error; the rest go on
            out.failed([a], exc)
    kwargs = None
    if live:
        try:
            kwargs = codec.assemble(rows)
        except Exception as exc:  # noqa: BLE001
            out.failed(live, exc)
            live = []
    out.live = item_keys(live)
    return kwargs, live


def run_batch_sync(fn: Callable[..., Any], codec: BatchCodec, items: Sequence[pb.Assignment],
                   canceller: Canceller | None = None) -> tuple[list[pb.AttemptEvent], str]:
    """Run one batch of a sync handler on this thread: an event per item, and why to stop ("" to go on).

    With a canceller, the batch must have been registered with
    ``canceller.group(item_keys(items))``; it is unregistered here.
    """
    key = item_keys(items)
    out = Outcome(key)
    token = current_call_id.set(items[0].call_id)
    try:
        with out, batch_ids(tuple(a.call_id for a in items)):  # its output goes to each item's call
            kwargs, live = decode_batch(codec, items, out)
            if kwargs is not None:
                value = fn(**kwargs) if canceller is None else canceller.call(key, fn, **kwargs)
                out.results(fn.__name__, codec, live, value)
    finally:
        current_call_id.reset(token)
        if canceller is not None:
            canceller.ungroup(key)
    return out.events, out.stop


async def run_batch_async(fn: Callable[..., Any], codec: BatchCodec,
                          items: Sequence[pb.Assignment]) -> tuple[list[pb.AttemptEvent], str]:
    """Run one batch of a coroutine handler; cancelling the task cancels every item."""
    out = Outcome(item_keys(items), CANCELS_ON_LOOP)
    with out, batch_ids(tuple(a.call_id for a in items)):  # its output goes to each item's call
        kwargs, live = decode_batch(codec, items, out)
        if kwargs is not None:
            out.results(fn.__name__, codec, live, await fn(**kwargs))
    return out.events, out.stop
