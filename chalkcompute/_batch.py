"""Batch calls from the SDK: many inputs of one function as one durable queue unit.

A batch call carries its inputs as one Arrow record batch (a row per input):
one row in chalkd's store, one dispatch, one result batch back, with a value
per row and each failed row's error. The worker runs the handler once per row
(a batched function: once per at most ``max_batching_size`` rows, with lists);
rows whose exception the function's retry policy names run again without the
rows that succeeded. It survives a daemon restart like a single call: the
session re-attaches and the caller gets every row's result once.

    import pyarrow as pa
    from chalkcompute._batch import call_batch

    out = await call_batch(square, pa.record_batch({"x": [1, 2, 3]}))
    out.values                      # <pyarrow.Int64Array> [1, 4, 9]
    out.errors                      # {}: row index -> the exception a single call would raise

``map`` and ``starmap`` send their inputs this way (chalkcompute.calls); the
DataFrame's ``F.catalog_call`` builds on :func:`call_batch`.
"""

from __future__ import annotations

import asyncio
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from chalkcompute._client import CallHandle, Client
from chalkcompute._contract import sdk_max_payload, too_large
from chalkcompute._events import BatchDone, Broken, CallEvent, Failed
from chalkcompute._serialization import FunctionCodec, schema_from_bytes
from chalkcompute.exceptions import (
    CallCancelledError,
    ChalkError,
    FunctionSignatureError,
    FunctionTimeoutError,
    ResourceExhaustedError,
    remote_error,
)

__all__ = ["BatchOutcome", "call_batch", "encode_rows", "outcome_of", "start_batch"]


class BatchCallee(Protocol):
    """What a batch call needs of a function handle (``RemoteFunction`` is one)."""

    name: str
    codec: FunctionCodec | None

    @property
    def is_generator(self) -> bool | None: ...

    @property
    def client(self) -> Client: ...

    async def _ensure_registered_async(self) -> Any: ...


@dataclass
class BatchOutcome:
    """What a batch call gave back: a value per input row, in order (null where the row failed),
    and each failed row's exception, as a single call of that row would have raised it."""

    values: pa.Array
    errors: dict[int, BaseException]
    seconds: float = 0.0   # the handler's time for these rows, as the worker measured it (to size batches)


async def call_batch(fn: BatchCallee, batch: pa.RecordBatch, *, timeout: float | None = None) -> BatchOutcome:
    """Run ``fn`` over every row of ``batch`` as one durable queue unit (see the module docstring).

    ``batch`` has one column per parameter of ``fn``, named as the parameters; each is cast to
    the function's input type (a column that cannot be: TypeError naming column and parameter;
    a null for a parameter that is not Optional: TypeError naming the row). Waits at most
    ``timeout`` seconds (FunctionTimeoutError; the batch is cancelled). Cancelling the awaiting
    task cancels the batch in the queue. The function registers itself first if it must.
    """
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(f"call_batch() takes a pyarrow.RecordBatch, got {type(batch).__name__}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout!r}")
    info = await fn._ensure_registered_async()
    if fn.is_generator:
        raise FunctionSignatureError(f"{fn.name} is a generator function: its calls cannot be batched")
    if batch.num_rows == 0:
        return BatchOutcome(pa.array([], type=_output_type(fn)), {})
    payload = encode_arrow(fn, batch)
    handle = start_batch(fn, info.id, payload, batch.num_rows)
    try:
        event = await asyncio.wait_for(handle.next_event_async(), timeout)
    except TimeoutError:
        handle.cancel()
        raise FunctionTimeoutError(
            f"a batch call of {fn.name!r} ({batch.num_rows} rows) did not finish within {timeout:g}s; "
            "it was cancelled") from None
    except asyncio.CancelledError:
        handle.cancel()
        raise
    return outcome_of(fn, handle, event, batch.num_rows)


def start_batch(fn: BatchCallee, function_id: str, payload: tuple[bytes, bytes], rows: int,
                handle_type: Any = CallHandle) -> CallHandle:
    """Submit one batch call of ``rows`` inputs (``payload``: its Arrow schema and batch bytes)."""
    codec = fn.codec
    assert codec is not None, f"{fn.name!r} is not hydrated"
    return fn.client.start_call(function_id=function_id, args=payload, decode=codec.decode_results,
                                display_name=fn.name, handle_type=handle_type, batch_rows=rows)


def outcome_of(fn: BatchCallee, handle: CallHandle, event: CallEvent, rows: int) -> BatchOutcome:
    """A batch call's final event as its :class:`BatchOutcome`.

    Raises when the batch as a whole never ran: a refusal (unknown function, too large), a
    cancel, a lost daemon. A call that failed as a whole after it was accepted (its replica
    lost on every attempt) fails each row with that error.
    """
    if type(event) is BatchDone:
        out = event.outcome
        values = _column(out.results, rows) if out.results.batch else pa.nulls(rows, _output_type(fn))
        errors: dict[int, BaseException] = {
            e.row: remote_error(e.error, function_name=fn.name, call_id=event.call_id) for e in out.errors}
        return BatchOutcome(values, errors, out.seconds)
    if type(event) is Failed and event.call_id:
        exc = remote_error(event.error, function_name=fn.name, call_id=event.call_id)
        if not isinstance(exc, CallCancelledError):
            return BatchOutcome(pa.nulls(rows, _output_type(fn)), {
                i: remote_error(event.error, function_name=fn.name, call_id=event.call_id) for i in range(rows)})
    if type(event) is Broken:
        raise event.exc
    handle.raise_for(event)


