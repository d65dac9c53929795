"""Batch calls: one queue unit carrying many inputs (rows of one Arrow record batch).

A batch call is a :class:`chalkd.model.Call` with a :class:`BatchState`: one row
in the store, one dispatch per attempt, one result batch back. An attempt runs
some of its rows (``BatchState.sent``: the rows still pending, as many as the
rate limit's tokens allow) and the worker answers with a :class:`BatchReport`
(the results of those rows, null where one failed, and each failed row's
error). :meth:`BatchState.settle` applies the function's retry policy per row:
a row whose user exception the policy names (or a platform failure such as a
row's timeout) stays pending and runs again in the next attempt, without the
rows that succeeded; the others are final. Once no row is pending the call
finishes with :meth:`BatchState.result` (one column ``"result"`` with a value
per row, null where it failed) and :attr:`BatchState.errors`::

    state = BatchState.new(3)
    state.take(limit=3)                       # [0, 1, 2]: the rows of the next attempt
    delay = state.settle(report, policies, max_attempts=3, rng=rng)
    # None: every row is final -> finish with state.result(), state.errors
    # a float: rows wait for another attempt, that many seconds from now

What survives a daemon restart is in the call's row: ``batch_rows`` and
``batch_state`` (JSON: pending rows, per-row failures, errors) beside the
partial results in ``result_batch``, written each time rows stay pending
(:meth:`to_json`, :meth:`from_row`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import ClassVar

from chalkd.model import INFRASTRUCTURE_CODES, CallError, ErrorCode, Payload, Policies
from chalkd.queue.events import CallEvent
from chalkd.queue.storage import decode_error, encode_error

# The most inputs one batch call may carry: the daemon keeps a few words per row of an open batch
# (its pending list), so a caller must not name more than it sends. A row costs at least one
# bit of the Arrow batch as well (checked with the payload's size).
MAX_BATCH_ROWS = 1 << 20


def rows_refused(rows: int, payload_bytes: int) -> str:
    """Why a batch call of ``rows`` inputs in ``payload_bytes`` bytes is refused ("" if it is not).

    >>> rows_refused(3, 200), rows_refused(2_000_000, 10**8) != ""
    ('', True)
    """
    if rows < 1:
        return "a batch call needs at least one row"
    if rows > MAX_BATCH_ROWS:
        return f"a batch call may carry at most {MAX_BATCH_ROWS} rows, this one names {rows}; send several"
    if rows > max(8 * payload_bytes, 1024):
        return f"a batch call of {rows} rows cannot fit in {payload_bytes} bytes of arguments"
    return ""


@dataclass(slots=True)
class BatchReport(CallEvent):
    """A worker's answer for one attempt of a batch call: results of ``rows`` (all rows when
    empty), in that order, null where the row failed; ``errors`` by row."""

    payload: Payload | None
    rows: list[int]
    errors: dict[int, CallError]
    seconds: float = 0.0     # the handler's time for these rows
    kind: ClassVar[str] = "batch"


@dataclass(slots=True)
class BatchResult(CallEvent):
    """The final event of a batch call to its caller: a value per row and the failed rows' errors."""

    payload: Payload | None
    errors: dict[int, CallError]
    seconds: float = 0.0     # the handler's time for every row, over every attempt
    kind: ClassVar[str] = "batch_result"


