"""Domain types shared by the daemon's subsystems (no protobuf here).

The services translate between these and the wire; the queue, catalog,
autoscaler and runtimes only know these.
"""

from __future__ import annotations

import enum
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # chalkd.specs imports Policies from here
    from chalkd.specs import FunctionSpec


def new_id(prefix: str) -> str:
    """A short random id, e.g. ``new_id("fv")`` -> ``"fv-3f9a1c0d2b7e4a5c9d10"``."""
    return f"{prefix}-{secrets.token_hex(10)}"


_last_time_id = 0


def new_time_id(prefix: str) -> str:
    """An id that sorts by creation time, e.g. ``"fc-0640a1b2c3d4e5-9f3a1c"``.

    Call ids are indexed: time order makes each insert land on the index's last page.
    """
    global _last_time_id
    now = max(time.time_ns() // 1000, _last_time_id + 1)
    _last_time_id = now
    return f"{prefix}-{now:014x}{random.getrandbits(24):06x}"


class ErrorCode(str, enum.Enum):  # noqa: UP042 - str() and format() keep the Enum spelling logs rely on
    """Why the platform (not the user's code) failed a call."""

    USER = ""                      # the function raised
    WORKER_LOST = "WORKER_LOST"
    INTERRUPTED = "INTERRUPTED"
    UNSCHEDULABLE = "UNSCHEDULABLE"
    BUILD_FAILED = "BUILD_FAILED"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    ABORTED = "ABORTED"
    DEADLOCK = "DEADLOCK"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    PERMISSION_DENIED = "PERMISSION_DENIED"  # a replica's scoped credential reached for another caller's call
    TOO_LARGE = "TOO_LARGE"        # a result or chunk over --max-message-size: the same every run, never retried


@dataclass(frozen=True, slots=True)
class Payload:
    """Arrow IPC: a serialized schema and one record batch of ``rows`` values."""

    schema: bytes
    batch: bytes
    rows: int = 1

    @property
    def size(self) -> int:
        return len(self.schema) + len(self.batch)


@dataclass(frozen=True, slots=True)
class CallError:
    """A failure as the caller will see it."""

    exception_type: str
    message: str
    traceback: str = ""
    code: ErrorCode = ErrorCode.USER
    exception_mro: tuple[str, ...] = ()

    @classmethod
    def platform(cls, code: ErrorCode, message: str) -> CallError:
        return cls(exception_type=f"chalkd.{code.value.title().replace('_', '')}Error", message=message, code=code)


# Platform failures retried whatever the user's retry_on says (from the same budget).
INFRASTRUCTURE_CODES = frozenset({
    ErrorCode.WORKER_LOST, ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED,
    ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.ABORTED,
})


@dataclass(frozen=True, slots=True)
class Retry:
    """A function's retry policy (see chalkcompute.retries.RetryPolicy)."""

    max_retries: int = 3
    initial_wait: float = 1.0
    multiplier: float = 2.0
    max_wait: float = 60.0
    jitter: bool = True
    retry_on: frozenset[str] = frozenset({"builtins.Exception"})

    def wait_before(self, retry: int, rng: random.Random) -> float:
        """Seconds before retry number ``retry`` (1-based): ``min(initial * multiplier**(k-1), max_wait)``,
        drawn uniformly from ``[wait/2, wait]`` with jitter."""
        wait = min(self.initial_wait * self.multiplier ** (retry - 1), self.max_wait)
        return rng.uniform(wait / 2, wait) if self.jitter else wait

    def matches(self, error: CallError) -> bool:
        """Whether a user exception is retryable: its type or one of its bases is in retry_on."""
        return error.exception_type in self.retry_on or any(t in self.retry_on for t in error.exception_mro)


@dataclass(frozen=True, slots=True)
class Policies:
    """What the queue enforces for one function version before and during dispatch."""

    retry: Retry | None = None
    rate_per_second: float = 0.0    # the function's own rate limit (0 = none)
    rate_burst: float = 0.0
    rate_key: str = ""              # bucket name for the own limit ("" = the version's own)
    rate_limit_key: str = ""        # a daemon-defined limit (chalkd rate-limit set)
    max_concurrent: int = 1         # per replica without a key, in total with one
    concurrency_key: str = ""
    max_items: int = 500_000
    result_ttl: float = 86_400.0
    batch_size: int = 0             # 0 = not batched
    batch_wait: float = 0.0         # seconds the first item of a batch may wait for more
    timeout: float = 0.0            # seconds per attempt (0 = none)


@dataclass(slots=True)
class FunctionVersion:
    """One registered version of a function (what the catalog holds).

    ``spec`` is the decoded spec (:class:`chalkd.specs.FunctionSpec`); the fields
    below ``created_at`` are copied out of it by the catalog, flat for the queue
    and autoscaler. ``wire`` is the spec as the client sent it (the database
    column): the services hand it back to clients and workers as it is.
    """

    id: str
    name: str
    version: int
    content_hash: str
    spec: FunctionSpec
    created_at: float
    wire: bytes = b""             # the protobuf FunctionSpec as stored (never parsed below the services)
    min_replicas: int = 1
    max_replicas: int = 1
    cooldown: float = 60.0
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu: str = ""                 # a GpuRequest string ("2:nvidia-a100"), "" for none
    image_hash: str = ""
    is_generator: bool = False
    deleted: bool = False
    latest: bool = True
    failed: str = ""              # why its replicas cannot run, once known
    failed_code: str = ""         # an ErrorCode value, with failed
    policies: Policies = field(default_factory=Policies)

    @property
    def scaling_group_name(self) -> str:
        return f"{self.name}-v{self.version}"


class CallState(str, enum.Enum):  # noqa: UP042 - as ErrorCode
    QUEUED = "queued"
    RUNNING = "running"
    STREAMING = "streaming"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (CallState.SUCCEEDED, CallState.FAILED, CallState.CANCELLED)


@dataclass(slots=True, eq=False)
class Chunk:
    first_index: int
    payload: Payload


@dataclass(slots=True, eq=False)
class Call:
    """A call in the queue, from submit to its final event."""

    id: str
    seq: int
    function: FunctionVersion
    args: Payload | None
    created_at: float
    parent_id: str | None = None
    idempotency_key: str | None = None
    root_seq: int = 0
    state: CallState = CallState.QUEUED
    attempt: int = 0
    failures: int = 0             # failed attempts so far (the retry budget spent; persisted)
    replica_id: str | None = None
    ran_on: str = ""               # its latest attempt's replica, kept after replica_id is cleared (the dashboard)
    dispatched_at: float = 0.0    # monotonic time of the current attempt's dispatch
    queued_at: float = 0.0        # monotonic time it (re)entered the queue
    in_heap: bool = False         # has a live entry in its function's heap (others there are stale)
    retry_delay: float | None = None  # a retry waiting for its abandoned attempt to end first
    chunks: list[Chunk] = field(default_factory=list)
    next_index: int = 0           # index of the next chunk the worker will send
    acked: int = -1               # highest chunk index a caller has consumed
    result: Payload | None = None
    error: CallError | None = None
    finished_at: float | None = None
    subscribers: dict = field(default_factory=dict)  # Subscriber -> ref
    stored: bool | None = None    # its INSERT: None until settled, True committed, False failed (never a call)
    args_bytes: int = 0           # its arguments' bytes counted in the queue's in-memory budget
    result_bytes: int = 0         # its result's bytes counted in the finished cache's budget
    settled: bool = False         # its final row committed (or failed) and its callers told
    detached: bool = False        # spawned: no caller follows it (a generator's chunks wait in the store)
    bytes_in: int = 0             # bytes of the chunks received so far (schema + batch of each payload)
    acked_bytes: int = 0          # bytes of the chunks every reader has consumed (or the store took for them)
    stored_index: int = -1        # last chunk index committed to the store
    unread_since: float | None = None  # monotonic time its stream last had no reader (None: it has one)
    batch: Any = None             # a batch call's chalkd.queue.batch.BatchState (None: one input)

    @property
    def sort_key(self) -> tuple[int, int]:
        # The arrival of the root call first: nested work of an older outer call
        # runs before newer outer calls (no starvation). There is no user-set priority
        # (the calls table keeps a `priority` column, always 0, for old databases).
        return (self.root_seq, self.seq)


@dataclass(frozen=True, slots=True)
class ReplicaExit:
    """How a replica process ended."""

    code: int | None = None
    signal: int | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.signal:
            import signal as _signal
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            text = f"killed by {name}"
        elif self.code is not None:
            text = f"exit code {self.code}"
        else:
            text = "stopped answering"
        return f"{text}: {self.reason}" if self.reason else text
