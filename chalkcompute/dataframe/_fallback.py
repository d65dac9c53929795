"""Stand-in for ``chalkcompute._batch.call_batch`` until batch calls land: a batch is sent as one
``map`` (one durable call per row) with the same outcome shape. Deleted once ``_batch`` exists."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from chalkcompute._serialization import schema_from_bytes
from chalkcompute.functions import RemoteFunction

__all__ = ["BatchOutcome", "call_batch"]


@dataclass
class BatchOutcome:
    values: pa.Array                    # one per input row, in order; null where the row failed
    errors: dict[int, BaseException]    # row index within the batch -> the SDK exception


async def call_batch(fn: RemoteFunction, batch: pa.RecordBatch, *, timeout: float | None = None) -> BatchOutcome:
    if timeout is not None:
        raise NotImplementedError("the map-based stand-in for batch calls takes no timeout")
    codec = fn.codec
    assert codec is not None
    columns = [batch.column(p).to_pylist() for p in codec.parameter_names]
    values: list = []
    errors: dict[int, BaseException] = {}
    async for value in fn.map.aio(*columns, return_exceptions=True):
        if isinstance(value, BaseException):
            errors[len(values)] = value
            value = None
        values.append(value)
    out = schema_from_bytes(codec.output_schema_bytes).field(0).type if codec.output_schema_bytes else None
    return BatchOutcome(pa.array(values, type=out), errors)
