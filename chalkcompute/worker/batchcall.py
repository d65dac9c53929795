"""Batch calls in the worker: one assignment carrying many inputs, one answer for all of them.

A batch call's ``Assignment`` (``batch=True``) holds one Arrow record batch
with a row per input; ``batch_rows`` names the rows this attempt runs (all
when empty: a retry runs only the rows that failed). The handler runs once
per row, one after another (one concurrency slot), or, for a batched function
(``max_batching_size``), once per at most that many rows with lists. The
answer is one ``AttemptEvent`` whose ``batch_result`` holds the results as
one column (null where a row failed) and each failed row's error, which the
daemon stores before the caller hears of it::

    settings = BatchSettings.of(version.spec)
    event, stop = run_batch_call_sync(fn, codec, assignment, canceller, settings)
    link.send_events([event], credit=1)

A row's exception is that row's error; a cancel stops the whole attempt (its
``CANCELLED`` event); ``KeyboardInterrupt``/``SystemExit`` stop the replica.
With a timeout, each row (each invocation of a batched function) gets the
function's ``timeout``: past it the row is interrupted (as a cancel would)
and fails with ``DEADLINE_EXCEEDED``, which the daemon retries like a timed-out call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from chalkcompute._client import current_call_id
from chalkcompute._contract import sdk_max_payload, too_large
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import BatchCodec, FunctionCodec, schema_from_bytes
from chalkcompute.worker.cancel import Canceller
from chalkcompute.worker.outcome import (
    CANCELS_IN_THREAD,
    CANCELS_ON_LOOP,
    batch_size_mismatch,
    cancelled_event,
    describe,
)

__all__ = ["BatchSettings", "NO_SETTINGS", "run_batch_call_sync", "run_batch_call_async"]


@dataclass(frozen=True)
class BatchSettings:
    """What a batch call needs of the function's spec: its batch size (0: not batched) and timeout."""

    max_batch_size: int = 0
    timeout: float = 0.0
    name: str = ""

    @classmethod
    def of(cls, version: pb.FunctionVersion) -> BatchSettings:
        spec = version.spec
        return cls(spec.batching.max_batch_size, spec.timeout_seconds, version.function_name)


NO_SETTINGS = BatchSettings()  # a function neither batched nor timed


def _timeout_error(settings: BatchSettings) -> pb.RemoteError:
    return pb.RemoteError(exception_type="chalkd.DeadlineExceededError", code="DEADLINE_EXCEEDED",
                          message=f"{settings.name!r} did not finish within its timeout of {settings.timeout:g}s")


