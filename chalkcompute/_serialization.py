"""Arrow IPC codec for function arguments, results and streamed chunks.

A payload is a pair ``(schema, batch)``: ``schema`` is ``pa.Schema.serialize()``
bytes and ``batch`` a bare record-batch IPC message, read back with
``pa.ipc.read_record_batch(pa.py_buffer(batch), schema)``. Arguments travel as
one row with a column per parameter; results as column ``"result"`` (one row,
or N rows when stream chunks are coalesced).

Types come from the function's hints (``int`` -> int64, ``list[T]`` -> list,
``dict[K, V]`` -> map, dataclasses and TypedDicts -> struct, ...); ``Any`` or a
missing hint infers the type from the value at call time. Field metadata under
:data:`META_KEY` records what Python type to rebuild (``b"tuple"``,
``b"dataclass:mod.Qual"``), so a decoder holding only the schema bytes still
returns tuples, and dicts for maps and structs:

>>> def add(x: int, y: int) -> int: ...
>>> codec = FunctionCodec.for_function(add)
>>> schema, batch = codec.encode_args({"x": 1, "y": 2})
>>> codec.decode_args(schema, batch)
{'x': 1, 'y': 2}
>>> remote = FunctionCodec.from_schemas(["x", "y"], codec.input_schema_bytes,
...                                     codec.output_schema_bytes)
>>> remote.decode_results(*codec.encode_result(3))
[3]

A batched handler (``def f(xs: list[int]) -> list[str]``) is called with one
item at a time; ``FunctionCodec.for_function(f, batched=True)`` builds the
per-item codec its callers and its worker share (see :class:`BatchCodec`).
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import datetime
import decimal
import inspect
import operator
import types
import typing
from typing import Any

import pyarrow as pa

from chalkcompute._fixed import FixedLayout
from chalkcompute.exceptions import FunctionSignatureError, SerializationError

__all__ = ["BatchCodec", "FunctionCodec", "META_KEY", "schema_from_bytes", "schema_to_bytes"]

META_KEY = b"chalk.py"
_TUPLE = {META_KEY: b"tuple"}
_CACHE_LIMIT = 1024  # entries per cache; inferred types can mint schemas without bound

_SCALARS: dict[Any, pa.DataType] = {
    int: pa.int64(), float: pa.float64(), str: pa.string(), bytes: pa.binary(),
    bool: pa.bool_(), type(None): pa.null(), datetime.datetime: pa.timestamp("us"),
    datetime.date: pa.date32(), decimal.Decimal: pa.decimal128(38, 18),
}
_PYTYPES = {t: py for py, t in _SCALARS.items()}
# Hints that say nothing about the Arrow shape: infer from the value instead.
_INFERRED = (Any, object, list, dict, tuple)
_LISTS = (list, abc.Sequence, abc.MutableSequence)
_MAPS = (dict, abc.Mapping, abc.MutableMapping)
_ITERATORS = (abc.Iterator, abc.Iterable, abc.Generator,
              abc.AsyncIterator, abc.AsyncIterable, abc.AsyncGenerator)

# Keyed by id() but holding the schema itself, so an id is never reused while cached.
_schema_bytes_cache: dict[int, tuple[pa.Schema, bytes]] = {}
_schema_cache: dict[bytes, pa.Schema] = {}


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()  # crude, but a hot working set refills it at once
    cache[key] = value


def schema_to_bytes(schema: pa.Schema) -> bytes:
    """The IPC bytes of ``schema``, serialized once per schema object."""
    hit = _schema_bytes_cache.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    data = schema.serialize().to_pybytes()
    _remember(_schema_bytes_cache, id(schema), (schema, data))
    return data


def schema_from_bytes(data: bytes) -> pa.Schema:
    """Parse IPC schema bytes, once per distinct bytes value."""
    schema = _schema_cache.get(data)
    if schema is None:
        if not data:
            raise SerializationError("empty Arrow schema: the payload carries no schema")
        try:
            schema = pa.ipc.read_schema(pa.py_buffer(data))
        except (pa.ArrowException, ValueError) as e:
            raise SerializationError(f"malformed Arrow schema: {e}") from None
        _remember(_schema_cache, bytes(data), schema)
        _remember(_schema_bytes_cache, id(schema), (schema, bytes(data)))
    return schema


class _Unsupported(Exception):
    """A hint (possibly nested) with no Arrow shape; turned into SerializationError."""


def _name(hint) -> str:
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _ident(v):
    return v


def _fields_of(v, cls=None):
    """A getter for the fields of a mapping or a dataclass instance; ``cls`` names the hint."""
    if isinstance(v, abc.Mapping):
        return v.get
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # any dataclass: duck typing
        return lambda n: getattr(v, n, None)
    raise TypeError(f"expected {_name(cls) if cls else 'a mapping'}, got {type(v).__name__}")


class _Node:
    """The Arrow shape of one Python type and the converters either way.

    ``enc`` turns a Python value into what ``pa.array`` accepts and ``dec``
    turns ``to_pylist()`` output back; either is None where pyarrow's own
    conversion already agrees, which keeps scalars and plain lists free.
    """

    __slots__ = ("kind", "type", "meta", "children", "cls", "required", "enc", "dec")

    def __init__(self, kind, atype=None, children=(), cls=None, meta=None, required=None):
        self.kind, self.children, self.cls, self.meta = kind, list(children), cls, meta
        self.required = required  # TypedDict keys always present; others dropped when None
        if atype is None:
            atype = self._arrow_type()
        self.type = atype
        self.enc, self.dec = self._compile()

    def field(self, name: str, nullable: bool = True) -> pa.Field:
        return pa.field(name, self.type, nullable, metadata=self.meta)

    def _arrow_type(self) -> pa.DataType:
        ch = self.children
        if self.kind in ("list", "tuple"):
            return pa.list_(ch[0][1].field("item"))
        if self.kind == "map":  # Arrow map keys may not be null
            return pa.map_(ch[0][1].field("key", nullable=False), ch[1][1].field("value"))
        return pa.struct([c.field(n) for n, c in ch])

    def _compile(self) -> tuple[Any, Any]:
        """The (encode, decode) converters of this node's values; None where Arrow's own is right."""
        kind, ch = self.kind, self.children
        enc: Any
        if kind == "scalar":
            return None, None
        if kind in ("list", "tuple"):
            e, d = ch[0][1].enc, ch[0][1].dec
            enc = e and (lambda v: None if v is None else [e(x) for x in v])
            if kind == "list":
                return enc, d and (lambda v: None if v is None else [d(x) for x in v])
            d = d or _ident
            return enc, lambda v: None if v is None else tuple([d(x) for x in v])
        if kind == "map":
            (_, k), (_, i) = ch
            ke, ie, kd, idec = k.enc or _ident, i.enc or _ident, k.dec or _ident, i.dec or _ident
            enc = None
            if k.enc or i.enc:
                def enc_pairs(v: Any) -> Any:
                    if v is None:
                        return None
                    pairs = v.items() if isinstance(v, abc.Mapping) else v
                    return [(ke(a), ie(b)) for a, b in pairs]
                enc = enc_pairs
            # to_pylist() gives maps as (key, value) pairs; always rebuild the dict
            return enc, lambda v: None if v is None else {kd(a): idec(b) for a, b in v}
        encs = [(n, c.enc or _ident) for n, c in ch]
        decs = [(n, c.dec or _ident) for n, c in ch]
        any_enc = any(c.enc for _, c in ch)
        any_dec = any(c.dec for _, c in ch)
        if kind == "record":  # fixed-size tuple as struct f0..fN; pyarrow takes tuples
            enc = any_enc and (lambda v: None if v is None else tuple(
                [e(x) for (_, e), x in zip(encs, v, strict=False)]))
            return enc or None, lambda v: None if v is None else tuple(
                [d(x) for (_, d), x in zip(decs, v.values(), strict=False)])
        cls, is_dataclass = self.cls, dataclasses.is_dataclass(self.cls)

        def enc_fields(v: Any) -> Any:
            if v is None:
                return None
            get = _fields_of(v, cls)
            return {n: e(get(n)) for n, e in encs}
        enc = enc_fields if is_dataclass or any_enc else None  # pyarrow takes dicts as they are
        if is_dataclass:
            def dec(v):
                if v is None:
                    return None
                try:
                    return cls(**{n: d(v[n]) for n, d in decs})
                except Exception as e:
                    raise SerializationError(f"cannot rebuild {_name(cls)}: {e}") from None
            return enc, dec
        if self.required is not None:  # TypedDict: keys it may omit come back absent, not None
            req = self.required

            def dec(v):
                if v is None:
                    return None
                out = {n: d(v[n]) for n, d in decs}
                return {n: x for n, x in out.items() if x is not None or n in req}
            return enc, dec
        return enc, (lambda v: None if v is None else {n: d(v[n]) for n, d in decs}) if any_dec else None


def _node_from_hint(hint, seen: tuple = ()) -> _Node | None:
    """The node for a type hint; None where the value's type must be inferred."""
    while hasattr(hint, "__supertype__"):  # typing.NewType
        hint = hint.__supertype__
    if hint is None:
        hint = type(None)
    if any(hint is h for h in _INFERRED):
        return None
    if hint in _SCALARS:
        return _Node("scalar", _SCALARS[hint], cls=hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:  # Optional[X]: every Arrow field is nullable already
            return _node_from_hint(rest[0], seen)
        raise _Unsupported("a union of several types has no single Arrow type")
    if origin in _LISTS or origin is tuple:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            items = [_node_from_hint(a, seen) for a in args]
            if any(k is None for k in items):
                return None
            return _Node("record", children=[(f"f{i}", k) for i, k in enumerate(items)], meta=_TUPLE)
        elem = _node_from_hint(args[0] if args else Any, seen)
        if elem is None:
            return None
        return _Node("tuple", children=[("item", elem)], meta=_TUPLE) if origin is tuple \
            else _Node("list", children=[("item", elem)])
    if origin in _MAPS:
        key, value = (_node_from_hint(a, seen) for a in (args or (Any, Any)))
        if key is None or value is None:
            return None
        return _Node("map", children=[("key", key), ("value", value)])
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or typing.is_typeddict(hint)):
        if hint in seen:
            raise _Unsupported(f"recursive type {_name(hint)} has no fixed Arrow shape")
        hints = typing.get_type_hints(hint)
        if typing.is_typeddict(hint):
            names, tag, required = list(hints), "typeddict", set(hint.__required_keys__)  # type: ignore[attr-defined]
            # Under `from __future__ import annotations` 3.11 misses NotRequired[...]
            # in __required_keys__, so read the markers ourselves.
            for n, h in typing.get_type_hints(hint, include_extras=True).items():
                if typing.get_origin(h) is typing.NotRequired:
                    required.discard(n)
                elif typing.get_origin(h) is typing.Required:
                    required.add(n)
        else:
            names = [f.name for f in dataclasses.fields(hint) if f.init]
            tag, required = "dataclass", None
        kids = []
        for n in names:
            kid = _node_from_hint(hints.get(n, Any), seen + (hint,))
            if kid is None:  # the class could not be rebuilt from an inferred column
                raise _Unsupported(f"field {_name(hint)}.{n} needs a concrete type hint, not Any")
            kids.append((n, kid))
        meta = {META_KEY: f"{tag}:{hint.__module__}.{hint.__qualname__}".encode()}
        return _Node("struct", children=kids, cls=hint, meta=meta, required=required)
    raise _Unsupported(f"no Arrow type for {_name(hint)}")


