"""Calls that outlive their caller (``spawn``), and fan-out over many inputs (``map``).

    @chalkcompute.function
    def square(x: int) -> int:
        return x * x

    call = square.spawn(7)             # returns once chalkd has accepted the call
    call.object_id                     # "fc-...": keep it, hand it to another process
    call.get(timeout=60)               # 49; FunctionTimeoutError if not done by then
    FunctionCall.from_id(call.object_id).get()   # the same result, from anywhere

    list(square.map(range(5)))                          # [0, 1, 4, 9, 16]
    list(square.map(range(5), order_outputs=False))     # as they finish
    list(add.starmap([(1, 2), (3, 4)]))                 # [3, 7]
    list(square.map(range(5), progress=True))           # inputs done / total on stderr (a terminal)
    async for r in square.map.aio(range(5)): ...

``map`` streams: inputs are read lazily from the iterables (stopping at the
shortest, as ``zip`` does) and at most :data:`MAP_MAX_INFLIGHT` of them are in
flight at once: submitted and not yet handed to the caller, which bounds the
memory of a huge or endless input as well as the daemon's queue. Inputs travel
in batches (one stream message per batch) and their results come back the same
way, with no thread hop or future per input.

Failures: by default ``map`` raises the first failure as soon as it arrives and
cancels the inputs still in flight; with ``return_exceptions=True`` a failed
input's exception object takes the place of its result. An argument that
cannot be encoded raises at once either way (that is the caller's bug, not the
function's failure), as does losing the daemon.

Generator functions cannot be spawned or mapped: their chunks stream to one
caller as they are made, so iterate the call (``for chunk in gen(x)``) instead.

A ``RemoteFunction`` gets these as methods from :data:`spawn_method`,
:data:`map_method` and :data:`starmap_method`; the functions behind them
(:func:`spawn`, :func:`map_inputs`, ...) take the ``RemoteFunction`` first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Protocol, cast

from chalkcompute import _logs
from chalkcompute._bridge import Twin, on_sdk_loop, run_async, run_sync
from chalkcompute._client import CallHandle, Client
from chalkcompute._events import Broken, CallEvent, Chunk
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute._stream import ChunkStream
from chalkcompute.exceptions import (
    FunctionNotFoundError,
    FunctionSignatureError,
    FunctionTimeoutError,
)


class Callee(Protocol):
    """What spawn and map need of a function handle (``RemoteFunction`` is one). A
    protocol rather than an import: functions.py attaches these as its methods, so
    this module must not import it back (the SDK's import graph has no cycle)."""

    name: str
    codec: FunctionCodec | None
    is_generator: bool

    @property
    def client(self) -> Client: ...

    def _encode(self, args: tuple, kwargs: dict) -> tuple[bytes, bytes]: ...

    def _arguments(self, args: tuple, kwargs: dict) -> dict[str, Any]: ...

    def _ensure_registered(self) -> Any: ...

    async def _ensure_registered_async(self) -> Any: ...

__all__ = [
    "FunctionCall",
    "MAP_MAX_INFLIGHT",
    "spawn",
    "spawn_async",
    "spawn_method",
]

# Inputs of one map submitted and not yet handed to the caller. Enough to keep
# the daemon's queue and its replicas busy; small enough that a map over an
# endless iterable holds bounded memory (results waiting for an earlier input,
# with order_outputs=True, count too). Read as each map starts, so a program
# may set chalkcompute.calls.MAP_MAX_INFLIGHT to another size.
MAP_MAX_INFLIGHT = 1000
# Inputs of one map travel as batch calls of about this many seconds of the handler's work
# each (as the worker measures it), at most a quarter of MAP_MAX_INFLIGHT inputs.
MAP_BATCH_SECONDS = 0.02
# Inputs in flight, one per batch, until the first batch's time is known.
MAP_PROBE_INPUTS = 32
# About the most bytes of arguments, or of results, one batch call of a map carries: larger
# inputs or results make smaller batches, far from the message limit.
MAP_BATCH_BYTES = 1 << 20
# How long cancel() waits for the daemon to confirm (the call's final event).
_CANCEL_CONFIRM_TIMEOUT = 30.0


# -- sync + async twins --------------------------------------------------------------------


# -- one call, followed by id -----------------------------------------------------------------


def _new_future() -> concurrent.futures.Future:
    fut: concurrent.futures.Future = concurrent.futures.Future()
    # "Running" futures cannot be cancelled: an awaiting caller that gives up
    # (asyncio.wrap_future propagates its cancellation) leaves it intact for the next get().
    fut.set_running_or_notify_cancel()
    return fut


class _CallHandle(CallHandle):
    """A handle whose acceptance and final event land in futures any thread or loop can wait on."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.accepted = _new_future()  # resolves with the call id (None if refused)
        self.outcome = _new_future()   # resolves with the final event

    def on_accepted(self) -> None:
        if not self.accepted.done():
            self.accepted.set_result(self.call_id)

    def put(self, item: CallEvent) -> None:
        if type(item) is Chunk:
            return  # generator calls are refused before they get here
        if not self.outcome.done():
            self.outcome.set_result(item)
        # A call can be refused, or finish, before its acceptance arrives.
        self.on_accepted()


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"get(timeout=...) must be None or a number of seconds >= 0, got {timeout!r}")


class FunctionCall:
    """A call that outlives its caller: fetch its result later, from anywhere.

    Made by ``rf.spawn(...)`` or :meth:`FunctionCall.from_id`::

        call = square.spawn(7)
        call_id = call.object_id                     # "fc-..."
        ...
        FunctionCall.from_id(call_id).get(timeout=60)   # 49, in any process
        call = await FunctionCall.from_id.aio(call_id)  # async twins: from_id, get, cancel
        await call.get.aio(timeout=60)

    ``get()`` raises what calling the function raises (``RemoteExecutionError``
    for the function's own exception, ``CallCancelledError`` after a cancel).
    One object follows its call on one subscription, however often ``get`` is
    called; it re-attaches by itself after a lost connection.

    A generator's call is read by iterating it, from any process, as often as
    wanted; leaving the loop does not cancel it::

        call = countdown.spawn(5)
        for chunk in FunctionCall.from_id(call.object_id):   # 5, 4, ...
            ...
        for chunk in call.iter(start=0):                     # again, from the start
            ...
        async for chunk in call:                             # or with async for
            ...
    """

    def __init__(self, call_id: str, *, client: Client, function_name: str,
                 decode: Callable[[bytes, bytes], list], handle: _CallHandle | None = None,
                 is_generator: bool = False) -> None:
        self.object_id = call_id
        self.function_name = function_name
        self.is_generator = is_generator
        self.next_chunk = 0  # a generator's: where the next iter() resumes (after the last chunk read)
        self._client = client
        self._decode = decode
        self._handle = handle
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<FunctionCall {self.object_id} of {self.function_name!r}>"

    # -- resolving by id --------------------------------------------------------------------

    @classmethod
    async def _resolve(cls, call_id: str, target: str | None) -> FunctionCall:
        client = Client.get(target)
        info = (await client.rpc(client.catalog.GetCall, pb.GetCallRequest(call_id=call_id))).call
        try:
            fv = (await client.rpc(client.catalog.GetFunction, pb.GetFunctionRequest(id=info.function_id))).function
        except FunctionNotFoundError:
            # The version was deleted since: its result still decodes, inferred
            # from the schema the payload carries.
            codec = FunctionCodec.from_schemas([], b"", b"")
            name = info.function_name or info.function_id
        else:
            spec = fv.spec
            codec = FunctionCodec.from_schemas(list(spec.parameter_names), spec.input_schema, spec.output_schema,
                                               is_generator=spec.is_generator)
            name = info.function_name or fv.function_name
        return cls(info.id or call_id, client=client, function_name=name, decode=codec.decode_results,
                   is_generator=codec.is_generator)

    def _from_id(cls, call_id: str, target: str | None = None) -> FunctionCall:
        """The call with this id (``"fc-..."``), resolved at once; raises
        FunctionNotFoundError for an unknown id (or one whose result expired)."""
        return run_sync(cls._resolve(call_id, target))

    async def _from_id_async(cls, call_id: str, target: str | None = None) -> FunctionCall:
        return await run_async(cls._resolve(call_id, target))

    from_id = Twin.pair("from_id", _from_id, _from_id_async, on_class=True)

    # -- the subscription -------------------------------------------------------------------

    def _attached(self, *, cancel: bool = False) -> _CallHandle:
        """This object's handle, attaching by id on first need (with ``cancel``,
        the call is cancelled too, in the same message as the attach)."""
        with self._lock:
            h = self._handle
            if h is not None and h.outcome.done() and type(h.outcome.result()) is Broken:
                h = None  # the connection gave up on it (no daemon): follow the call afresh
            if h is None:
                h = self._handle = cast(_CallHandle, self._client.attach_call(
                    self.object_id, decode=self._decode, display_name=self.function_name, cancel=cancel,
                    handle_type=_CallHandle))
            elif cancel and not h.outcome.done():
                self._client.cancel_calls([h])
            return h

    def _timeout(self, timeout: float | None) -> FunctionTimeoutError:
        return FunctionTimeoutError(
            f"call {self.object_id} to {self.function_name!r} did not finish within {timeout:g}s "
            "(it goes on: get() again later, or cancel() it)")

    # -- a generator's chunks ----------------------------------------------------------------

    def iter(self, start: int | None = None) -> ChunkStream:
        """A generator call's chunks, for ``for`` and ``async for``: from chunk ``start``
        (0: from the first), or by default after the last chunk this object handed out.
        Chunks the daemon kept are replayed; leaving the loop stops reading, and the call goes on."""
        if not self.is_generator:
            raise FunctionSignatureError(
                f"call {self.object_id} is to {self.function_name!r}, which is not a generator: get() its result")
        if start is None:
            start = self.next_chunk
        elif isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"iter(start=...) must be a chunk index >= 0, got {start!r}")
        h = self._client.attach_call(self.object_id, decode=self._decode, display_name=self.function_name,
                                     after_chunk=start - 1)
        return ChunkStream(h, owns_call=False, progress=self)

    def __iter__(self) -> ChunkStream:
        return self.iter()

    def __aiter__(self) -> ChunkStream:
        return self.iter()

    # -- logs ---------------------------------------------------------------------------------

    def _logs(self, *, follow: bool = False, tail: int = 0) -> list[str] | Iterator[str]:
        """What the call's handler printed and logged, one string per line, oldest first.

        ``tail`` keeps only the last lines (0: all). With ``follow=True``, an
        iterator: the lines so far, then new ones as they are written, ending
        when the call has finished (leave the loop to stop earlier)::

            call = train.spawn(epochs=3)
            for line in call.logs(follow=True):
                print(line)
            call.logs(tail=20)            # ['epoch 3 loss 0.12', ...]
            await call.logs.aio()         # async twin: a list, or with follow=True an async iterator

        A batched invocation's lines belong to every call of the batch; what a
        replica wrote outside any call (its imports, a subprocess) is its own:
        ``chalkd logs r-...`` shows it.
        """
        if on_sdk_loop():
            raise RuntimeError("a blocking FunctionCall.logs() was made on the SDK's own event loop; use .aio")
        req = self._logs_request(tail)
        if follow:
            return (line.text for line in _logs.follow_lines(self._client, req))
        return [line.text for line in _logs.read_lines(self._client, req)]

    def _logs_async(self, *, follow: bool = False, tail: int = 0) -> Any:
        req = self._logs_request(tail)
        if follow:
            return _texts(_logs.follow_lines_async(self._client, req))
        return _lines_of(_logs.read_lines_async(self._client, req))

    def _logs_request(self, tail: int) -> pb.ReadLogsRequest:
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ValueError(f"logs(tail=...) must be a number of lines >= 0, got {tail!r}")
        return pb.ReadLogsRequest(call_id=self.object_id, tail=tail)

    logs = Twin.pair("logs", _logs, _logs_async)

    # -- get / cancel -----------------------------------------------------------------------

    def _get(self, timeout: float | None = None) -> Any:
        """The call's result, waiting at most ``timeout`` seconds (None: no limit);
        raises FunctionTimeoutError then, and the call goes on."""
        if on_sdk_loop():
            raise RuntimeError("a blocking FunctionCall.get() was made on the SDK's own event loop; use .aio")
        self._refuse_get()
        _check_timeout(timeout)
        h = self._attached()
        try:
            event = h.outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise self._timeout(timeout) from None
        return h.value_of(event)

    async def _get_async(self, timeout: float | None = None) -> Any:
        self._refuse_get()
        _check_timeout(timeout)
        h = self._attached()
        if not h.outcome.done():
            try:
                await asyncio.wait_for(asyncio.wrap_future(h.outcome), timeout)
            except TimeoutError:
                raise self._timeout(timeout) from None
        return h.value_of(h.outcome.result())

    get = Twin.pair("get", _get, _get_async)

    def _refuse_get(self) -> None:
        if self.is_generator:
            raise FunctionSignatureError(
                f"call {self.object_id} is to generator function {self.function_name!r}: its chunks are not one "
                "result; iterate the call instead (for chunk in call: ...)")

    def _cancel(self) -> None:
        """Cancel the call (a no-op if it has finished); returns once chalkd has
        acted on it, so a later ``get()`` raises CallCancelledError (or returns
        the result, if the call finished first)."""
        if on_sdk_loop():
            raise RuntimeError("a blocking FunctionCall.cancel() was made on the SDK's own event loop; use .aio")
        h = self._attached(cancel=True)
        try:
            h.outcome.result(_CANCEL_CONFIRM_TIMEOUT)
        except concurrent.futures.TimeoutError:
            pass  # sent; the daemon has just not said so yet

    async def _cancel_async(self) -> None:
        h = self._attached(cancel=True)
        try:
            await asyncio.wait_for(asyncio.wrap_future(h.outcome), _CANCEL_CONFIRM_TIMEOUT)
        except TimeoutError:
            pass

    cancel = Twin.pair("cancel", _cancel, _cancel_async)


# -- spawn -------------------------------------------------------------------------------------


def _refuse_generator(rf: Callee, what: str) -> None:
    if rf.is_generator:
        raise FunctionSignatureError(
            f"{rf.name} is a generator function and cannot be {what}: its chunks stream to the caller "
            f"as they are made, so iterate the call instead (for chunk in {rf.name}(...))")


def _codec(rf: Callee) -> FunctionCodec:
    codec = rf.codec
    assert codec is not None, f"{rf.name!r} is not hydrated"  # _ensure_registered* ran first
    return codec


def _start_spawn(rf: Callee, info: Any, args: tuple, kwargs: dict) -> _CallHandle:
    payload = rf._encode(args, kwargs)
    # A spawned generator runs unfollowed: its chunks wait in the daemon's store for a reader.
    return cast(_CallHandle, rf.client.start_call(function_id=info.id, args=payload,
                                                  decode=_codec(rf).decode_results, display_name=rf.name,
                                                  handle_type=_CallHandle, detach=bool(rf.is_generator)))


def _spawned(rf: Callee, h: _CallHandle) -> FunctionCall:
    if not h.call_id:  # refused: no such function, arguments too large...
        h.value_of(h.outcome.result())
    assert h.call_id is not None
    if rf.is_generator:
        return FunctionCall(h.call_id, client=rf.client, function_name=rf.name, decode=h.decode, is_generator=True)
    return FunctionCall(h.call_id, client=rf.client, function_name=rf.name, decode=h.decode, handle=h)


def spawn(rf: Callee, args: tuple, kwargs: dict) -> FunctionCall:
    """Submit ``rf(*args, **kwargs)`` and return once chalkd has accepted it."""
    info = rf._ensure_registered()
    h = _start_spawn(rf, info, args, kwargs)
    try:
        h.accepted.result()
    except KeyboardInterrupt:
        rf.client.cancel_calls([h])  # nobody got its id: nobody could ever fetch it
        raise
    return _spawned(rf, h)


async def spawn_async(rf: Callee, args: tuple, kwargs: dict) -> FunctionCall:
    """Async twin of :func:`spawn`."""
    info = await rf._ensure_registered_async()
    h = _start_spawn(rf, info, args, kwargs)
    try:
        await asyncio.wrap_future(h.accepted)
    except asyncio.CancelledError:
        rf.client.cancel_calls([h])
        raise
    return _spawned(rf, h)


def _spawn_method(rf: Callee, *args: Any, **kwargs: Any) -> FunctionCall:
    """Start a call that outlives this one: returns a :class:`FunctionCall` once
    chalkd has accepted it (``.get()`` its result, now or from another process)."""
    return spawn(rf, args, kwargs)


def _spawn_method_async(rf: Callee, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, FunctionCall]:
    return spawn_async(rf, args, kwargs)


spawn_method = Twin.pair("spawn", _spawn_method, _spawn_method_async)




async def _texts(lines: AsyncIterator[pb.LogLine]) -> AsyncIterator[str]:
    async for line in lines:
        yield line.text


async def _lines_of(read: Coroutine[Any, Any, list[pb.LogLine]]) -> list[str]:
    return [line.text for line in await read]
