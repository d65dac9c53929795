"""``F.catalog_call``: a deployed function as a column expression, and how its call is bound.

    from chalkcompute import DataFrame, F, _

    df.project({"id": _.id, "entities": F.catalog_call("extract_entities", _.memo)})
    df.with_columns({"vec": F.catalog_call("Embedder.embed", text=_.memo)})

The function is found when the query starts, before any row is sent: a
function decorated in this process and not yet registered is registered
first (so a script needs no ``wait_ready()``); otherwise the latest version
deployed under that name (``"Class.method"`` for a class's method). The
arguments are bound to its parameters then: too many, too few or an unknown
keyword is a ``FunctionSignatureError`` showing the signature. A batched
function taking one ``pyarrow.Table`` gets its table's columns from the
keyword arguments (``F.catalog_call("score", text=_.memo)``) or plain columns
by their own names (``F.catalog_call("score", _.text)``).

A null for a parameter that is not ``Optional`` fails that row without
sending it; this is known for a function defined in this process (its hints),
not for one found by name alone (its schema says every field may be null), whose
handler then gets ``None``.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from chalkcompute._bridge import run_sync
from chalkcompute._serialization import schema_from_bytes
from chalkcompute.dataframe.expr import Column, Expr, as_expr, to_arrow_type
from chalkcompute.exceptions import FunctionSignatureError, NotSupportedError
from chalkcompute.functions import RemoteFunction

__all__ = ["BoundCall", "CatalogCall", "F", "ON_ERROR"]

ON_ERROR = ("raise", "null")


class CatalogCall(Expr):
    """``F.catalog_call(...)``: the value of a deployed function for each row (see the module docstring)."""

    __slots__ = ("function_name", "args", "kwargs", "output_type", "on_error", "_scope")

    def __init__(self, function_name: str, args: tuple[Expr, ...], kwargs: dict[str, Expr],
                 output_type: pa.DataType | None, on_error: str, scope: dict[str, Any]) -> None:
        self.function_name, self.args, self.kwargs = function_name, args, kwargs
        self.output_type, self.on_error, self._scope = output_type, on_error, scope

    def children(self) -> tuple[Expr, ...]:
        return (*self.args, *self.kwargs.values())

    def replace(self, fn: Callable[[Expr], Expr | None]) -> Expr:
        new = fn(self)
        return new if new is not None else CatalogCall(self.function_name, tuple(a.replace(fn) for a in self.args),
                                       {k: v.replace(fn) for k, v in self.kwargs.items()},
                                       self.output_type, self.on_error, self._scope)

    def _eval(self, batch: pa.RecordBatch) -> pa.Array:
        raise TypeError(f"{self!r} runs only inside a DataFrame query (.project, .with_columns, .filter)")

    def to_pc(self) -> Any:
        raise TypeError(f"{self!r} cannot be pushed into a scan")

    def __repr__(self) -> str:
        inner = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"F.catalog_call({', '.join([repr(self.function_name), *inner])})"

    # -- binding ---------------------------------------------------------------------------------

    def resolve(self) -> RemoteFunction:
        """The function, registered (a local one first) and hydrated; blocks. Bind with :meth:`BoundCall.of`."""
        rf = self._find_local()
        if rf is not None:
            run_sync(rf._register())
            return rf
        return RemoteFunction.from_name(self.function_name)  # FunctionNotFoundError names it

    def _find_local(self) -> RemoteFunction | None:
        """A handle made in this process: the decorated ones not registered yet, or one in the
        caller's module (which knows its hints, so a null for a non-Optional parameter is caught)."""
        from chalkcompute.functions import _pending

        name = self.function_name
        for rf in list(_pending):
            if rf.name == name:
                return rf
        for value in list(self._scope.values()):
            if isinstance(value, RemoteFunction) and value.name == name and value.fn is not None:
                return value
            methods = getattr(value, "_methods", None) if hasattr(type(value), "_chalk_remote_ref") else None
            if isinstance(methods, dict):  # a RemoteClass: its methods are "Class.method"
                for m in methods.values():
                    if isinstance(m, RemoteFunction) and m.name == name and m.fn is not None:
                        return m
        return None


