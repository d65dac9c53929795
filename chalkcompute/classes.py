"""Classes: ``@chalkcompute.cls`` with ``@method``, ``@before`` and ``@after``; ``RemoteClass``.

    import chalkcompute

    @chalkcompute.cls(cpu="2", memory="4Gi", min_replicas=1, max_replicas=2)
    class Embedder:
        @chalkcompute.before()
        def load(self):
            self.model = load_model()          # once per replica, before it takes any call

        @chalkcompute.method()
        def embed(self, text: str) -> list[float]:
            return self.model.encode(text)

        @chalkcompute.after()
        def shutdown(self):
            del self.model                     # when the replica stops (30 s at most)

    Embedder.deploy()
    e = Embedder()
    e.embed("hello world")                     # runs in a replica; .aio/.spawn/.map/.starmap too

Each ``@method`` is its own function version named ``"{Class}.{method}"`` (so
``RemoteFunction.from_name("Embedder.embed")`` works), with its own replicas; all
of them ship the same class source and the same image. Inside a replica the class
is plain Python: its zero-argument ``__init__`` runs, then ``@before``, and
``self.other_method(...)`` is a local call (see ``chalkcompute.worker.lifecycle``).
Registration is lazy, as for functions: first use, ``deploy()``, ``wait_ready()``,
or when the script exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from chalkcompute import _code
from chalkcompute import functions as _functions
from chalkcompute._bridge import Twin
from chalkcompute._client import Client
from chalkcompute._options import FunctionOptions
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.exceptions import ChalkError, FunctionBuildError, FunctionError, FunctionTimeoutError
from chalkcompute.functions import FunctionVersionInfo, RemoteFunction, in_worker

__all__ = ["cls", "method", "before", "after", "RemoteClass", "ClassError", "ClassBuildError"]

ROLE_ATTR = "__chalk_role__"  # set on a function by @method/@before/@after; read here and in the replica
#: The class a replica serves (set by the worker before the class's code runs): its @cls is a no-op there.
SERVING_ENV = "CHALK_SERVING_CLASS"
REF_PREFIX = "class:"  # a class in a bundle's remote_refs (functions are plain names)


class ClassError(ChalkError):
    """Base exception for RemoteClass errors: a class that cannot deploy or run (the message says why)."""


class ClassBuildError(ClassError, FunctionBuildError):
    """Raised when the class image build fails (the message has the failing step and the end of the log)."""


# -- the markers ----------------------------------------------------------------------------------


def _marker(role: str, fn: Callable | None) -> Any:
    def mark(f: Callable) -> Callable:
        if not isinstance(f, types.FunctionType):
            raise TypeError(f"@chalkcompute.{role}() marks a method defined with def in a class body, got {f!r}")
        setattr(f, ROLE_ATTR, role)
        return f

    if fn is None:
        return mark
    return mark(fn)


def method(fn: Callable | None = None) -> Any:
    """Mark a class method for remote deployment (``@chalkcompute.method()`` or bare)."""
    return _marker("method", fn)


def before(fn: Callable | None = None) -> Any:
    """Mark the startup hook: runs once per replica, after ``__init__`` and before any call."""
    return _marker("before", fn)


def after(fn: Callable | None = None) -> Any:
    """Mark the shutdown hook: runs when a replica stops (scale-down, delete, daemon stop), 30 s at most."""
    return _marker("after", fn)


def roles(klass: type) -> dict[str, list[str]]:
    """``{"method": [...], "before": [...], "after": [...]}``: attribute names by role, bases first."""
    found: dict[str, str] = {}
    for base in reversed(klass.__mro__[:-1]):  # a subclass's definition wins over its base's
        for attr, value in vars(base).items():
            role = getattr(value, ROLE_ATTR, None) if isinstance(value, types.FunctionType) else None
            if role is not None:
                found[attr] = role
            else:
                found.pop(attr, None)
    out: dict[str, list[str]] = {"method": [], "before": [], "after": []}
    for attr, role in found.items():
        out[role].append(attr)
    return out


def check_class(klass: type, name: str) -> dict[str, list[str]]:
    """The class's roles, or ClassError: no @method, two @before/@after, a hook taking arguments,
    an ``__init__`` that needs arguments."""
    found = roles(klass)
    if not found["method"]:
        raise ClassError(f"class {name!r} has no @chalkcompute.method(): mark at least one method to deploy")
    for role in ("before", "after"):
        if len(found[role]) > 1:
            raise ClassError(f"class {name!r} has more than one @chalkcompute.{role}() "
                             f"({', '.join(found[role])}): a class has at most one")
        for attr in found[role]:
            params = list(inspect.signature(getattr(klass, attr)).parameters.values())[1:]
            if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
                raise ClassError(f"@chalkcompute.{role}() {name}.{attr} must take only self: it is called "
                                 f"with no arguments")
    for attr in found["method"]:
        if attr.startswith("_"):
            raise ClassError(f"@chalkcompute.method() {name}.{attr}: a remote method's name cannot start with '_'")
    try:
        inspect.signature(klass).bind()
    except TypeError:
        raise ClassError(f"class {name!r}: __init__ must take no arguments (classes are built with no "
                         f"arguments; load state in @chalkcompute.before())") from None
    except ValueError:  # no signature to read (a builtin base): it is tried in the replica
        pass
    return found


# -- handles ---------------------------------------------------------------------------------------


class _Unbound:
    """What a method's ``self`` is bound to on the caller's side: its signature without ``self``."""

    def __repr__(self) -> str:
        return "<unbound>"


_UNBOUND = _Unbound()


class _MethodFunction(RemoteFunction):
    """One ``@method`` of a decorated class: a RemoteFunction whose code is the whole class and
    whose registration registers every method of the class (they deploy together)."""

    def __init__(self, owner: RemoteClass, fn: types.FunctionType, opts: FunctionOptions) -> None:
        # Bound to a stand-in: the codec, the signature and the call shape leave ``self`` out.
        self._init(opts.name, owner.target, fn=types.MethodType(fn, _UNBOUND), opts=opts)
        self.owner, self.method_name = owner, fn.__name__
        self.__doc__ = fn.__doc__

    def _spec(self) -> tuple[pb.FunctionSpec, _code.CodeBundleData]:
        spec, bundle = super()._spec()
        # The class's method count travels with each method: with replicas per method (no pool) the
        # daemon refuses up front a class whose methods' min_replicas want more GPUs than the host has.
        spec.replica_pool_size = len(self.owner._methods)
        if self.owner.shared_replicas:
            spec.replica_pool = self.owner._pool_key()
        return spec, bundle

    def _bundle(self) -> _code.CodeBundleData:
        # "{Python class}.{method}": a dotted name is never a def's, so the replica knows a class method.
        bundle = self.owner._class_bundle()
        return dataclasses.replace(bundle, function_name=f"{bundle.function_name}.{self.method_name}")

    async def _register(self, build_timeout: float | None = None) -> FunctionVersionInfo:
        if self._info is None:
            await self.owner._register_all(build_timeout)
        assert self._info is not None
        return self._info

    async def _register_one(self, build_timeout: float | None) -> FunctionVersionInfo:
        return await RemoteFunction._register(self, build_timeout)


class _Instance:
    """What ``Embedder()`` returns: its methods are the class's remote methods."""

    __slots__ = ("_owner",)

    def __init__(self, owner: RemoteClass) -> None:
        self._owner = owner

    def __getattr__(self, attr: str) -> RemoteFunction:
        return self._owner._method(attr)

    def __repr__(self) -> str:
        return f"<{self._owner.name} instance (remote)>"


