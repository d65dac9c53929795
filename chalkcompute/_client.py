"""The connection to chalkd: a background event loop, the catalog stub, and one
long-lived Session stream on which every call of this process is multiplexed.

Blocking and async code share it: the SDK's coroutines run on a daemon thread's
event loop; :func:`run_sync` blocks the calling thread on them (safe inside a
running event loop of the user's, which is another loop), and :func:`run_async`
awaits them from any other loop::

    client = Client.get()                      # one per target per process
    fv = run_sync(client.get_function(name="add"))
    handle = client.start_call(function_name="add", args=payload, decode=codec.decode_results)
    value = handle.result()                    # blocking; `await handle.result_async()` too

Many calls at once (``rf.map``) go out together, one message for the batch::

    handles = client.start_calls(function_id=fv.id, payloads=[p1, p2, p3], decode=codec.decode_results)

and a call made elsewhere is followed by id with ``client.attach_call("fc-...", decode=...)``.

Calls survive a dropped connection: the session reconnects, re-attaches every
accepted call after the last chunk it received, and resubmits calls not yet
accepted under their idempotency key, so nothing is lost or run twice by us.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from grpclib import GRPCError
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError

from chalkcompute import _auth, _logs, _rpc
from chalkcompute._bridge import (
    Mailbox,
    in_sdk_thread,
    on_new_loop,
    on_sdk_loop,
    run_async,
    run_sync,
    sdk_loop,
)
from chalkcompute._contract import batches
from chalkcompute._events import DONE, BatchDone, Broken, CallEvent, Chunk, Done, Failed, Result
from chalkcompute._framing import DirectWriter, FramedStream, frame, open_framed
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogStub, QueueStub
from chalkcompute.exceptions import ChalkError, DaemonUnavailableError, error_from_status, remote_error

log = logging.getLogger(__name__)

T = TypeVar("T")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

DEFAULT_TARGET = "127.0.0.1:50051"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ACK_EVERY = 1024

# Set by the worker while a call runs, so nested calls name their parent.
current_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("chalk_current_call_id", default=None)


def default_target() -> str:
    return os.environ.get("CHALK_COMPUTE_TARGET") or DEFAULT_TARGET


def parse_target(target: str) -> tuple[str, int, str | None]:
    """``"host:port"`` -> (host, port, None); ``"unix:/path/grpc.sock"`` -> ("", 0, path).

    Workers in containers reach the daemon through its socket directory,
    bind-mounted at the same path, so they name a unix socket::

        parse_target("unix:///home/me/.local/share/chalkd/run/grpc.sock")
    """
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"a unix target needs an absolute path, got {target!r}")
        return "", 0, path
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"target must be 'host:port' or 'unix:/path', got {target!r}")
    return host.strip("[]"), int(port), None


# -- the background loop: chalkcompute._bridge (one bridge for the whole SDK) --------------

on_new_loop(lambda: Client._instances.clear())


# -- one call's events, handed from the SDK loop to whichever thread waits ------------


class CallHandle:
    """Receives the events of one call; consumed from any thread or loop.

    Subclasses may route events elsewhere by overriding :meth:`put` (``rf.map``
    sends every input's events to one shared queue) and learn of acceptance by
    overriding :meth:`on_accepted`; both run on the SDK loop.
    """

    def __init__(self, session: _Session, submit: pb.Submit, function_name: str,
                 decode: Callable[[bytes, bytes], list]) -> None:
        self.session = session
        self.submit = submit
        self.ref = submit.ref
        self.function_name = function_name
        self.decode = decode
        self.call_id: str | None = None
        self.received = -1          # last chunk index received (SDK loop side)
        self.consumed = -1          # last chunk index handed to the user
        self._acked = -1
        self.finished = False
        self.cancel_requested = False
        self.events: Mailbox[CallEvent] = Mailbox()

    # SDK loop side
    def on_accepted(self) -> None:
        """The daemon accepted (or re-attached) the call: ``call_id`` is set."""

    def opening(self) -> pb.Submit | pb.Attach:
        """The message that (re)starts this call on a stream: its submit, or an
        attach once it has an id (a call accepted before, or one attached by id)."""
        if self.call_id:
            return pb.Attach(ref=self.ref, call_id=self.call_id, after_chunk=self.received)
        return self.submit

    def put(self, item: CallEvent) -> None:
        self.events.put(item)

    # what an event means to the caller: the one decoding of a call's outcome
    def value_of(self, event: CallEvent) -> Any:
        """A plain call's final event as its value, or raised as its exception."""
        if _logs._printer.lines:  # its live lines show before its value does
            _logs.drain()
        if type(event) is Result:
            payload = event.payload
            return self.decode(payload.schema, payload.batch)[0]
        if type(event) is Done:
            return None
        self.raise_for(event)

    def chunk_values(self, event: Chunk) -> list:
        """A generator chunk's rows not seen before (a reconnect may resend some)."""
        payload = event.payload
        return self.decode(payload.schema, payload.batch)[event.skip:]

    def raise_for(self, event: CallEvent) -> NoReturn:
        """Raise what a failed call's event says: the remote error, or a local breakage."""
        if type(event) is Failed:
            raise remote_error(event.error, function_name=self.function_name, call_id=event.call_id or "")
        if type(event) is Broken:
            raise event.exc
        if type(event) is BatchDone:
            raise ChalkError(f"call {event.call_id or self.call_id} to {self.function_name!r} is a batch call (many "
                             "inputs, a result per row), not one value: map() or chalkcompute._batch reads it")
        raise ChalkError(f"unexpected event {type(event).__name__} for a call to {self.function_name!r}")

    # consumer side
    def next_event(self, timeout: float | None = None) -> CallEvent:
        try:
            return self.events.get(timeout)
        except TimeoutError:
            raise TimeoutError(f"no result from {self.function_name!r} within {timeout:g}s") from None

    async def next_event_async(self) -> CallEvent:
        return await self.events.get_async()

    def consumed_up_to(self, index: int, end_of_payload: bool = False) -> None:
        """The user took chunk ``index``. Acknowledged every :data:`ACK_EVERY` chunks, and at the
        end of a payload once nothing more waits here: the daemon's window counts bytes too, so a
        reader of large chunks must say so long before a thousand of them (it would never get them)."""
        self.consumed = index
        if index - self._acked >= ACK_EVERY or (end_of_payload and index >= self.received and index > self._acked):
            self._acked = index
            self.session.send_threadsafe(ack=pb.ChunkAck(call_id=self.call_id or "", index=index))

    def detach(self) -> None:
        """Stop following the call without cancelling it (a reader that left a spawned call)."""
        if self.finished:
            return
        self.finished = True
        self.session.forget(self)
        if self.call_id:
            self.session.send_threadsafe(cancel=pb.CancelCall(call_id=self.call_id, detach=True))

    def cancel(self) -> None:
        if self.finished:
            return
        if self.call_id:
            self.session.send_threadsafe(cancel=pb.CancelCall(call_id=self.call_id))
        else:
            # Not accepted yet: the cancel goes out as soon as the call has an id.
            self.cancel_requested = True


# -- the session stream ---------------------------------------------------------------


class _Session:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.stub = QueueStub(client.channel)
        self.handles: dict[int, CallHandle] = {}
        self._refs = itertools.count(1)
        self._out: list = []
        self._incoming: deque = deque()
        self._incoming_scheduled = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stream = None  # the current stream (framed or gRPC), for introspection
        self.direct: DirectWriter | None = None  # set while a framed stream is live
        self.reconnect_timeout = float(os.environ.get("CHALK_RECONNECT_TIMEOUT", "60"))

    def next_ref(self) -> int:
        return next(self._refs)

    def start(self, handle: CallHandle) -> None:
        """On the SDK loop: register the handle and queue its submit."""
        self.handles[handle.ref] = handle
        self._out.append(handle.opening())
        self._wake.set()
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def start_batch(self, handles: list[CallHandle], messages: list) -> None:
        """On the SDK loop: register the handles; queue their openings, then ``messages``."""
        for h in handles:
            self.handles[h.ref] = h
            self._out.append(h.opening())
        self._out.extend(messages)
        self._wake.set()
        self._ensure_running()

    def send_batch(self, handles: list[CallHandle], messages: Sequence[Any] = (),
                   requests: list[pb.SessionRequest] | None = None) -> None:
        """From any thread but the SDK loop's: start ``handles`` and send ``messages``
        (cancels, acks) with them, in as few stream messages as their size allows
        (``requests``, when given, are those messages already built).

        On the local socket the caller's thread writes the frames itself (no hop
        to the SDK loop per batch); on gRPC they are queued together, and the
        send loop coalesces them.
        """
        direct = self.direct
        if direct is not None:
            with direct.lock:
                if self.direct is direct and not direct.closed:
                    for h in handles:
                        self.handles[h.ref] = h
                    try:
                        if requests is None:
                            requests = list(_requests([h.opening() for h in handles] + list(messages)))
                        for req in requests:
                            direct.write_locked(frame(0, req.SerializeToString()))
                    except ConnectionError:
                        # The stream broke: the reconnect resubmits the handles (they are
                        # registered); the messages wait in the queue, as queued cancels do.
                        for m in messages:
                            self.from_thread(m)
                    return
        self._incoming.append((list(handles), list(messages)))  # deque.append is atomic
        if not self._incoming_scheduled:
            self._incoming_scheduled = True
            self.client.loop.call_soon_threadsafe(self._take_incoming)

    def forget(self, handle: CallHandle) -> None:
        """Stop routing events to ``handle``, from any thread: its entry goes on the SDK loop,
        which may be iterating the handles (a reconnect resuming them)."""
        if in_sdk_thread():
            self.handles.pop(handle.ref, None)
        else:
            self.client.loop.call_soon_threadsafe(self.handles.pop, handle.ref, None)

    def following(self, call_id: str) -> CallHandle | None:
        """The live handle of this session that follows ``call_id``, if any.

        chalkd keeps one subscription per session and call: a second attach on
        this stream would take the first handle's events, so reuse it instead.
        """
        for h in list(self.handles.values()):  # a copy made under the GIL: safe from any thread
            if h.call_id == call_id:
                return h
        return None

    def cancel_batch(self, handles: list[CallHandle]) -> None:
        """On the SDK loop: cancel every unfinished call of ``handles`` (one message)."""
        for h in handles:
            if h.finished:
                continue
            if h.call_id:
                self._out.append(pb.CancelCall(call_id=h.call_id))
            else:
                h.cancel_requested = True  # goes out with its acceptance (see _dispatch)
        self._wake.set()

    def send_threadsafe(self, *, ack: pb.ChunkAck | None = None, cancel: pb.CancelCall | None = None) -> None:
        self.from_thread(ack or cancel)

    def from_thread(self, item) -> None:
        """Queue a handle (a new call) or a message from any thread; one loop wake-up per burst.

        On the local socket the caller's thread writes it itself: a submit without a hop, and
        a cancel (a loop left with ``break``) on its way before the next line of the program,
        even if that line ends the process."""
        direct = self.direct
        # Never waits for the lock: a cancel can come from a stream's __del__, which the garbage
        # collector may run on a thread that holds it already (one writing a submit).
        if direct is not None and isinstance(item, (pb.CancelCall, pb.ChunkAck)) and direct.lock.acquire(False):
            try:
                if self.direct is direct and not direct.closed:
                    direct.write_locked(frame(0, _request([item]).SerializeToString()))
                    return
            except ConnectionError:
                pass  # queued below: the reconnect sends it
            finally:
                direct.lock.release()
        if direct is not None and isinstance(item, CallHandle):
            # On the local socket the caller's thread sends its submit itself.
            with direct.lock:
                if self.direct is direct and not direct.closed:
                    self.handles[item.ref] = item
                    try:
                        direct.write_locked(frame(0, pb.SessionRequest(submits=[item.submit]).SerializeToString()))
                    except ConnectionError:
                        pass  # the stream broke: the reconnect resubmits it (it is in handles)
                    return
        self._incoming.append(item)  # deque.append is atomic
        if not self._incoming_scheduled:
            self._incoming_scheduled = True
            self.client.loop.call_soon_threadsafe(self._take_incoming)

    def _queue_item(self, item) -> None:
        self._out.append(item)
        self._wake.set()

    def _take_incoming(self) -> None:
        self._incoming_scheduled = False
        while self._incoming:
            item = self._incoming.popleft()
            if isinstance(item, CallHandle):
                self.start(item)
            elif isinstance(item, tuple):  # a batch from send_batch
                self.start_batch(*item)
            else:
                self._out.append(item)
                self._wake.set()
                self._ensure_running()

    async def _run(self) -> None:
        lost_since: float | None = None
        delay = 0.05
        while True:
            try:
                async with self.client.open_stream(b"session", self.stub.Session, pb.SessionResponse) as stream:
                    await stream.send_request()  # connects; headers go before any message
                    if _logs.live_wanted():  # the calls' output as it is written (SessionResponse.logs)
                        await stream.send_message(pb.SessionRequest(live_logs=True))
                    direct = stream.enable_direct() if isinstance(stream, FramedStream) else None
                    # Under the direct writer's lock no caller thread can submit
                    # while the calls to resume are collected.
                    with direct.lock if direct is not None else contextlib.nullcontext():
                        if lost_since is not None:
                            log.info("reconnected to chalkd at %s; resuming %d call(s)", self.client.target,
                                     len(self.handles))
                            self._resume()
                        self.direct = direct
                    lost_since, delay = None, 0.05
                    self.stream = stream
                    try:
                        await self._pump(stream)
                    finally:
                        self.direct = None
            except GRPCError as exc:
                if exc.status not in (Status.UNAVAILABLE, Status.INTERNAL, Status.CANCELLED, Status.UNKNOWN):
                    self._fail_all(error_from_status(exc.status, exc.message))
                    return
                reason = exc.message or exc.status.name
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection broke, in whichever way grpclib/h2 says it
                reason = f"{type(exc).__name__}: {exc}"
                log.debug("session stream broke", exc_info=True)
            if not self.handles:
                return  # nothing in flight: reconnect when the next call comes
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
                log.warning("lost the connection to chalkd at %s (%s); reconnecting", self.client.target, reason)
            if now - lost_since > self.reconnect_timeout:
                self._fail_all(DaemonUnavailableError(
                    f"no chalkd answers at {self.client.target} (gave up after {self.reconnect_timeout:g}s): {reason}"))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _resume(self) -> None:
        """After a reconnect: re-attach accepted calls, resubmit the others."""
        self._out = [item for item in self._out if isinstance(item, pb.CancelCall)]
        for h in self.handles.values():
            self._out.append(h.opening())
        self._wake.set()

    async def _pump(self, stream) -> None:
        """Send and receive until the stream breaks (it stays open while idle)."""
        loop = asyncio.get_running_loop()
        sender = loop.create_task(self._send_loop(stream))
        receiver = loop.create_task(self._recv_loop(stream))
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise StreamTerminatedError("the daemon closed the session")
        finally:
            sender.cancel()
            receiver.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)

    async def _recv_loop(self, stream) -> None:
        async for msg in stream:
            if msg.logs:  # first: a call's lines came before its end
                self._show_logs(msg.logs)
            for ev in msg.events:
                self._dispatch(ev)

    def _show_logs(self, logs: Sequence[pb.CallLogs]) -> None:
        several = len(self.handles) > 1
        for cl in logs:
            h = self.handles.get(cl.ref)
            if h is not None:
                _logs.show(cl, h.function_name, h.submit.parent_call_id, several)

    async def _send_loop(self, stream) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                # Coalesce what piled up, but keep each message well under the daemon's limit.
                req = next(_requests(self._out))
                del self._out[:len(req.submits) + len(req.attaches) + len(req.acks) + len(req.cancels)]
                await stream.send_message(req)

    def _dispatch(self, ev: pb.CallEvent) -> None:
        h = self.handles.get(ev.ref)
        if h is None:
            return
        kind = ev.WhichOneof("event")
        if kind == "accepted":
            if ev.call_id:
                h.call_id = ev.call_id
                if h.cancel_requested:
                    self._queue_item(pb.CancelCall(call_id=ev.call_id))
                if h.submit.detach:  # spawned: nothing more comes for it on this session
                    h.finished = True
                    del self.handles[ev.ref]
                h.on_accepted()
            return
        if kind == "chunk":
            last = ev.first_index + max(ev.chunk.rows, 1) - 1
            if last <= h.received:
                return  # already seen before a reconnect
            skip = max(0, h.received + 1 - ev.first_index)
            h.received = last
            h.put(Chunk(ev.chunk, ev.first_index, skip))
            return
        h.finished = True
        del self.handles[ev.ref]
        if ev.call_id and not h.call_id:
            # A fast call can finish before its acceptance (which waits for the
            # commit): its id comes with its result.
            h.call_id = ev.call_id
        if kind == "result":
            h.put(Result(ev.result))
        elif kind == "error":
            h.put(Failed(ev.error, ev.call_id or h.call_id or ""))
        elif kind is None and ev.HasField("batch_result"):
            h.put(BatchDone(ev.batch_result, ev.call_id or h.call_id or ""))
        else:
            h.put(DONE)

    def _fail_all(self, exc: Exception) -> None:
        for h in list(self.handles.values()):
            h.finished = True
            h.put(Broken(exc))
        self.handles.clear()


