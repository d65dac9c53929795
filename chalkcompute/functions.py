"""Remote functions: the ``@chalkcompute.function`` decorator and ``RemoteFunction``.

    import chalkcompute

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    add.wait_ready()
    add(3, 5)                         # 8, run by a replica through chalkd's queue
    await add.aio(3, 5)               # the same from async code

A generator function (sync or async) returns an iterator usable with both
``for`` and ``async for``; each chunk arrives as soon as the worker yields it.

Decorating validates what needs no daemon (name, resources, globals that
cannot travel) and returns at once; the function version is registered on
first use (a call, ``deploy()``, ``wait_ready()``), or when the script exits,
so definitions later in the module are visible to it.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chalkcompute import _code, _map
from chalkcompute import calls as _calls
from chalkcompute._bridge import Twin, run_async, run_sync
from chalkcompute._build import ImageBuildFailed, prepare_image
from chalkcompute._client import CallHandle, Client
from chalkcompute._contract import FUNCTION_NAME_RE, name_too_long, sdk_max_payload, too_large
from chalkcompute._mounts import secret_refs
from chalkcompute._options import FunctionOptions, parse_cpu, parse_memory
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute._stream import ChunkStream, _cancel_and_wait
from chalkcompute.exceptions import (
    FunctionBuildError,
    FunctionError,
    FunctionSignatureError,
    FunctionTimeoutError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from chalkcompute.image import Image
from chalkcompute.policies import ConcurrencyPolicy, QueuePolicy, RateLimitPolicy
from chalkcompute.retries import RetryPolicy

log = logging.getLogger(__name__)

__all__ = ["function", "RemoteFunction", "FunctionVersionInfo", "parse_cpu", "parse_memory"]

NAME_RE = FUNCTION_NAME_RE  # the rule the daemon checks too (chalkcompute._contract)
_MEMORY_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                 "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def in_worker() -> bool:
    """True inside a chalkd replica."""
    return bool(os.environ.get("CHALK_REPLICA_ID"))


@dataclass(frozen=True)
class FunctionVersionInfo:
    """Metadata about a deployed function version.

    ``options`` are the ``options=`` the function was registered with, stored with the
    version and returned as given; chalkd does not interpret them.

    The scaling fields are as of when the info was fetched (``refresh()`` fetches it again),
    the same as ``chalkd functions -v`` shows: ``ready_replicas`` (taking calls),
    ``replicas`` (all of them: starting, ready or draining), ``desired_replicas`` (what the
    autoscaler wants now), ``waiting`` (why wanted replicas do not start, "" when none
    wait), and the last scaling decision with its reason and time (``scaling_decision_at``,
    unix seconds; None before any).

    Example::

        fn.deploy(); fn.info.options  # {'team': 'search'}
        info = fn.refresh()
        info.desired_replicas, info.ready_replicas, info.replicas   # (3, 2, 3)
        info.waiting           # 'waiting: 1 GPU of type nvidia-l4 wanted, 0 free (held by embed)'
        info.scaling_decision  # 'scale up 2 -> 3: 5 call(s) waiting, 2 running, 1 per replica'
    """

    id: str
    function_name: str
    version: int
    scaling_group_name: str
    options: dict[str, str] = field(default_factory=dict)
    ready_replicas: int = 0
    replicas: int = 0
    desired_replicas: int = 0
    waiting: str = ""
    scaling_decision: str = ""
    scaling_decision_at: float | None = None


def _remote_name(obj: object) -> str | None:
    if isinstance(obj, RemoteFunction):
        return obj.name
    # A RemoteClass (chalkcompute.cls) names itself "class:<name>"; looked up on the type, so
    # no arbitrary object's __getattr__ runs.
    return obj._chalk_remote_ref if hasattr(type(obj), "_chalk_remote_ref") else None  # type: ignore[attr-defined]


class RemoteFunction:
    """A versioned remote function (see the module docstring)."""

    def __init__(
        self,
        fn: Callable | None = None,
        *,
        image: Image | None = None,
        cpu: str | int | float | None = None,
        memory: str | int | None = None,
        gpu: str | None = None,
        name: str | None = None,
        env: dict[str, str] | None = None,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        volumes: list | None = None,
        secrets: list | None = None,
        serialization_format: str = "pyarrow",
        suspend_cooldown_period: float | None = None,
        options: dict[str, str] | None = None,
        max_buffer_duration: int | None = None,
        max_batching_size: int | None = None,
        retries: int | RetryPolicy | None = None,
        rate_limit_key: str | None = None,
        rate_limit: int | float | RateLimitPolicy | None = None,
        concurrency: int | ConcurrencyPolicy | None = None,
        queue_policy: QueuePolicy | None = None,
        timeout: float | None = None,
        target: str | None = None,
        node: str | None = None,
        node_labels: dict[str, str] | None = None,
    ) -> None:
        if fn is None or not callable(fn):
            raise TypeError(f"RemoteFunction needs a function, got {fn!r}")
        opts = FunctionOptions.validate(
            fn, image=image, cpu=cpu, memory=memory, gpu=gpu, name=name, env=env, min_replicas=min_replicas,
            max_replicas=max_replicas, volumes=volumes, secrets=secrets, serialization_format=serialization_format,
            suspend_cooldown_period=suspend_cooldown_period, options=options,
            max_buffer_duration=max_buffer_duration, max_batching_size=max_batching_size, retries=retries,
            rate_limit_key=rate_limit_key, rate_limit=rate_limit, concurrency=concurrency,
            queue_policy=queue_policy, timeout=timeout, node=node, node_labels=node_labels)
        self._init(opts.name, target, fn=fn, opts=opts)
        functools.update_wrapper(self, fn)
        if not in_worker():
            _code.check_function(fn, remote_name=_remote_name)
            _pending.add(self)

    def _init(self, name: str, target: str | None, *, fn: Callable | None = None,
              opts: FunctionOptions | None = None) -> None:
        """The one construction path (the decorator, from_name/from_id, lazy handles):
        a handle knows its name and target; with ``fn`` (and its validated options) it can
        register itself. It is *hydrated* once it knows its version (:meth:`_hydrate`)."""
        self.fn, self.name, self.target, self._opts = fn, name, target, opts
        self._info: FunctionVersionInfo | None = None
        self._lock = threading.Lock()
        if fn is not None and opts is not None:
            # A batched handler takes lists; its callers pass (and get back) one item.
            self.codec: FunctionCodec | None = FunctionCodec.for_function(fn, batched=opts.batched)
            self.is_generator: bool | None = self.codec.is_generator
            self.signature: inspect.Signature | None = inspect.signature(fn)
            params = list(self.signature.parameters.values())
            self._positional: tuple[str, ...] | None = tuple(p.name for p in params) if all(
                p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) else None
        else:
            # Known once hydrated: the codec comes from the version's schemas.
            self.codec, self.is_generator, self.signature, self._positional = None, None, None, None

    def _hydrate(self, version: pb.FunctionVersion) -> RemoteFunction:
        """Learn the registered version: its id, and (for a handle without ``fn``) how to
        encode arguments and decode results."""
        if self.fn is None:
            spec = version.spec
            self.codec = FunctionCodec.from_schemas(list(spec.parameter_names), spec.input_schema, spec.output_schema)
            self.is_generator = spec.is_generator
        self._info = _info(version)
        return self

    @property
    def is_hydrated(self) -> bool:
        """True once this handle knows its registered version."""
        return self._info is not None

    # -- attaching to existing versions -------------------------------------------------

    @classmethod
    def _from_version(cls, version: pb.FunctionVersion, target: str | None) -> RemoteFunction:
        self = cls.__new__(cls)
        self._init(version.function_name, target)
        return self._hydrate(version)

    async def _from_name(cls, name: str, *, target: str | None = None) -> RemoteFunction:
        """Attach to the latest version of a function by name; raises FunctionNotFoundError."""
        too_long = name_too_long("function name", name)  # before anything reads it (H1, issue 13 item 4a)
        if too_long:
            raise InvalidArgumentError(too_long)
        client = Client.get(target)
        resp = await client.rpc(client.catalog.GetFunction, pb.GetFunctionRequest(name=name))
        return cls._from_version(resp.function, target)

    async def _from_id(cls, id: str, *, target: str | None = None) -> RemoteFunction:
        """Attach to an exact function version by id; raises FunctionNotFoundError."""
        client = Client.get(target)
        resp = await client.rpc(client.catalog.GetFunction, pb.GetFunctionRequest(id=id))
        return cls._from_version(resp.function, target)

    # Class-bound twins: ``RemoteFunction.from_name("add")`` blocks; ``await
    # RemoteFunction.from_name.aio("add")`` does not. Both run on the SDK loop, where the stub lives.
    from_name = Twin(_from_name, name="from_name", on_class=True)
    from_id = Twin(_from_id, name="from_id", on_class=True)

    @classmethod
    def _lazy(cls, name: str) -> RemoteFunction:
        """A handle by name that hydrates on first call (how nested calls are bound in workers)."""
        self = cls.__new__(cls)
        self._init(name, None)
        return self

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        return Client.get(self.target)

    @property
    def info(self) -> FunctionVersionInfo | None:
        """The registered version, or None before deploy/first call."""
        return self._info

    def _spec(self) -> tuple[pb.FunctionSpec, _code.CodeBundleData]:
        opts, codec, fn = self._opts, self.codec, self.fn
        assert opts is not None and codec is not None and fn is not None, "only a handle made from fn registers"
        bundle = self._bundle()
        return pb.FunctionSpec(
            name=self.name, image=opts.image.to_proto(),
            resources=pb.Resources(cpu_millis=opts.cpu_millis, memory_bytes=opts.memory_bytes, gpu=opts.gpu,
                                   node=opts.node, node_labels=dict(opts.node_labels)),
            env=dict(opts.env), min_replicas=opts.min_replicas, max_replicas=opts.max_replicas,
            suspend_cooldown_seconds=opts.suspend_cooldown_period,
            code=pb.CodeBundle(module_source=bundle.module_source, function_name=bundle.function_name,
                               files=bundle.files, remote_refs=bundle.remote_refs, module=bundle.module),
            input_schema=codec.input_schema_bytes, output_schema=codec.output_schema_bytes,
            is_generator=self.is_generator, is_async=inspect.iscoroutinefunction(self.fn)
            or inspect.isasyncgenfunction(self.fn),
            options=dict(opts.options), serialization_format=opts.serialization_format,
            parameter_names=codec.parameter_names, volumes=opts.volumes, **opts.policy_spec,
        ), bundle

    def _bundle(self) -> _code.CodeBundleData:
        """The code that travels (a class method ships its whole class: chalkcompute.cls)."""
        assert self.fn is not None, "only a handle made from fn registers"
        return _code.build_bundle(self.fn, remote_name=_remote_name)

    async def _register(self, build_timeout: float | None = None) -> FunctionVersionInfo:
        if self._info is not None:
            return self._info
        if self._opts is None:  # a handle by name: hydrate from the daemon
            resp = await self.client.rpc(self.client.catalog.GetFunction, pb.GetFunctionRequest(name=self.name))
            self._hydrate(resp.function)
            assert self._info is not None
            return self._info
        spec, bundle = self._spec()
        # Local secrets are read now, at deploy; their values travel beside the spec, not in it.
        refs, local_secrets = secret_refs(self._opts.secrets)
        spec.secrets.extend(refs)
        # Functions it calls must exist before it can call them.
        for global_name in bundle.remote_refs:
            dep = _find_global(self.fn, global_name)
            if isinstance(dep, RemoteFunction) and dep is not self:
                await dep._register()
            elif hasattr(type(dep), "_register_all"):  # a RemoteClass: all its methods
                await dep._register_all()
        if await self.client.runtime_name() in ("docker", "swarm"):  # images built on an engine
            # Built before registering, with the log in this terminal; the replicas find it cached.
            try:
                await prepare_image(self.client, self._opts.image, what=f"function {self.name!r}",
                                    timeout=build_timeout)
            except ImageBuildFailed as exc:
                raise FunctionBuildError(f"the image of function {self.name!r} failed to build: {exc}") from None
        resp = await self.client.rpc(self.client.catalog.RegisterFunction,
                                     pb.RegisterFunctionRequest(spec=spec, local_secrets=local_secrets))
        self._info = _info(resp.function)
        _pending.discard(self)
        return self._info

    def _ensure_registered(self) -> FunctionVersionInfo:
        if self._info is not None:
            return self._info
        with self._lock:
            if self._info is None:
                return run_sync(self._register())
        return self._info

    async def _ensure_registered_async(self) -> FunctionVersionInfo:
        if self._info is not None:
            return self._info
        return await run_async(self._register())

    async def _wait_ready(self, timeout: float = 120.0, poll_interval: float = 0.5) -> RemoteFunction:
        info = await self._register()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # chalkd answers WaitReady as soon as a replica is ready; each round lasts at
        # most poll_interval so a long wait still re-checks the daemon that often.
        rounds_timeout = max(poll_interval, 0.05)
        reason = ""
        while True:
            left = deadline - loop.time()
            if left <= 0:
                # The daemon's last word says why ("...within Ns: it needs 1500m CPU and ...").
                why = reason.partition(": ")[2]
                raise FunctionTimeoutError(
                    f"no replica of {self.name!r} became ready within {timeout:g}s" + (f": {why}" if why else ""))
            try:
                resp = await self.client.rpc(
                    self.client.catalog.WaitReady, pb.WaitReadyRequest(id=info.id, timeout=min(left, rounds_timeout)),
                    timeout=min(left, rounds_timeout) + 30)
            except FunctionTimeoutError as exc:
                reason = str(exc)
                continue
            fv = resp.function
            if fv.state == "failed":
                cls = FunctionBuildError if fv.error_code == "BUILD_FAILED" else FunctionError
                raise cls(f"function {self.name!r} cannot run: {fv.error}")
            if fv.ready_replicas > 0:
                return self

    wait_ready = Twin(_wait_ready)

    async def _deploy(self, poll_interval: float = 0.5, build_timeout: float = 600,
                      ready_timeout: float = 300) -> RemoteFunction:
        """Register this version, then wait for the image build and a ready replica.

        On Docker ``build_timeout`` bounds the image build (``ImageBuildFailed`` naming it
        when it runs over) and ``ready_timeout`` the wait for a replica; the process runtime
        builds its environment as the first replica starts, so there the two add up to one wait.

        Example::

            fn.deploy(build_timeout=900, ready_timeout=120)
        """
        for label, value in (("build_timeout", build_timeout), ("ready_timeout", ready_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        await self._register(build_timeout=build_timeout)
        if await self.client.runtime_name() in ("docker", "swarm"):  # images built on an engine
            return await self._wait_ready(timeout=ready_timeout, poll_interval=poll_interval)
        return await self._wait_ready(timeout=build_timeout + ready_timeout, poll_interval=poll_interval)

    deploy = Twin(_deploy)

    async def _refresh(self) -> FunctionVersionInfo:
        if self._info is None:
            raise FunctionError(f"function {self.name!r} has not been deployed: call deploy() first")
        resp = await self.client.rpc(self.client.catalog.GetFunction, pb.GetFunctionRequest(id=self._info.id))
        self._info = _info(resp.function)
        return self._info

    refresh = Twin(_refresh)

    async def _delete(self) -> None:
        if self._info is None:
            raise FunctionError(f"function {self.name!r} has not been deployed: nothing to delete")
        await self.client.rpc(self.client.catalog.DeleteFunction, pb.DeleteFunctionRequest(id=self._info.id))
        self._info = None

    delete = Twin(_delete)

    # -- calling ---------------------------------------------------------------------------

    def _encode(self, args: tuple, kwargs: dict) -> tuple[bytes, bytes]:
        arguments = self._arguments(args, kwargs)
        assert self.codec is not None  # hydrated: _ensure_registered* ran first
        schema, batch = self.codec.encode_args(arguments)
        size = len(schema) + len(batch)
        if size > (limit := sdk_max_payload()):
            raise ResourceExhaustedError(too_large(f"the arguments of {self.name}()", size, limit))
        return schema, batch

    def _arguments(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The call's arguments by parameter name (defaults applied); FunctionSignatureError if they do not fit."""
        positional = self._positional
        if positional is not None and not kwargs and len(args) == len(positional):
            # The common call shape: every parameter given by position (no bind needed).
            arguments = dict(zip(positional, args, strict=False))  # lengths checked above
        elif self.signature is not None:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise FunctionSignatureError(f"{self.name}(): {exc}") from None
            bound.apply_defaults()
            arguments = dict(bound.arguments)
        else:
            assert self.codec is not None
            names = self.codec.parameter_names
            if len(args) > len(names):
                raise FunctionSignatureError(
                    f"{self.name}() takes {len(names)} positional argument(s) but {len(args)} were given")
            arguments = dict(zip(names, args, strict=False))
            for k, v in kwargs.items():
                if k not in names:
                    raise FunctionSignatureError(f"{self.name}() got an unexpected keyword argument {k!r}")
                if k in arguments:
                    raise FunctionSignatureError(f"{self.name}() got multiple values for argument {k!r}")
                arguments[k] = v
        return arguments

    def _start(self, args: tuple, kwargs: dict) -> CallHandle:
        info = self._ensure_registered()
        payload = self._encode(args, kwargs)
        return self.client.start_call(function_id=info.id, args=payload, decode=self.codec.decode_results,  # type: ignore[union-attr]
                                      display_name=self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the remote function: its value, or an iterator of chunks for a generator."""
        handle = self._start(args, kwargs)
        if self.is_generator:
            return ChunkStream(handle)
        return _result_sync(handle)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Async twin of calling: ``await fn.aio(x)``, or ``async for c in fn.aio(x)``."""
        if self.is_generator is None:
            # A lazy handle (by name, not hydrated yet): hydrating is a round trip, done
            # on the caller's loop when it awaits or iterates, never blocking it here.
            return _PendingCall(self, args, kwargs)
        if self.is_generator:
            return ChunkStream(None, start=lambda: self._start_async(args, kwargs))
        return self._call_async(args, kwargs)

    # Calls that outlive the caller, and fan-out over many inputs (see chalkcompute.calls).
    spawn = _calls.spawn_method      # rf.spawn(*args, **kwargs) -> FunctionCall; await rf.spawn.aio(...)
    map = _map.map_method            # rf.map(*iterables, kwargs=None, order_outputs=True, return_exceptions=False,
                                     #        progress=False)
    starmap = _map.starmap_method    # rf.starmap([(a, b), ...], ...); `async for r in rf.map.aio(...)` too

    async def _start_async(self, args: tuple, kwargs: dict) -> CallHandle:
        info = await self._ensure_registered_async()
        payload = self._encode(args, kwargs)
        return self.client.start_call(function_id=info.id, args=payload, decode=self.codec.decode_results,  # type: ignore[union-attr]
                                      display_name=self.name)

    async def _call_async(self, args: tuple, kwargs: dict) -> Any:
        handle = await self._start_async(args, kwargs)
        return await _result_async(handle)

    def __repr__(self) -> str:
        version = f" v{self._info.version}" if self._info else ""
        return f"<RemoteFunction {self.name}{version}>"


def _find_global(fn: Callable | None, name: str) -> Any:
    return getattr(fn, "__globals__", {}).get(name)


def _info(v: pb.FunctionVersion) -> FunctionVersionInfo:
    return FunctionVersionInfo(id=v.id, function_name=v.function_name, version=v.version,
                               scaling_group_name=v.scaling_group_name, options=dict(v.spec.options),
                               ready_replicas=v.ready_replicas, replicas=v.replicas,
                               desired_replicas=v.desired_replicas, waiting=v.waiting,
                               scaling_decision=v.scaling_decision,
                               scaling_decision_at=v.scaling_decision_at or None)


# -- results --------------------------------------------------------------------------------


def _result_sync(handle: CallHandle) -> Any:
    try:
        return handle.value_of(handle.next_event())
    except KeyboardInterrupt:
        _cancel_and_wait(handle)
        raise


async def _result_async(handle: CallHandle) -> Any:
    try:
        return handle.value_of(await handle.next_event_async())
    except asyncio.CancelledError:
        handle.cancel()
        raise


class _PendingCall:
    """``fn.aio(...)`` on a handle whose kind is not known yet: awaitable (a plain
    function's value) and async-iterable (a generator's chunks). The handle hydrates
    when the caller awaits or iterates, on the caller's loop, without blocking it."""

    __slots__ = ("rf", "args", "kwargs")

    def __init__(self, rf: RemoteFunction, args: tuple, kwargs: dict) -> None:
        self.rf, self.args, self.kwargs = rf, args, kwargs

    def __await__(self) -> Any:
        return self._value().__await__()

    async def _value(self) -> Any:
        rf = self.rf
        await rf._ensure_registered_async()
        if rf.is_generator:
            raise TypeError(f"{rf.name!r} is a generator function: iterate its call with `async for`")
        return await rf._call_async(self.args, self.kwargs)

    def __aiter__(self) -> ChunkStream:
        rf = self.rf

        async def start() -> CallHandle:
            await rf._ensure_registered_async()
            if not rf.is_generator:
                raise TypeError(f"{rf.name!r} is not a generator function: await its call")
            return await rf._start_async(self.args, self.kwargs)

        return ChunkStream(None, start=start)


# -- the decorator ----------------------------------------------------------------------------


def function(fn: Callable | None = None, **kwargs: Any) -> Any:
    """Decorator that deploys a function as a versioned remote function.

    ``@chalkcompute.function`` bare or with the parameters of :class:`RemoteFunction`::

        @chalkcompute.function(cpu="1", memory="2Gi")
        def square(x: int) -> int:
            return x * x
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"@function takes a function, got {fn!r}")

    def wrap(f: Callable) -> RemoteFunction:
        if in_worker():
            # Inside a replica a decorated function the worker did not ship as the
            # running function is a handle by name: its calls ride the queue.
            return RemoteFunction._lazy(kwargs.get("name") or f.__name__)
        return RemoteFunction(f, **kwargs)

    return wrap(fn) if fn is not None else wrap


# Functions decorated but not yet used are registered when the script exits
# ("deploy by running the script").
_pending: set[RemoteFunction] = set()


def _register_pending() -> None:
    if os.environ.get("CHALK_REGISTER_AT_EXIT", "1") == "0":
        return
    for rf in list(_pending):
        try:
            run_sync(rf._register(), timeout=30)
        except Exception as exc:  # the script is over: report, don't raise
            print(f"chalkcompute: could not register {rf.name!r}: {exc}", file=sys.stderr)


# Run when the main script ends but before threads are joined and executors refuse work (threading's
# own exit hooks): by atexit time the SDK's loop can no longer use the executors and the import of
# concurrent.futures.thread (which registers such a hook) fails with "can't register atexit after
# shutdown". Imported now for the same reason.
import concurrent.futures.thread  # noqa: E402,F401

_exit_hook = getattr(threading, "_register_atexit", None)
if _exit_hook is not None:  # CPython
    _exit_hook(_register_pending)
else:
    atexit.register(_register_pending)
