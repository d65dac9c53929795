"""DataFrame with F.catalog_call against a real chalkd (process runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import chalkcompute
from chalkcompute import DataFrame, F, _
from chalkcompute.dataframe import ColumnNotFoundError, RowError
from chalkcompute.exceptions import FunctionNotFoundError, FunctionSignatureError, NotSupportedError
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.usefixtures("daemon"), pytest.mark.timeout(180)]


@chalkcompute.function
def extract_entities(memo: str) -> str:
    """The reference's function, with a stand-in for spaCy: capitalised words are the entities."""
    import json

    return json.dumps([{"text": w, "label": "ORG"} for w in memo.split() if w[:1].isupper()])


@chalkcompute.function
def df_scale(x: int, factor: int = 10) -> int:
    return x * factor


@chalkcompute.function
def df_check(x: int) -> int:
    if x % 1000 == 7:
        raise ValueError(f"bad row value {x}")
    return x + 1


@chalkcompute.function
def df_maybe(x: int | None, label: str) -> str:
    return f"{label}:{x}"


@chalkcompute.function
def df_untyped(x: int):  # no return hint: F.catalog_call needs output_type
    return str(x)


@chalkcompute.function
def df_untyped_low_fails(x: int):
    if x < 64:
        raise ValueError(f"low {x}")
    return str(x)


@chalkcompute.function
def df_numbers(n: int):
    yield from range(n)


@chalkcompute.function(max_batching_size=64, max_buffer_duration=10)
def df_batched(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


@chalkcompute.function(retries=chalkcompute.RetryPolicy.linear(attempts=2, delay=0.0))
def df_flaky(x: int, runs: str) -> int:
    """Leaves a file per run of each row; row 5 fails its first run."""
    import os
    import uuid

    open(os.path.join(runs, f"{x}-{uuid.uuid4().hex}"), "w").close()
    if x == 5 and sum(1 for n in os.listdir(runs) if n.startswith("5-")) == 1:
        raise ValueError("first run of row 5")
    return x * 2


@chalkcompute.function(max_replicas=3)
async def df_gated(x: int, gate: str) -> int:
    """Rows below 64 (the first batch call) wait for ``gate`` and leave a file if cancelled; row 100
    fails at once."""
    import asyncio
    import os

    if x == 100:
        raise ValueError("row 100 fails")
    try:
        while x < 64 and not os.path.exists(gate):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        open(f"{gate}.cancelled-{x}", "w").close()
        raise
    return x


@chalkcompute.function(max_batching_size=128, max_buffer_duration=10)
def df_table(rows: pa.Table) -> list[float]:
    """A batched function over a table: a row per input."""
    return [t * len(s) for t, s in zip(rows.column("weight").to_pylist(), rows.column("text").to_pylist(), strict=True)]


@chalkcompute.cls
class DfText:
    @chalkcompute.method()
    def shout(self, text: str) -> str:
        return text.upper()


def _transactions(path: Path, n: int) -> pa.Table:
    table = pa.table({
        "transaction_id": pa.array(range(n), pa.int32()),  # parquet's int32: cast to the int64 parameter
        "memo": [f"Paid Acme Corp {i} in Berlin" if i % 3 else f"refund {i}" for i in range(n)],
        "amount": [float(i) for i in range(n)],
    })
    pq.write_table(table, path, row_group_size=max(1, n // 7))
    return table


def _entities(memo: str) -> str:
    import json

    return json.dumps([{"text": w, "label": "ORG"} for w in memo.split() if w[:1].isupper()])


def test_the_reference_example_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _transactions(tmp_path / "transactions.parquet", 3000)

    # -- as the reference writes it --
    results = (
        DataFrame.scan("transactions.parquet")
        .project({
            "transaction_id": _.transaction_id,
            "memo": _.memo,
            "entities": F.catalog_call("extract_entities", _.memo),
        })
    )
    # --

    out = results.to_arrow()
    assert out.schema.names == ["transaction_id", "memo", "entities"]
    assert out.schema.field("entities").type == pa.string()
    assert out.column("transaction_id").to_pylist() == table.column("transaction_id").to_pylist()
    assert out.column("entities").to_pylist() == [_entities(m) for m in table.column("memo").to_pylist()]


def test_many_batches_and_files_with_filter_limit_and_with_columns(tmp_path):
    rows, parts = 30_000, 4
    for p in range(parts):
        ids = range(p * rows, (p + 1) * rows)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int32())}), tmp_path / f"part-{p}.parquet",
                       row_group_size=7_000)
    frame = (DataFrame.scan(tmp_path)
             .filter(_.id >= 5)  # pushed down into the scan
             .with_columns({"scaled": F.catalog_call("df_scale", _.id), "by3": F.catalog_call("df_scale", _.id, 3)}))
    batches = list(frame.iter_batches())
    assert len(batches) > parts  # many record batches, each through its own batch calls
    out = pa.Table.from_batches(batches)
    ids = list(range(5, rows * parts))
    assert out.column("id").to_pylist() == ids
    assert out.column("scaled").to_pylist() == [10 * i for i in ids]
    assert out.column("by3").to_pylist() == [3 * i for i in ids]
    # limit stops the scan and the calls: only the first rows come out
    first = frame.filter(_.scaled > 1000).limit(5).select("scaled").to_arrow()
    assert first.column("scaled").to_pylist() == [1010, 1020, 1030, 1040, 1050]