class RemoteClass:
    """A managed class: each ``@method`` is a function version ``"{name}.{method}"``.

    Made by ``@chalkcompute.cls`` (see the module docstring) or attached with
    ``RemoteClass.from_name("Embedder")``. ``Embedder()`` takes no arguments;
    ``Embedder().embed`` and ``Embedder.embed`` are the method's :class:`RemoteFunction`.
    """

    def __init__(self, name: str, methods: dict[str, RemoteFunction], *, user_cls: type | None = None,
                 target: str | None = None, lazy: bool = False) -> None:
        self.name, self.target, self._user_cls, self._lazy_methods = name, target, user_cls, lazy
        self._methods = methods
        self._bundle: _code.CodeBundleData | None = None
        self._registering: asyncio.Lock | None = None
        self.shared_replicas = False
        self._pool: str | None = None
        self._source_file = getattr(sys.modules.get(getattr(user_cls, "__module__", "")), "__file__", None)

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def _from_class(cls, klass: type, *, target: str | None = None, **options: Any) -> RemoteClass:
        name = options.pop("name", None) or klass.__name__
        if not isinstance(name, str) or "." in name:
            raise ClassError(f"invalid class name {name!r}: a class name cannot contain '.' "
                             f"(its methods are named '{{class}}.{{method}}')")
        shared = options.pop("shared_replicas", False)
        if not isinstance(shared, bool):
            raise TypeError(f"shared_replicas must be True or False, got {shared!r}")
        found = check_class(klass, name)
        self = cls(name, {}, user_cls=klass, target=target)
        self.shared_replicas = shared
        for attr in found["method"]:
            fn = vars(klass).get(attr) or getattr(klass, attr)
            opts = FunctionOptions.validate(fn, name=f"{name}.{attr}", **options)
            self._methods[attr] = _MethodFunction(self, fn, opts)
        if not in_worker():
            _code.check_function(klass, remote_name=_functions._remote_name)
            _functions._pending.update(self._methods.values())
        return self

    @classmethod
    def _lazy(cls, name: str) -> RemoteClass:
        """A handle by name whose methods hydrate on their first call (nested calls in replicas)."""
        return cls(name, {}, lazy=True)

    def _pool_key(self) -> str:
        """With shared_replicas: the key every method's version carries, from the class's name and
        all its methods' specs, so a changed class is a new pool and an unchanged one the same."""
        if self._pool is None:
            digest = hashlib.sha256()
            for rf in self._methods.values():
                digest.update(RemoteFunction._spec(rf)[0].SerializeToString(deterministic=True))
            self._pool = f"{self.name}:{digest.hexdigest()[:16]}"
        return self._pool

    def _class_bundle(self) -> _code.CodeBundleData:
        if self._bundle is None:
            assert self._user_cls is not None
            # A script's __main__ loses __file__ once the script ends, and a class's source is found
            # through its module's file: registering at exit puts the file seen at decoration back.
            module = sys.modules.get(self._user_cls.__module__)
            restore = module is not None and self._source_file and not getattr(module, "__file__", None)
            if restore:
                module.__file__ = self._source_file  # type: ignore[union-attr]
            try:
                self._bundle = _code.build_bundle(self._user_cls, remote_name=_functions._remote_name)
            finally:
                if restore:
                    del module.__file__  # type: ignore[union-attr]
        return self._bundle

    @property
    def _chalk_remote_ref(self) -> str:
        """How a function that uses this class names it in its bundle (its replica rebuilds a lazy handle)."""
        return REF_PREFIX + self.name

    # -- methods ------------------------------------------------------------------------------------

    @property
    def methods(self) -> dict[str, RemoteFunction]:
        """Method name -> its RemoteFunction (empty for a lazy handle until a method is used)."""
        return dict(self._methods)

    def _method(self, attr: str) -> RemoteFunction:
        rf = self._methods.get(attr)
        if rf is not None:
            return rf
        if self._lazy_methods and not attr.startswith("_"):
            rf = self._methods[attr] = RemoteFunction._lazy(f"{self.name}.{attr}")
            return rf
        known = ", ".join(sorted(self._methods)) or "none"
        raise AttributeError(f"class {self.name!r} has no remote method {attr!r} (its @methods: {known})")

    def __getattr__(self, attr: str) -> RemoteFunction:
        if attr.startswith("__") or attr in ("_methods", "_lazy_methods"):
            raise AttributeError(attr)
        return self._method(attr)

    def __call__(self, *args: Any, **kwargs: Any) -> _Instance:
        if args or kwargs:
            raise TypeError(f"{self.name}() takes no arguments: classes are built with no arguments "
                            f"(set up state in a @chalkcompute.before() method)")
        return _Instance(self)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def _register_all(self, build_timeout: float | None = None) -> None:
        if self._registering is None:
            self._registering = asyncio.Lock()
        async with self._registering:  # on the SDK loop: one registration of the class at a time
            for rf in self._methods.values():
                if isinstance(rf, _MethodFunction) and rf._info is None:
                    try:
                        await rf._register_one(build_timeout)
                    except FunctionBuildError as exc:
                        raise ClassBuildError(f"the image of class {self.name!r} failed to build: {exc}") from None
                    except FunctionError as exc:
                        raise self._unschedulable(exc) or exc from None

    def _unschedulable(self, exc: FunctionError) -> ClassError | None:
        """The daemon's up-front refusal (GPUs a class's min_replicas could never hold here) as a
        ClassError naming the class and its methods; None for any other error."""
        _, marker, why = str(exc).partition(" is unschedulable: ")
        if not marker:
            return None
        methods = ", ".join(self._methods)
        why, hint, _ = why.partition(" (with shared_replicas=True")
        if hint:  # the floors of its methods' own replicas add up past the host's GPUs
            fix = ("; use @chalkcompute.cls(..., shared_replicas=True) to serve every method from one pool of "
                   "replicas (one @before and one set of GPUs per replica), or lower min_replicas")
        elif "min_replicas=" in why:
            fix = "; lower min_replicas, or deploy on a host with more GPUs"
        else:  # one replica's request alone does not fit (sharing would not help)
            fix = ""
        return ClassError(f"class {self.name!r} (methods {methods}) cannot be deployed on this host: {why}{fix}")

    def _class_error(self, attr: str, exc: FunctionError) -> ClassError:
        if isinstance(exc, FunctionBuildError):
            return ClassBuildError(f"the image of class {self.name!r} failed to build: {exc}")
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return ClassError(f"class {self.name!r}: method {attr!r} cannot run: {lines[-1] if lines else exc}")

    async def _each(self, what: Callable[[str, RemoteFunction], Any]) -> list[Any]:
        async def one(attr: str, rf: RemoteFunction) -> Any:
            try:
                return await what(attr, rf)
            except ClassError:
                raise
            except FunctionError as exc:
                if isinstance(exc, TimeoutError):
                    # Waiting for GPUs a sibling method's replicas hold ("... free (held by Embedder.embed)").
                    if not self.shared_replicas and f"(held by {self.name}." in str(exc):
                        raise FunctionTimeoutError(
                            f"{exc} (each method of class {self.name!r} has replicas of its own, each holding "
                            f"its GPUs: with shared_replicas=True one replica serves every method)") from exc
                    raise
                raise self._class_error(attr, exc) from exc

        return list(await asyncio.gather(*(one(a, rf) for a, rf in self._methods.items())))

    async def _deploy(self, poll_interval: float = 0.5, build_timeout: float = 600.0,
                      ready_timeout: float = 300.0) -> RemoteClass:
        """Build the image and deploy every method, then wait for each to have a ready replica."""
        self._check_deployable()
        await self._register_all(build_timeout)
        await self._each(lambda attr, rf: rf._deploy(poll_interval=poll_interval, build_timeout=build_timeout,
                                                     ready_timeout=ready_timeout))
        return self

    deploy = Twin(_deploy)

    async def _wait_ready(self, timeout: float = 120.0, poll_interval: float | None = None) -> RemoteClass:
        """Until every method has a ready replica (``timeout`` per method; ``poll_interval=None``
        long-polls the daemon). A method whose replicas fail raises ClassError with the reason."""
        self._check_deployable()
        if self._user_cls is not None:
            await self._register_all()
        rounds = timeout if poll_interval is None else poll_interval
        await self._each(lambda attr, rf: rf._wait_ready(timeout=timeout, poll_interval=rounds))
        return self

    wait_ready = Twin(_wait_ready)

    async def _refresh(self) -> dict[str, FunctionVersionInfo]:
        """Method name -> its latest FunctionVersionInfo from the daemon."""
        self._check_deployable()
        if any(rf._info is None for rf in self._methods.values()):
            raise ClassError(f"class {self.name!r} has not been deployed: call deploy() first")
        infos = await self._each(lambda attr, rf: rf._refresh())
        return dict(zip(self._methods, infos, strict=True))

    refresh = Twin(_refresh)

    async def _delete(self) -> None:
        """Delete every method's version; their replicas run @after and stop."""
        self._check_deployable()
        deployed = {a: rf for a, rf in self._methods.items() if rf._info is not None}
        if not deployed:
            raise ClassError(f"class {self.name!r} has not been deployed: nothing to delete")
        await asyncio.gather(*(rf._delete() for rf in deployed.values()))

    delete = Twin(_delete)

    def _check_deployable(self) -> None:
        if self._lazy_methods:
            raise ClassError(f"class {self.name!r} is a handle by name: attach with RemoteClass.from_name "
                             f"({self.name!r}) to deploy, wait for or delete it")

    # -- attaching ---------------------------------------------------------------------------------------

    async def _from_name(cls, name: str, *, target: str | None = None) -> RemoteClass:
        """Attach to the deployed versions named ``"{name}.<method>"``; ClassError when there are none."""
        client = Client.get(target)
        resp = await client.rpc(client.catalog.ListFunctions, pb.ListFunctionsRequest())
        prefix = f"{name}."
        ids = [(f.function_name[len(prefix):], f.id) for f in resp.functions
               if f.function_name.startswith(prefix) and f.state != "deleted"
               and "." not in f.function_name[len(prefix):]]
        if not ids:
            raise ClassError(f"no class named {name!r} is deployed (no function versions named '{name}.<method>')")
        methods: dict[str, RemoteFunction] = {}
        for attr, id_ in sorted(ids):
            got = await client.rpc(client.catalog.GetFunction, pb.GetFunctionRequest(id=id_))
            methods[attr] = RemoteFunction._from_version(got.function, target)
        return RemoteClass(name, methods, target=target)

    from_name = Twin(_from_name, name="from_name", on_class=True)

    def __repr__(self) -> str:
        return f"<RemoteClass {self.name} methods={sorted(self._methods)}>"