class _Rows:
    """The decoded inputs of one attempt and what became of each."""

    def __init__(self, codec: FunctionCodec, a: pb.Assignment) -> None:
        self.rows: list[int] = list(a.batch_rows) or list(range(a.args.rows or 1))
        self.values: list[Any] = [None] * len(self.rows)
        self.errors: dict[int, pb.RemoteError] = {}   # position in self.rows -> error
        self.started = time.perf_counter()
        self.codec = codec
        table = codec.table_parameter if isinstance(codec, BatchCodec) else None
        self.table = table
        if table is not None:
            record = pa.ipc.read_record_batch(pa.py_buffer(a.args.batch), schema_from_bytes(a.args.schema))
            self.column = record.column(0)
            self.names: list[str] = [table]
            self.columns: list[list] = []
        else:
            self.names, self.columns = codec._in.decode(a.args.schema, a.args.batch)
        missing = [n for n in codec.parameter_names if n not in self.names]
        if missing:
            raise ValueError(f"the batch has no column for parameter(s) {missing}")
        have = len(self.column) if table is not None else len(self.columns[0]) if self.columns else 0
        if have != (a.args.rows or 1) or any(not 0 <= r < have for r in self.rows):
            raise ValueError(f"the batch call says it has {a.args.rows} row(s), its arguments hold {have}")

    def kwargs(self, pos: int) -> dict[str, Any]:
        row = self.rows[pos]
        return {n: c[row] for n, c in zip(self.names, self.columns, strict=True)}

    def item(self, pos: int) -> Any:
        """One row as a batched handler's codec assembles it."""
        if self.table is not None:
            return self.column.slice(self.rows[pos], 1)
        return self.kwargs(pos)

    def fail(self, positions: Sequence[int], error: pb.RemoteError) -> None:
        for pos in positions:
            self.errors[pos] = error

    def event(self, call_id: str, attempt: int) -> pb.AttemptEvent:
        event = pb.AttemptEvent(call_id=call_id, attempt=attempt)
        out = event.batch_result
        out.rows.extend(self.rows)
        out.seconds = time.perf_counter() - self.started
        values = [None if pos in self.errors else v for pos, v in enumerate(self.values)]
        payload = self._encode(values)
        if payload is not None:
            out.results.schema, out.results.batch = payload
            out.results.rows = len(values)
        out.errors.extend(pb.RowError(row=self.rows[pos], error=e) for pos, e in sorted(self.errors.items()))
        return event

    def _encode(self, values: list) -> tuple[bytes, bytes] | None:
        try:
            encoded = self.codec._out.encode([values], ["return value"])
        except Exception:  # noqa: BLE001 - find the rows whose values cannot travel; the rest go
            for pos, v in enumerate(values):
                if pos not in self.errors:
                    try:
                        self.codec._out.encode([[v]], ["return value"])
                    except Exception as exc:  # noqa: BLE001
                        self.errors[pos] = describe(exc)
                        values[pos] = None
            try:
                encoded = self.codec._out.encode([values], ["return value"])
            except Exception as exc:  # noqa: BLE001 - the values share no type: every row says so
                self.fail(range(len(values)), describe(exc))
                return None
        size = len(encoded[0]) + len(encoded[1])
        limit = sdk_max_payload()
        n = keep = len(values)
        while size > limit and keep > 0:
            # Too much for one message: the first rows' results go, the others run again in a
            # later attempt (RESOURCE_EXHAUSTED is retried like a lost worker, row by row).
            keep //= 2
            encoded = self.codec._out.encode([values[:keep] + [None] * (n - keep)], ["return value"])
            size = len(encoded[0]) + len(encoded[1])
        if keep == 0 and 0 not in self.errors:  # the first row's result alone is over the limit
            one = self.codec._out.encode([[values[0]]], ["return value"])
            self.errors[0] = pb.RemoteError(
                exception_type="chalkcompute.ResourceExhaustedError", code="TOO_LARGE",
                message=too_large(f"the result of row {self.rows[0]}", len(one[0]) + len(one[1]), limit))
        if keep < n:
            self.fail([pos for pos in range(keep, n) if pos not in self.errors], pb.RemoteError(
                exception_type="chalkd.ResourceExhaustedError", code="RESOURCE_EXHAUSTED",
                message=f"the results of this batch's {n} rows did not fit in one message of {limit} bytes; "
                        "this row runs again"))
        return encoded


def _invocations(rows: _Rows, settings: BatchSettings) -> list[list[int]]:
    """Positions of rows per handler invocation: one each, or up to the batch size for a batched function."""
    n = len(rows.rows)
    size = settings.max_batch_size if isinstance(rows.codec, BatchCodec) else 0
    if not size:
        return [[pos] for pos in range(n)]
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _settle(rows: _Rows, positions: list[int], fname: str, value: Any, batched: bool) -> None:
    if not batched:
        rows.values[positions[0]] = value
        return
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        value = value.to_pylist()
    mismatch = batch_size_mismatch(fname, value, len(positions))
    if mismatch is not None:
        rows.fail(positions, mismatch)
        return
    for pos, v in zip(positions, value, strict=True):
        rows.values[pos] = v


def _args_of(rows: _Rows, positions: list[int], batched: bool) -> dict[str, Any]:
    if not batched:
        return rows.kwargs(positions[0])
    assert isinstance(rows.codec, BatchCodec)
    return rows.codec.assemble([rows.item(pos) for pos in positions])


