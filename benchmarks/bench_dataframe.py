"""DataFrame benchmarks: rows/s through ``F.catalog_call`` (a trivial function, a batched one) and a
plain scan for scale.

    python benchmarks/bench_dataframe.py [--rows 500000] [--repeat 3] [--out benchmarks/results/dataframe.json]

Starts its own chalkd (process runtime) on a free port with a temporary home, writes a parquet
file of ``--rows`` rows, warms each function up (registration, a replica) with a small run, then
times ``to_arrow()`` of the whole query ``--repeat`` times and reports the best and the median
rows/s. Numbers are for the machine it runs on (note its cores; a shared machine is noisy);
nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_daemon  # noqa: E402
from benchmarks.stats import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    daemon = start_daemon()
    import pyarrow as pa
    import pyarrow.parquet as pq

    import chalkcompute
    from chalkcompute import DataFrame, F, _

    @chalkcompute.function(max_replicas=args.max_replicas)
    def bench_inc(x: int) -> int:
        return x + 1

    @chalkcompute.function(max_replicas=args.max_replicas, max_batching_size=4096, max_buffer_duration=5)
    def bench_inc_batched(xs: list[int]) -> list[int]:
        return [x + 1 for x in xs]

    path = Path(tempfile.mkdtemp(prefix="bench-df-")) / "rows.parquet"
    pq.write_table(pa.table({"id": pa.array(range(args.rows), pa.int64()),
                             "memo": [f"memo {i}" for i in range(args.rows)]}), path, row_group_size=100_000)

    def timed(frame: DataFrame, rows: int) -> dict:
        rates = []
        for _i in range(args.repeat):
            t0 = time.perf_counter()
            out = frame.to_arrow()
            seconds = time.perf_counter() - t0
            assert out.num_rows == rows, (out.num_rows, rows)
            rates.append(rows / seconds)
        return {"rows": rows, "best_rows_per_s": round(max(rates)),
                "median_rows_per_s": round(statistics.median(rates)), "runs": args.repeat}

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "runtime": "process", "max_replicas": args.max_replicas,
                                 "note": "caller, chalkd and replicas share the machine's cores"}}
    try:
        scan = DataFrame.scan(path)
        results["scan_filter_project_no_calls"] = timed(
            scan.filter(_.id >= 0).project({"id": _.id, "n": _.id + 1, "memo": _.memo}), args.rows)
        for label, name in (("catalog_call_trivial", "bench_inc"), ("catalog_call_batched", "bench_inc_batched")):
            query = scan.project({"id": _.id, "y": F.catalog_call(name, _.id)})
            warm = scan.limit(20_000).project({"y": F.catalog_call(name, _.id)}).to_arrow()  # registers, warms
            assert warm.column("y").to_pylist()[:3] == [1, 2, 3]
            results[label] = timed(query, args.rows)
    finally:
        daemon.stop()
    results["target_rows_per_s"] = 100_000
    emit(results, out=args.out)


if __name__ == "__main__":
    main()
