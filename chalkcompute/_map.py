"""``map`` and ``starmap``: many inputs through one function, as batch calls, results streamed.

    for v in embed.map(["a", "b", "c"]): ...                # in order; order_outputs=False as they finish
    async for v in embed.map.aio(texts, return_exceptions=True): ...
    list(add.starmap([(1, 2), (3, 4)]))                     # [3, 7]

Its settings live in :mod:`chalkcompute.calls` (``MAP_MAX_INFLIGHT`` and the batch sizing),
read as each map starts, so a program (or a test) may change them there.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from chalkcompute import _progress, calls
from chalkcompute._batch import encode_rows, seconds_of
from chalkcompute._bridge import Mailbox, Twin, on_sdk_loop
from chalkcompute._client import CallHandle
from chalkcompute._events import BatchDone, CallEvent, Failed
from chalkcompute.calls import Callee, _codec, _refuse_generator
from chalkcompute.exceptions import (
    ChalkError,
    remote_error,
)

__all__ = ["map_inputs", "map_inputs_async", "map_method", "starmap_method"]


class _MapBatch(CallHandle):
    """One batch call of a map (``rows`` inputs from input ``first`` on): its final event goes to the map's sink."""

    def __init__(self, run: _MapRun, rows: int, *args: Any) -> None:
        super().__init__(*args)
        self.sink = run.sink
        self.first = run.submitted
        self.rows = rows
        self.sent_at = time.perf_counter()
        run.submitted += rows
        run.batches += 1

    def put(self, item: CallEvent) -> None:
        self.sink.put((self, item))