def _hint_node(hint, where: str) -> _Node | None:
    try:
        return _node_from_hint(hint)
    except _Unsupported as e:
        raise SerializationError(f"{where}: unsupported type hint {_name(hint)} ({e})") from None
    except (NameError, TypeError) as e:  # an unresolved forward reference, an unhashable hint
        raise SerializationError(f"{where}: unsupported type hint {_name(hint)}: {e}") from None


def _node_from_field(field: pa.Field) -> _Node:
    """The node for a schema field, for decoders that lack the function."""
    t, tag = field.type, (field.metadata or {}).get(META_KEY, b"")
    if pa.types.is_map(t):
        kids = [("key", _node_from_field(t.key_field)), ("value", _node_from_field(t.item_field))]
        return _Node("map", t, kids)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _Node("tuple" if tag == b"tuple" else "list", t, [("item", _node_from_field(t.value_field))])
    if pa.types.is_struct(t):
        kids = [(f.name, _node_from_field(f)) for f in t]
        return _Node("record" if tag == b"tuple" else "struct", t, kids)
    return _Node("scalar", t, cls=_PYTYPES.get(t))  # ints keep the strict check and coercion


def _coerce(node: _Node, v):
    """Slow-path normalisation: what Python would accept, Arrow's strictness aside."""
    if v is None:
        return None
    kind, ch = node.kind, node.children
    if kind == "scalar":
        if node.cls is int:  # refuse 1.5 (pyarrow would truncate it); accept bool, 2.0
            if isinstance(v, float) and v.is_integer():
                return int(v)
            try:
                return operator.index(v)
            except TypeError:
                raise TypeError(f"expected int, got {type(v).__name__}") from None
        if node.cls is float and isinstance(v, int):
            return float(v)
        return v
    if kind in ("list", "tuple"):
        if isinstance(v, (str, bytes, abc.Mapping)) or not isinstance(v, abc.Iterable):
            raise TypeError(f"expected a sequence, got {type(v).__name__}")
        return [_coerce(ch[0][1], x) for x in v]
    if kind == "map":
        if not isinstance(v, abc.Mapping):
            raise TypeError(f"expected a mapping, got {type(v).__name__}")
        return [(_coerce(ch[0][1], a), _coerce(ch[1][1], b)) for a, b in v.items()]
    if kind == "record":
        if not isinstance(v, abc.Sequence) or isinstance(v, (str, bytes)) or len(v) != len(ch):
            raise TypeError(f"expected a tuple of {len(ch)} items, got {type(v).__name__}")
        return {n: _coerce(c, x) for (n, c), x in zip(ch, v, strict=False)}
    get = _fields_of(v, node.cls)
    return {n: _coerce(c, get(n)) for n, c in ch}


