"""A DataFrame's operations and how they run: a chain of generators over record batches.

Planning happens before any row is read or sent: every ``F.catalog_call`` is
bound to its function (registering a local one), then the whole chain runs
once over an empty batch of the source's schema, which checks every column
name and gives the output schema without a single call. The leading filters
that need no function are pushed into the parquet scan (row groups whose
statistics rule them out are never read), and only the columns the plan
reads are scanned.

A catalog call nested in another's arguments, or used in a filter, is lifted
into a hidden column ``__chalk_call_N`` computed by a
:class:`~chalkcompute.dataframe.stage.CallStage` before the operation that
uses it; the operation then drops it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from chalkcompute.dataframe.catalog import BoundCall, CatalogCall
from chalkcompute.dataframe.expr import Column, Expr
from chalkcompute.dataframe.source import Source
from chalkcompute.dataframe.stage import CallStage
from chalkcompute.functions import RemoteFunction

__all__ = ["Filter", "Limit", "Op", "Plan", "Project", "WithColumns"]

Stream = Iterator[pa.RecordBatch]


@dataclass(frozen=True)
class Project:
    columns: tuple[tuple[str, Expr], ...]     # exactly these columns, in this order


@dataclass(frozen=True)
class WithColumns:
    columns: tuple[tuple[str, Expr], ...]     # replaced where the name exists, else added at the end


@dataclass(frozen=True)
class Filter:
    predicate: Expr


@dataclass(frozen=True)
class Limit:
    n: int


Op = Project | WithColumns | Filter | Limit


def _exprs(op: Op) -> list[Expr]:
    if isinstance(op, (Project, WithColumns)):
        return [e for _, e in op.columns]
    if isinstance(op, Filter):
        return [op.predicate]
    return []


def _has_call(e: Expr) -> bool:
    return any(isinstance(n, CatalogCall) for n in e.walk())


class _Lifter:
    """Replaces catalog calls by hidden columns, remembering each call's level (1 + its args')."""

    def __init__(self, counter: Iterator[int], binder: Callable[[CatalogCall], BoundCall]) -> None:
        self.counter, self.binder = counter, binder
        self.levels: dict[str, int] = {}
        self.calls: dict[str, BoundCall] = {}

    def lift(self, expr: Expr) -> Expr:
        return expr.replace(self._node)

    def _node(self, node: Expr) -> Expr | None:
        if not isinstance(node, CatalogCall):
            return None
        args = tuple(self.lift(a) for a in node.args)
        kwargs = {k: self.lift(v) for k, v in node.kwargs.items()}
        inner = [self.levels[c] for a in (*args, *kwargs.values()) for c in a.columns() if c in self.levels]
        name = f"__chalk_call_{next(self.counter)}"
        self.levels[name] = 1 + max(inner, default=0)
        self.calls[name] = self.binder(CatalogCall(node.function_name, args, kwargs, node.output_type,
                                                   node.on_error, node._scope))
        return Column(name)

    def stages(self) -> list[dict[str, BoundCall]]:
        by_level: dict[int, dict[str, BoundCall]] = {}
        for name, level in self.levels.items():
            by_level.setdefault(level, {})[name] = self.calls[name]
        return [by_level[k] for k in sorted(by_level)]


def _project(batch: pa.RecordBatch, columns: list[tuple[str, Expr]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([e.evaluate(batch) for _, e in columns], names=[n for n, _ in columns])


def _with_columns(batch: pa.RecordBatch, columns: list[tuple[str, Expr]], keep: list[str]) -> pa.RecordBatch:
    new = {n: e.evaluate(batch) for n, e in columns}
    names = keep + [n for n in new if n not in keep]
    arrays = [new[n] if n in new else batch.column(n) for n in names]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _filter(batch: pa.RecordBatch, predicate: Expr, keep: list[str]) -> pa.RecordBatch:
    mask = predicate.evaluate(batch)
    if not pa.types.is_boolean(mask.type):
        raise TypeError(f"filter({predicate!r}) must be a boolean expression, it is {mask.type}")
    out = batch.filter(mask)  # a null predicate drops the row, as SQL's WHERE does
    return out if out.schema.names == keep else out.select(keep)


def _limit(stream: Stream, n: int) -> Stream:
    left = n
    try:
        for batch in stream:
            if batch.num_rows >= left:  # limit(0) still yields one empty batch: the schema
                yield batch.slice(0, left)
                return
            left -= batch.num_rows
            yield batch
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # stops the scan and cancels calls in flight upstream


def _map(stream: Stream, fn: Callable[[pa.RecordBatch], pa.RecordBatch]) -> Stream:
    try:
        for batch in stream:
            yield fn(batch)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


class Plan:
    """One run of a DataFrame's operations (planning binds functions: see the module docstring)."""

    def __init__(self, source: Source, ops: tuple[Op, ...]) -> None:
        self.source, self.ops = source, ops
        found: dict[str, RemoteFunction] = {}
        counter = itertools.count()

        def bind(call: CatalogCall) -> BoundCall:
            # Each function is looked up (or registered) once per plan, however many calls name it.
            rf = found.get(call.function_name)
            if rf is None:
                rf = found[call.function_name] = call.resolve()
            return BoundCall.of(call, rf)

        self.steps: list[tuple[Op, list[dict[str, BoundCall]], Expr | list[tuple[str, Expr]] | None]] = []
        for op in ops:
            if any(_has_call(e) for e in _exprs(op)):
                lifter = _Lifter(counter, bind)
                if isinstance(op, Filter):
                    lifted: Expr | list[tuple[str, Expr]] | None = lifter.lift(op.predicate)
                else:
                    assert isinstance(op, (Project, WithColumns))
                    lifted = [(n, lifter.lift(e)) for n, e in op.columns]
                self.steps.append((op, lifter.stages(), lifted))
            else:
                self.steps.append((op, [], None))
        self.call_stages: list[CallStage] = []
        # The dry run: names checked, output schema known, nothing sent.
        empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in source.schema], schema=source.schema)
        out = list(self._chain(iter([empty]), self.steps, dry=True))
        self.schema: pa.Schema = out[0].schema if out else source.schema

    # -- running -----------------------------------------------------------------------------------

    def pushdown(self) -> tuple[list[str] | None, pc.Expression | None, int]:
        """The scan's columns, its filter, and how many leading steps the filter replaces."""
        pushed, skip = None, 0
        for op, stages, _ in self.steps:
            if not isinstance(op, Filter) or stages:
                break
            pushed = op.predicate.to_pc() if pushed is None else pushed & op.predicate.to_pc()
            skip += 1
        columns = None
        refs: set[str] = set()
        for op in self.ops:
            for e in _exprs(op):
                refs |= e.columns()
            if isinstance(op, Project):
                columns = [n for n in self.source.schema.names if n in refs]
                break
        return columns, pushed, skip

    def batches(self) -> Stream:
        """The output batches, in order; closing the iterator stops the scan and cancels calls in flight."""
        columns, pushed, skip = self.pushdown()
        return self._chain(self.source.batches(columns, pushed), self.steps[skip:], dry=False)

    def report(self) -> None:
        for stage in self.call_stages:
            stage.report()

    def _chain(self, stream: Stream, steps: list, dry: bool) -> Stream:
        for op, stages, lifted in steps:
            for calls in stages:
                stage = CallStage(calls)
                if not dry:
                    self.call_stages.append(stage)
                stream = stage.run(stream)
            stream = self._apply(stream, op, lifted)
        return stream

    def _apply(self, stream: Stream, op: Op, lifted: Expr | list[tuple[str, Expr]] | None) -> Stream:
        if isinstance(op, Limit):
            return _limit(stream, op.n)
        if isinstance(op, Project):
            columns = lifted if isinstance(lifted, list) else list(op.columns)
            return _map(stream, lambda b: _project(b, columns))
        if isinstance(op, WithColumns):
            columns = lifted if isinstance(lifted, list) else list(op.columns)
            return _map(stream, lambda b: _with_columns(b, columns, _visible(b)))
        predicate = lifted if isinstance(lifted, Expr) else op.predicate
        return _map(stream, lambda b: _filter(b, predicate, _visible(b)))


def _visible(batch: pa.RecordBatch) -> list[str]:
    return [n for n in batch.schema.names if not n.startswith("__chalk_call_")]
