"""Running ``F.catalog_call`` over a stream of record batches: batch calls in flight, in order.

Each input batch's argument columns are evaluated and cast to the function's
parameter types, then cut into chunks that each travel as one batch call
(:func:`chalkcompute._batch.call_batch`: one durable queue unit). Chunks are sized from how long the
last ones took (aiming at ~20 ms of work each, so a call's fixed cost is
amortised and results still flow) and at most :data:`MAX_IN_FLIGHT` are out
at once, which bounds the caller's memory and lets several replicas work in
parallel. Output batches come out in input order, each with one new column
per call.

Failures: with ``on_error="raise"`` the first failed row (as it arrives, not
when its turn comes) cancels every chunk in flight and raises a
:class:`~chalkcompute.dataframe.errors.RowError` with the row's index;
with ``on_error="null"`` the row's value is null and :meth:`CallStage.report`
prints one warning at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from chalkcompute._batch import call_batch
from chalkcompute._bridge import sdk_loop
from chalkcompute.dataframe.catalog import BoundCall
from chalkcompute.dataframe.errors import RowError
from chalkcompute.exceptions import FunctionSignatureError, SerializationError

log = logging.getLogger(__name__)

__all__ = ["CallStage", "ChunkSizer", "MAX_IN_FLIGHT", "prepare_arguments"]

MAX_IN_FLIGHT = 16          # batch calls out at once per stage...
MAX_ROWS_IN_FLIGHT = 65_536  # ...and rows in them (what the caller holds for the calls, whatever the sizes)
TARGET_SECONDS = 0.02       # the work one chunk should carry
MIN_ROWS, MAX_ROWS, FIRST_ROWS = 1, 16384, 64


class ChunkSizer:
    """Rows per batch call: grown or shrunk (at most 2x a step) toward TARGET_SECONDS of latency.

    >>> s = ChunkSizer()
    >>> s.rows
    64
    >>> s.observe(64, 0.001); s.rows      # fast: double
    128
    >>> s.observe(128, 1.0); s.rows       # slow: halve
    64
    """

    def __init__(self) -> None:
        self.rows = FIRST_ROWS

    def observe(self, rows: int, seconds: float) -> None:
        if rows < self.rows // 2:  # a batch's short tail says little about the rate
            return
        ideal = rows * TARGET_SECONDS / max(seconds, 1e-6)
        self.rows = int(min(MAX_ROWS, max(MIN_ROWS, self.rows // 2, min(self.rows * 2, ideal))))


def _plain(array: pa.Array) -> pa.Array:
    """Dictionary columns decoded, large strings/binaries made plain: the shapes a function's schema uses."""
    t = array.type
    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
        t = array.type
    if pa.types.is_large_string(t):
        return array.cast(pa.string())
    if pa.types.is_large_binary(t):
        return array.cast(pa.binary())
    return array


def prepare_arguments(bound: BoundCall, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.Array | None]:
    """The argument batch (a column per parameter, cast to its type) and, where a non-Optional parameter
    got a null, a boolean mask of those rows (None when there are none)."""
    if bound.table_fields is not None:  # a Table handler: one struct column, a field per argument
        fields = [_plain(e.evaluate(batch)) for e in bound.arguments]
        rows = pa.StructArray.from_arrays(fields, names=bound.table_fields)
        return pa.RecordBatch.from_arrays([rows], names=bound.parameters), None
    arrays, bad = [], None
    for name, expr, typ, nullable in zip(bound.parameters, bound.arguments, bound.input_types, bound.nullable,
                                         strict=True):
        array = _plain(expr.evaluate(batch))
        if typ is not None and not array.type.equals(typ):
            try:
                array = array.cast(typ)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise SerializationError(
                    f"F.catalog_call({bound.name!r}): argument {name!r} ({expr!r}) is {array.type} and cannot be "
                    f"cast to the parameter's type {typ}: {exc}") from None
        if not nullable and array.null_count:
            nulls = array.is_null()
            bad = nulls if bad is None else pc.or_(bad, nulls)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=bound.parameters), bad