@dataclass
class BoundCall:
    """A catalog call bound to its function: one argument expression per parameter, in order."""

    call: CatalogCall
    rf: RemoteFunction
    parameters: list[str]
    arguments: list[Expr]
    input_types: list[pa.DataType | None]   # None: inferred from the values
    nullable: list[bool]
    output_type: pa.DataType
    table_fields: list[str] | None = None    # a Table handler: arguments are the struct's fields, in order

    @property
    def name(self) -> str:
        return self.call.function_name

    @classmethod
    def of(cls, call: CatalogCall, rf: RemoteFunction) -> BoundCall:
        name = call.function_name
        if rf.is_generator:
            raise NotSupportedError(
                f"F.catalog_call({name!r}): {name} is a generator function; a DataFrame column takes one value "
                "per row, so call a function that returns a value")
        codec = rf.codec
        assert codec is not None  # registered or hydrated
        table = getattr(codec, "table_parameter", None)
        if table is not None:
            return cls._of_table(call, rf, table)
        params = list(codec.parameter_names)
        arguments = _bind(call, rf, params)
        in_schema = schema_from_bytes(codec.input_schema_bytes) if codec.input_schema_bytes else None
        input_types: list[pa.DataType | None] = [in_schema.field(p).type if in_schema is not None else None
                                                 for p in params]
        if in_schema is None and rf.fn is not None:  # some hinted, some inferred: the hinted ones' types
            nodes = codec._in.nodes
            input_types = [n.type if n is not None else None for n in nodes]
        out = None
        if codec.output_schema_bytes:
            out = schema_from_bytes(codec.output_schema_bytes).field(0).type
        if out is None and call.output_type is None:
            raise FunctionSignatureError(
                f"F.catalog_call({name!r}): {name} has no return type hint, so the column's type is unknown: "
                f"pass output_type= (e.g. output_type=pa.string()) or annotate its return")
        output_type = call.output_type or out
        assert output_type is not None
        return cls(call, rf, params, arguments, input_types, _nullable(rf, params), output_type)

    @classmethod
    def _of_table(cls, call: CatalogCall, rf: RemoteFunction, table: str) -> BoundCall:
        """A batched function taking one ``pyarrow.Table``: the arguments are its columns, named by
        keyword (``text=_.memo``) or, for a plain column, by the column's own name (``_.text``)."""
        name = call.function_name
        fields: list[str] = []
        for a in call.args:
            if not isinstance(a, Column):
                raise FunctionSignatureError(
                    f"F.catalog_call({name!r}): {name} takes a pyarrow.Table; its columns are named by keyword "
                    f"(e.g. text=_.memo) or are plain columns (_.text), got {a!r} by position")
            fields.append(a.name)
        fields += list(call.kwargs)
        if not fields or len(set(fields)) != len(fields):
            raise FunctionSignatureError(
                f"F.catalog_call({name!r}): {name}({table}: pyarrow.Table) needs its table's columns, each named "
                f"once, e.g. F.catalog_call({name!r}, text=_.memo); got {fields}")
        codec = rf.codec
        assert codec is not None
        out = schema_from_bytes(codec.output_schema_bytes).field(0).type if codec.output_schema_bytes else None
        if out is None and call.output_type is None:
            raise FunctionSignatureError(
                f"F.catalog_call({name!r}): {name} has no element type in its return hint (list[T]), so the "
                "column's type is unknown: pass output_type=")
        output_type = call.output_type or out
        assert output_type is not None
        return cls(call, rf, [table], [*call.args, *call.kwargs.values()], [None], [True], output_type,
                   table_fields=fields)