def test_argument_columns_are_cast_to_the_parameter_types():
    frame = DataFrame.from_arrow(pa.table({
        "x": pa.array([1, 2, None], pa.int32()),
        "label": pa.array(["a", "b", "a"], pa.large_string()).dictionary_encode(),
    }))
    out = frame.project({"s": F.catalog_call("df_maybe", _.x, label=_.label)}).to_arrow()
    assert out.column("s").to_pylist() == ["a:1", "b:2", "a:None"]  # x is Optional: its null goes through


def test_a_null_for_a_parameter_that_is_not_optional_names_the_row():
    frame = DataFrame.from_dict({"x": pa.array([1, None, 3], pa.int64())})
    with pytest.raises(RowError, match=r"failed on row 1: argument 'x' is null") as info:
        frame.project({"y": F.catalog_call("df_scale", _.x)}).to_arrow()
    assert info.value.row == 1
    out = frame.project({"y": F.catalog_call("df_scale", _.x, on_error="null")}).to_arrow()
    assert out.column("y").to_pylist() == [10, None, 30]


def test_on_error_null_gives_null_and_one_warning_with_the_first_three(capsys):
    frame = DataFrame.from_dict({"x": list(range(5000))})
    out = frame.with_columns({"y": F.catalog_call("df_check", _.x, on_error="null")}).to_arrow()
    bad = [i for i in range(5000) if i % 1000 == 7]
    assert out.column("y").to_pylist() == [None if i in bad else i + 1 for i in range(5000)]
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "5 row(s) failed and are null" in err
    assert "row 7: ValueError: bad row value 7; row 1007: ValueError: bad row value 1007; row 2007:" in err
    assert "row 3007" not in err


def test_on_error_raise_names_the_failing_row_and_the_remote_error():
    frame = DataFrame.from_dict({"x": list(range(3000, 6000))})
    with pytest.raises(RowError) as info:
        frame.with_columns({"y": F.catalog_call("df_check", _.x)}).to_arrow()
    # The first row to fail: one of 7 (x=3007), 1007, 2007; its message comes from the replica.
    assert info.value.row in (7, 1007, 2007)
    assert f"bad row value {3000 + info.value.row}" in str(info.value)
    assert "ValueError" in str(info.value.error)


def test_a_failing_row_is_retried_without_rerunning_the_others(tmp_path):
    frame = DataFrame.from_dict({"x": list(range(20))})
    out = frame.project({"y": F.catalog_call("df_flaky", _.x, str(tmp_path))}).to_arrow()
    assert out.column("y").to_pylist() == [2 * x for x in range(20)]
    runs = [name.split("-")[0] for name in os.listdir(tmp_path)]
    assert runs.count("5") == 2  # failed once, retried
    assert all(runs.count(str(x)) == 1 for x in range(20) if x != 5)  # the others ran once