def _null_error(bound: BoundCall, args: pa.RecordBatch, row: int) -> FunctionSignatureError:
    names = [p for p, ok in zip(bound.parameters, bound.nullable, strict=True)
             if not ok and not args.column(p)[row].is_valid]
    return FunctionSignatureError(
        f"argument {names[0]!r} is null and {bound.name}() does not take None (the parameter is not Optional)")


@dataclass
class _Part:
    """One call's share of one input batch."""

    bound: BoundCall
    offset: int                              # the batch's first row, over the whole stream
    rows: int
    args: pa.RecordBatch                     # the rows that are sent
    sent: pa.Array | None                    # batch row of each sent row (None: every row, in order)
    failed: dict[int, BaseException]         # batch row -> error (nulls refused here, remote failures)
    chunks: list[concurrent.futures.Future] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # the first sent row of each chunk

    def column(self) -> pa.Array:
        # Each chunk as the column's type: output_type may differ from the function's, and an
        # unhinted function's chunks are typed by their values (all-null ones as null).
        values = [self._typed(f.result().values) for f in self.chunks]
        out = pa.concat_arrays(values) if values else pa.array([], self.bound.output_type)
        if self.sent is None:
            return out
        # Scatter back: rows that were not sent are null.
        position: list[int | None] = [None] * self.rows
        for i, row in enumerate(self.sent.to_pylist()):
            position[row] = i
        return out.take(pa.array(position, pa.int64()))

    def _typed(self, values: pa.Array) -> pa.Array:
        want = self.bound.output_type
        if values.type.equals(want):
            return values
        try:
            return values.cast(want)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise SerializationError(
                f"F.catalog_call({self.bound.name!r}): its results are {values.type} and cannot be cast to "
                f"the column's type {want}: {exc}") from None


@dataclass
class _Entry:
    batch: pa.RecordBatch
    parts: list[_Part] = field(default_factory=list)
    submitted: bool = False  # every chunk of every part is out (until then it cannot be done)

    def done(self) -> bool:
        return self.submitted and all(f.done() for p in self.parts for f in p.chunks)