def _plain(v):
    """Dataclass instances as dicts, so inference can see them as structs."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, abc.Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _check_int(v):
    # Top-level ints must be real ints: pyarrow silently truncates 1.5 and refuses True.
    if type(v) is int or v is None:
        return v
    raise TypeError("needs coercion")


def _converts(node: _Node, v) -> bool:
    try:
        pa.array([_coerce(node, v)], type=node.type)
        return True
    except Exception:  # noqa: BLE001
        return False


def _hinted_array(node: _Node, enc, values: list, what: str) -> pa.Array:
    try:
        return pa.array(values if enc is None else [enc(v) for v in values], type=node.type)
    except Exception:  # noqa: BLE001 - retried below with coercion and a precise message
        pass
    try:
        coerced = [_coerce(node, v) for v in values]
        return pa.array(coerced, type=node.type)
    except (TypeError, ValueError, OverflowError, pa.ArrowException) as e:
        bad = next((v for v in values if not _converts(node, v)), values[0])
        raise SerializationError(
            f"{what}: cannot convert value of type {type(bad).__name__} to Arrow {node.type}: {e}"
        ) from None


class _Defer(Exception):
    """Leave this value to pyarrow's own inference."""


_INFER_SCALARS = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string(),
                  bytes: pa.binary(), type(None): pa.null(), datetime.date: pa.date32()}


