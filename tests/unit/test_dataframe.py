"""DataFrame, ``_`` expressions and frame operations without a daemon (chalkcompute.dataframe)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import chalkcompute
from chalkcompute import DataFrame, F, _
from chalkcompute.dataframe import ColumnNotFoundError
from chalkcompute.dataframe import progress as progress_mod
from chalkcompute.dataframe.catalog import CatalogCall
from chalkcompute.dataframe.stage import ChunkSizer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def df() -> DataFrame:
    return DataFrame.from_dict({"a": [1, 2, None, 4], "b": ["w", "x", "y", None], "a column": [1.5, 2.5, 3.5, 4.5]})


def _rows(frame: DataFrame) -> dict:
    return frame.to_arrow().to_pydict()


# -- expressions -------------------------------------------------------------------------------------


def test_expressions_arithmetic_comparisons_and_logic(df):
    out = _rows(df.project({
        "sum": _.a + 1, "rsub": 10 - _.a, "mul": _.a * _["a column"], "div": _.a / 2, "neg": -_.a,
        "gt": _.a > 1, "eq": _.b == "x", "both": (_.a > 1) & (_.b != "y"), "either": (_.a < 2) | _.b.is_null(),
        "not": ~(_.a > 1), "isnull": _.a.is_null(), "valid": _.b.is_valid(), "lit": 7,
    }))
    assert out["sum"] == [2, 3, None, 5]
    assert out["rsub"] == [9, 8, None, 6]
    assert out["mul"] == [1.5, 5.0, None, 18.0]
    assert out["div"] == [0, 1, None, 2]  # integer division of ints, as Arrow's divide does
    assert out["neg"] == [-1, -2, None, -4]
    assert out["gt"] == [False, True, None, True]
    assert out["eq"] == [False, True, False, None]
    assert out["both"] == [False, True, False, None]  # Kleene logic: null & true is null
    assert out["either"] == [True, False, None, True]
    assert out["not"] == [True, False, None, False]
    assert out["isnull"] == [False, False, True, False]
    assert out["valid"] == [True, True, True, False]
    assert out["lit"] == [7, 7, 7, 7]


def test_cast_takes_arrow_types_python_types_and_names(df):
    out = df.project({"f": _.a.cast("float64") / 2, "s": _.a.cast(str), "i": _["a column"].cast(pa.int32())})
    with pytest.raises(pa.ArrowInvalid, match="cannot evaluate"):
        out.to_arrow()  # 1.5 -> int32 loses the fraction: a safe cast refuses
    t = df.project({"f": _.a.cast("float64") / 2, "s": _.a.cast(str)}).to_arrow()
    assert t.schema.types == [pa.float64(), pa.string()]
    assert t.column("f").to_pylist() == [0.5, 1.0, None, 2.0]
    assert t.column("s").to_pylist() == ["1", "2", None, "4"]
    with pytest.raises(TypeError, match="cast\\(\\) type must be"):
        _.a.cast(object)


def test_expression_misuse_is_refused_clearly():
    with pytest.raises(TypeError, match=re.escape("use & | ~ instead of and / or / not")):
        bool(_.a > 1)
    with pytest.raises(TypeError, match="is not known until it is evaluated"):
        assert 1 < _.a < 3  # a chained comparison would drop a half
    with pytest.raises(TypeError, match="cannot use"):
        _.a + object()
    assert repr((_.a + 1) > _["a column"]) == "((_.a + 1) > _['a column'])"


def test_a_missing_column_names_it_and_lists_the_columns(df):
    with pytest.raises(ColumnNotFoundError, match=r"no column 'nope': the columns are \['a', 'b', 'a column'\]"):
        df.project({"x": _.nope + 1}).to_arrow()
    with pytest.raises(ColumnNotFoundError, match="no column 'c'"):
        df.select("a").filter(_.b == "x")  # fine until it runs...
        df.select("a").project({"y": _.c}).count()
    # ...and nothing is evaluated before then: a frame is only a plan.
    df.project({"x": _.nope})


# -- operations ----------------------------------------------------------------------------------------


def test_operations_are_immutable_and_lazy(df):
    projected = df.project({"a": _.a})
    assert df.columns == ["a", "b", "a column"]
    assert projected.columns == ["a"]
    wider = df.with_columns({"c": _.a * 2, "a": _.a + 100})  # replaces a in place, adds c at the end
    assert wider.columns == ["a", "b", "a column", "c"]
    assert _rows(wider)["a"] == [101, 102, None, 104]
    assert _rows(df)["a"] == [1, 2, None, 4]


def test_select_filter_limit_count(df):
    assert _rows(df.select("b", "a")) == {"b": ["w", "x", "y", None], "a": [1, 2, None, 4]}
    assert _rows(df.filter(_.a > 1)) == {"a": [2, 4], "b": ["x", None], "a column": [2.5, 4.5]}
    assert _rows(df.limit(2).select("a")) == {"a": [1, 2]}
    assert df.limit(0).to_arrow().num_rows == 0
    assert df.filter(_.a.is_null()).count() == 1
    assert df.count() == 4
    with pytest.raises(TypeError, match="must be a boolean expression"):
        df.filter(_.a + 1).to_arrow()
    with pytest.raises(TypeError, match="filter\\(\\) takes an expression"):
        df.filter("a > 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit\\(\\) takes a row count"):
        df.limit(-1)
    with pytest.raises(TypeError, match="project\\(\\) takes a non-empty dict"):
        df.project({})


def test_from_arrow_shapes():
    t = pa.table({"x": [1, 2, 3]})
    assert DataFrame.from_arrow(t).count() == 3
    assert DataFrame.from_arrow(t.to_batches()).count() == 3
    assert DataFrame.from_arrow(t.to_batches()[0]).count() == 3
    reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches())
    once = DataFrame.from_arrow(reader).filter(_.x > 1)
    assert _rows(once) == {"x": [2, 3]}
    with pytest.raises(RuntimeError, match="consumed only once"):
        once.to_arrow()
    with pytest.raises(TypeError, match="from_arrow\\(\\) takes a pyarrow Table"):
        DataFrame.from_arrow({"x": [1]})


def test_pandas_is_optional_and_its_absence_names_the_extra(df):
    if "pandas" in sys.modules or _has_pandas():
        pytest.skip("pandas is installed here: the ImportError path cannot be seen")
    with pytest.raises(ImportError, match=r"DataFrame.from_pandas needs pandas.*chalkd\[pandas\]"):
        DataFrame.from_pandas(object())
    with pytest.raises(ImportError, match=r"DataFrame.to_pandas needs pandas.*chalkd\[pandas\]"):
        df.to_pandas()


def _has_pandas() -> bool:
    import importlib.util

    return importlib.util.find_spec("pandas") is not None


# -- scanning ------------------------------------------------------------------------------------------


def _write_parts(root: Path, parts: int, rows: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in range(parts):
        ids = list(range(p * rows, (p + 1) * rows))
        path = root / f"part-{p:03d}.parquet"
        pq.write_table(pa.table({"id": pa.array(ids, pa.int32()), "memo": [f"m{i}" for i in ids]}), path,
                       row_group_size=max(1, rows // 4))
        paths.append(path)
    (root / "_SUCCESS").write_text("")  # not data: skipped, as pyarrow's discovery does
    return paths


def test_scan_a_file_a_directory_a_glob_and_a_list_in_order(tmp_path, monkeypatch):
    paths = _write_parts(tmp_path / "data", parts=5, rows=1000)
    expected = list(range(5000))
    assert DataFrame.scan(tmp_path / "data").select("id").to_arrow().column("id").to_pylist() == expected
    assert DataFrame.scan(str(tmp_path / "data" / "*.parquet")).count() == 5000
    assert DataFrame.scan([paths[3], paths[1]]).select("id").to_arrow().column("id").to_pylist() == \
        list(range(3000, 4000)) + list(range(1000, 2000))
    monkeypatch.chdir(tmp_path / "data")  # paths are the caller's, relative to its working directory
    assert DataFrame.scan("part-002.parquet").filter(_.id >= 2990).select("id").to_arrow().num_rows == 10
    batches = list(DataFrame.scan(tmp_path / "data").iter_batches())
    assert len(batches) >= 5  # read batch by batch, never as one table
    assert sum(b.num_rows for b in batches) == 5000


def test_scan_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*missing.parquet"):
        DataFrame.scan(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        DataFrame.scan(str(tmp_path / "*.parquet"))
    with pytest.raises(TypeError, match="DataFrame.scan\\(\\) takes a path"):
        DataFrame.scan(42)  # type: ignore[arg-type]


def test_filters_are_pushed_into_the_scan_and_only_needed_columns_read(tmp_path):
    _write_parts(tmp_path / "d", parts=2, rows=100)
    frame = DataFrame.scan(tmp_path / "d").filter(_.id > 150).project({"twice": _.id * 2})
    from chalkcompute.dataframe.plan import Plan

    columns, pushed, skip = Plan(frame._source, frame._ops).pushdown()
    assert columns == ["id"] and skip == 1 and pushed is not None
    assert frame.to_arrow().column("twice").to_pylist() == [2 * i for i in range(151, 200)]
    assert DataFrame.scan(tmp_path / "d").filter(_.id < 10).count() == 10


def test_write_parquet_streams_and_round_trips(tmp_path, df):
    out = tmp_path / "out.parquet"
    assert df.with_columns({"c": _.a * 3}).write_parquet(out) == 4
    assert pq.read_table(out).column("c").to_pylist() == [3, 6, None, 12]
    assert df.filter(_.a > 100).write_parquet(tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").schema.names == ["a", "b", "a column"]


# -- F.catalog_call without a daemon -------------------------------------------------------------------


def test_catalog_call_builds_an_expression_and_checks_its_arguments():
    call = F.catalog_call("extract_entities", _.memo, output_type=str, on_error="null", lang=_.lang)
    assert isinstance(call, CatalogCall)
    assert call.columns() == {"memo", "lang"}
    assert call.output_type == pa.string()
    assert repr(call) == "F.catalog_call('extract_entities', _.memo, lang=_.lang)"
    with pytest.raises(ValueError, match="on_error=...\\) must be 'raise' or 'null'"):
        F.catalog_call("f", _.x, on_error="ignore")
    with pytest.raises(TypeError, match="needs the function's name"):
        F.catalog_call(None, _.x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="runs only inside a DataFrame query"):
        call.evaluate(pa.record_batch({"memo": ["a"], "lang": ["en"]}))


def test_the_exports_match_the_reference_import():
    assert {"DataFrame", "F", "_"} <= set(chalkcompute.__all__)
    assert chalkcompute.DataFrame is DataFrame and chalkcompute.F is F and chalkcompute._ is _


# -- the pieces of a run --------------------------------------------------------------------------------


def test_chunk_sizer_moves_toward_the_target_at_most_2x_a_step():
    s = ChunkSizer()
    for _i in range(20):
        s.observe(s.rows, 0.0001)  # very fast: grows to the cap
    assert s.rows == 16384
    s.observe(s.rows, 10.0)
    assert s.rows == 8192  # halved, not collapsed
    s.observe(10, 10.0)  # a short tail is ignored
    assert s.rows == 8192


def test_progress_bar_shows_rows_and_rate_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(progress_mod, "DELAY", 0.0)
    out = io.StringIO()
    with progress_mod.RowProgress("q", file=out, force=True) as p:
        p.advance(1500)
        p.advance(500)
    text = out.getvalue()
    assert "2,000 rows" in text and "rows/s" in text
    quiet = io.StringIO()  # not a terminal: nothing drawn
    with progress_mod.RowProgress("q", file=quiet) as p:
        p.advance(10)
    assert quiet.getvalue() == ""


def test_pandas_round_trip_where_pandas_is_installed():
    pd = pytest.importorskip("pandas")  # the optional extra; the test above covers its absence
    frame = DataFrame.from_pandas(pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[10, 11, 12]))
    out = frame.filter(_.a > 1).with_columns({"c": _.a * 2}).to_pandas()
    assert isinstance(out, pd.DataFrame)
    assert out.to_dict("list") == {"a": [2, 3], "b": ["y", "z"], "c": [4, 6]}
    with pytest.raises(TypeError, match="from_pandas\\(\\) takes a pandas.DataFrame"):
        DataFrame.from_pandas([1])
