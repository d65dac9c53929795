"""The interface every runtime implements.

A runtime turns a :class:`ReplicaRequest` into a running worker that dials the
daemon back, and reports how it ended::

    handle = await runtime.start(request)
    exit = await handle.wait()     # ReplicaExit(code=..., signal=...)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from chalkd.model import ReplicaExit
from chalkd.specs import FunctionSpec


class RuntimeUnsupported(Exception):
    """The function asks for something this runtime cannot do (message says what)."""


class ReplicaStartError(Exception):
    """A replica could not be started: its image failed to build (``build_failed=True``),
    or the runtime could not start it (the engine refused the container)."""

    def __init__(self, message: str, *, build_failed: bool = True) -> None:
        super().__init__(message)
        self.build_failed = build_failed


@dataclass(frozen=True)
class ReplicaRequest:
    replica_id: str
    token: str
    function_id: str
    function_name: str
    spec: FunctionSpec               # as registered (decoded by the services)
    env: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu_uuids: tuple[str, ...] = ()   # devices the scheduler allocated to this replica alone


class ReplicaHandle(abc.ABC):
    pid: int | None = None

    @abc.abstractmethod
    async def wait(self) -> ReplicaExit: ...

    @abc.abstractmethod
    def terminate(self) -> None: ...

    @abc.abstractmethod
    def kill(self) -> None: ...

    @abc.abstractmethod
    def log_tail(self, lines: int = 30) -> str: ...


class Runtime(abc.ABC):
    name: str = ""
    # True where the runtime's cluster places replicas by their own reservations (Swarm): the autoscaler
    # then reserves no CPU, memory or GPUs of this host for them.
    places_replicas: bool = False

    @abc.abstractmethod
    def check(self, spec: FunctionSpec) -> None:
        """Fast check at registration; raise RuntimeUnsupported naming the problem."""

    @abc.abstractmethod
    async def prepare(self, function_id: str, spec: FunctionSpec) -> None:
        """Build what the function's replicas need (cached); raise ReplicaStartError."""

    @abc.abstractmethod
    async def start(self, request: ReplicaRequest) -> ReplicaHandle: ...

    def pending_reason(self, function_id: str) -> str:
        """Why a started replica of ``function_id`` is not running yet, where the runtime knows ("" if not)."""
        return ""

    async def close(self) -> None:
        return None


def refuse_placement(spec: FunctionSpec, runtime: str) -> None:
    """``node=``/``node_labels=`` place replicas on a swarm's nodes; a runtime with one node refuses them."""
    if spec.resources.node or spec.resources.node_labels:
        what = "node=" if spec.resources.node else "node_labels="
        raise RuntimeUnsupported(f"function {spec.name!r}: {what} places replicas on a swarm's nodes, which needs "
                                 f"chalkd serve --runtime swarm (this daemon runs the {runtime} runtime)")


def format_size(n: int) -> str:
    """``format_size(2**30) == "1Gi"``; sizes that are not a whole unit stay in bytes."""
    for unit, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"