@dataclass(slots=True, eq=False)
class BatchState:
    """What is known of a batch call's rows (see the module docstring)."""

    rows: int
    pending: list[int]                                  # rows without a final outcome, ascending
    errors: dict[int, CallError] = field(default_factory=dict)   # final errors
    failures: dict[int, int] = field(default_factory=dict)       # failed runs per row (its retry budget)
    # Results received: (rows they are for, or None for 0..rows-1; their payload). A later piece
    # holding a row wins: a row runs again only while pending.
    pieces: list[tuple[list[int] | None, Payload]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)       # rows of the current attempt
    seconds: float = 0.0                                # the handler's time so far (not kept over a restart)

    @classmethod
    def new(cls, rows: int) -> BatchState:
        return cls(rows, list(range(rows)))

    def take(self, limit: int | None = None) -> list[int]:
        """The rows the next attempt runs: the pending ones, at most ``limit``."""
        self.sent = self.pending if limit is None or limit >= len(self.pending) else self.pending[:limit]
        return self.sent

    def settle(self, report: BatchReport, policies: Policies, max_attempts: int, rng: random.Random) -> float | None:
        """Take an attempt's report: successes are kept, failures retried per row or made final.

        Returns None when no row is pending any more, else the seconds before the next attempt
        (0 for rows the attempt did not carry, the policy's backoff for rows that failed).
        """
        ran = report.rows or self.sent
        self.seconds += report.seconds
        if report.payload is not None and report.payload.rows == len(ran):
            self.pieces.append((list(ran) if report.rows or len(ran) != self.rows else None, report.payload))
        done = set(ran) & set(self.sent)  # a report names only the rows its attempt was sent
        delay = 0.0
        retry = policies.retry
        for row, error in report.errors.items():
            if row not in done:
                continue
            if error.code in INFRASTRUCTURE_CODES:
                runs = retry.max_retries + 1 if retry else max_attempts
            elif error.code == ErrorCode.USER and retry is not None and retry.matches(error):
                runs = retry.max_retries + 1
            else:
                self.errors[row] = error
                continue
            n = self.failures[row] = self.failures.get(row, 0) + 1
            if n >= runs:
                if error.code != ErrorCode.USER:
                    error = CallError(error.exception_type, f"{error.message}; gave up after {n} attempt(s)",
                                      error.traceback, error.code, error.exception_mro)
                self.errors[row] = error
                continue
            done.discard(row)  # runs again
            wait = retry.wait_before(n, rng) if retry is not None else min(0.05 * 2 ** (n - 1), 2.0)
            delay = max(delay, wait)
        self.pending = [r for r in self.pending if r not in done]
        self.sent = []
        return delay if self.pending else None

    def fail_pending(self, error: CallError) -> None:
        """The call ends with rows still pending (retries spent, function deleted): they get ``error``."""
        for row in self.pending:
            self.errors[row] = error
        self.pending = []

    @property
    def succeeded_any(self) -> bool:
        return len(self.errors) + len(self.pending) < self.rows

    def result(self) -> Payload | None:
        """One column ``"result"`` with a value per row (null where it failed or is pending)."""
        pieces = self.pieces
        if not pieces:
            return None
        if len(pieces) == 1 and pieces[0][0] is None:
            return pieces[0][1]  # the common case: one attempt ran every row; its bytes as they came
        return _merge(self.rows, pieces, skip=set(self.errors).union(self.pending))

    # -- in the store ---------------------------------------------------------------------------

    def to_json(self) -> bytes:
        return json.dumps({
            "pending": self.pending,
            "failures": {str(k): v for k, v in self.failures.items()},
            "errors": {str(k): encode_error(e).decode() for k, e in self.errors.items()},
        }).encode()

    @classmethod
    def from_row(cls, rows: int, state: bytes | None, partial: Payload | None) -> BatchState:
        """The state a restarted daemon finds (nothing stored yet: every row pending)."""
        if not state:
            return cls.new(rows)
        d = json.loads(state)
        out = cls(rows, list(d.get("pending", range(rows))),
                  errors={int(k): decode_error(v.encode()) for k, v in d.get("errors", {}).items()},
                  failures={int(k): int(v) for k, v in d.get("failures", {}).items()})
        if partial is not None:
            out.pieces.append((None, partial))
        return out


def errors_from_json(state: bytes | None) -> dict[int, CallError]:
    """A finished batch call's per-row errors, from its stored ``batch_state``."""
    if not state:
        return {}
    return {int(k): decode_error(v.encode()) for k, v in json.loads(state).get("errors", {}).items()}


def _merge(rows: int, pieces: list[tuple[list[int] | None, Payload]], skip: set[int]) -> Payload:
    """The pieces' values assembled by row (a row's value from the last piece that has it non-null).

    pyarrow is imported here only: the daemon needs it only for batches whose rows ran in
    more than one attempt (retries, rate-limited slices).
    """
    import pyarrow as pa

    arrays: list = []
    where: dict[int, int] = {}  # row -> index into the concatenation
    offset = 0
    first_type = None
    for piece_rows, payload in pieces:
        schema = pa.ipc.read_schema(pa.py_buffer(payload.schema))
        column = pa.ipc.read_record_batch(pa.py_buffer(payload.batch), schema).column(0)
        if first_type is None:
            first_type, field_ = column.type, schema.field(0)
        elif column.type != first_type:
            try:
                column = column.cast(first_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue  # an inferred result type that changed between attempts: those rows stay null
        valid = column.is_valid().to_pylist()
        for pos, row in zip(range(len(column)), piece_rows if piece_rows is not None else range(len(column)),
                            strict=False):
            if valid[pos] and 0 <= row < rows and row not in skip:
                where[row] = offset + pos
        arrays.append(column)
        offset += len(column)
    whole = pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
    merged = whole.take(pa.array([where.get(r) for r in range(rows)], type=pa.int64()))
    out_schema = pa.schema([field_])
    batch = pa.RecordBatch.from_arrays([merged], schema=out_schema)
    return Payload(out_schema.serialize().to_pybytes(), batch.serialize().to_pybytes(), rows)
