"""Round trips and errors of the Arrow IPC codec (chalkcompute._serialization)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import re
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator
from typing import Any, NotRequired, Optional, TypedDict

import pyarrow as pa
import pytest

from chalkcompute._serialization import (
    META_KEY,
    FunctionCodec,
    schema_from_bytes,
    schema_to_bytes,
)
from chalkcompute.exceptions import FunctionSignatureError, SerializationError


@dataclasses.dataclass
class Point:
    x: int
    y: float


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    labels: dict[str, Point]
    tags: tuple[str, ...]
    pair: tuple[int, str]
    center: Optional[Point] = None  # noqa: UP045 - typing.Optional hints are decoded too


class Movie(TypedDict):
    title: str
    year: int
    rating: NotRequired[float]


@dataclasses.dataclass
class Node:  # recursive: no fixed Arrow shape
    children: list[Node]


@dataclasses.dataclass
class Loose:
    payload: Any


class Opaque:
    pass


def roundtrip(fn, **arguments):
    codec = FunctionCodec.for_function(fn)
    return codec.decode_args(*codec.encode_args(arguments))


def result_roundtrip(fn, value):
    codec = FunctionCodec.for_function(fn)
    return codec.decode_results(*codec.encode_result(value))


def remote(codec: FunctionCodec) -> FunctionCodec:
    """A codec for a caller that holds only the schema bytes."""
    return FunctionCodec.from_schemas(
        codec.parameter_names, codec.input_schema_bytes, codec.output_schema_bytes)


# --- scalars ---------------------------------------------------------------------------


def test_scalar_round_trips():
    def f(a: int, b: float, c: str, d: bytes, e: bool, n: None,
          t: datetime.datetime, day: datetime.date, dec: decimal.Decimal) -> None: ...

    args = dict(a=-3, b=2.5, c="héllo", d=b"\x00\xff", e=True, n=None,
                t=datetime.datetime(2024, 5, 6, 7, 8, 9, 123456), day=datetime.date(2024, 2, 29),
                dec=decimal.Decimal("12.375"))
    out = roundtrip(f, **args)
    assert out == args
    assert type(out["dec"]) is decimal.Decimal and type(out["e"]) is bool


def test_schema_types_follow_hints():
    def f(a: int, b: float, c: str, d: bytes, e: bool, t: datetime.datetime,
          day: datetime.date, xs: list[int], m: dict[str, float],
          o: Optional[str]) -> str: ...  # noqa: UP045 - typing.Optional is a hint users write

    schema = schema_from_bytes(FunctionCodec.for_function(f).input_schema_bytes)
    assert [f.type for f in schema] == [
        pa.int64(), pa.float64(), pa.string(), pa.binary(), pa.bool_(), pa.timestamp("us"),
        pa.date32(), pa.list_(pa.int64()), pa.map_(pa.string(), pa.float64()), pa.string()]
    assert schema.names == ["a", "b", "c", "d", "e", "t", "day", "xs", "m", "o"]


def test_int_where_float_hinted_converts():
    def f(x: float) -> float: ...

    out = roundtrip(f, x=3)
    assert out == {"x": 3.0} and type(out["x"]) is float


def test_bool_where_int_hinted_is_accepted():
    def f(x: int) -> int: ...

    assert roundtrip(f, x=True) == {"x": 1}


def test_none_for_non_optional_hint_encodes():
    def f(x: int, p: Point) -> int: ...

    assert roundtrip(f, x=None, p=None) == {"x": None, "p": None}


def test_optional_and_union_none():
    def f(a: Optional[int], b: int | None, c: list[int | None]) -> str | None: ...  # noqa: UP045 - both spellings

    assert roundtrip(f, a=None, b=4, c=[1, None]) == {"a": None, "b": 4, "c": [1, None]}
    assert result_roundtrip(f, None) == [None]
    assert result_roundtrip(f, "x") == ["x"]


# --- containers ------------------------------------------------------------------------


def test_list_tuple_dict_round_trips():
    def f(xs: list[float], t: tuple[int, ...], pair: tuple[str, int],
          m: dict[str, list[int]], keys: dict[tuple[int, int], str]) -> None: ...

    args = dict(xs=[1.5, 2.0], t=(1, 2, 3), pair=("a", 1), m={"a": [1], "b": []},
                keys={(1, 2): "x", (3, 4): "y"})
    out = roundtrip(f, **args)
    assert out == args
    assert type(out["t"]) is tuple and type(out["pair"]) is tuple and type(out["m"]) is dict


def test_nested_dataclasses_in_lists_and_dicts():
    def f(shape: Shape, many: list[Shape], by_name: dict[str, list[Point]]) -> Shape: ...

    shape = Shape("tri", [Point(0, 0.0), Point(1, 1.5)], {"a": Point(2, 2.5)},
                  ("x", "y"), (7, "seven"), Point(9, 9.5))
    args = dict(shape=shape, many=[shape, dataclasses.replace(shape, center=None)],
                by_name={"k": [Point(1, 2.0)], "empty": []})
    out = roundtrip(f, **args)
    assert out == args
    assert isinstance(out["shape"].points[0], Point) and isinstance(out["by_name"]["k"][0], Point)
    assert result_roundtrip(f, shape) == [shape]


def test_dataclass_accepts_a_dict_of_its_fields():
    def f(p: Point) -> None: ...

    assert roundtrip(f, p={"x": 1, "y": 2.0}) == {"p": Point(1, 2.0)}


def test_typed_dict_round_trip():
    def f(m: Movie, ms: list[Movie]) -> Movie: ...

    full: Movie = {"title": "Alien", "year": 1979, "rating": 8.5}
    partial: Movie = {"title": "Heat", "year": 1995}
    out = roundtrip(f, m=full, ms=[partial])
    assert out == {"m": full, "ms": [partial]}  # the omitted key stays omitted
    assert result_roundtrip(f, full) == [full]


def test_field_metadata_records_python_types():
    def f(t: tuple[int, ...], p: Point, m: Movie) -> None: ...

    schema = schema_from_bytes(FunctionCodec.for_function(f).input_schema_bytes)
    assert schema.field("t").metadata == {META_KEY: b"tuple"}
    assert schema.field("p").metadata == {META_KEY: f"dataclass:{__name__}.Point".encode()}
    assert schema.field("m").metadata[META_KEY].startswith(b"typeddict:")


# --- inferred types --------------------------------------------------------------------


def test_inferred_types_for_any_and_missing_hints():
    def f(a, b: Any, c, d, e, g):
        ...

    codec = FunctionCodec.for_function(f)
    assert codec.input_schema_bytes == b"" and codec.output_schema_bytes == b""
    args = dict(a=1, b="s", c={"k": [1, 2], "n": {"deep": True}}, d=[], e=None, g=[1.5, None])
    assert codec.decode_args(*codec.encode_args(args)) == args


def test_mixed_hinted_and_inferred_columns_keep_hinted_types():
    def f(p: Point, extra: Any) -> None: ...

    codec = FunctionCodec.for_function(f)
    assert codec.input_schema_bytes == b""  # any inferred parameter: no fixed schema
    for extra in (1, "two", [3.0]):  # each value type gets its own cached schema
        out = codec.decode_args(*codec.encode_args({"p": Point(1, 2.0), "extra": extra}))
        assert out == {"p": Point(1, 2.0), "extra": extra}


def test_inferred_dataclass_comes_back_as_dict():
    def f(x): ...

    assert roundtrip(f, x=Point(1, 2.0)) == {"x": {"x": 1, "y": 2.0}}


def test_list_of_any_is_inferred():
    def f(xs: list[Any], m: dict[str, Any]) -> None: ...

    assert roundtrip(f, xs=[1, 2], m={"a": 1}) == {"xs": [1, 2], "m": {"a": 1}}


def test_inferred_result_and_chunks():
    def f(): ...

    codec = FunctionCodec.for_function(f)
    assert codec.decode_results(*codec.encode_result({"a": 1})) == [{"a": 1}]
    chunks = [{"a": 1}, {"a": 2, "b": "x"}]
    assert codec.decode_results(*codec.encode_chunks(chunks)) == [
        {"a": 1, "b": None}, {"a": 2, "b": "x"}]


# --- generators and chunks ------------------------------------------------------------


@pytest.mark.parametrize("hint", [
    Iterator[int], Iterable[int], Generator[int, None, None],
    typing.Iterator[int], typing.Generator[int, None, None],
])
def test_sync_generator_chunk_type(hint):
    def gen() -> hint:  # type: ignore[valid-type]
        yield 1

    gen.__annotations__["return"] = hint  # the future import leaves a string otherwise
    codec = FunctionCodec.for_function(gen)
    assert codec.is_generator
    assert schema_from_bytes(codec.output_schema_bytes).field("result").type == pa.int64()


@pytest.mark.parametrize("hint", [AsyncIterator[Point], AsyncGenerator[Point, None]])
def test_async_generator_chunk_type(hint):
    async def agen():
        yield Point(1, 2.0)

    agen.__annotations__["return"] = hint
    codec = FunctionCodec.for_function(agen)
    assert codec.is_generator
    assert codec.decode_results(*codec.encode_chunks([Point(1, 2.0)])) == [Point(1, 2.0)]


def test_unhinted_generator_infers_chunks():
    def gen():
        yield 1

    codec = FunctionCodec.for_function(gen)
    assert codec.is_generator and codec.output_schema_bytes == b""
    assert codec.decode_results(*codec.encode_chunks([1, 2, 3])) == [1, 2, 3]


def test_plain_function_is_not_a_generator():
    def f(x: int) -> int: ...

    assert not FunctionCodec.for_function(f).is_generator


def test_coalesced_chunks_hinted():
    def gen() -> Iterator[tuple[int, ...]]:
        yield ()

    codec = FunctionCodec.for_function(gen)
    schema, batch = codec.encode_chunks([(1,), (), (2, 3)])
    assert pa.ipc.read_record_batch(pa.py_buffer(batch), schema_from_bytes(schema)).num_rows == 3
    assert codec.decode_results(schema, batch) == [(1,), (), (2, 3)]
    assert remote(codec).decode_results(schema, batch) == [(1,), (), (2, 3)]


def test_coalesced_chunks_without_common_type_raise():
    def gen():
        yield 1

    codec = FunctionCodec.for_function(gen)
    with pytest.raises(SerializationError, match="yielded value"):
        codec.encode_chunks([1, "two"])
    # the caller's fallback: one chunk per payload works
    assert [codec.decode_results(*codec.encode_chunks([v]))[0] for v in (1, "two")] == [1, "two"]


def test_hinted_chunk_error_names_yielded_value():
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(SerializationError, match="yielded value: .*str"):
        FunctionCodec.for_function(gen).encode_chunks([1, "x"])


# --- schema-only decoding -------------------------------------------------------------


def test_from_schemas_decodes_to_plain_python():
    def f(shape: Shape, m: dict[str, int], t: tuple[int, ...], movie: Movie) -> list[Point]: ...

    codec = FunctionCodec.for_function(f)
    shape = Shape("s", [Point(1, 1.0)], {"k": Point(2, 2.0)}, ("a",), (1, "b"))
    args = dict(shape=shape, m={"a": 1}, t=(1, 2), movie={"title": "x", "year": 1})
    other = remote(codec)
    out = other.decode_args(*codec.encode_args(args))
    assert out["shape"] == {"name": "s", "points": [{"x": 1, "y": 1.0}],
                            "labels": {"k": {"x": 2, "y": 2.0}}, "tags": ("a",),
                            "pair": (1, "b"), "center": None}
    assert out["m"] == {"a": 1} and out["t"] == (1, 2)
    assert out["movie"] == {"title": "x", "year": 1, "rating": None}
    assert other.decode_results(*codec.encode_result([Point(3, 4.0)])) == [[{"x": 3, "y": 4.0}]]


def test_from_schemas_encodes_for_the_worker():
    def f(p: Point, m: dict[str, int], x: int) -> Point: ...

    codec = FunctionCodec.for_function(f)
    caller = remote(codec)
    assert caller.input_schema_bytes == codec.input_schema_bytes
    # the caller may pass the dataclass itself or a dict; the worker rebuilds Point
    for p in (Point(1, 2.0), {"x": 1, "y": 2.0}):
        out = codec.decode_args(*caller.encode_args({"p": p, "m": {"a": 1}, "x": 5}))
        assert out == {"p": Point(1, 2.0), "m": {"a": 1}, "x": 5}
    assert caller.decode_results(*codec.encode_result(Point(1, 2.0))) == [{"x": 1, "y": 2.0}]


def test_from_schemas_with_empty_bytes_infers_everything():
    codec = FunctionCodec.from_schemas(["a", "b"], b"", b"")
    assert codec.decode_args(*codec.encode_args({"a": 1, "b": {"k": "v"}})) == {
        "a": 1, "b": {"k": "v"}}
    assert codec.decode_results(*codec.encode_result([1, 2])) == [[1, 2]]


def test_from_schemas_rejects_mismatched_names():
    def f(x: int) -> int: ...

    with pytest.raises(SerializationError, match="do not match"):
        FunctionCodec.from_schemas(["y"], FunctionCodec.for_function(f).input_schema_bytes, b"")


def test_schema_caches():
    schema = pa.schema([pa.field("x", pa.int64())])
    data = schema_to_bytes(schema)
    assert schema_to_bytes(schema) is data
    assert schema_from_bytes(data).equals(schema)
    assert schema_from_bytes(bytes(data)) is schema_from_bytes(data)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ({1, 2}, "argument 'x': cannot represent value of type set in Arrow"),
    (frozenset(), "argument 'x': cannot represent value of type frozenset in Arrow"),
    (Opaque(), "argument 'x': cannot represent value of type Opaque in Arrow"),
    ({1: "a"}, "argument 'x': cannot represent value of type dict in Arrow"),
    (2**70, "argument 'x': cannot represent value of type int in Arrow"),
])
def test_inferred_errors_name_the_argument(value, message):
    def f(y: int, x): ...

    with pytest.raises(SerializationError) as info:
        FunctionCodec.for_function(f).encode_args({"y": 1, "x": value})
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("hint, value", [
    (int, 2**63), (int, 1.5), (int, "3"), (list[int], 3), (list[int], ["a"]),
    (Point, 3), (Point, {"x": "a", "y": 1.0}), (dict[str, int], [1]), (bool, 2),
])
def test_hinted_errors_name_the_argument(hint, value):
    def f(x): ...

    f.__annotations__["x"] = hint
    with pytest.raises(SerializationError, match="^argument 'x': "):
        FunctionCodec.for_function(f).encode_args({"x": value})


def test_integral_float_for_int_is_accepted():
    def f(x: int) -> None: ...

    assert roundtrip(f, x=2.0) == {"x": 2}


def test_result_error_names_return_value():
    def f() -> int: ...

    with pytest.raises(SerializationError, match="^return value: "):
        FunctionCodec.for_function(f).encode_result("nope")
    with pytest.raises(SerializationError, match="^return value: "):
        FunctionCodec.for_function(lambda: None).encode_result(object())


def test_missing_argument():
    def f(x: int, y: int) -> int: ...

    with pytest.raises(FunctionSignatureError, match="'y'"):
        FunctionCodec.for_function(f).encode_args({"x": 1})


@pytest.mark.parametrize("hint, fragment", [
    (set[int], "set[int]"), (Opaque, "Opaque"), (int | str, "int | str"),
    (list[Opaque], "list["), (Node, "recursive"), (Loose, "Loose.payload"),
])
def test_unsupported_hints_fail_at_creation(hint, fragment):
    def f(p): ...

    f.__annotations__["p"] = hint
    with pytest.raises(SerializationError, match="^parameter 'p': unsupported type hint") as info:
        FunctionCodec.for_function(f)
    assert fragment in str(info.value)


def test_unsupported_return_hint_fails_at_creation():
    def f() -> Opaque: ...

    with pytest.raises(SerializationError, match="^return value: unsupported type hint Opaque"):
        FunctionCodec.for_function(f)


@pytest.mark.parametrize("fn, name", [
    (lambda *args: None, "'*args'"), (lambda x, **kwargs: None, "'**kwargs'"),
])
def test_variadic_parameters_are_rejected(fn, name):
    with pytest.raises(SerializationError, match=re.escape(f"variadic parameter {name} is not supported")):
        FunctionCodec.for_function(fn)


def test_malformed_payloads():
    def f(x: int) -> int: ...

    codec = FunctionCodec.for_function(f)
    with pytest.raises(SerializationError, match="schema"):
        codec.decode_args(b"garbage", b"")
    with pytest.raises(SerializationError, match="record batch"):
        codec.decode_args(codec.input_schema_bytes, b"garbage")


def test_zero_parameter_function():
    def f() -> int: ...

    codec = FunctionCodec.for_function(f)
    assert codec.parameter_names == []
    assert codec.decode_args(*codec.encode_args({})) == {}


def test_inferred_aware_datetime_keeps_its_zone():
    def f(t): ...

    t = datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.UTC)
    out = roundtrip(f, t=t)["t"]
    assert out == t and out.tzinfo is not None


def test_inferred_values_match_pyarrow_inference():
    def f(v): ...

    codec = FunctionCodec.for_function(f)
    for value in (1, 2.5, [1, 2.5], [[], [1]], {"a": [1, None], "b": {"c": b"x"}},
                  [{"a": 1}, {"b": "x"}], datetime.date(2024, 1, 1), decimal.Decimal("1.25")):
        schema, _ = codec.encode_args({"v": value})
        assert schema_from_bytes(schema).field("v").type == pa.array([value]).type


@dataclasses.dataclass
class Positive:
    n: int

    def __post_init__(self):
        if self.n <= 0:
            raise ValueError("n must be positive")


def test_failed_dataclass_rebuild_is_a_serialization_error():
    def f(p: Positive) -> None: ...

    codec = FunctionCodec.for_function(f)
    schema = schema_from_bytes(codec.input_schema_bytes)
    # a sender without the class's validation (e.g. a schema-only caller) sent n=-1
    batch = pa.RecordBatch.from_pydict({"p": [{"n": -1}]}, schema=schema).serialize().to_pybytes()
    with pytest.raises(SerializationError, match="cannot rebuild Positive: n must be positive"):
        codec.decode_args(codec.input_schema_bytes, batch)
