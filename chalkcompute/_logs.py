"""Calls' output on the caller's side: live lines on stderr, and reading stored lines (``Logs.Read``).

Live: a session asks the daemon for its calls' output (``SessionRequest.live_logs``)
when :func:`live_wanted` says so: ``CHALK_SHOW_OUTPUT=1``, or an interactive
caller (stderr is a terminal, or a notebook kernel), unless ``CHALK_SHOW_OUTPUT=0``;
inside a replica, always, so that a nested call's lines reach the outermost
caller (:data:`relay`, set by the worker, hands them to the running call's
output). Lines are written to stderr by a thread of their own, prefixed with
the function's name (and the call id when several calls run), from a buffer
bounded in bytes: past it they are dropped and a ``[N lines dropped]`` line
says so (the daemon's files keep everything)::

    for line in read_lines(Client.get(), pb.ReadLogsRequest(call_id="fc-...", tail=100)):
        print(line.text)
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from chalkcompute._bridge import run_async, run_sync, sdk_loop
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import LogsStub
from chalkcompute._rpc import guarded

__all__ = ["live_wanted", "show", "read_lines", "follow_lines", "relay", "MAX_SHOW_BYTES"]

MAX_SHOW_BYTES = 1 << 20  # live lines waiting for stderr; past it they are dropped (counted)
COALESCE_SECONDS = 0.02   # the printer's pause after a write: many lines, one write (and one wake-up)

# Set by the worker (chalkcompute.worker.output): (parent call id, a nested call's line) -> that
# call's output, so the line travels on to its own caller.
relay: Callable[[str, pb.LogLine], None] | None = None


def live_wanted() -> bool:
    """Should this process's sessions ask for their calls' output as it is written?"""
    setting = os.environ.get("CHALK_SHOW_OUTPUT", "")
    if setting == "0":
        return False
    if setting == "1" or relay is not None:
        return True
    if "ipykernel" in sys.modules:  # a notebook: its stderr is no terminal, but a person reads it
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


class _Printer:
    """Writes lines to stderr on its own thread: a slow terminal never holds the SDK's loop."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.lines: collections.deque[str] = collections.deque()
        self.bytes = 0
        self.dropped = 0
        self.thread: threading.Thread | None = None
        self.write_lock = threading.Lock()  # taking and writing a batch: two writers never swap lines

    def put(self, text: str) -> None:
        with self.cond:
            if self.bytes + len(text) > MAX_SHOW_BYTES:
                self.dropped += 1
                return
            self.lines.append(text)
            self.bytes += len(text)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="chalk-output", daemon=True)
                self.thread.start()
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.lines and not self.dropped:
                    self.cond.wait()
            self.drain()
            time.sleep(COALESCE_SECONDS)

    def drain(self) -> None:
        """Write what waits, on this thread."""
        with self.write_lock:
            with self.cond:
                lines, self.lines, self.bytes = list(self.lines), collections.deque(), 0
                dropped, self.dropped = self.dropped, 0
            if dropped:
                lines.append(f"[chalkd: {dropped} lines dropped: they came faster than stderr took them; "
                             "`chalkd logs CALL_ID` has them all]\n")
            if not lines:
                return
            try:
                sys.stderr.write("".join(lines))
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):  # a closed or broken stderr: the output is a view
                pass


_printer = _Printer()


def drain() -> None:
    """Write the live lines that wait, on the caller's thread: a call's lines show before its result
    is handed over (and before the process exits)."""
    if _printer.lines or _printer.dropped:
        _printer.drain()


atexit.register(drain)


def show(call_logs: pb.CallLogs, function_name: str, parent_call_id: str, several: bool) -> None:
    """Live lines of one call: relayed to the running call inside a replica, else to stderr."""
    if relay is not None and parent_call_id:
        for line in call_logs.lines:
            relay(parent_call_id, line)
        return
    for line in call_logs.lines:
        name = line.function_name or function_name
        prefix = f"{name} {call_logs.call_id}" if several else name
        _printer.put(f"[{prefix}] {line.text}\n")


async def _read(client, req: pb.ReadLogsRequest, on_lines: Callable[[list[pb.LogLine]], None]) -> None:
    with guarded(client.target):
        async with LogsStub(client.channel).Read.open() as stream:
            await stream.send_message(req, end=True)
            async for msg in stream:
                on_lines(list(msg.lines))


def read_lines(client, req: pb.ReadLogsRequest) -> list[pb.LogLine]:
    """Stored lines (blocking; not on the SDK's loop)."""
    req.follow = False
    out: list[pb.LogLine] = []
    run_sync(_read(client, req, out.extend))
    return out


async def read_lines_async(client, req: pb.ReadLogsRequest) -> list[pb.LogLine]:
    """Stored lines, from the caller's event loop."""
    req.follow = False
    out: list[pb.LogLine] = []
    await run_async(_read(client, req, out.extend))
    return out


async def follow_lines_async(client, req: pb.ReadLogsRequest) -> AsyncIterator[pb.LogLine]:
    """:func:`follow_lines` for ``async for``: the read runs on the SDK's loop, lines come to the caller's."""
    req.follow = True
    here = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def take(lines: list[pb.LogLine]) -> None:
        here.call_soon_threadsafe(inbox.put_nowait, lines)

    async def pump() -> None:
        end: BaseException | None = None
        try:
            await _read(client, req, take)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reading loop
            end = exc
        here.call_soon_threadsafe(inbox.put_nowait, end or StopAsyncIteration())

    task = asyncio.run_coroutine_threadsafe(pump(), sdk_loop())
    try:
        while True:
            item = await inbox.get()
            if isinstance(item, StopAsyncIteration):
                return
            if isinstance(item, BaseException):
                raise item
            for line in item:
                yield line
    finally:
        task.cancel()


def follow_lines(client, req: pb.ReadLogsRequest) -> Iterator[pb.LogLine]:
    """Stored lines, then new ones as they come, until the read ends (a call's end) or the loop is left."""
    req.follow = True
    queue: collections.deque = collections.deque()
    ready = threading.Condition()
    done: list[BaseException | None] = []

    def take(lines: list[pb.LogLine]) -> None:
        with ready:
            queue.extend(lines)
            ready.notify()

    async def pump() -> None:
        try:
            await _read(client, req, take)
            result: BaseException | None = None
        except asyncio.CancelledError:
            result = None
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            result = exc
        with ready:
            done.append(result)
            ready.notify()

    task = asyncio.run_coroutine_threadsafe(pump(), sdk_loop())
    try:
        while True:
            with ready:
                while not queue and not done:
                    ready.wait()
                lines = list(queue)
                queue.clear()
                finished = bool(done) and not lines
            yield from lines
            if finished:
                if done[0] is not None:
                    raise done[0]
                return
    finally:
        task.cancel()