def make_remote(ref: str) -> RemoteFunction | RemoteClass:
    """A replica's handle for a name in its bundle's ``remote_refs``: a class or a function."""
    if ref.startswith(REF_PREFIX):
        return RemoteClass._lazy(ref[len(REF_PREFIX):])
    return RemoteFunction._lazy(ref)


# -- the decorator -------------------------------------------------------------------------------------

def cls(klass: type | None = None, **kwargs: Any) -> Any:
    """Decorator that deploys a class as versioned remote functions, one per ``@method``.

    Bare or with the parameters of ``@chalkcompute.function`` (image, cpu, memory, gpu, name, env,
    min_replicas and max_replicas per method, volumes, secrets, serialization_format,
    suspend_cooldown_period, options, max_buffer_duration, max_batching_size, retries,
    rate_limit_key, rate_limit, concurrency, queue_policy, timeout), applied to every method; and
    ``shared_replicas=True``: every method is served by one pool of replicas (one ``@before`` per
    replica, min/max replicas counted for the class) instead of replicas per method::

        @chalkcompute.cls(cpu="2", memory="4Gi", max_replicas=2, shared_replicas=True)
        class Embedder: ...
    """
    if klass is not None and not isinstance(klass, type):
        raise TypeError(f"@chalkcompute.cls decorates a class, got {klass!r}")
    def wrap(k: type) -> Any:
        if not isinstance(k, type):
            raise TypeError(f"@chalkcompute.cls decorates a class, got {k!r}")
        name = kwargs.get("name") or k.__name__
        if in_worker():
            # The replica serving this class runs it plain; anywhere else its methods ride the queue.
            return k if os.environ.get(SERVING_ENV) == name else RemoteClass._lazy(name)
        try:
            return RemoteClass._from_class(k, **kwargs)
        except TypeError as exc:
            if "unexpected keyword argument" in str(exc):
                raise TypeError(f"@chalkcompute.cls: {exc}".replace("validate()", "cls()")) from None
            raise

    return wrap(klass) if klass is not None else wrap
