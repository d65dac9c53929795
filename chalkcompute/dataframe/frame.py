"""``DataFrame``: a lazy, immutable query over parquet files or Arrow data, run in the caller's process.

    from chalkcompute import DataFrame, F, _

    results = (
        DataFrame.scan("transactions.parquet")
        .project({
            "transaction_id": _.transaction_id,
            "memo": _.memo,
            "entities": F.catalog_call("extract_entities", _.memo),
        })
    )
    results.to_arrow()                     # runs now: rows stream through the function, in order
    results.write_parquet("out.parquet")   # streamed batch by batch

Every operation returns a new DataFrame (the original is untouched) and
nothing runs until the frame is consumed: ``to_arrow()``, ``to_pandas()``,
``iter_batches()``, ``write_parquet(path)``, ``count()``. Paths are relative
to the caller's working directory and the caller's memory holds a few
batches at a time, never the whole file.

>>> from chalkcompute import DataFrame, _
>>> df = DataFrame.from_dict({"a": [1, 2, 3], "b": ["x", "y", "z"]})
>>> df.filter(_.a > 1).with_columns({"c": _.a * 10}).to_arrow().to_pydict()
{'a': [2, 3], 'b': ['y', 'z'], 'c': [20, 30]}
>>> df.select("b").limit(1).to_arrow().to_pydict()
{'b': ['x']}
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chalkcompute.dataframe.expr import Column, Expr, as_expr
from chalkcompute.dataframe.plan import Filter, Limit, Op, Plan, Project, WithColumns
from chalkcompute.dataframe.progress import RowProgress
from chalkcompute.dataframe.source import Source

__all__ = ["DataFrame", "PANDAS_HINT"]

PANDAS_HINT = "pip install 'chalkd[pandas]' (or pip install pandas)"


def _require_pandas(what: str) -> Any:
    try:
        import pandas  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ImportError(f"{what} needs pandas, which is not installed: {PANDAS_HINT}") from None
    return pandas


def _columns(arg: Any, what: str) -> tuple[tuple[str, Expr], ...]:
    if not isinstance(arg, Mapping) or not arg:
        raise TypeError(f"{what} takes a non-empty dict of column name -> expression, got {arg!r}")
    for name in arg:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what}: column names must be non-empty str, got {name!r}")
    return tuple((name, as_expr(e)) for name, e in arg.items())


class DataFrame:
    """A lazy query (see the module docstring). Build one with :meth:`scan`, :meth:`from_arrow`,
    :meth:`from_pandas` or :meth:`from_dict`."""

    __slots__ = ("_source", "_ops")

    def __init__(self, source: Source, ops: tuple[Op, ...] = ()) -> None:
        self._source, self._ops = source, ops

    # -- sources ------------------------------------------------------------------------------------

    @classmethod
    def scan(cls, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> DataFrame:
        """Parquet data: a file, a directory (every data file under it), a glob (``"data/*.parquet"``)
        or a list of these, read in order, batch by batch."""
        return cls(Source.scan(path_or_paths))

    @classmethod
    def from_arrow(cls, table_or_batches: Any) -> DataFrame:
        """A ``pyarrow.Table``, a ``RecordBatch``, a list of either, or a ``RecordBatchReader`` (read once)."""
        return cls(Source.of_arrow(table_or_batches))

    @classmethod
    def from_pandas(cls, df: Any) -> DataFrame:
        """A ``pandas.DataFrame`` (its index is dropped); needs pandas."""
        pandas = _require_pandas("DataFrame.from_pandas")
        if not isinstance(df, pandas.DataFrame):
            raise TypeError(f"DataFrame.from_pandas() takes a pandas.DataFrame, got {type(df).__name__}")
        return cls(Source.of_arrow(pa.Table.from_pandas(df, preserve_index=False)))

    @classmethod
    def from_dict(cls, columns: Mapping[str, Any]) -> DataFrame:
        """Columns by name: lists or Arrow arrays of equal length."""
        if not isinstance(columns, Mapping):
            raise TypeError(f"DataFrame.from_dict() takes a dict of column name -> values, got {columns!r}")
        try:
            table = pa.table(dict(columns))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ValueError(f"DataFrame.from_dict(): {exc}") from None
        return cls(Source.of_arrow(table))

    # -- operations (each returns a new DataFrame) -----------------------------------------------------

    def _then(self, op: Op) -> DataFrame:
        return DataFrame(self._source, (*self._ops, op))

    def project(self, columns: Mapping[str, Any]) -> DataFrame:
        """Exactly these columns, in this order: ``{name: expression}``."""
        return self._then(Project(_columns(columns, "project()")))

    def with_columns(self, columns: Mapping[str, Any]) -> DataFrame:
        """Every column, plus these (a name that exists is replaced in place)."""
        return self._then(WithColumns(_columns(columns, "with_columns()")))

    def select(self, *names: str) -> DataFrame:
        """Only the named columns, in this order."""
        if not names or not all(isinstance(n, str) and n for n in names):
            raise TypeError(f"select() takes one or more column names, got {names!r}")
        return self._then(Project(tuple((n, Column(n)) for n in names)))

    def filter(self, predicate: Expr) -> DataFrame:
        """The rows where ``predicate`` is true (null counts as false)."""
        if not isinstance(predicate, Expr):
            raise TypeError(f"filter() takes an expression such as _.amount > 0, got {predicate!r}")
        return self._then(Filter(predicate))

    def limit(self, n: int) -> DataFrame:
        """The first ``n`` rows; the scan (and any function call) stops once they are out."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"limit() takes a row count >= 0, got {n!r}")
        return self._then(Limit(n))

    # -- consuming ---------------------------------------------------------------------------------------

    @property
    def schema(self) -> pa.Schema:
        """The output schema (binds any F.catalog_call to its function; sends no row)."""
        return Plan(self._source, self._ops).schema

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """The output, batch by batch, in order. Planning (function lookup, column checks) happens
        before the first batch; stopping early stops the scan and cancels calls in flight."""
        plan = Plan(self._source, self._ops)
        return _run(plan)

    def to_arrow(self) -> pa.Table:
        """The whole output as one ``pyarrow.Table``."""
        plan = Plan(self._source, self._ops)
        with RowProgress(self._label()) as progress:
            batches = []
            for batch in _run(plan):
                batches.append(batch)
                progress.advance(batch.num_rows)
        return pa.Table.from_batches(batches, schema=plan.schema)

    def to_pandas(self) -> Any:
        """The whole output as a ``pandas.DataFrame``; needs pandas."""
        _require_pandas("DataFrame.to_pandas")
        return self.to_arrow().to_pandas()

    def write_parquet(self, path: str | os.PathLike) -> int:
        """Write the output to one parquet file, batch by batch (the output is never all in memory);
        returns the row count."""
        plan = Plan(self._source, self._ops)
        rows = 0
        with RowProgress(self._label()) as progress, pq.ParquetWriter(os.fspath(path), plan.schema) as writer:
            for batch in _run(plan):
                if batch.num_rows:
                    writer.write_batch(batch)
                rows += batch.num_rows
                progress.advance(batch.num_rows)
        return rows

    def count(self) -> int:
        """The number of output rows (from parquet metadata when no operation needs the rows)."""
        plan = Plan(self._source, self._ops)
        columns, pushed, skip = plan.pushdown()
        if skip == len(plan.steps):  # only filters a scan can apply itself
            known = self._source.count_rows(pushed)
            if known is not None:
                return known
        rows = 0
        with RowProgress(self._label()) as progress:
            for batch in _run(plan):
                rows += batch.num_rows
                progress.advance(batch.num_rows)
        return rows

    def _label(self) -> str:
        return f"DataFrame over {self._source.label}"

    def __repr__(self) -> str:
        ops = " ".join(type(op).__name__.lower() for op in self._ops)
        return f"<DataFrame over {self._source.label}{': ' + ops if ops else ''}>"


def _run(plan: Plan) -> Iterator[pa.RecordBatch]:
    stream = plan.batches()
    try:
        yield from stream
    finally:
        stream.close()  # type: ignore[attr-defined]  # a generator chain: stops the scan, cancels calls
        plan.report()