def test_a_failure_raises_before_earlier_batches_finish_and_cancels_them(tmp_path):
    gate = tmp_path / "gate"
    frame = DataFrame.from_dict({"x": list(range(200))})
    try:
        with pytest.raises(RowError, match="failed on row 100: ValueError: row 100 fails") as info:
            # the batch of rows 0-63 is still waiting for the gate: the failure does not wait for its turn
            frame.project({"y": F.catalog_call("df_gated", _.x, str(gate))}).to_arrow()
        assert info.value.row == 100
        assert not gate.exists()
        # ...and the batch still waiting was cancelled: its running row saw the cancel in the replica.
        wait_for(lambda: list(tmp_path.glob("gate.cancelled-*")), timeout=30, what="the waiting row's cancel")
    finally:
        gate.touch()  # frees the replica if the cancel had not reached it


def test_an_unknown_function_fails_before_any_row_is_read():
    read = []

    def batches():
        read.append(True)
        yield pa.record_batch({"x": [1]})

    reader = pa.RecordBatchReader.from_batches(pa.schema([("x", pa.int64())]), batches())
    frame = DataFrame.from_arrow(reader).project({"y": F.catalog_call("df_no_such_function", _.x)})
    with pytest.raises(FunctionNotFoundError, match="df_no_such_function"):
        frame.to_arrow()
    assert read == []


def test_an_unknown_column_and_a_wrong_argument_count_fail_before_any_call():
    frame = DataFrame.from_dict({"x": [1, 2], "y": [3, 4]})
    with pytest.raises(ColumnNotFoundError, match=r"no column 'z': the columns are \['x', 'y'\]"):
        frame.project({"s": F.catalog_call("df_scale", _.z)}).to_arrow()
    with pytest.raises(FunctionSignatureError, match=r"df_scale\(x: int, factor: int = 10\) -> int"):
        frame.project({"s": F.catalog_call("df_scale", _.x, _.y, _.x)}).to_arrow()
    with pytest.raises(FunctionSignatureError, match="unexpected keyword argument 'nope'"):
        frame.project({"s": F.catalog_call("df_scale", _.x, nope=_.y)}).to_arrow()


def test_output_type_generators_and_a_handle_by_name():
    frame = DataFrame.from_dict({"x": [1, 2]})
    with pytest.raises(FunctionSignatureError, match="has no return type hint.*output_type="):
        frame.project({"s": F.catalog_call("df_untyped", _.x)}).to_arrow()
    out = frame.project({"s": F.catalog_call("df_untyped", _.x, output_type=pa.string())}).to_arrow()
    assert out.column("s").to_pylist() == ["1", "2"]
    # an unhinted function's batches are typed by their values (an all-failed one is null-typed)
    wide = DataFrame.from_dict({"x": list(range(200))})
    out = wide.project({"s": F.catalog_call("df_untyped_low_fails", _.x, output_type=str, on_error="null")})
    assert out.to_arrow().column("s").to_pylist() == [None] * 64 + [str(x) for x in range(64, 200)]
    with pytest.raises(NotSupportedError, match="generator function"):
        frame.project({"s": F.catalog_call("df_numbers", _.x)}).to_arrow()
    # output_type also casts a typed result
    out = frame.project({"s": F.catalog_call("df_scale", _.x, output_type="float64")}).to_arrow()
    assert out.column("s").type == pa.float64() and out.column("s").to_pylist() == [10.0, 20.0]


def test_a_class_method_and_a_batched_function():
    frame = DataFrame.from_dict({"t": ["a", "b", "c"], "x": [1, 2, 3]})
    out = frame.project({"u": F.catalog_call("DfText.shout", _.t), "d": F.catalog_call("df_batched", _.x)})
    assert out.to_arrow().to_pydict() == {"u": ["A", "B", "C"], "d": [2, 4, 6]}


