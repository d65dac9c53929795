"""Shared by the benchmarks: percentiles, a latency summary, and the JSON output.

    from benchmarks.stats import emit, summary
    emit({"warm": summary(latencies_ms)}, out="benchmarks/results/x.json")   # prints it, writes it
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def summary(ms: list[float]) -> dict:
    """p50, p99 and mean of latencies in milliseconds."""
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def emit(results: dict, out: str = "") -> None:
    """Print the results as JSON; also write them to ``out`` when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
