"""The per-item codec of batched handlers (FunctionCodec.for_function(fn, batched=True))."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pytest

from chalkcompute._serialization import BatchCodec, FunctionCodec
from chalkcompute.exceptions import FunctionSignatureError, SerializationError


@dataclasses.dataclass
class Point:
    x: int
    y: float


def batch_embed(texts: list[str]) -> list[list[float]]:
    return [[float(len(t))] for t in texts]


def scale(xs: list[int], factors: Sequence[float]) -> list[float]:
    return [x * f for x, f in zip(xs, factors, strict=True)]


def loose(values: list, other) -> list:
    return values


def points(ps: list[Point]) -> list[Point]:
    return ps


def score(rows: pa.Table) -> list[float]:
    return rows.column("w").to_pylist()


def batch_of(codec: BatchCodec, arguments: list[dict]) -> dict:
    """What the worker hands the handler for these callers' arguments."""
    return codec.assemble([codec.decode_item(*codec.encode_args(a)) for a in arguments])


def test_lists_in_one_item_per_caller():
    codec = FunctionCodec.for_function(batch_embed, batched=True)
    assert isinstance(codec, BatchCodec) and codec.table_parameter is None
    assert codec.parameter_names == ["texts"]
    assert batch_of(codec, [{"texts": "a"}, {"texts": "bc"}]) == {"texts": ["a", "bc"]}
    # Per item, the schemas are those of the element types.
    assert pa.ipc.read_schema(pa.py_buffer(codec.input_schema_bytes)).field("texts").type == pa.string()
    out = pa.ipc.read_schema(pa.py_buffer(codec.output_schema_bytes)).field("result").type
    assert out == pa.list_(pa.float64())


def test_one_result_per_item_round_trip_through_a_schema_handle():
    codec = FunctionCodec.for_function(batch_embed, batched=True)
    handle = FunctionCodec.from_schemas(codec.parameter_names, codec.input_schema_bytes, codec.output_schema_bytes)
    # A caller attached by name encodes the same per-item payload.
    assert batch_of(codec, [{"texts": "x"}]) == codec.assemble([codec.decode_item(*handle.encode_args({"texts": "x"}))])
    assert handle.decode_results(*codec.encode_result([1.0, 2.0])) == [[1.0, 2.0]]


def test_several_parameters_and_sequence_hints():
    codec = FunctionCodec.for_function(scale, batched=True)
    assert batch_of(codec, [{"xs": 1, "factors": 2.0}, {"xs": 3, "factors": 0.5}]) == {
        "xs": [1, 3], "factors": [2.0, 0.5]}


def test_bare_list_and_missing_hints_are_inferred():
    codec = FunctionCodec.for_function(loose, batched=True)
    assert codec.input_schema_bytes == b"" and codec.output_schema_bytes == b""
    kwargs = batch_of(codec, [{"values": 1, "other": "a"}, {"values": 2.5, "other": None}])
    assert kwargs == {"values": [1, 2.5], "other": ["a", None]}
    assert codec.decode_results(*codec.encode_result({"k": 1})) == [{"k": 1}]


def test_dataclass_items_are_rebuilt():
    codec = FunctionCodec.for_function(points, batched=True)
    assert batch_of(codec, [{"ps": Point(1, 2.0)}]) == {"ps": [Point(1, 2.0)]}
    assert codec.decode_results(*codec.encode_result(Point(3, 4.0))) == [Point(3, 4.0)]