def _infer(v) -> pa.DataType:
    """pyarrow's inference for common values, ~50x cheaper: pyarrow's own retries
    ``import pandas`` on every call when pandas is absent (about 100 us)."""
    cls = type(v)
    t = _INFER_SCALARS.get(cls)
    if t is not None:
        return t
    if cls is list or cls is tuple:
        kinds = set(map(type, v))
        if kinds.issubset(_INFER_SCALARS):  # flat lists: no per-element recursion
            return pa.list_(_unify([_INFER_SCALARS[k] for k in kinds]))
        return pa.list_(_unify([_infer(x) for x in v]))
    if cls is dict and all(type(k) is str for k in v):
        return pa.struct([(k, _infer(x)) for k, x in v.items()])
    if cls is datetime.datetime and v.tzinfo is None:
        return pa.timestamp("us")
    raise _Defer


def _unify(types) -> pa.DataType:
    """The common type as pyarrow would infer it; _Defer where unsure."""
    out = pa.null()
    for t in types:
        if t == out or t == pa.null():
            continue
        if out == pa.null():
            out = t
        elif {out, t} == {pa.int64(), pa.float64()}:
            out = pa.float64()
        elif pa.types.is_struct(out) and pa.types.is_struct(t):
            fields = {f.name: f.type for f in out}
            for f in t:
                fields[f.name] = _unify([fields[f.name], f.type]) if f.name in fields else f.type
            out = pa.struct(list(fields.items()))
        elif pa.types.is_list(out) and pa.types.is_list(t):
            out = pa.list_(_unify([out.value_type, t.value_type]))
        else:
            raise _Defer
    return out


