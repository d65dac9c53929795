"""Micro-benchmark of the Arrow IPC codec's per-call overhead.

Prints JSON with microseconds per operation, next to the floor: a bare
``pa.RecordBatch`` built, serialized and read back with no codec around it::

    python benchmarks/bench_serialization.py [--number 20000]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Iterator

import pyarrow as pa

from chalkcompute._serialization import FunctionCodec


def add(x: int, y: int) -> int:
    return x + y


def stream() -> Iterator[dict[str, float]]:
    yield {"loss": 0.5, "step": 1.0}


def untyped_stream():
    yield {"loss": 0.5, "step": 1}


def best_us(fn, number: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` mean, in microseconds: the least noisy estimate."""
    return round(min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    n = parser.parse_args().number

    args = {"x": 1, "y": 2}
    codec = FunctionCodec.for_function(add)
    schema, batch = codec.encode_args(args)

    # The floor: what one bare record batch costs without the codec.
    bare_schema = pa.schema([("x", pa.int64()), ("y", pa.int64())])
    bare = pa.RecordBatch.from_pydict({"x": [1], "y": [2]}, schema=bare_schema)
    bare_bytes = bare.serialize().to_pybytes()

    chunk = {"loss": 0.5, "step": 1.0}
    typed = FunctionCodec.for_function(stream)
    typed_payload = typed.encode_chunks([chunk])
    inferred = FunctionCodec.for_function(untyped_stream)
    inferred_chunk = {"loss": 0.5, "step": 1}
    inferred_payload = inferred.encode_chunks([inferred_chunk])

    results = {
        "bare_batch_encode_us": best_us(
            lambda: pa.RecordBatch.from_pydict({"x": [1], "y": [2]}, schema=bare_schema)
            .serialize().to_pybytes(), n),
        "bare_batch_decode_us": best_us(
            lambda: pa.ipc.read_record_batch(pa.py_buffer(bare_bytes), bare_schema).to_pylist(), n),
        "add_encode_args_us": best_us(lambda: codec.encode_args(args), n),
        "add_decode_args_us": best_us(lambda: codec.decode_args(schema, batch), n),
        "add_encode_result_us": best_us(lambda: codec.encode_result(3), n),
        "dict_chunk_encode_us": best_us(lambda: typed.encode_chunks([chunk]), n),
        "dict_chunk_decode_us": best_us(lambda: typed.decode_results(*typed_payload), n),
        "inferred_dict_chunk_encode_us": best_us(lambda: inferred.encode_chunks([inferred_chunk]), n),
        "inferred_dict_chunk_decode_us": best_us(lambda: inferred.decode_results(*inferred_payload), n),
        "pyarrow": pa.__version__,
        "number": n,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
