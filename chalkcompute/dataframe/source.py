"""Where a DataFrame's rows come from: parquet files (scanned batch by batch) or Arrow data in memory.

>>> import pyarrow as pa
>>> src = Source.of_arrow(pa.table({"a": [1, 2, 3]}))
>>> [b.num_rows for b in src.batches()]
[3]
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

__all__ = ["BATCH_ROWS", "Source"]

# Rows per scanned batch, and how far the scan reads ahead: a few batches of a file are in memory
# at once, never the whole file.
BATCH_ROWS = 65_536
_READAHEAD_BATCHES, _READAHEAD_FILES = 2, 1


def _expand(path: str | os.PathLike) -> list[str]:
    """The parquet files of one path: itself, the files under a directory, or a glob's matches."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"DataFrame.scan() takes a path, a glob or a list of them, got {path!r}")
    text = os.fspath(path)
    if glob.has_magic(text):
        found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(f"DataFrame.scan: the glob {text!r} matches no file "
                                    f"(relative to {os.getcwd()})")
        return found
    p = Path(text)
    if p.is_dir():
        # As pyarrow's discovery does: files starting with "." or "_" (_SUCCESS, .crc) are not data.
        found = sorted(str(f) for f in p.rglob("*") if f.is_file()
                       and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
        if not found:
            raise FileNotFoundError(f"DataFrame.scan: the directory {text!r} has no data file")
        return found
    if not p.exists():
        raise FileNotFoundError(f"DataFrame.scan: no such file or directory: {text!r} "
                                f"(relative to {os.getcwd()})")
    return [text]


class Source:
    """A dataset (files, or tables in memory) or a one-shot stream of batches."""

    def __init__(self, dataset: ds.Dataset | None, label: str, stream: pa.RecordBatchReader | None = None) -> None:
        self.dataset, self.label, self.stream = dataset, label, stream
        self.schema: pa.Schema = dataset.schema if dataset is not None else stream.schema  # type: ignore[union-attr]

    @classmethod
    def scan(cls, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Source:
        paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else path_or_paths
        if isinstance(paths, (bytes, dict)) or not isinstance(paths, Sequence) or not paths:
            raise TypeError(f"DataFrame.scan() takes a path, a glob or a non-empty list of them, got {paths!r}")
        files = [f for p in paths for f in _expand(p)]
        try:
            dataset = ds.dataset(files, format="parquet")
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"DataFrame.scan: cannot read {files[0] if len(files) == 1 else files}: {exc}") from None
        label = str(paths[0]) if len(paths) == 1 else f"{len(files)} files"
        return cls(dataset, label)

    @classmethod
    def of_arrow(cls, data: Any) -> Source:
        if isinstance(data, pa.RecordBatchReader):
            return cls(None, "a stream of batches", stream=data)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        elif isinstance(data, (list, tuple)) and data and all(isinstance(b, pa.RecordBatch) for b in data):
            data = pa.Table.from_batches(list(data))
        elif isinstance(data, (list, tuple)) and data and all(isinstance(b, pa.Table) for b in data):
            data = pa.concat_tables(list(data))
        if not isinstance(data, pa.Table):
            raise TypeError("DataFrame.from_arrow() takes a pyarrow Table, a RecordBatch, a list of either or a "
                            f"RecordBatchReader, got {type(data).__name__}")
        return cls(ds.dataset(data), f"a table of {data.num_rows} rows")

    def batches(self, columns: list[str] | None = None,
                filter: pc.Expression | None = None) -> Iterator[pa.RecordBatch]:
        """The rows, in order, in batches of at most BATCH_ROWS, read as they are consumed."""
        if self.dataset is None:
            yield from self._stream(columns, filter)
            return
        yield from self.dataset.to_batches(columns=columns, filter=filter, batch_size=BATCH_ROWS,
                                           batch_readahead=_READAHEAD_BATCHES,
                                           fragment_readahead=_READAHEAD_FILES)

    def _stream(self, columns: list[str] | None, filter: pc.Expression | None) -> Iterator[pa.RecordBatch]:
        stream, self.stream = self.stream, None
        if stream is None:
            raise RuntimeError("this DataFrame reads a RecordBatchReader, which can be consumed only once")
        scanner = ds.Scanner.from_batches(stream, columns=columns, filter=filter, batch_size=BATCH_ROWS)
        yield from scanner.to_batches()

    def count_rows(self, filter: pc.Expression | None = None) -> int | None:
        """The row count from metadata where the dataset can give it without a scan; None otherwise."""
        if self.dataset is None:
            return None
        return self.dataset.count_rows(filter=filter)