def _inferred_array(values: list, what: str) -> pa.Array:
    for v in values:  # pyarrow would quietly turn a set into a list
        if isinstance(v, (set, frozenset)):
            raise SerializationError(f"{what}: cannot represent value of type {type(v).__name__} in Arrow")
    try:
        return pa.array(values, type=_unify([_infer(v) for v in values]))
    except Exception:  # noqa: BLE001 - _Defer, or out of range: let pyarrow decide
        pass
    try:  # pyarrow's inference, seeing dataclasses as dicts
        return pa.array([_plain(v) for v in values])
    except Exception as e:  # noqa: BLE001
        error = e
    for v in values:
        try:
            pa.array([_plain(v)])
        except Exception as e:  # noqa: BLE001
            raise SerializationError(
                f"{what}: cannot represent value of type {type(v).__name__} in Arrow: {e}") from None
    raise SerializationError(f"{what}: the {len(values)} values have no common Arrow type: {error}")


class _Side:
    """The columns of one direction (arguments, or the result) and their caches."""

    def __init__(self, names: list[str], nodes: list[_Node | None], whats: list[str],
                 schema: pa.Schema | None = None):
        self.names, self.nodes, self.whats = names, nodes, whats
        # Top-level int columns get the strict check; others their node's converter.
        self.encs = [_check_int if n is not None and n.kind == "scalar" and n.cls is int
                     else (n.enc if n is not None else None) for n in nodes]
        self.schema = None
        if all(n is not None for n in nodes):
            self.schema = schema or pa.schema([n.field(name) for name, n in zip(names, nodes, strict=False)
                                               if n is not None])  # all are (checked above): for mypy
        self.schema_bytes = schema_to_bytes(self.schema) if self.schema is not None else b""
        self._inferred_schemas: dict[tuple, tuple[pa.Schema, bytes]] = {}
        self._plans: dict[bytes, tuple[pa.Schema, list, FixedLayout | None]] = {}
        # One row of int64 / float64 columns: written without pyarrow (chalkcompute._fixed), made on first use.
        self._fixed: FixedLayout | None | bool = False if any(
            e is not None and e is not _check_int for e in self.encs) else None

    def encode(self, columns: list[list], whats: list[str] | None = None) -> tuple[bytes, bytes]:
        fixed = self._fixed
        if fixed is None:
            fixed = self._fixed = FixedLayout.of(self.schema) or False
        if fixed:  # the warmest path: ~2 us instead of ~30 (one row of plain numbers)
            data = fixed.encode(columns)  # type: ignore[union-attr]
            if data is not None:
                return self.schema_bytes, data
        if self.schema is not None:  # hot path: one from_pydict, no per-column arrays
            try:
                data = {name: col if enc is None else [enc(v) for v in col]
                        for name, enc, col in zip(self.names, self.encs, columns, strict=False)}
                batch = pa.RecordBatch.from_pydict(data, schema=self.schema)
                return self.schema_bytes, batch.serialize().to_pybytes()
            except Exception:  # noqa: BLE001 - the slow path names the failing column
                pass
        whats = whats or self.whats
        arrays = [_inferred_array(col, what) if node is None else _hinted_array(node, enc, col, what)
                  for node, enc, col, what in zip(self.nodes, self.encs, columns, whats, strict=False)]
        schema, schema_bytes = self.schema, self.schema_bytes
        if schema is None:
            key = tuple(a.type for a, n in zip(arrays, self.nodes, strict=False) if n is None)
            hit = self._inferred_schemas.get(key)
            if hit is None:
                schema = pa.schema([pa.field(name, a.type) if n is None else n.field(name)
                                    for name, n, a in zip(self.names, self.nodes, arrays, strict=False)])
                hit = (schema, schema.serialize().to_pybytes())
                _remember(self._inferred_schemas, key, hit)
            schema, schema_bytes = hit
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        return schema_bytes, batch.serialize().to_pybytes()

    def decode(self, schema_bytes: bytes, batch: bytes) -> tuple[list[str], list[list]]:
        plan = self._plans.get(schema_bytes)
        if plan is None:
            plan = self._plan(schema_bytes)
        schema, decs, fixed = plan
        if fixed is not None:
            values = fixed.decode(batch)
            if values is not None:
                return schema.names, [v if dec is None else [dec(x) for x in v] for v, dec in zip(values, decs,
                                                                                                strict=True)]
        try:
            record = pa.ipc.read_record_batch(pa.py_buffer(batch), schema)
        except (pa.ArrowException, ValueError) as e:
            raise SerializationError(f"malformed Arrow record batch: {e}") from None
        columns = []
        for column, dec in zip(record.columns, decs, strict=False):
            values = column.to_pylist()
            columns.append(values if dec is None else [dec(v) for v in values])
        return schema.names, columns

    def _plan(self, schema_bytes: bytes) -> tuple[pa.Schema, list, FixedLayout | None]:
        schema = schema_from_bytes(schema_bytes)
        hinted = {name: n for name, n in zip(self.names, self.nodes, strict=False) if n is not None}
        decs = []
        for field in schema:
            node = hinted.get(field.name)
            # The hinted converter applies only if the sender used the hinted shape.
            if node is None or not field.type.equals(node.type):
                node = _node_from_field(field)
            decs.append(node.dec)
        plan = (schema, decs, FixedLayout.of(schema))
        _remember(self._plans, bytes(schema_bytes), plan)
        return plan


