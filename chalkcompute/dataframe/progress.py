"""A progress bar for a long DataFrame query: rows done and rows/s, on stderr when it is a terminal.

Nothing shows for a query that ends within :data:`DELAY` seconds, nor when stderr is a file or a pipe
(a log should not fill with redraws); ``CHALK_PROGRESS=0``/``1`` decides as for every SDK display::

    with RowProgress("extract_entities") as p:
        for batch in batches:
            p.advance(batch.num_rows)
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from chalkcompute import _progress

__all__ = ["DELAY", "RowProgress"]

DELAY = 1.0  # seconds before the bar appears


class RowProgress:
    """Counts rows; shows them (and the rate) once the query has run DELAY seconds."""

    def __init__(self, label: str, *, file: IO[str] | None = None, force: bool | None = None) -> None:
        stream = file if file is not None else sys.stderr
        if force is not None:
            self.enabled = force
        elif file is not None:
            self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        else:  # the SDK's one rule: CHALK_PROGRESS=0/1, else a terminal or a notebook
            self.enabled = _progress.enabled()
        self.label, self.file = label, stream
        self.rows = 0
        self.started = time.monotonic()
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> RowProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self._refresh()
            self.bar.stop()
            self.bar = None

    def advance(self, rows: int) -> None:
        self.rows += rows
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.started < DELAY:
                return
            console = Console(file=self.file, force_terminal=True)
            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                TextColumn("{task.completed:,.0f} rows"), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), console=console, transient=False)
            self.task = self.bar.add_task(self.label, total=None, rate="")
            self.bar.start()
        self._refresh()

    def _refresh(self) -> None:
        assert self.bar is not None
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.update(self.task, completed=self.rows, rate=f"{self.rows / elapsed:,.0f} rows/s")
