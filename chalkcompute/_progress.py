"""Progress displays for long SDK work: image builds, large volume transfers, ``map(progress=True)``.

    transfer = Transfer("put models:weights.bin")
    transfer.sized(total)          # a bar appears when total >= LARGE_TRANSFER and progress is on
    transfer.done += n             # per chunk, by whoever moves the bytes (any thread)
    transfer.close()               # the bar's last state, then it goes

When a display shows: only when stderr is a terminal or the process is a Jupyter kernel, so logs and CI
output never fill with redraws. ``CHALK_PROGRESS=0`` turns every display off, ``CHALK_PROGRESS=1`` forces
them (rendered as for a terminal, whatever stderr is: how tests see them).

What it costs: the work being followed only adds integers to ``done``; nothing reads them unless a display
shows, and then a rich ``Live`` re-reads them :data:`REFRESH_PER_SECOND` times a second from its own thread.
rich is imported only when a display first shows. Every display of the process shares one live area at the
foot of stderr (one row each), so concurrent builds and transfers do not draw over each other; log lines
printed with :func:`print_above` appear above it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.live import Live
    from rich.progress import Progress, Task, TaskID

__all__ = ["LARGE_TRANSFER", "REFRESH_PER_SECOND", "BuildSteps", "Counter", "Transfer", "acount_items", "count_items",
           "enabled", "print_above", "sized_total"]

T = TypeVar("T")
log = logging.getLogger(__name__)

LARGE_TRANSFER = 8 << 20  # bytes: a volume transfer this large shows a bar (smaller ones end too fast to read)
REFRESH_PER_SECOND = 4
_ON = {"1", "true", "yes", "on"}
_OFF = {"0", "false", "no", "off"}
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")  # the Docker engine's classic builder, passed on by chalkd


def enabled() -> bool:
    """Whether displays show now: ``CHALK_PROGRESS`` if set to a yes/no word, else whether stderr is a
    terminal or this is a notebook."""
    value = os.environ.get("CHALK_PROGRESS", "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stderr
        pass
    return _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")  # never imported here: a notebook has imported it already
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython must not break a transfer
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _Row(Protocol):
    label: str
    done: int
    total: int | None

    def amount(self, task: Task) -> str: ...


class _Board:
    """The one live area: a rich Progress with a row per display, drawn by a Live that starts with the
    first row and stops (erasing itself) after the last. Its refresh thread reads each row's ``done``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[_Row, TaskID] = {}
        self._live: Live | None = None
        self._progress: Progress | None = None
        self._console: Console | None = None

    # A display is never worth failing the work it follows: a stderr that breaks under rich (closed,
    # odd) logs once at debug level and the work goes on without the display.

    def add(self, row: _Row) -> None:
        with self._lock:
            try:
                if self._live is None:
                    self._start()
                assert self._progress is not None
                self._rows[row] = self._progress.add_task(row.label, total=row.total, amount="")
            except Exception:  # noqa: BLE001 - see above
                log.debug("progress display failed to start", exc_info=True)
                self._reset()

    def remove(self, row: _Row) -> None:
        with self._lock:
            task = self._rows.pop(row, None)
            if task is None or self._live is None or self._progress is None:
                return
            try:
                self._sync(row, task)
                self._live.refresh()  # the row's last numbers stay on screen until the area goes
                self._progress.remove_task(task)
                if not self._rows:
                    self._reset()
            except Exception:  # noqa: BLE001 - see above
                log.debug("progress display failed", exc_info=True)
                self._reset()

    def print(self, text: str) -> bool:
        """``text`` above the live area; False when no area shows (or it failed: print it yourself)."""
        with self._lock:
            if self._console is None:
                return False
            try:
                self._console.out(text, highlight=False)
                return True
            except Exception:  # noqa: BLE001 - see above
                log.debug("progress display failed", exc_info=True)
                self._reset()
                return False

    def _reset(self) -> None:
        live, self._live, self._progress, self._console = self._live, None, None, None
        self._rows.clear()  # rows still open find no task at close: nothing more to draw
        if live is not None:
            with contextlib.suppress(Exception):
                live.stop()

    def _start(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
        from rich.table import Column

        forced = os.environ.get("CHALK_PROGRESS", "").strip().lower() in _ON
        # Bound to stderr as it is now (pytest's capture, a notebook's stream).
        stderr = cast("IO[str]", _Guarded(sys.stderr))  # duck-typed: rich needs only write, flush, isatty
        self._console = Console(file=stderr, force_terminal=True if forced else None, highlight=False)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False,  # paths and names are not rich markup
                       table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[amount]}", markup=False, table_column=Column(no_wrap=True)),
            console=self._console, auto_refresh=False, expand=True)
        # The area is drawn from _Fresh, which reads the rows as it is drawn: at each refresh and below
        # each print_above (rich redraws the area under printed lines), so what shows is never stale.
        # sys.stdout and sys.stderr are left alone: rich's redirection would send the program's stdout
        # to stderr while a row shows, drop a partial line written meanwhile, and swap a global that
        # other threads hold; other writes to stderr just land above the row's next redraw.
        self._live = Live(_Fresh(self), console=self._console, refresh_per_second=REFRESH_PER_SECOND,
                          transient=True, redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def _table(self) -> RenderableType:
        # Drawn by the Live under its own lock, never under ours (no lock-order cycle): read a snapshot.
        progress = self._progress
        if progress is None:
            return ""
        for row, task in list(self._rows.items()):
            self._sync(row, task)
        return progress.get_renderable()

    def _sync(self, row: _Row, task: TaskID) -> None:
        progress = self._progress
        assert progress is not None
        progress.update(task, completed=row.done, total=row.total)
        progress.update(task, amount=row.amount(next(t for t in progress.tasks if t.id == task)))


class _Guarded:
    """stderr as rich writes it: a write that fails (closed, a broken pipe) is dropped rather than raised
    in the transfer's thread or in rich's refresh thread. Everything else is stderr's own."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)


class _Fresh:
    """The live area's renderable: the board's rows as they are when drawn."""

    def __init__(self, board: _Board) -> None:
        self.board = board

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.board._table()


_BOARD = _Board()


def print_above(text: str) -> bool:
    """Print ``text`` (lines) above the live area when one shows; False when none does (print it yourself)."""
    return _BOARD.print(text)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _BoardRow:
    """A row of the live area: on the board from :meth:`start` (once) until :meth:`close` (idempotent)."""

    __slots__ = ("_shown",)
    label: str            # each subclass holds these in its own slots
    done: int
    total: int | None

    def __init__(self) -> None:
        self._shown = False

    def amount(self, task: Task) -> str:
        raise NotImplementedError

    def start(self) -> None:
        if not self._shown:
            self._shown = True
            _BOARD.add(self)

    def close(self) -> None:
        if self._shown:
            self._shown = False
            _BOARD.remove(self)


class Transfer(_BoardRow):
    """The bytes of one volume transfer. The mover adds to ``done``; :meth:`sized` (once the total is
    known, from any thread) shows a bar when the transfer is large and displays are on."""

    __slots__ = ("done", "label", "total")

    def __init__(self, label: str) -> None:
        super().__init__()
        self.done = 0
        self.label = label
        self.total: int | None = None

    def sized(self, total: int) -> None:
        self.total = total
        if total >= LARGE_TRANSFER and enabled():
            self.start()

    def amount(self, task: Task) -> str:
        from rich.filesize import decimal, pick_unit_and_suffix

        total = self.total or 0
        unit, suffix = pick_unit_and_suffix(total, ["bytes", "kB", "MB", "GB", "TB", "PB"], 1000)
        speed = task.speed
        rate = f"{decimal(int(speed))}/s" if speed else "- MB/s"
        eta = _clock(task.time_remaining) if self.done < total else "0:00:00"
        return f"{self.done / unit:,.1f}/{total / unit:,.1f} {suffix} · {rate} · ETA {eta}"


class BuildSteps(_BoardRow):
    """An image build's row: the Dockerfile step the engine is on (its ``Step k/n :`` lines), k - 1 done.
    A build without such lines (the process runtime's) shows a pulsing bar and its time."""

    __slots__ = ("done", "label", "total", "step")

    def __init__(self, label: str) -> None:
        super().__init__()
        self.done = 0
        self.label = label
        self.total: int | None = None
        self.step = 0

    def feed(self, lines: Iterable[str]) -> None:
        for line in lines:
            if m := _STEP.match(line):
                self.step, self.total = int(m[1]), int(m[2])
                self.done = self.step - 1

    def finish(self) -> None:
        """The build ended well: every step done."""
        if self.total is not None:
            self.step = self.done = self.total

    def amount(self, task: Task) -> str:
        steps = f"step {self.step} of {self.total} · " if self.total else ""
        return steps + _clock(task.elapsed)


class Counter(_BoardRow):
    """Items done of a known total (or counted when the total is unknown), and their rate."""

    __slots__ = ("done", "label", "total")

    def __init__(self, label: str, total: int | None) -> None:
        super().__init__()
        self.done = 0
        self.label = label
        self.total = total

    def amount(self, task: Task) -> str:
        speed = task.speed
        rate = f" · {speed:,.1f}/s" if speed else ""
        done = f"{self.done:,}/{self.total:,}" if self.total is not None else f"{self.done:,} done"
        return f"{done}{rate} · {_clock(task.elapsed)}"


def sized_total(*iterables: object) -> int | None:
    """How many items ``zip(*iterables)`` gives, when every iterable knows its length; else None.

    >>> sized_total(range(5), [1, 2, 3])
    3
    >>> sized_total(range(5), iter([1])) is None
    True
    """
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # one has no len(), or there are none
        return None


def count_items(results: Iterator[T], label: str, total: int | None) -> Iterator[T]:
    """``results`` unchanged, counted in a row while they are taken (``map(progress=True)``); ``results``
    itself when displays are off, so a map in a log or CI run costs nothing more. Leaving the loop early
    closes ``results`` (a map cancels what it has not handed out)."""
    if not enabled():
        return results
    return _counted(results, Counter(label, total))


def _counted(results: Iterator[T], counter: Counter) -> Iterator[T]:
    counter.start()  # at the first next(): a map nobody iterates shows nothing
    try:
        for value in results:
            counter.done += 1
            yield value
    finally:
        counter.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()


def acount_items(results: AsyncIterator[T], label: str, total: int | None) -> AsyncIterator[T]:
    """Async twin of :func:`count_items` (``map.aio(progress=True)``)."""
    if not enabled():
        return results
    return _acounted(results, Counter(label, total))


async def _acounted(results: AsyncIterator[T], counter: Counter) -> AsyncIterator[T]:
    counter.start()
    try:
        async for value in results:
            counter.done += 1
            yield value
    finally:
        counter.close()
        aclose = getattr(results, "aclose", None)
        if aclose is not None:
            await aclose()
