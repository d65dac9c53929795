"""What a handler prints, attributed to the call it runs for.

The worker swaps ``sys.stdout``/``sys.stderr`` for proxies and gives the root
logger one handler. A line written while a call runs goes to that call (the
attribution rules, documented in the README):

- the call is the one in the writer's context: ``current_call_id`` is set by
  every engine for the handler's thread or task (and copied to the pool thread
  of a sync handler), so two calls running at once (concurrency > 1) each get
  their own lines;
- a batched invocation (``max_batching_size``) runs once for many calls: its
  lines go to every one of them (:func:`batch_ids`);
- everything else is the replica's own output: module imports, threads the
  handler started itself (they do not inherit its context), and whatever is
  written below Python (a subprocess, a C extension writing to fd 1/2).

Every line also goes on to the real stream (the replica's log file, as
before). Captured lines wait in a bounded buffer for the worker's link, which
ships them with its next message (:meth:`OutputCapture.take`); past the bound
they are dropped and counted, and a ``[N lines dropped]`` line says so. A write
never blocks on the daemon. A handler that prints nothing costs nothing: the
proxies do work only when written to::

    capture = OutputCapture(poke=link.wake_for_logs)
    capture.install()                    # sys.stdout, sys.stderr, the root logger's handler
    lines = capture.take()               # on the link's thread: pb.LogLine list, oldest first
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from chalkcompute import _logs
from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

__all__ = ["OutputCapture", "batch_ids", "call_ids", "STDOUT", "STDERR", "LOGGING"]

STDOUT, STDERR, LOGGING = 1, 2, 3
MAX_PENDING_BYTES = 1 << 20   # captured and not shipped yet; past it lines are dropped (the file keeps them)
MAX_LINE_CHARS = 16 << 10     # a longer "line" (no newline for 16 KiB) is cut into pieces
PARTIAL_SECONDS = 0.2         # a line without its newline ships after this long (print(x, end=""))

# The calls of a batched invocation (all its items); empty for a single call.
_batch: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("chalk_log_batch", default=())


def call_ids() -> tuple[str, ...]:
    """The calls output written here and now belongs to; empty: the replica's own."""
    ids = _batch.get()
    if ids:
        return ids
    cid = current_call_id.get()
    return (cid,) if cid else ()


@contextmanager
def batch_ids(ids: tuple[str, ...]) -> Iterator[None]:
    """Within it, output goes to each of ``ids`` (a batched invocation's calls)."""
    token = _batch.set(ids)
    try:
        yield
    finally:
        _batch.reset(token)