def _request(items: list) -> pb.SessionRequest:
    req = pb.SessionRequest()
    for item in items:
        if isinstance(item, pb.Submit):
            req.submits.append(item)
        elif isinstance(item, pb.Attach):
            req.attaches.append(item)
        elif isinstance(item, pb.ChunkAck):
            req.acks.append(item)
        elif isinstance(item, pb.CancelCall):
            req.cancels.append(item)
    return req


def _requests(items: list):
    """``items`` as SessionRequests, each well under the daemon's message limit."""
    for group in batches(items, size=_item_size):
        yield _request(group)


def _item_size(item: Any) -> int:
    return item.args.ByteSize() + 64 if isinstance(item, pb.Submit) else 64


def _payload_size(payload: tuple) -> int:
    return len(payload[0]) + len(payload[1]) + 96  # + the submit's other fields


# -- the client -------------------------------------------------------------------------


class Client:
    """One per daemon target per process; use :meth:`Client.get`."""

    _instances: dict[str, Client] = {}
    _lock = threading.Lock()

    def __init__(self, target: str, ssl_context=None) -> None:
        self.target = target
        self.host, self.port, self.path = parse_target(target)
        self.ssl = ssl_context
        self.loop = sdk_loop()
        self.creds = _auth.credentials_for(target)
        self._channel: Channel | None = None
        self._session: _Session | None = None
        self._runtime: str | None = None
        self._lane: tuple[str, str] | tuple[()] | None = None  # see _local_lane

    @classmethod
    def get(cls, target: str | None = None, credentials=None) -> Client:
        """The client for ``target``; ``credentials`` (TLS: an ``ssl.SSLContext``, a CA bundle
        path, or True for the system roots) gives a client of its own for that target."""
        target = target or default_target()
        if credentials is None:  # functions and calls take no credentials=: the environment says
            credentials = _auth.tls_from_env()
        key = target
        if credentials is not None:  # a context is keyed by identity; the client keeps it alive
            key += f"#tls:{credentials if isinstance(credentials, (str, bool)) else id(credentials)}"
        sdk_loop()
        with cls._lock:
            client = cls._instances.get(key)
            if client is None:  # the TLS context is made once per client, not per lookup
                client = cls._instances[key] = Client(target, _auth.client_ssl_context(credentials))
            return client

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            # Created on the SDK loop: grpclib binds a channel to the loop it runs on.
            self._channel = (Channel(path=self.path) if self.path
                             else Channel(self.host, self.port, ssl=self.ssl))
            self.creds.attach(self._channel)  # one handshake per connection, then a tag on each RPC
        return self._channel

    @property
    def catalog(self) -> FunctionCatalogStub:
        return FunctionCatalogStub(self.channel)

    @property
    def session(self) -> _Session:
        if self._session is None:
            self._session = _Session(self)
        return self._session

    async def _local_lane(self, refresh: bool) -> tuple[str, str] | None:
        """The daemon's unix socket and instance id when it is on this machine (asked
        once, again with ``refresh``), else None. A failing ask means no daemon answers."""
        if (self.path is None and self.host not in _LOOPBACK) or self.ssl is not None:
            return None
        if os.environ.get("CHALK_TRANSPORT", "auto") == "grpc":
            return None
        if self._lane is None or refresh:
            status = await self.catalog.Status(pb.StatusRequest(), timeout=10)
            self._lane = (status.fast_socket, status.instance_id) if status.fast_socket else ()
        return self._lane or None

    @contextlib.asynccontextmanager
    async def open_stream(self, name: bytes, grpc_method, recv_type, *, metadata=None):
        """A stream to the daemon: framed on its unix socket when it is on this
        machine (see :mod:`chalkcompute._framing`), else the gRPC stream.
        ``metadata`` is only carried by gRPC, so giving it chooses gRPC."""
        framed = None
        # A remembered socket may belong to a daemon that restarted: ask again once.
        for refresh in (False, True) if not metadata else ():
            lane = await self._local_lane(refresh)
            if lane is None:
                break
            try:
                framed = await open_framed(lane[0], name, recv_type, expect_instance=lane[1],
                                           credential=await _auth.framed_credential(self.creds, self.channel))
                break
            except (OSError, ConnectionError) as exc:  # another machine's path, no access, a restart
                log.debug("not using chalkd's socket %s: %s", lane[0], exc)
            except GRPCError as exc:
                if exc.status is not Status.UNAUTHENTICATED or refresh:
                    raise
                # A restarted daemon on the same socket forgot our session: handshake again, once.
                self.creds.credential = None
        if framed is not None:
            try:
                yield framed
            finally:
                framed.close()
            return
        async with grpc_method.open(metadata=metadata) as stream:
            yield stream

    async def runtime_name(self) -> str:
        """The daemon's runtime ("process" or "docker"), asked once per client."""
        if self._runtime is None:
            self._runtime = (await self.rpc(self.catalog.Status, pb.StatusRequest(), timeout=10)).runtime
        return self._runtime

    async def rpc(self, method: UnaryUnaryMethod[_Req, _Resp] | str, request: _Req,
                  timeout: float | None = 30.0) -> _Resp:
        """A unary RPC through the SDK's one typed wrapper (:func:`chalkcompute._rpc.unary`):
        ``await client.rpc(client.catalog.GetFunction, pb.GetFunctionRequest(name="add"))``.
        From another thread (``run_sync(client.rpc(...))``) name a catalog method instead,
        ``"GetFunction"``: it is looked up on the SDK loop, where the channel must be made."""
        call: UnaryUnaryMethod[_Req, _Resp] = getattr(self.catalog, method) if isinstance(method, str) else method
        return await _rpc.unary(call, request, target=self.target, timeout=timeout)

    def _new_submit(self, session: _Session, function_id: str, function_name: str, args: tuple[bytes, bytes],
                    idempotency_key: str | None, parent: str) -> pb.Submit:
        return pb.Submit(
            ref=session.next_ref(), function_id=function_id, function_name=function_name,
            args=pb.Payload(schema=args[0], batch=args[1], rows=1),
            # 96 random bits: unique enough per function, and no syscall per call.
            idempotency_key=idempotency_key or f"{random.getrandbits(96):024x}",
            parent_call_id=parent,
        )

    def start_call(self, *, function_id: str = "", function_name: str = "", args: tuple[bytes, bytes],
                   decode: Callable[[bytes, bytes], list], display_name: str = "",
                   idempotency_key: str | None = None,
                   handle_type: Callable[..., CallHandle] = CallHandle, detach: bool = False,
                   batch_rows: int = 0) -> CallHandle:
        """Queue a call from any thread; returns at once with its handle (with ``detach``, a
        spawned generator's: it hears the acceptance only, and the call runs unfollowed).
        With ``batch_rows``, ``args`` holds that many inputs, one row each: a batch call
        (chalkcompute._batch), whose final event is one :class:`BatchDone`."""
        session = self.session
        submit = self._new_submit(session, function_id, function_name, args, idempotency_key,
                                  current_call_id.get() or "")
        if detach:
            submit.detach = True
        if batch_rows:
            submit.batch, submit.args.rows = True, batch_rows
        handle = handle_type(session, submit, display_name or function_name or function_id, decode)
        if in_sdk_thread():
            session.start(handle)
        else:
            session.from_thread(handle)
        return handle

    def start_calls(self, *, function_id: str = "", function_name: str = "", payloads: list[tuple[bytes, bytes]],
                    decode: Callable[[bytes, bytes], list], display_name: str = "",
                    handle_type: Callable[..., CallHandle] = CallHandle,
                    batch_rows: Sequence[int] | None = None) -> list[CallHandle]:
        """Queue many calls of one function from any thread, sent together (one
        message per batch where it fits); returns their handles at once, in order.

        ``handle_type(session, submit, display_name, decode)`` makes each handle:
        a :class:`CallHandle` subclass that routes its events elsewhere. With
        ``batch_rows``, payload ``i`` is a batch call of ``batch_rows[i]`` inputs.
        """
        if not payloads:
            return []
        session = self.session
        name = display_name or function_name or function_id
        parent = current_call_id.get() or ""
        next_ref, key = session.next_ref, random.getrandbits
        handles: list[CallHandle] = []
        requests: list[pb.SessionRequest] = []
        items: Sequence[tuple] = payloads if batch_rows is None else [
            (s, b, n) for (s, b), n in zip(payloads, batch_rows, strict=True)]
        for group in batches(items, size=_payload_size):
            requests.append(pb.SessionRequest())
            add = requests[-1].submits.add
            for item in group:
                schema, batch = item[0], item[1]
                # Built in place in the batch's message (half the cost of building a
                # Submit and copying it in); each handle keeps its submit, a view into
                # that message, to resubmit after a reconnect.
                submit = add(ref=next_ref(), function_id=function_id, function_name=function_name,
                             idempotency_key=f"{key(96):024x}", parent_call_id=parent)
                args = submit.args
                args.schema, args.batch, args.rows = schema, batch, 1
                if batch_rows is not None:
                    submit.batch, args.rows = True, item[2]
                handles.append(handle_type(session, submit, name, decode))
        self._send(session, handles, [], requests)
        return handles

    def attach_call(self, call_id: str, *, decode: Callable[[bytes, bytes], list], display_name: str = "",
                    cancel: bool = False, handle_type: Callable[..., CallHandle] = CallHandle,
                    after_chunk: int | None = None) -> CallHandle:
        """Follow a call made elsewhere (another process, an earlier run) by id:
        its events replay from the start. With ``cancel``, a CancelCall for it goes
        in the same message, so the handle's first event comes after the cancel
        took effect.

        A call this session already follows with a ``handle_type`` handle (say,
        one it spawned) gets that handle back rather than a second subscription.
        With ``after_chunk`` (a generator's reader), a new handle replays the chunks
        after that index and takes the place of any older one (chalkd keeps one
        subscription per session and call).
        """
        session = self.session
        existing = session.following(call_id)
        if after_chunk is not None:
            if existing is not None:
                existing.finished = True
                session.forget(existing)
        elif existing is not None and type(existing) is handle_type:
            if cancel:
                self.cancel_calls([existing])
            return existing
        handle = handle_type(session, pb.Submit(ref=session.next_ref()), display_name or call_id, decode)
        handle.call_id = call_id  # so its opening (now and after a reconnect) is an Attach
        if after_chunk is not None:
            handle.received = handle.consumed = handle._acked = after_chunk
        self._send(session, [handle], [pb.CancelCall(call_id=call_id)] if cancel else [])
        return handle

    def cancel_calls(self, handles: list[CallHandle]) -> None:
        """Cancel the unfinished calls among ``handles``, from any thread (one message)."""
        session = self.session
        if in_sdk_thread():
            session.cancel_batch(handles)
        else:
            # On the SDK loop, where acceptance is recorded: a call not accepted
            # yet is cancelled as its id arrives, never missed in between.
            self.loop.call_soon_threadsafe(session.cancel_batch, list(handles))

    @staticmethod
    def _send(session: _Session, handles: list[CallHandle], messages: list,
              requests: list[pb.SessionRequest] | None = None) -> None:
        if in_sdk_thread():
            session.start_batch(handles, messages)
        else:
            session.send_batch(handles, messages, requests)

    def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until the session's queued messages went out."""
        session = self._session
        if session is None or in_sdk_thread() or not self.loop.is_running():
            return

        async def drained() -> None:
            while session._out or session._incoming:
                await asyncio.sleep(0.005)

        try:
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(drained(), timeout), self.loop).result(timeout + 0.5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

    def close(self) -> None:
        if self._channel is not None:
            self.loop.call_soon_threadsafe(self._channel.close)
            self._channel = None


def _close_all() -> None:
    for client in list(Client._instances.values()):
        try:
            client.flush(timeout=1.0)  # a cancel from a loop left just before exit still goes out
            client.close()
        except Exception:  # interpreter shutdown: nothing useful to report
            pass


atexit.register(_close_all)

__all__ = ["Client", "CallHandle", "run_sync", "run_async", "on_sdk_loop", "default_target", "current_call_id",
           "ChalkError"]