def test_a_batched_function_over_a_table_gets_its_columns_by_name():
    frame = DataFrame.from_dict({"memo": ["a", "bb", "ccc"], "weight": pa.array([1, 2, 3], pa.int32())})
    out = frame.project({"score": F.catalog_call("df_table", _.weight, text=_.memo)}).to_arrow()
    assert out.column("score").to_pylist() == [1.0, 4.0, 9.0]
    with pytest.raises(FunctionSignatureError, match="its columns are named by keyword"):
        frame.project({"score": F.catalog_call("df_table", _.weight + 1, text=_.memo)}).to_arrow()


def test_nested_calls_and_a_filter_on_a_call():
    frame = DataFrame.from_dict({"x": list(range(10))})
    out = frame.filter(F.catalog_call("df_scale", _.x) > 50).project({
        "x": _.x, "twice_scaled": F.catalog_call("df_scale", F.catalog_call("df_scale", _.x), 2)})
    assert out.to_arrow().to_pydict() == {"x": [6, 7, 8, 9], "twice_scaled": [120, 140, 160, 180]}


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _peak_growth(batches, warm_rows: int) -> tuple[int, int]:
    """(rows, RSS growth) over a stream, measured from after its first ``warm_rows`` rows: the
    SDK's connection, caches and allocator pools are set up by then; what follows must not grow
    with the rows."""
    rows, base, peak = 0, None, 0
    for batch in batches:
        rows += batch.num_rows
        if base is None and rows >= warm_rows:
            base = peak = _rss()
        elif base is not None:
            peak = max(peak, _rss())
    assert base is not None, "the stream was shorter than its warm-up"
    return rows, peak - base


@pytest.mark.timeout(600)
def test_two_million_rows_through_a_function_with_the_callers_memory_bounded(tmp_path):
    # 2M rows of ~120-byte memos (~250 MB as Arrow): scanned, filtered, and every row through a function.
    n, chunk = 2_000_000, 200_000
    path = tmp_path / "big.parquet"
    schema = pa.schema([("id", pa.int64()), ("memo", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, n, chunk):
            ids = pa.array(range(start, start + chunk), pa.int64())
            memo = pa.array([f"{i:012d}" * 10 for i in range(start, start + chunk)])
            w.write_table(pa.table({"id": ids, "memo": memo}), row_group_size=50_000)
    frame = DataFrame.scan(path).filter(_.id >= 100).project({
        "id": _.id, "y": F.catalog_call("df_scale", _.id), "memo": _.memo})
    expected = iter(range(100, n))

    def checked():
        for batch in frame.iter_batches():
            ids = batch.column("id")
            assert ids[0].as_py() == next(expected)  # in order, nothing skipped or repeated
            for _i in range(batch.num_rows - 1):
                next(expected)
            assert pc.all(pc.equal(batch.column("y"), pc.multiply(ids, 10))).as_py()
            yield batch

    rows, growth = _peak_growth(checked(), warm_rows=300_000)
    assert rows == n - 100
    assert next(expected, None) is None
    assert growth < 100 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB while ~250 MB of rows went through"


SCRIPT = '''
import chalkcompute


@chalkcompute.function
def extract_entities(memo: str) -> str:
    import json
    return json.dumps([{"text": w, "label": "ORG"} for w in memo.split() if w[:1].isupper()])


from chalkcompute import DataFrame, F, _

results = (
    DataFrame.scan("transactions.parquet")
    .project({
        "transaction_id": _.transaction_id,
        "memo": _.memo,
        "entities": F.catalog_call("extract_entities", _.memo),
    })
)

results.write_parquet("entities.parquet")
print("rows", results.count())
'''


def test_the_reference_script_runs_as_written_without_wait_ready(tmp_path, daemon):
    table = _transactions(tmp_path / "transactions.parquet", 500)
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "CHALK_COMPUTE_TARGET": daemon.target, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=150, env=env)
    assert out.returncode == 0, out.stderr
    assert "rows 500" in out.stdout
    written = pq.read_table(tmp_path / "entities.parquet")
    assert written.column("transaction_id").to_pylist() == table.column("transaction_id").to_pylist()
    assert written.column("entities").to_pylist() == [_entities(m) for m in table.column("memo").to_pylist()]