class CallStage:
    """Adds one column per bound call (named by ``calls``' keys) to every batch of a stream."""

    def __init__(self, calls: dict[str, BoundCall], progress: object | None = None) -> None:
        self.calls = calls
        self.sizers = {name: ChunkSizer() for name in calls}
        self.loop = sdk_loop()
        # Set by the first chunk with a failed row (on_error="raise") or a failed batch call.
        self.failure: concurrent.futures.Future = concurrent.futures.Future()
        self.null_errors: dict[str, list[tuple[int, BaseException]]] = {n: [] for n in calls}
        self.null_counts: dict[str, int] = dict.fromkeys(calls, 0)

    # -- the stream ---------------------------------------------------------------------------------

    def run(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pending: deque[_Entry] = deque()
        in_flight: deque[tuple[concurrent.futures.Future, int]] = deque()
        rows_out = 0  # rows in the chunks of in_flight
        offset = 0
        try:
            for batch in batches:
                entry = _Entry(batch)
                pending.append(entry)
                for name, bound in self.calls.items():
                    part = self._part(bound, batch, offset)
                    entry.parts.append(part)
                    start, sizer = 0, self.sizers[name]
                    while start < part.args.num_rows:
                        n = min(sizer.rows, part.args.num_rows - start)
                        while in_flight and (len(in_flight) >= MAX_IN_FLIGHT or rows_out + n > MAX_ROWS_IN_FLIGHT):
                            self._wait(in_flight[0][0])
                            while in_flight and in_flight[0][0].done():
                                rows_out -= in_flight.popleft()[1]
                            yield from self._ready(pending)
                        fut = self._submit(name, part, start, part.args.slice(start, n))
                        part.chunks.append(fut)
                        part.starts.append(start)
                        in_flight.append((fut, n))
                        rows_out += n
                        start += n
                entry.submitted = True
                offset += batch.num_rows
                while in_flight and in_flight[0][0].done():
                    rows_out -= in_flight.popleft()[1]
                yield from self._ready(pending)
            while pending:
                for fut in (f for p in pending[0].parts for f in p.chunks):
                    self._wait(fut)
                yield from self._ready(pending)
        finally:
            for fut, _rows in in_flight:
                fut.cancel()  # cancels the awaiting task on the SDK loop, which cancels its batch call

    def _part(self, bound: BoundCall, batch: pa.RecordBatch, offset: int) -> _Part:
        args, bad = prepare_arguments(bound, batch)
        failed: dict[int, BaseException] = {}
        sent = None
        if bad is not None:
            bad_rows = pc.indices_nonzero(bad).to_pylist()
            failed = {row: _null_error(bound, args, row) for row in bad_rows}
            if bound.call.on_error == "raise":
                row = bad_rows[0]
                raise RowError(bound.name, offset + row, failed[row]) from failed[row]
            sent = pc.indices_nonzero(pc.invert(bad))
            args = args.take(sent)
        return _Part(bound, offset, batch.num_rows, args, sent, failed)

    def _submit(self, name: str, part: _Part, start: int, chunk: pa.RecordBatch) -> concurrent.futures.Future:
        sizer, failure, raising = self.sizers[name], self.failure, part.bound.call.on_error == "raise"
        began = time.monotonic()

        def done(fut: concurrent.futures.Future) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is None:
                sizer.observe(chunk.num_rows, time.monotonic() - began)
                errors = fut.result().errors
                if not errors or not raising:
                    return
                k = min(errors)
                row = start + k if part.sent is None else part.sent[start + k].as_py()
                exc = RowError(part.bound.name, part.offset + row, errors[k])
                exc.__cause__ = errors[k]
            if not failure.done():
                try:
                    failure.set_result(exc)
                except concurrent.futures.InvalidStateError:  # another chunk got there first
                    pass

        fut = asyncio.run_coroutine_threadsafe(call_batch(part.bound.rf, chunk), self.loop)
        fut.add_done_callback(done)
        return fut

    def _wait(self, fut: concurrent.futures.Future) -> None:
        """Until ``fut`` is done; raises at once when any chunk failed first."""
        if not fut.done():
            concurrent.futures.wait([fut, self.failure], return_when=concurrent.futures.FIRST_COMPLETED)
        if self.failure.done():
            raise self.failure.result()

    def _ready(self, pending: deque[_Entry]) -> Iterator[pa.RecordBatch]:
        while pending and pending[0].done():
            entry = pending.popleft()
            batch = entry.batch
            for name, part in zip(self.calls, entry.parts, strict=True):
                self._count_failures(name, part)
                batch = batch.append_column(name, part.column())
            yield batch

    def _count_failures(self, name: str, part: _Part) -> None:
        failed = dict(part.failed)
        for start, fut in zip(part.starts, part.chunks, strict=True):
            for k, exc in fut.result().errors.items():
                row = start + k if part.sent is None else part.sent[start + k].as_py()
                failed[row] = exc
        if failed and part.bound.call.on_error == "raise":
            # Normally raised by _wait already; this catches a chunk whose callback has not run yet.
            row = min(failed)
            raise RowError(part.bound.name, part.offset + row, failed[row]) from failed[row]
        if failed:
            self.null_counts[name] += len(failed)
            first = self.null_errors[name]
            for row in sorted(failed)[: 3 - len(first)]:
                first.append((part.offset + row, failed[row]))

    # -- the end ------------------------------------------------------------------------------------

    def report(self) -> None:
        """One warning on stderr per call whose failed rows were made null (on_error="null")."""
        for name, count in self.null_counts.items():
            if not count:
                continue
            bound = self.calls[name]
            first = "; ".join(f"row {row}: {exc}" for row, exc in self.null_errors[name])
            print(f"chalkcompute: warning: F.catalog_call({bound.name!r}, on_error='null'): {count} row(s) failed "
                  f"and are null; the first: {first}", file=sys.stderr, flush=True)