class OutputCapture:
    """Lines per call, bounded, waiting for the link (thread-safe)."""

    def __init__(self, poke: Callable[[], None] = lambda: None, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.poke = poke
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.pending: list[pb.LogLine] = []   # read without the lock as "anything to ship?"
        self.bytes = 0
        self.dropped: dict[tuple[str, ...], int] = {}
        self.partial: dict[tuple[tuple[str, ...], int], tuple[float, str]] = {}
        self.relayed: list[tuple[str, pb.LogLine]] = []  # (parent call, a nested call's line)
        self.installed = False

    # -- writers (any thread) -------------------------------------------------------------------

    def write(self, ids: tuple[str, ...], stream: int, text: str) -> None:
        """Add what was written (any part of a line) for ``ids``."""
        now = time.time()
        with self.lock:
            was_empty = not self.pending
            key = (ids, stream)
            held = self.partial.pop(key, None)
            if held is not None:
                text = held[1] + text
            *whole, rest = text.split("\n")
            for line in whole:
                self._add(ids, stream, line, now)
            while len(rest) > MAX_LINE_CHARS:
                self._add(ids, stream, rest[:MAX_LINE_CHARS], now)
                rest = rest[MAX_LINE_CHARS:]
            if rest:
                self.partial[key] = (held[0] if held is not None else now, rest)
        if was_empty and self.pending:  # one wake-up of the link per burst
            self.poke()

    def line(self, ids: tuple[str, ...], stream: int, text: str) -> None:
        """Add whole lines (a logging record)."""
        now = time.time()
        with self.lock:
            was_empty = not self.pending
            for part in text.split("\n"):
                self._add(ids, stream, part, now)
        if was_empty:
            self.poke()

    def relay(self, parent: str, line: pb.LogLine) -> None:
        """A nested call's line for the caller of call ``parent`` (shown live, stored by the nested call)."""
        with self.lock:
            was_empty = not self.pending
            if self.bytes + len(line.text) > self.max_bytes:
                self.dropped[(parent,)] = self.dropped.get((parent,), 0) + 1
                return
            out = pb.LogLine(call_ids=[parent], ts=line.ts, stream=line.stream, text=line.text,
                             function_name=line.function_name, relayed=True)
            self.bytes += len(line.text)
            self.pending.append(out)
        if was_empty:
            self.poke()

    def _add(self, ids: tuple[str, ...], stream: int, text: str, ts: float) -> None:
        if self.bytes + len(text) > self.max_bytes:
            self.dropped[ids] = self.dropped.get(ids, 0) + 1
            return
        self.bytes += len(text)
        self.pending.append(pb.LogLine(call_ids=ids, ts=ts, stream=stream, text=text))

    # -- the link (its own thread) ----------------------------------------------------------------

    def take(self, *, flush_partial: bool = False) -> list[pb.LogLine]:
        """What waits, oldest first (and a "dropped" line per call that lost some); empties the buffer.

        A partial line (no newline yet) goes once it is :data:`PARTIAL_SECONDS` old,
        or at once with ``flush_partial`` (the call has ended)."""
        if not (self.pending or self.dropped or self.partial):
            return []
        now = time.time()
        with self.lock:
            for key, (since, text) in list(self.partial.items()):
                if flush_partial or now - since >= PARTIAL_SECONDS:
                    del self.partial[key]
                    self.pending.append(pb.LogLine(call_ids=key[0], ts=since, stream=key[1], text=text))
            out, self.pending, self.bytes = self.pending, [], 0
            for ids, n in self.dropped.items():
                out.append(pb.LogLine(call_ids=ids, ts=now, stream=STDERR,
                                      text=f"[chalkd: {n} lines dropped: the handler wrote faster than they "
                                           "could be sent]"))
            self.dropped.clear()
        return out

    def has_stale_partial(self) -> bool:
        """Is a line without its newline old enough to go (see :meth:`take`)?"""
        if not self.partial:
            return False
        now = time.time()
        with self.lock:
            return any(now - since >= PARTIAL_SECONDS for since, _ in self.partial.values())

    # -- wiring -------------------------------------------------------------------------------------

    def install(self) -> None:
        """Route this process's ``sys.stdout``, ``sys.stderr`` and root logging through the capture."""
        if self.installed:
            return
        self.installed = True
        real_err = sys.stderr
        sys.stdout = CallStream(self, STDOUT, sys.stdout)  # type: ignore[assignment]
        sys.stderr = CallStream(self, STDERR, sys.stderr)  # type: ignore[assignment]
        root = logging.getLogger()
        handler = CallLogHandler(self, real_err)
        for old in list(root.handlers):  # basicConfig's: ours writes where it wrote, and to the call
            if isinstance(old, logging.StreamHandler) and old.stream is real_err:
                handler.setFormatter(old.formatter)
                root.removeHandler(old)
        root.addHandler(handler)
        # Nested calls' lines, received by this replica's SDK session, go on to the outer call's caller.
        _logs.relay = self.relay


class CallStream:
    """``sys.stdout``/``sys.stderr`` of a worker: writes go on to the real stream, and to the call, if any."""

    def __init__(self, capture: OutputCapture, stream: int, under: TextIO) -> None:
        self._capture = capture
        self._stream = stream
        self._under = under

    def write(self, s: str) -> int:
        n = self._under.write(s)
        ids = call_ids()
        if ids and s:
            self._capture.write(ids, self._stream, s)
        return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._under.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer, errors...: the real stream's
        return getattr(self._under, name)


class CallLogHandler(logging.StreamHandler):
    """The worker's root handler: a record goes to the replica's log as before, and to its call, if any."""

    def __init__(self, capture: OutputCapture, stream: TextIO) -> None:
        super().__init__(stream)
        self.capture = capture
        self.call_format = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        ids = call_ids()
        if ids:
            try:
                self.capture.line(ids, LOGGING, self.call_format.format(record))
            except Exception:  # noqa: BLE001 - as logging does: a bad record never fails the handler's call
                self.handleError(record)