class _MapRun:
    """The state of one map: what is submitted, finished, and handed out.

    Inputs travel as batch calls (chalkcompute._batch): one queue unit per batch, sized
    to about :data:`MAP_BATCH_SECONDS` of the handler's work, as measured by the worker
    (``BatchOutcome.seconds``). Until the first measurement, inputs go one per batch, at
    most :data:`MAP_PROBE_INPUTS` of them, so a slow function's first inputs are not
    queued behind each other in one batch.
    """

    def __init__(self, rf: Callee, info: Any, inputs: Iterator, kwargs: dict,
                 order_outputs: bool, return_exceptions: bool) -> None:
        _refuse_generator(rf, "mapped")
        self.rf = rf
        self.client = rf.client
        self.function_id = info.id
        self.codec = _codec(rf)
        self.inputs = inputs
        self.kwargs = kwargs
        self.order_outputs = order_outputs
        self.return_exceptions = return_exceptions
        # The final events of every batch, in arrival order: drained a batch at a time.
        self.sink: Mailbox[tuple[_MapBatch, CallEvent]] = Mailbox()
        self.window = calls.MAP_MAX_INFLIGHT
        # Inputs are topped up once a quarter of the window is free, so they go
        # out in a few messages rather than one by one.
        self.refill_at = max(1, self.window // 4)
        self.max_rows = max(1, self.window // 4)   # at least four batches in flight
        self.size = 0             # inputs per batch; 0 until the handler's time was measured
        # A batched function's batches start (and stay) at least one invocation's worth: its
        # handler is made for them (a lazy handle by name does not know its batch size: 1).
        opts = getattr(rf, "_opts", None)
        self.least = min(self.max_rows, opts.policy_spec["batching"].max_batch_size
                         if opts is not None and opts.batched else 1)
        self.per_input = 0.0      # seconds of handler time per input (moving average)
        self.result_bytes = 0     # bytes per result seen so far (the largest batch average)
        self.submitted = 0        # inputs sent; also the next input's index
        self.batches = 0          # batch calls sent
        self.finished = 0         # batch calls whose final event was taken from the sink
        self.handed = 0           # results given to the caller
        self.exhausted = False
        self.closed = False
        self.by_index: dict[int, Any] = {}  # order_outputs: finished, waiting for their turn
        self.ready: deque = deque()            # otherwise: finished, in arrival order

    def fill(self) -> None:
        """Submit inputs up to the window, as batch calls sent together."""
        inflight = self.submitted - self.handed
        room = self.window - inflight
        size = self.size
        if not size:
            room, size = min(room, max(calls.MAP_PROBE_INPUTS, self.least) - inflight), self.least
        if room <= 0 or self.exhausted:
            return
        bind, kwargs = self.rf._arguments, self.kwargs
        arguments = [bind(args, kwargs) for args in itertools.islice(self.inputs, room)]
        if len(arguments) < room:
            self.exhausted = True
        if not arguments:
            return
        payloads: list[tuple[bytes, bytes]] = []
        rows: list[int] = []
        for i in range(0, len(arguments), size):
            self._encode(arguments[i:i + size], payloads, rows)
        sizes = iter(rows)
        self.client.start_calls(function_id=self.function_id, payloads=payloads, decode=self.codec.decode_results,
                                display_name=self.rf.name, batch_rows=rows,
                                handle_type=lambda *a: _MapBatch(self, next(sizes), *a))

    def _encode(self, group: list[dict], payloads: list, rows: list[int]) -> None:
        """One batch call's payload for ``group``, or several when its arguments are large."""
        payload = encode_rows(self.rf, [[a[n] for a in group] for n in self.codec.parameter_names])
        if len(group) > 1 and len(payload[0]) + len(payload[1]) > calls.MAP_BATCH_BYTES:
            half = len(group) // 2
            self._encode(group[:half], payloads, rows)
            self._encode(group[half:], payloads, rows)
            return
        payloads.append(payload)
        rows.append(len(group))

    def _measure(self, h: _MapBatch, event: CallEvent) -> None:
        if type(event) is BatchDone:
            res = event.outcome.results
            self.result_bytes = max(self.result_bytes, len(res.batch) // h.rows)
        seconds = seconds_of(event)
        if not seconds:
            return
        per_input = seconds / h.rows
        self.per_input = per_input if not self.per_input else 0.7 * self.per_input + 0.3 * per_input
        grown = max(1, self.size * 4) if self.size else self.max_rows
        self.size = max(self.least, min(self.max_rows, grown, int(calls.MAP_BATCH_SECONDS / max(self.per_input, 1e-7)),
                                        calls.MAP_BATCH_BYTES // max(self.result_bytes, 1)))

    def absorb(self, events: deque) -> None:
        self.finished += len(events)
        measured = bool(self.size)
        for h, event in events:
            self._measure(h, event)
            values, errors = self._outcome(h, event)
            if errors and not self.return_exceptions:
                raise errors[min(errors)]  # the first failure, now rather than in its turn
            for row, exc in errors.items():
                values[row] = exc
            if self.order_outputs:
                self.by_index.update(zip(range(h.first, h.first + h.rows), values, strict=True))
            else:
                self.ready.extend(values)
        if not measured and self.size and not self.exhausted:
            self.fill()  # the first measurement: the window opens

    def _outcome(self, h: _MapBatch, event: CallEvent) -> tuple[list, dict[int, BaseException]]:
        """A batch's values (None where a row failed) and its rows' exceptions."""
        if type(event) is BatchDone:
            out = event.outcome
            values = h.decode(out.results.schema, out.results.batch) if out.results.batch else [None] * h.rows
            return values, {e.row: remote_error(e.error, function_name=self.rf.name, call_id=event.call_id)
                            for e in out.errors}
        if type(event) is Failed:  # the whole batch: each of its inputs fails with it
            try:
                h.raise_for(event)
            except ChalkError as exc:
                first = exc
            errors: dict[int, BaseException] = {0: first}
            for row in range(1, h.rows):
                errors[row] = remote_error(event.error, function_name=self.rf.name, call_id=event.call_id)
            return [None] * h.rows, errors
        h.raise_for(event)  # the connection is gone for good: raised whatever return_exceptions says

    def pop(self) -> Any:
        """The next finished input's value (or exception) to hand out, or _MISSING."""
        if self.order_outputs:
            return self.by_index.pop(self.handed, _MISSING)
        return self.ready.popleft() if self.ready else _MISSING

    def value(self, value: Any) -> Any:
        self.handed += 1
        if not self.exhausted and self.window - (self.submitted - self.handed) >= self.refill_at:
            self.fill()  # before the caller takes its time with this value
        return value

    def available(self) -> Iterator[Any]:
        """The values that can be handed out now, in turn; stops when the next must be waited for."""
        while not self.done:
            item = self.pop()
            if item is _MISSING:
                return
            yield self.value(item)

    def __enter__(self) -> _MapRun:
        try:
            self.fill()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def done(self) -> bool:
        return self.exhausted and self.handed == self.submitted

    def close(self) -> None:
        """Cancel whatever is still running (the caller stopped, or a failure was raised)."""
        if self.closed:
            return
        self.closed = True
        if self.finished + len(self.sink.items) >= self.batches:
            return
        session, sink = self.client.session, self.sink

        def cancel_unfinished() -> None:
            # On the SDK loop, where the session's handles live.
            mine = [h for h in session.handles.values() if getattr(h, "sink", None) is sink]
            session.cancel_batch(mine)

        try:
            if on_sdk_loop():
                cancel_unfinished()
            else:
                self.client.loop.call_soon_threadsafe(cancel_unfinished)
        except RuntimeError:  # the SDK loop is gone (interpreter exit): nothing runs any more
            pass


_MISSING = object()


_END = object()


def _inputs(iterables: tuple, what: str) -> Iterator:
    if not iterables:
        raise TypeError(f"{what}() needs at least one iterable")
    for n, it in enumerate(iterables, 1):
        if not isinstance(it, Iterable):
            raise TypeError(f"{what}() argument {n} must be an iterable of inputs, got {type(it).__name__}")
    return zip(*iterables)  # noqa: B905 - map stops at the shortest input, as the builtin does


def _arg_tuples(iterable: Iterable) -> Iterator[tuple]:
    for args in iterable:
        if type(args) is not tuple:
            if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
                raise TypeError(f"starmap() takes an iterable of argument tuples, got an item {args!r}")
            args = tuple(args)
        yield args


def _check(rf: Callee, what: str) -> None:
    if rf.is_generator:  # known without the daemon for a decorated function
        _refuse_generator(rf, what)


def map_inputs(rf: Callee, inputs: Iterable, kwargs: dict | None = None, *,
               order_outputs: bool = True, return_exceptions: bool = False) -> Iterator:
    """Results of ``rf(*args, **kwargs)`` for each ``args`` tuple of ``inputs``, streamed."""
    _check(rf, "mapped")
    return _map_sync(rf, iter(inputs), dict(kwargs or {}), order_outputs, return_exceptions)


def _map_sync(rf: Callee, inputs: Iterator, kwargs: dict, order_outputs: bool, return_exceptions: bool) -> Iterator:
    if on_sdk_loop():
        raise RuntimeError(
            "a blocking map() was iterated on the SDK's own event loop; use `async for ... in .map.aio()`")
    first = next(inputs, _END)
    if first is _END:
        return  # an empty map asks the daemon nothing
    run = _MapRun(rf, rf._ensure_registered(), itertools.chain((first,), inputs), kwargs, order_outputs,
                  return_exceptions)
    with run:
        while not run.done:
            yield from run.available()
            if not run.done:
                run.absorb(run.sink.take_all())


def map_inputs_async(rf: Callee, inputs: Iterable, kwargs: dict | None = None, *,
                     order_outputs: bool = True, return_exceptions: bool = False) -> AsyncIterator:
    """Async twin of :func:`map_inputs`: ``async for result in ...``."""
    _check(rf, "mapped")
    return _map_async(rf, iter(inputs), dict(kwargs or {}), order_outputs, return_exceptions)


async def _map_async(rf: Callee, inputs: Iterator, kwargs: dict, order_outputs: bool,
                     return_exceptions: bool) -> AsyncIterator:
    # The same driver as _map_sync (the _MapRun does the work); only the wait differs.
    first = next(inputs, _END)
    if first is _END:
        return
    run = _MapRun(rf, await rf._ensure_registered_async(), itertools.chain((first,), inputs), kwargs,
                  order_outputs, return_exceptions)
    with run:
        while not run.done:
            for value in run.available():
                yield value
            if not run.done:
                run.absorb(await run.sink.take_all_async())


def _map_method(rf: Callee, *iterables: Iterable, kwargs: dict | None = None,
                order_outputs: bool = True, return_exceptions: bool = False, progress: bool = False) -> Iterator:
    """``rf(a, b, **kwargs)`` for each ``(a, b)`` of ``zip(*iterables)``, run in
    parallel; an iterator of the results, in input order (``order_outputs=False``:
    as they finish). ``return_exceptions=True`` yields a failed input's exception
    in place of its result instead of raising it. ``progress=True`` shows the
    inputs done / total (a count when an iterable has no ``len()``) and their rate
    on stderr while the results are taken, when stderr is a terminal or a notebook
    (``CHALK_PROGRESS=0``/``1`` turn it off/force it)::

        for y in square.map(range(10_000), progress=True):
            ...
    """
    results = map_inputs(rf, _inputs(iterables, "map"), kwargs,
                         order_outputs=order_outputs, return_exceptions=return_exceptions)
    return _progress.count_items(results, f"map {rf.name}", _progress.sized_total(*iterables)) if progress else results


def _map_method_async(rf: Callee, *iterables: Iterable, kwargs: dict | None = None,
                      order_outputs: bool = True, return_exceptions: bool = False,
                      progress: bool = False) -> AsyncIterator:
    results = map_inputs_async(rf, _inputs(iterables, "map"), kwargs,
                               order_outputs=order_outputs, return_exceptions=return_exceptions)
    return _progress.acount_items(results, f"map {rf.name}", _progress.sized_total(*iterables)) if progress else results


def _starmap_method(rf: Callee, iterable: Iterable, kwargs: dict | None = None, *,
                    order_outputs: bool = True, return_exceptions: bool = False, progress: bool = False) -> Iterator:
    """Like ``map``, each item being the argument tuple: ``add.starmap([(1, 2), (3, 4)])``."""
    results = map_inputs(rf, _arg_tuples(iterable), kwargs, order_outputs=order_outputs,
                         return_exceptions=return_exceptions)
    return (_progress.count_items(results, f"starmap {rf.name}", _progress.sized_total(iterable)) if progress
            else results)


def _starmap_method_async(rf: Callee, iterable: Iterable, kwargs: dict | None = None, *,
                          order_outputs: bool = True, return_exceptions: bool = False,
                          progress: bool = False) -> AsyncIterator:
    results = map_inputs_async(rf, _arg_tuples(iterable), kwargs, order_outputs=order_outputs,
                               return_exceptions=return_exceptions)
    return (_progress.acount_items(results, f"starmap {rf.name}", _progress.sized_total(iterable)) if progress
            else results)


map_method = Twin.pair("map", _map_method, _map_method_async)
starmap_method = Twin.pair("starmap", _starmap_method, _starmap_method_async)