def seconds_of(event: CallEvent) -> float:
    """The handler's time for a finished batch call's rows (0 when unknown)."""
    return event.outcome.seconds if type(event) is BatchDone else 0.0


def _column(payload: Any, rows: int) -> pa.Array:
    schema = schema_from_bytes(payload.schema)
    record = pa.ipc.read_record_batch(pa.py_buffer(payload.batch), schema)
    if record.num_rows != rows or record.num_columns != 1:
        raise ChalkError(f"a batch call's result has {record.num_rows} row(s) in {record.num_columns} column(s); "
                         f"expected {rows} in one")
    return record.column(0)


def _output_type(fn: BatchCallee) -> pa.DataType:
    codec = fn.codec
    if codec is not None and codec.output_schema_bytes:
        return schema_from_bytes(codec.output_schema_bytes).field(0).type
    return pa.null()


# -- inputs --------------------------------------------------------------------------------------


def encode_rows(fn: BatchCallee, columns: list[list]) -> tuple[bytes, bytes]:
    """Python values (a list per parameter, a value per input) as one batch call's payload."""
    codec = fn.codec
    assert codec is not None, f"{fn.name!r} is not hydrated"
    payload = codec._in.encode(columns)
    _check_size(fn, payload, len(columns[0]) if columns else 0)
    return payload


def encode_arrow(fn: BatchCallee, batch: pa.RecordBatch) -> tuple[bytes, bytes]:
    """``batch``'s columns cast to ``fn``'s parameters, as one batch call's payload."""
    codec = fn.codec
    assert codec is not None, f"{fn.name!r} is not hydrated"
    names = codec.parameter_names
    have = batch.schema.names
    missing = [n for n in names if n not in have]
    if missing:
        raise TypeError(f"{fn.name}: the batch has no column for parameter(s) {missing}; its columns are {have}")
    extra = [c for c in have if c not in names]
    if extra:
        raise TypeError(f"{fn.name}: column(s) {extra} name no parameter of {fn.name}({', '.join(names)})")
    schema = schema_from_bytes(codec.input_schema_bytes) if codec.input_schema_bytes else None
    required = _required(fn)
    arrays = []
    for name in names:
        column = batch.column(have.index(name))
        if schema is not None:
            target = schema.field(name).type
            if column.type != target:
                try:
                    column = column.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise TypeError(f"{fn.name}: column {name!r} ({column.type}) cannot be cast to parameter "
                                    f"{name!r} ({target}): {exc}") from None
        if name in required and column.null_count:
            row = column.is_null().to_pylist().index(True)
            raise TypeError(f"{fn.name}: row {row}: parameter {name!r} is not Optional, but column {name!r} "
                            "is null there")
        arrays.append(column)
    if schema is not None:
        record = pa.RecordBatch.from_arrays(arrays, schema=schema)
        payload = (codec.input_schema_bytes, record.serialize().to_pybytes())
    else:
        record = pa.RecordBatch.from_arrays(arrays, names=names)
        payload = (record.schema.serialize().to_pybytes(), record.serialize().to_pybytes())
    _check_size(fn, payload, batch.num_rows)
    return payload


def _check_size(fn: BatchCallee, payload: tuple[bytes, bytes], rows: int) -> None:
    size = len(payload[0]) + len(payload[1])
    if size > (limit := sdk_max_payload()):
        raise ResourceExhaustedError(too_large(f"a batch of {rows} input(s) of {fn.name}()", size, limit)
                                     + "; send fewer rows per batch")


_required_cache: dict[int, tuple[Any, frozenset[str]]] = {}


def _required(fn: BatchCallee) -> frozenset[str]:
    """Parameters that may not be null: hinted, not Optional, no default of None. Known only
    for a function decorated in this process (a handle by name has its schema alone, whose
    fields are all nullable: nothing is checked here, the handler sees None)."""
    py = getattr(fn, "fn", None)
    if py is None:
        return frozenset()
    hit = _required_cache.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1]
    try:
        hints = typing.get_type_hints(py)
    except Exception:  # noqa: BLE001 - unresolvable hints: the codec reported them at decoration
        hints = {}
    out = set()
    batched = getattr(getattr(fn, "_opts", None), "batched", False)
    for p in inspect.signature(py).parameters.values():
        hint = hints.get(p.name, Any)
        if batched and typing.get_origin(hint) is list:
            hint = (typing.get_args(hint) or (Any,))[0]
        if hint is Any or p.default is None:
            continue
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            continue
        out.add(p.name)
    result = frozenset(out)
    _required_cache[id(fn)] = (fn, result)
    return result
