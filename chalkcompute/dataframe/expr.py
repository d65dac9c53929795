"""Column expressions for :class:`~chalkcompute.dataframe.DataFrame`: ``_`` and what it builds.

``_.memo`` (or ``_["a column"]``) names a column; Python operators combine
columns and literals into a tree that is evaluated batch by batch with
``pyarrow.compute`` kernels (and pushed down into a parquet scan as a
``pyarrow.compute.Expression`` where it can be):

>>> import pyarrow as pa
>>> batch = pa.record_batch({"a": [1, 2, None], "b": [10, 20, 30]})
>>> (_.a * 2 + _.b).evaluate(batch).to_pylist()
[12, 24, None]
>>> ((_.a > 1) | _.a.is_null()).evaluate(batch).to_pylist()
[False, True, True]
>>> _["b"].cast("float64").evaluate(batch).type
DataType(double)

An expression is immutable and never evaluated on its own: a DataFrame
evaluates it as it streams (``.project``, ``.with_columns``, ``.filter``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from chalkcompute.dataframe.errors import ColumnNotFoundError

__all__ = ["Column", "ColumnFactory", "Expr", "Func", "Literal", "as_expr", "to_arrow_type", "_"]

# The same checked kernels pyarrow.compute.Expression's own operators use: an overflow
# raises instead of wrapping around.
_BINARY = {
    "+": "add_checked", "-": "subtract_checked", "*": "multiply_checked", "/": "divide_checked",
    "**": "power_checked", "==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
    ">": "greater", ">=": "greater_equal", "&": "and_kleene", "|": "or_kleene",
}
_PY_TYPES: dict[Any, pa.DataType] = {int: pa.int64(), float: pa.float64(), str: pa.string(),
                                     bytes: pa.binary(), bool: pa.bool_()}


def to_arrow_type(t: Any, what: str = "type") -> pa.DataType:
    """An Arrow type from an Arrow type, a Python scalar type or a type name (``"int32"``)."""
    if isinstance(t, pa.DataType):
        return t
    if t in _PY_TYPES:
        return _PY_TYPES[t]
    if isinstance(t, str):
        try:
            return pa.type_for_alias(t)
        except (ValueError, KeyError):
            pass
    raise TypeError(f"{what} must be a pyarrow.DataType, a Python type (int, float, str, bytes, bool) "
                    f"or an Arrow type name such as 'int64', got {t!r}")


class Expr:
    """A node of a column expression (see the module docstring)."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # == builds an expression, so no hashing

    # -- building ------------------------------------------------------------------------------

    def _bin(self, op: str, other: Any, reverse: bool = False) -> Func:
        other = as_expr(other)
        left, right = (other, self) if reverse else (self, other)
        return Func(_BINARY[op], (left, right), op)

    def __add__(self, o: Any) -> Func: return self._bin("+", o)
    def __radd__(self, o: Any) -> Func: return self._bin("+", o, True)
    def __sub__(self, o: Any) -> Func: return self._bin("-", o)
    def __rsub__(self, o: Any) -> Func: return self._bin("-", o, True)
    def __mul__(self, o: Any) -> Func: return self._bin("*", o)
    def __rmul__(self, o: Any) -> Func: return self._bin("*", o, True)
    def __truediv__(self, o: Any) -> Func: return self._bin("/", o)
    def __rtruediv__(self, o: Any) -> Func: return self._bin("/", o, True)
    def __pow__(self, o: Any) -> Func: return self._bin("**", o)
    def __rpow__(self, o: Any) -> Func: return self._bin("**", o, True)
    def __eq__(self, o: Any) -> Func: return self._bin("==", o)  # type: ignore[override]
    def __ne__(self, o: Any) -> Func: return self._bin("!=", o)  # type: ignore[override]
    def __lt__(self, o: Any) -> Func: return self._bin("<", o)
    def __le__(self, o: Any) -> Func: return self._bin("<=", o)
    def __gt__(self, o: Any) -> Func: return self._bin(">", o)
    def __ge__(self, o: Any) -> Func: return self._bin(">=", o)
    def __and__(self, o: Any) -> Func: return self._bin("&", o)
    def __rand__(self, o: Any) -> Func: return self._bin("&", o, True)
    def __or__(self, o: Any) -> Func: return self._bin("|", o)
    def __ror__(self, o: Any) -> Func: return self._bin("|", o, True)
    def __neg__(self) -> Func: return Func("negate_checked", (self,), "-")
    def __invert__(self) -> Func: return Func("invert", (self,), "~")

    def __bool__(self) -> bool:
        # `a and b`, `not a`, `1 < _.x < 3` would silently drop half the expression.
        raise TypeError(f"the truth value of an expression ({self!r}) is not known until it is evaluated: "
                        "use & | ~ instead of and / or / not, and (a < x) & (x < b) for ranges")

    def is_null(self) -> Func:
        """True where the value is null."""
        return Func("is_null", (self,), "is_null")

    def is_valid(self) -> Func:
        """True where the value is not null."""
        return Func("is_valid", (self,), "is_valid")

    def cast(self, type: Any) -> Cast:
        """The value as another Arrow type: ``_.amount.cast("float64")``, ``_.id.cast(str)``."""
        return Cast(self, to_arrow_type(type, "cast() type"))

    # -- using ---------------------------------------------------------------------------------

    def children(self) -> tuple[Expr, ...]:
        return ()

    def walk(self) -> Iterator[Expr]:
        """This node and every node below it, parents first."""
        yield self
        for c in self.children():
            yield from c.walk()

    def columns(self) -> set[str]:
        """The names of the columns this expression reads."""
        return {n.name for n in self.walk() if isinstance(n, Column)}

    def replace(self, fn: Callable[[Expr], Expr | None]) -> Expr:
        """A copy with each node for which ``fn`` returns an expression replaced by it."""
        new = fn(self)
        return self if new is None else new

    def evaluate(self, batch: pa.RecordBatch) -> pa.Array:
        """The value of this expression for each row of ``batch``."""
        value = self._eval(batch)
        if isinstance(value, pa.Scalar):  # a literal, or an expression of literals only
            return pc.fill_null(pa.nulls(batch.num_rows, value.type), value) if value.is_valid \
                else pa.nulls(batch.num_rows, value.type)
        if isinstance(value, pa.ChunkedArray):
            return value.combine_chunks()
        return value

    def _eval(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        raise NotImplementedError

    def to_pc(self) -> pc.Expression:
        """The same expression as a ``pyarrow.compute.Expression`` (for a dataset scan's filter)."""
        raise NotImplementedError


class Column(Expr):
    """A column by name: ``_.memo`` or ``_["a column"]``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a column name must be a non-empty str, got {name!r}")
        self.name = name

    def _eval(self, batch: pa.RecordBatch) -> pa.Array:
        try:
            return batch.column(self.name)
        except KeyError:
            raise ColumnNotFoundError(self.name, batch.schema.names) from None

    def to_pc(self) -> pc.Expression:
        return pc.field(self.name)

    def __repr__(self) -> str:
        return f"_.{self.name}" if self.name.isidentifier() else f"_[{self.name!r}]"


class Literal(Expr):
    """A constant, broadcast to every row: ``_.x + 1`` makes ``1`` one."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        try:
            self.value = value if isinstance(value, pa.Scalar) else pa.scalar(value)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise TypeError(f"cannot use {value!r} ({type(value).__name__}) in an expression: {exc}") from None

    def _eval(self, batch: pa.RecordBatch) -> pa.Scalar:
        return self.value

    def to_pc(self) -> pc.Expression:
        return pc.scalar(self.value)

    def __repr__(self) -> str:
        return repr(self.value.as_py())


class Func(Expr):
    """A ``pyarrow.compute`` kernel over sub-expressions (what the operators build)."""

    __slots__ = ("function", "args", "symbol")

    def __init__(self, function: str, args: tuple[Expr, ...], symbol: str) -> None:
        self.function, self.args, self.symbol = function, args, symbol

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def replace(self, fn: Callable[[Expr], Expr | None]) -> Expr:
        new = fn(self)
        return new if new is not None else Func(self.function, tuple(a.replace(fn) for a in self.args), self.symbol)

    def _eval(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        args = [a._eval(batch) for a in self.args]
        try:
            return pc.call_function(self.function, args)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise type(exc)(f"cannot evaluate {self!r}: {exc}") from None

    def to_pc(self) -> pc.Expression:
        return pc.Expression._call(self.function, [a.to_pc() for a in self.args])

    def __repr__(self) -> str:
        if len(self.args) == 2:
            return f"({self.args[0]!r} {self.symbol} {self.args[1]!r})"
        if self.symbol in ("-", "~"):
            return f"{self.symbol}{self.args[0]!r}"
        return f"{self.args[0]!r}.{self.symbol}()"


class Cast(Expr):
    """``expr.cast(type)``: a safe cast (an overflow or a lossy cast raises)."""

    __slots__ = ("arg", "type")

    def __init__(self, arg: Expr, type: pa.DataType) -> None:
        self.arg, self.type = arg, type

    def children(self) -> tuple[Expr, ...]:
        return (self.arg,)

    def replace(self, fn: Callable[[Expr], Expr | None]) -> Expr:
        new = fn(self)
        return new if new is not None else Cast(self.arg.replace(fn), self.type)

    def _eval(self, batch: pa.RecordBatch) -> pa.Array | pa.Scalar:
        value = self.arg._eval(batch)
        try:
            return value.cast(self.type)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise type(exc)(f"cannot evaluate {self!r}: {exc}") from None

    def to_pc(self) -> pc.Expression:
        return self.arg.to_pc().cast(self.type)

    def __repr__(self) -> str:
        return f"{self.arg!r}.cast({self.type})"


def as_expr(value: Any) -> Expr:
    """An expression as is; anything else as a literal."""
    return value if isinstance(value, Expr) else Literal(value)


class ColumnFactory:
    """``_``: ``_.name`` and ``_["any name"]`` are :class:`Column` expressions."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Column:
        if name.startswith("__") and name.endswith("__"):  # copy, pickle, IPython probe these
            raise AttributeError(name)
        return Column(name)

    def __getitem__(self, name: str) -> Column:
        return Column(name)

    def __repr__(self) -> str:
        return "_"


_ = ColumnFactory()
