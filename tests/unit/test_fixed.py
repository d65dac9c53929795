"""The one-row int64/float64 fast path writes exactly what pyarrow writes, and steps aside otherwise."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from chalkcompute._fixed import FixedLayout
from chalkcompute._serialization import FunctionCodec

pytestmark = pytest.mark.timeout(30)

SCHEMA = pa.schema([("x", pa.int64()), ("y", pa.float64()), ("z", pa.int64())])


def _arrow(columns: list[list], schema: pa.Schema = SCHEMA) -> bytes:
    arrays = [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema).serialize().to_pybytes()


@pytest.mark.parametrize("row", [[0, 0.0, 0], [3, 0.5, -1], [2**63 - 1, 1e308, -(2**63)], [7, -0.0, 42]])
def test_the_bytes_are_pyarrows_and_read_back(row):
    layout = FixedLayout.of(SCHEMA)
    assert layout is not None
    columns = [[v] for v in row]
    assert layout.encode(columns) == _arrow(columns)
    assert layout.decode(_arrow(columns)) == columns


def test_nan_travels():
    layout = FixedLayout.of(SCHEMA)
    assert layout is not None
    (x,), (y,), (z,) = layout.decode(layout.encode([[1], [math.nan], [2]]))
    assert (x, z) == (1, 2) and math.isnan(y)


@pytest.mark.parametrize("columns", [
    [[None], [1.0], [1]],          # a null
    [[True], [1.0], [1]],          # a bool is not an int64 here
    [[2**63], [1.0], [1]],         # out of range
    [[1], [1], [1]],               # an int where a float goes: pyarrow converts it
    [[1, 2], [1.0, 2.0], [1, 2]],  # two rows
])
def test_anything_else_is_left_to_pyarrow(columns):
    layout = FixedLayout.of(SCHEMA)
    assert layout is not None
    assert layout.encode(columns) is None


def test_batches_it_did_not_write_are_not_misread():
    layout = FixedLayout.of(SCHEMA)
    assert layout is not None
    assert layout.decode(_arrow([[1, 2], [1.0, 2.0], [3, 4]])) is None
    assert layout.decode(_arrow([[None], [1.0], [1]])) is None
    assert layout.decode(b"") is None


def test_only_int64_and_float64_columns_have_a_layout():
    assert FixedLayout.of(pa.schema([("s", pa.string())])) is None
    assert FixedLayout.of(pa.schema([("x", pa.int64()), ("b", pa.bool_())])) is None
    assert FixedLayout.of(pa.schema([])) is None
    assert FixedLayout.of(None) is None


def test_a_codec_round_trips_through_it_and_around_it():
    def f(x: int, y: float) -> int: ...

    codec = FunctionCodec.for_function(f)
    schema, batch = codec.encode_args({"x": 3, "y": 0.25})
    assert codec.decode_args(schema, batch) == {"x": 3, "y": 0.25}
    schema, batch = codec.encode_args({"x": None, "y": 2})   # pyarrow's path: a null, an int for a float
    assert codec.decode_args(schema, batch) == {"x": None, "y": 2.0}
    schema, batch = codec.encode_result(41)
    assert codec.decode_results(schema, batch) == [41]