def test_async_handlers_can_be_batched():
    async def embed(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    codec = FunctionCodec.for_function(embed, batched=True)
    assert not codec.is_generator
    assert batch_of(codec, [{"texts": "ab"}]) == {"texts": ["ab"]}


def test_table_handler_gets_one_row_per_caller():
    codec = FunctionCodec.for_function(score, batched=True)
    assert codec.table_parameter == "rows" and codec.parameter_names == ["rows"]
    kwargs = batch_of(codec, [{"rows": {"text": "a", "w": 1.5}}, {"rows": {"text": "b", "w": 2.5}}])
    table = kwargs["rows"]
    assert isinstance(table, pa.Table)
    assert table.to_pydict() == {"text": ["a", "b"], "w": [1.5, 2.5]}
    assert score(table) == [1.5, 2.5]


def test_table_rows_with_different_types_and_keys_are_unified():
    codec = FunctionCodec.for_function(score, batched=True)
    rows = [{"text": "a", "w": 1}, {"text": "b", "w": 2.5}, {"text": "c"}]
    table = batch_of(codec, [{"rows": r} for r in rows])["rows"]
    assert table.schema.field("w").type == pa.float64()
    assert table.to_pydict() == {"text": ["a", "b", "c"], "w": [1.0, 2.5, None]}


def test_table_rows_without_a_common_type_are_a_clear_error():
    codec = FunctionCodec.for_function(score, batched=True)
    items = [codec.decode_item(*codec.encode_args({"rows": {"w": v}})) for v in (1, "x")]
    with pytest.raises(SerializationError, match="no common Arrow type"):
        codec.assemble(items)


def test_table_row_from_a_schema_handle_and_from_a_dataclass():
    codec = FunctionCodec.for_function(score, batched=True)
    handle = FunctionCodec.from_schemas(codec.parameter_names, codec.input_schema_bytes, codec.output_schema_bytes)
    item = codec.decode_item(*handle.encode_args({"rows": {"w": 4.0}}))
    assert codec.assemble([item])["rows"].to_pydict() == {"w": [4.0]}
    table = batch_of(codec, [{"rows": Point(1, 2.0)}])["rows"]
    assert table.to_pydict() == {"x": [1], "y": [2.0]}


@pytest.mark.parametrize("row", ["a", 1, [1, 2], None])
def test_table_handler_callers_must_pass_one_dict(row):
    codec = FunctionCodec.for_function(score, batched=True)
    with pytest.raises(FunctionSignatureError, match="one row: a dict of column values"):
        codec.encode_args({"rows": row})


def test_a_non_row_payload_for_a_table_handler_is_refused_by_the_worker():
    codec = FunctionCodec.for_function(score, batched=True)
    plain = FunctionCodec.from_schemas(["rows"], b"", b"")
    with pytest.raises(SerializationError, match="one row per call"):
        codec.decode_item(*plain.encode_args({"rows": 3}))


def test_table_must_be_the_only_parameter():
    def both(rows: pa.Table, xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(FunctionSignatureError, match="must be the only parameter"):
        FunctionCodec.for_function(both, batched=True)


@pytest.mark.parametrize("hint", [int, str, dict[str, int], "Point"])
def test_non_list_parameter_hints_are_refused(hint):
    def f(x):
        return x

    f.__annotations__ = {"x": Point if hint == "Point" else hint, "return": list[int]}
    with pytest.raises(FunctionSignatureError, match=r"parameter 'x' of a batched function must be a list"):
        FunctionCodec.for_function(f, batched=True)


def test_non_list_return_hint_is_refused():
    def f(xs: list[int]) -> int:
        return 0

    with pytest.raises(FunctionSignatureError, match="return value of a batched function must be a list"):
        FunctionCodec.for_function(f, batched=True)


def test_generators_cannot_be_batched():
    def gen(xs: list[int]) -> Iterator[int]:
        yield from xs

    async def agen(xs: list[int]):
        yield 1

    for fn in (gen, agen):
        with pytest.raises(FunctionSignatureError, match="a generator function cannot be batched"):
            FunctionCodec.for_function(fn, batched=True)


def test_a_batched_function_needs_a_parameter():
    def nothing() -> list[int]:
        return []

    with pytest.raises(FunctionSignatureError, match="at least one parameter"):
        FunctionCodec.for_function(nothing, batched=True)


def test_unsupported_element_types_are_serialization_errors():
    def f(xs: list[set[int]]) -> list[Any]:
        return xs

    with pytest.raises(SerializationError, match="parameter 'xs'"):
        FunctionCodec.for_function(f, batched=True)


def test_a_missing_parameter_in_an_item_is_that_items_error():
    codec = FunctionCodec.for_function(scale, batched=True)
    partial = FunctionCodec.from_schemas(["xs"], b"", b"")
    with pytest.raises(SerializationError, match="no value for parameter"):
        codec.decode_item(*partial.encode_args({"xs": 1}))


def test_unbatched_codec_is_unchanged():
    codec = FunctionCodec.for_function(batch_embed)
    assert type(codec) is FunctionCodec
    assert codec.decode_args(*codec.encode_args({"texts": ["a", "b"]})) == {"texts": ["a", "b"]}