def _chunk_hint(hint):
    """The yielded type T of Iterator[T], AsyncGenerator[T, ...] and kin."""
    if typing.get_origin(hint) in _ITERATORS:
        args = typing.get_args(hint)
        return args[0] if args else Any
    if hint in _ITERATORS:
        return Any
    return hint  # a generator annotated with its chunk type directly


class FunctionCodec:
    """Encodes and decodes one function's arguments and results as Arrow payloads."""

    def __init__(self, parameter_names: list[str], inputs: _Side, output: _Side,
                 is_generator: bool = False):
        self.parameter_names = list(parameter_names)
        self.is_generator = is_generator
        self._in, self._out = inputs, output
        self.input_schema_bytes = inputs.schema_bytes
        self.output_schema_bytes = output.schema_bytes

    @classmethod
    def for_function(cls, fn, batched: bool = False) -> FunctionCodec:
        """Build from ``fn``'s signature and type hints; bad hints raise SerializationError.

        ``batched=True`` builds the per-item codec of a batched handler
        (a :class:`BatchCodec`): see :meth:`BatchCodec.for_batched`.
        """
        if batched:
            return BatchCodec.for_batched(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=False)
        except Exception as e:  # noqa: BLE001 - e.g. a forward reference to a local class
            raise SerializationError(f"cannot resolve the type hints of {fn!r}: {e}") from None
        names, nodes = [], []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                star = "*" if p.kind is p.VAR_POSITIONAL else "**"
                raise SerializationError(f"variadic parameter '{star}{p.name}' is not supported")
            names.append(p.name)
            nodes.append(_hint_node(hints.get(p.name, Any), f"parameter '{p.name}'"))
        is_gen = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        ret = hints.get("return", Any)
        if is_gen:
            ret = _chunk_hint(ret)
        out = _hint_node(ret, "yielded value" if is_gen else "return value")
        inputs = _Side(names, nodes, [f"argument '{n}'" for n in names])
        return cls(names, inputs, _Side(["result"], [out], ["return value"]), is_gen)

    @classmethod
    def from_schemas(cls, parameter_names: list[str], input_schema: bytes, output_schema: bytes,
                     *, is_generator: bool = False) -> FunctionCodec:
        """Build from schema bytes alone (a handle without the function); b"" infers."""
        names = list(parameter_names)
        whats = [f"argument '{n}'" for n in names]
        if input_schema:
            schema = schema_from_bytes(input_schema)
            if schema.names != names:
                raise SerializationError(
                    f"input schema fields {schema.names} do not match parameters {names}")
            inputs = _Side(names, [_node_from_field(f) for f in schema], whats, schema)
        else:
            inputs = _Side(names, [None] * len(names), whats)
        if output_schema:
            schema = schema_from_bytes(output_schema)
            output = _Side(["result"], [_node_from_field(schema.field(0))], ["return value"], schema)
        else:
            output = _Side(["result"], [None], ["return value"])
        return cls(names, inputs, output, is_generator)

    def encode_args(self, arguments: dict[str, object]) -> tuple[bytes, bytes]:
        """One row, a column per parameter in order; errors name the argument."""
        try:
            columns = [[arguments[n]] for n in self.parameter_names]
        except KeyError as e:
            raise FunctionSignatureError(f"missing argument {e}") from None
        return self._in.encode(columns)

    def decode_args(self, schema: bytes, batch: bytes) -> dict[str, object]:
        """Arguments by name, rebuilt as their hinted types where the codec knows them."""
        names, columns = self._in.decode(schema, batch)
        return {n: c[0] if c else None for n, c in zip(names, columns, strict=False)}

    def encode_result(self, value) -> tuple[bytes, bytes]:
        """The return value as one row of column ``"result"``."""
        return self._out.encode([[value]])

    def encode_chunks(self, values: list) -> tuple[bytes, bytes]:
        """Coalesced stream chunks as N rows of ``"result"``; raises if no single type fits."""
        return self._out.encode([list(values)], ["yielded value"])

    def decode_results(self, schema: bytes, batch: bytes) -> list[object]:
        """One Python value per row of the result column."""
        _, columns = self._out.decode(schema, batch)
        return columns[0] if columns else []