def _signature(rf: RemoteFunction, params: list[str]) -> str:
    if rf.fn is not None:
        try:  # hints as types (df(x: int)), not the strings of `from __future__ import annotations`
            return f"{rf.name}{inspect.signature(rf.fn, eval_str=True)}"
        except Exception:  # noqa: BLE001 - an unresolvable hint: show it as written
            return f"{rf.name}{rf.signature}"
    return f"{rf.name}({', '.join(params)})"


def _bind(call: CatalogCall, rf: RemoteFunction, params: list[str]) -> list[Expr]:
    """One expression per parameter, defaults filled in; errors show the signature."""
    name = call.function_name
    try:
        if rf.signature is not None:
            bound = rf.signature.bind(*call.args, **call.kwargs)
            bound.apply_defaults()
            given = dict(bound.arguments)
        else:
            if len(call.args) > len(params):
                raise TypeError(f"takes {len(params)} argument(s) but {len(call.args)} were given")
            given = dict(zip(params, call.args, strict=False))
            for k, v in call.kwargs.items():
                if k not in params:
                    raise TypeError(f"got an unexpected keyword argument {k!r}")
                if k in given:
                    raise TypeError(f"got multiple values for argument {k!r}")
                given[k] = v
            missing = [p for p in params if p not in given]
            if missing:
                raise TypeError(f"missing argument(s) {missing}")
    except TypeError as exc:
        raise FunctionSignatureError(
            f"F.catalog_call({name!r}): {exc}; the function's signature is {_signature(rf, params)}") from None
    return [as_expr(given[p]) for p in params]


def _nullable(rf: RemoteFunction, params: list[str]) -> list[bool]:
    """Which parameters take None: Optional/Any/unhinted ones, or with a None default. Without the
    function (a handle by name) the schema cannot tell, so all do and the function decides."""
    fn = rf.fn
    if fn is None or rf.signature is None:
        return [True] * len(params)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - the codec resolved them already; be lenient here
        return [True] * len(params)
    batched = bool(rf._opts is not None and rf._opts.batched)
    out = []
    for p in params:
        hint = hints.get(p, Any)
        if batched and typing.get_origin(hint) is list and typing.get_args(hint):
            hint = typing.get_args(hint)[0]  # a batched handler's list[T]: the item is T
        default = rf.signature.parameters[p].default
        out.append(default is None or _takes_none(hint))
    return out


def _takes_none(hint: Any) -> bool:
    if hint is Any or hint is object or hint is None or hint is type(None):
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_takes_none(a) for a in typing.get_args(hint))
    return False


class _F:
    """``F``: the functions a DataFrame expression can call."""

    __slots__ = ()

    @staticmethod
    def catalog_call(function_name: str, *args: Any, output_type: Any = None, on_error: str = "raise",
                     **kwargs: Any) -> CatalogCall:
        """The deployed function ``function_name`` (``"Class.method"`` for a method) called once per
        row with the row's values of ``args`` / ``kwargs`` (expressions or literals) as its arguments.

        ``output_type``: the column's Arrow type (needed when the function has no return hint).
        ``on_error="null"``: a failed row gets null and a warning on stderr sums the failures at the
        end; ``"raise"`` (default): the first failed row stops the query with a ``RowError``.

        Example::

            df.project({"entities": F.catalog_call("extract_entities", _.memo)})
        """
        if not isinstance(function_name, str) or not function_name:
            raise TypeError(f"F.catalog_call() needs the function's name as a str, got {function_name!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"F.catalog_call(on_error=...) must be 'raise' or 'null', got {on_error!r}")
        out = None if output_type is None else to_arrow_type(output_type, "F.catalog_call(output_type=...)")
        caller = sys._getframe(1)
        return CatalogCall(function_name, tuple(as_expr(a) for a in args),
                           {k: as_expr(v) for k, v in kwargs.items()}, out, on_error, caller.f_globals)

    def __repr__(self) -> str:
        return "F"


F = _F()
