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
of the invocation; an exception from the handler becomes every item's error;
a result list of the wrong length (or no list at all) is a
``chalkcompute.BatchSizeMismatch`` error for every item. A cancel of one item
stops the invocation only once every item of it has been cancelled (the
others still want their results; see :meth:`Canceller.group`); until then the
cancelled item's result is reported like the others and the daemon drops it.

Nested calls made by the handler name the batch's first item as their parent.
"""

from __future__ import annotations

import asyncio
import logging

import pyarrow as pa

from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import BatchCodec
from chalkcompute.worker.cancel import CallCancelled, Canceller, cancelled_error
from chalkcompute.worker.link import error_message

log = logging.getLogger(__name__)

_VALUE_ERROR_MRO = ["builtins.ValueError", "builtins.Exception", "builtins.BaseException"]


def as_batch(work: pb.Assignment | pb.AssignmentBatch) -> pb.AssignmentBatch:
    """Work for a batched handler as a batch: a lone Assignment becomes a batch of one."""
    return pb.AssignmentBatch(items=[work]) if isinstance(work, pb.Assignment) else work


def item_keys(items) -> tuple:
    """The attempt keys of a batch's items; as a tuple, also the key of its invocation."""
    return tuple((a.call_id, a.attempt) for a in items)


def batch_size_mismatch(fname: str, value, n: int) -> pb.RemoteError | None:
    """The error for a handler result that is not a list of ``n`` results; None if it is."""
    if not isinstance(value, (list, tuple)):
        message = f"{fname} returned {type(value).__name__}, not a list of {n} results (one per input)"
    elif len(value) != n:
        message = f"{fname} returned {len(value)} results for a batch of {n} inputs"
    else:
        return None
    return pb.RemoteError(exception_type="chalkcompute.BatchSizeMismatch", message=message,
                          exception_mro=_VALUE_ERROR_MRO)


def decode_batch(codec: BatchCodec, items) -> tuple[dict | None, list, list[pb.AttemptEvent]]:
    """The handler's keyword arguments, the items they hold, and error events for the others.

    The kwargs are None when no item could be decoded (or the rows of a
    Table handler share no type: then every item has an error event).
    """
    rows, live, events = [], [], []
    for a in items:
        try:
            rows.append(codec.decode_item(a.args.schema, a.args.batch))
            live.append(a)
        except Exception as exc:  # noqa: BLE001 - this item's own error; the rest go on
            events.append(pb.AttemptEvent(call_id=a.call_id, attempt=a.attempt, error=error_message(exc)))
    if not live:
        return None, [], events
    try:
        return codec.assemble(rows), live, events
    except Exception as exc:  # noqa: BLE001
        return None, [], events + error_events(live, error_message(exc))


def error_events(items, error: pb.RemoteError) -> list[pb.AttemptEvent]:
    """The same error as the final event of every item."""
    return [pb.AttemptEvent(call_id=a.call_id, attempt=a.attempt, error=error) for a in items]


def result_events(fname: str, codec: BatchCodec, items, value) -> list[pb.AttemptEvent]:
    """One result event per item from the handler's list of results, in order."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):  # a Table handler may answer with a column
        value = value.to_pylist()
    mismatch = batch_size_mismatch(fname, value, len(items))
    if mismatch is not None:
        return error_events(items, mismatch)
    events = []
    for a, v in zip(items, value):
        event = pb.AttemptEvent(call_id=a.call_id, attempt=a.attempt)
        try:
            schema, batch = codec.encode_result(v)
            event.result.CopyFrom(pb.Payload(schema=schema, batch=batch, rows=1))
        except Exception as exc:  # noqa: BLE001 - only this item's result cannot travel
            event.error.CopyFrom(error_message(exc))
        events.append(event)
    return events


def run_batch_sync(fn, codec: BatchCodec, items, canceller: Canceller | None = None
                   ) -> tuple[list[pb.AttemptEvent], str]:
    """Run one batch of a sync handler on this thread: an event per item, and why to stop ("" to go on).

    With a canceller, the batch must have been registered with
    ``canceller.group(item_keys(items))``; it is unregistered here.
    """
    key = item_keys(items)
    kwargs, live, events = decode_batch(codec, items)
    stop = ""
    token = current_call_id.set(items[0].call_id)
    try:
        if kwargs is not None:
            value = fn(**kwargs) if canceller is None else canceller.call(key, fn, **kwargs)
            events += result_events(fn.__name__, codec, live, value)
    except CallCancelled:
        events = _cancelled(items)
    except BaseException as exc:  # the user's exception travels to every caller
        events += error_events(live, error_message(exc))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            stop = f"the handler raised {type(exc).__name__}"
    finally:
        current_call_id.reset(token)
        if canceller is not None:
            canceller.ungroup(key)
    return events, stop


async def run_batch_async(fn, codec: BatchCodec, items) -> tuple[list[pb.AttemptEvent], str]:
    """Run one batch of a coroutine handler; cancelling the task cancels every item."""
    kwargs, live, events = decode_batch(codec, items)
    stop = ""
    try:
        if kwargs is not None:
            value = await fn(**kwargs)
            events += result_events(fn.__name__, codec, live, value)
    except asyncio.CancelledError:
        events = _cancelled(items)
    except BaseException as exc:  # the user's exception travels to every caller
        events += error_events(live, error_message(exc))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            stop = f"the handler raised {type(exc).__name__}"
    return events, stop


def _cancelled(items) -> list[pb.AttemptEvent]:
    return error_events(items, cancelled_error())