# -- batched handlers ----------------------------------------------------------------------------

_NOT_GIVEN = object()


def _type_hints(fn) -> dict:
    try:
        return typing.get_type_hints(fn, include_extras=False)
    except Exception as e:  # noqa: BLE001 - e.g. a forward reference to a local class
        raise SerializationError(f"cannot resolve the type hints of {fn!r}: {e}") from None


def _parameters(fn) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise SerializationError(f"variadic parameter '{star}{p.name}' is not supported")
    return params


def _batch_element(hint, where: str, fname: str):
    """The per-item type of a batched handler's ``list[T]`` hint; Any where inferred."""
    if any(hint is h for h in (Any, object, list)) or hint in _LISTS:
        return Any
    if typing.get_origin(hint) in _LISTS:
        args = typing.get_args(hint)
        return args[0] if args else Any
    raise FunctionSignatureError(
        f"{fname}: the {where} of a batched function must be a list (one element per input), "
        f"e.g. list[{_name(hint)}], not {_name(hint)}")


class BatchCodec(FunctionCodec):
    """The per-item codec of a batched handler, and how the worker assembles a batch.

    A batched handler takes lists and returns a list, one result per input,
    in order; its callers pass one item and get one element back::

        def batch_embed(texts: list[str]) -> list[list[float]]: ...
        batch_embed("a")                       # a caller: one str in, one list[float] out

        codec = FunctionCodec.for_function(batch_embed, batched=True)
        schema, batch = codec.encode_args({"texts": "a"})     # per item: texts is a str
        # the worker, given the items of one batch:
        kwargs = codec.assemble([codec.decode_item(schema, batch)])
        assert kwargs == {"texts": ["a"]}
        schema, batch = codec.encode_result([0.5, 1.0])       # one item's result

    A parameter hint ``list[T]`` travels as ``T`` and a return hint
    ``list[R]`` as ``R``; a bare ``list``, ``Any`` or no hint is inferred
    from the values. Any other hint is a :class:`FunctionSignatureError`, as
    is a generator (a generator function cannot be batched).

    A handler whose only parameter is annotated ``pyarrow.Table`` gets one
    table with a row per input instead; each caller passes its row as one
    dict (or dataclass instance) whose keys are the table's columns::

        def score(rows: pa.Table) -> list[float]: ...
        score({"text": "a", "weight": 2.0})

    The row travels as one struct column named after the parameter (its
    fields are the dict's keys, their types inferred), so a handle built
    from the schemas alone (:meth:`FunctionCodec.from_schemas`) encodes it
    the same way. Rows whose inferred types differ are unified when the
    table is built (int and float become float; a key missing from a row is
    null there).
    """

    def __init__(self, parameter_names: list[str], inputs: _Side, output: _Side,
                 table_parameter: str | None = None):
        super().__init__(parameter_names, inputs, output, is_generator=False)
        self.table_parameter = table_parameter

    @classmethod
    def for_batched(cls, fn) -> BatchCodec:
        """The per-item codec of batched handler ``fn`` (see the class docstring)."""
        fname = getattr(fn, "__qualname__", repr(fn))
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise FunctionSignatureError(
                f"{fname}: a generator function cannot be batched: return a list, one result per input")
        hints = _type_hints(fn)
        params = _parameters(fn)
        if not params:
            raise FunctionSignatureError(
                f"{fname}: a batched function takes at least one parameter (a list of inputs)")
        names = [p.name for p in params]
        tables = [n for n in names if hints.get(n) is pa.Table]
        if tables and len(names) > 1:
            raise FunctionSignatureError(
                f"{fname}: a pyarrow.Table parameter ('{tables[0]}') must be the only parameter "
                f"of a batched function, which has {names}")
        ret = _hint_node(_batch_element(hints.get("return", Any), "return value", fname), "return value")
        output = _Side(["result"], [ret], ["return value"])
        if tables:
            inputs = _Side(names, [None], [f"row '{names[0]}'"])
            return cls(names, inputs, output, table_parameter=names[0])
        nodes = [_hint_node(_batch_element(hints.get(n, Any), f"parameter '{n}'", fname), f"parameter '{n}'")
                 for n in names]
        return cls(names, _Side(names, nodes, [f"argument '{n}'" for n in names]), output)

    def encode_args(self, arguments: dict[str, object]) -> tuple[bytes, bytes]:
        """One item's arguments (for a Table handler: its row, one dict)."""
        if self.table_parameter is None:
            return super().encode_args(arguments)
        name = self.table_parameter
        row = arguments.get(name, _NOT_GIVEN)
        is_dataclass = dataclasses.is_dataclass(row) and not isinstance(row, type)
        if not (isinstance(row, abc.Mapping) or is_dataclass):
            got = "nothing" if row is _NOT_GIVEN else f"a {type(row).__name__}"
            raise FunctionSignatureError(
                f"argument '{name}': this batched function takes a pyarrow.Table, so each call "
                f"passes one row: a dict of column values, e.g. {{'text': 'a'}}; got {got}")
        if not is_dataclass and not all(isinstance(k, str) for k in row):  # type: ignore[attr-defined]  # a Mapping
            raise FunctionSignatureError(f"argument '{name}': the row's keys (its column names) must be str")
        return self._in.encode([[row]])

    def decode_item(self, schema: bytes, batch: bytes):
        """One item of a batch as :meth:`assemble` takes it.

        Its arguments by name, or for a Table handler its row (a one-row
        ``pa.StructArray``). Raises SerializationError for a malformed item.
        """
        if self.table_parameter is None:
            args = self.decode_args(schema, batch)
            missing = [n for n in self.parameter_names if n not in args]
            if missing:
                raise SerializationError(f"the input has no value for parameter(s) {missing}")
            return args
        try:
            record = pa.ipc.read_record_batch(pa.py_buffer(batch), schema_from_bytes(schema))
        except (pa.ArrowException, ValueError) as e:
            raise SerializationError(f"malformed Arrow record batch: {e}") from None
        column = record.column(0) if record.num_columns == 1 else None
        if column is None or not pa.types.is_struct(column.type) or len(column) != 1 or column.null_count:
            raise SerializationError(
                f"argument '{self.table_parameter}': a pyarrow.Table handler takes one row per call, "
                "a dict of column values")
        return column

    def assemble(self, items: list) -> dict[str, object]:
        """The handler's keyword arguments for the decoded items of one batch, in order:
        a list per parameter, or ``{table_parameter: pa.Table}`` with a row per item."""
        if self.table_parameter is None:
            return {n: [item[n] for item in items] for n in self.parameter_names}
        return {self.table_parameter: _rows_table(items)}


def _rows_table(rows: list) -> pa.Table:
    """One table from one-row struct arrays; types unified when the rows disagree."""
    first = rows[0].type
    if all(r.type == first for r in rows):  # the usual case: no Python objects on the way
        return pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.concat_arrays(rows))])
    values = [r.to_pylist()[0] for r in rows]
    names = list(dict.fromkeys(k for v in values for k in v))
    try:
        return pa.table({n: [v.get(n) for v in values] for n in names})
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise SerializationError(f"the rows of this batch have no common Arrow type per column: {e}") from None