class _Watchdog:
    """Interrupts the running invocation once it passes the timeout (one thread per attempt)."""

    def __init__(self, canceller: Canceller, key: tuple[str, int], timeout: float) -> None:
        self.canceller, self.key, self.timeout = canceller, key, timeout
        self.cond = threading.Condition()
        self.deadline: float | None = None
        self.run_no = 0          # which invocation the deadline is for
        self.fired = -1          # the invocation it interrupted
        self.closed = False
        threading.Thread(target=self._watch, name="chalk-batch-timeout", daemon=True).start()

    def start(self, run_no: int) -> None:
        with self.cond:
            self.run_no, self.deadline = run_no, time.monotonic() + self.timeout
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.deadline = None

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _watch(self) -> None:
        with self.cond:
            while not self.closed:
                if self.deadline is None:
                    self.cond.wait()
                    continue
                left = self.deadline - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                # Still the same invocation (checked under the lock its runner takes to move on).
                self.fired, self.deadline = self.run_no, None
                self.canceller.interrupt(self.key)


def run_batch_call_sync(fn: Callable[..., Any], codec: FunctionCodec, a: pb.Assignment, canceller: Canceller,
                        settings: BatchSettings) -> tuple[pb.AttemptEvent, str]:
    """Run one attempt of a batch call of a sync handler on this thread: its event, and why to stop."""
    key = (a.call_id, a.attempt)
    token = current_call_id.set(a.call_id)
    dog = _Watchdog(canceller, key, settings.timeout) if settings.timeout else None
    fname = getattr(fn, "__name__", settings.name)
    batched = isinstance(codec, BatchCodec)
    try:
        try:
            rows = _Rows(codec, a)
        except Exception as exc:  # noqa: BLE001 - the batch cannot be read: every row says why
            return _unreadable(a, exc), ""
        for run_no, positions in enumerate(_invocations(rows, settings)):
            try:
                kwargs = _args_of(rows, positions, batched)
                timed_out = False
                if dog is not None:
                    dog.start(run_no)
                try:
                    value = canceller.call(key, fn, **kwargs)
                finally:
                    if dog is not None:
                        with dog.cond:
                            dog.stop()
                            timed_out = dog.fired == run_no
                if timed_out:
                    # It returned as it was interrupted: the timeout stands.
                    rows.fail(positions, _timeout_error(settings))
                    continue
                _settle(rows, positions, fname, value, batched)
            except CANCELS_IN_THREAD:
                if dog is not None and dog.fired == run_no:
                    rows.fail(positions, _timeout_error(settings))
                    continue
                return cancelled_event(*key), ""
            except (KeyboardInterrupt, SystemExit) as exc:
                rows.fail(range(len(rows.rows)), describe(exc))
                return rows.event(*key), f"the handler raised {type(exc).__name__}"
            except Exception as exc:  # noqa: BLE001 - this row's (invocation's) own error
                rows.fail(positions, describe(exc))
        return rows.event(*key), ""
    finally:
        if dog is not None:
            dog.close()
        current_call_id.reset(token)


async def run_batch_call_async(fn: Callable[..., Any], codec: FunctionCodec, a: pb.Assignment,
                               settings: BatchSettings) -> tuple[pb.AttemptEvent, str]:
    """Run one attempt of a batch call of a coroutine handler; cancelling the task cancels the attempt."""
    key = (a.call_id, a.attempt)
    fname = getattr(fn, "__name__", settings.name)
    batched = isinstance(codec, BatchCodec)
    try:
        rows = _Rows(codec, a)
    except Exception as exc:  # noqa: BLE001
        return _unreadable(a, exc), ""
    for positions in _invocations(rows, settings):
        try:
            kwargs = _args_of(rows, positions, batched)
            if settings.timeout:
                try:
                    value = await asyncio.wait_for(fn(**kwargs), settings.timeout)
                except TimeoutError:
                    rows.fail(positions, _timeout_error(settings))
                    continue
            else:
                value = await fn(**kwargs)
            _settle(rows, positions, fname, value, batched)
        except CANCELS_ON_LOOP:
            return cancelled_event(*key), ""
        except (KeyboardInterrupt, SystemExit) as exc:
            rows.fail(range(len(rows.rows)), describe(exc))
            return rows.event(*key), f"the handler raised {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001
            rows.fail(positions, describe(exc))
    return rows.event(*key), ""


def _unreadable(a: pb.Assignment, exc: BaseException) -> pb.AttemptEvent:
    """An attempt whose inputs do not decode: one error for the whole attempt (not retried as a row's)."""
    return pb.AttemptEvent(call_id=a.call_id, attempt=a.attempt, error=describe(exc))
