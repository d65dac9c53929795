"""The SDK's exception hierarchy and the one table mapping gRPC status to it.

Every error the SDK raises derives from :class:`ChalkError`. Remote user
exceptions arrive as :class:`RemoteExecutionError`, which is both a
:class:`FunctionError` and a :class:`RuntimeError`, so the reference's
``except RuntimeError`` works::

    try:
        divide(1.0, 0.0)
    except RuntimeError as e:
        print(e)  # ZeroDivisionError: division by zero
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from grpclib.const import Status

__all__ = [
    "AuthenticationError",
    "PermissionDeniedError",
    "ChalkError",
    "FunctionError",
    "FunctionBuildError",
    "FunctionSignatureError",
    "FunctionNotFoundError",
    "FunctionCodeError",
    "SerializationError",
    "RemoteExecutionError",
    "FunctionTimeoutError",
    "DaemonUnavailableError",
    "InvalidArgumentError",
    "ResourceExhaustedError",
    "NotSupportedError",
    "WorkerLostError",
    "CallInterruptedError",
    "CallCancelledError",
    "ConcurrencyDeadlockError",
    "ContainerError",
    "ImageBuildError",
    "VolumeError",
    "VolumeNotFoundError",
    "VolumeFileNotFoundError",
    "VolumeClosedError",
    "VolumeInvalidArgumentError",
    "SandboxError",
    "SandboxNotFoundError",
    "SandboxStatusError",
    "SandboxTerminatedError",
    "SandboxBuildError",
    "SandboxCreationError",
    "ExecError",
    "ScalingGroupError",
    "ScalingGroupNotFoundError",
    "ScalingGroupBuildError",
    "ErrorKind",
    "error_from_status",
    "unavailable_error",
    "timeout_error",
    "remote_error",
]


class ChalkError(Exception):
    """Base of every error raised by chalkcompute."""


class FunctionError(ChalkError):
    """Base exception for Function errors."""


class FunctionBuildError(FunctionError):
    """Raised when the function image build fails."""


class FunctionSignatureError(FunctionError, TypeError):
    """Arguments do not fit the function's signature (also a ``TypeError``)."""


class FunctionNotFoundError(FunctionError, LookupError):
    """No function (or function version) by that name or id."""


class FunctionCodeError(FunctionError, ValueError):
    """The function's code cannot travel to the worker (named in the message)."""


class SerializationError(FunctionError, ValueError):
    """A value cannot be represented in Arrow (the message names the argument)."""


class FunctionTimeoutError(FunctionError, TimeoutError):
    """A deadline passed: waiting for readiness, or a call's timeout."""


class InvalidArgumentError(ChalkError, ValueError):
    """The daemon refused a request as invalid."""


class ResourceExhaustedError(ChalkError):
    """A limit was hit (message size, queue length); the message names it."""


class NotSupportedError(ChalkError, NotImplementedError):
    """A documented parameter that this version of chalkd does not support yet."""


class DaemonUnavailableError(ChalkError, ConnectionError):
    """No chalkd answers at the target address."""


class AuthenticationError(ChalkError, PermissionError):
    """No token, a wrong token, or a daemon that could not prove it knows the token."""


class PermissionDeniedError(ChalkError, PermissionError):
    """The credential is valid but does not allow this (e.g. a replica's scoped credential)."""


class RemoteExecutionError(FunctionError, RuntimeError):
    """An exception raised by the remote function, re-raised in the caller.

    ``str(e)`` is ``"Type: message"``, e.g. ``"ZeroDivisionError: division by zero"``.
    """

    def __init__(
        self,
        message: str,
        *,
        function_name: str = "",
        exception_type: str = "",
        remote_traceback: str = "",
        call_id: str = "",
        exception_mro: tuple[str, ...] = (),
        code: str = "",
    ) -> None:
        short = exception_type.rsplit(".", 1)[-1] if exception_type else "Error"
        super().__init__(f"{short}: {message}" if message else short)
        self.function_name = function_name
        self.exception_type = exception_type
        self.message = message
        self.remote_traceback = remote_traceback
        self.call_id = call_id
        self.exception_mro = exception_mro
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable with its keyword-only fields
        return (
            _rebuild_remote_error,
            (self.message, self.function_name, self.exception_type, self.remote_traceback,
             self.call_id, self.exception_mro, self.code),
        )


def _rebuild_remote_error(*args: Any) -> RemoteExecutionError:
    message, function_name, exception_type, tb, call_id, mro, code = args
    return RemoteExecutionError(
        message, function_name=function_name, exception_type=exception_type,
        remote_traceback=tb, call_id=call_id, exception_mro=mro, code=code,
    )


class WorkerLostError(RemoteExecutionError):
    """The replica running the call was lost on every attempt (message has the exit code or signal)."""


class CallInterruptedError(RemoteExecutionError):
    """A streaming call lost its replica (or the daemon) after it had sent chunks."""


class CallCancelledError(FunctionError, RuntimeError):
    """The call was cancelled."""


class ConcurrencyDeadlockError(FunctionError, RuntimeError):
    """A nested call would wait on concurrency slots its own chain of callers holds (the message names the chain)."""


class ContainerError(ChalkError):
    """Base exception for Container errors: not found, failed to start, not running."""


class ImageBuildError(ContainerError):
    """Raised when the custom image build fails; ``step`` names the failing step, ``log_tail`` ends its log."""

    def __init__(self, message: str, step: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.log_tail = log_tail


class VolumeError(ChalkError):
    """Base exception for volume errors; ``code`` is the daemon's status name (e.g. ``"NOT_FOUND"``)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class VolumeNotFoundError(VolumeError, LookupError):
    """Raised when a volume is not found (the message names it)."""


class VolumeFileNotFoundError(VolumeError, LookupError):
    """Raised when a file is not in the volume (the message names the path and the volume)."""


class VolumeClosedError(VolumeError):
    """The VolumeClient was closed."""


class VolumeInvalidArgumentError(VolumeError, InvalidArgumentError):
    """A bad volume name or path (absolute, ``..``, empty segments); also a ``ValueError``."""


class SandboxError(ChalkError):
    """Base exception for sandbox errors."""


class SandboxNotFoundError(SandboxError, LookupError):
    """Raised when a sandbox is not found (no such id or name)."""


class SandboxStatusError(SandboxError):
    """The sandbox is not in a state that allows this (its ``status`` says why)."""


class SandboxTerminatedError(SandboxStatusError):
    """Raised when a sandbox has terminated (exec, files or reattach on it)."""


class SandboxBuildError(SandboxStatusError):
    """Raised when a sandbox image build fails: ``step`` names the failing step, ``log_tail`` ends its log."""

    def __init__(self, message: str, step: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.log_tail = log_tail


class SandboxCreationError(SandboxStatusError):
    """The sandbox's container would not start (or waited too long for resources)."""


class ExecError(SandboxError):
    """An exec stream broke for a reason other than the process ending: ``code`` (a gRPC status name
    or the agent's code) and ``message`` say why. The process itself may still run: reattach with
    ``Sandbox.exec_attach(session_id)``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ScalingGroupError(ChalkError):
    """Base exception for ScalingGroup errors: a failed deploy or rollout, no web_url yet, a timeout."""


class ScalingGroupNotFoundError(ScalingGroupError, LookupError):
    """No scaling group with that id or name."""


class ScalingGroupBuildError(ScalingGroupError):
    """Raised when the group's image build fails: ``step`` names the failing step, ``log_tail`` ends its log."""

    def __init__(self, message: str, step: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.log_tail = log_tail


# -- the one table from gRPC status to SDK exception ---------------------------------------


class ErrorKind(enum.Enum):
    """Which SDK object made the RPC: a row of the table is chosen by (kind, status).

    Functions and calls (and anything without a row of its own) use ``SDK``;
    the Volumes service answers with the ``Volume*Error`` family; the
    Containers service with :class:`ContainerError` (its message is the SDK's).
    """

    SDK = "sdk"
    VOLUME = "volume"
    CONTAINER = "container"
    SANDBOX = "sandbox"
    SCALING_GROUP = "scaling_group"


_Row = Callable[[Status, str], ChalkError]


def _sdk(cls: type[ChalkError]) -> _Row:
    return lambda status, message: cls(message)


def _volume(cls: type[VolumeError]) -> _Row:
    return lambda status, message: cls(message, status.name)


def _volume_not_found(status: Status, message: str) -> ChalkError:
    # The daemon says "file 'x' is not in volume 'v'" for a path, "volume 'v' ..." for a volume.
    cls = VolumeFileNotFoundError if message.startswith("file ") else VolumeNotFoundError
    return cls(message, status.name)


def _container(status: Status, message: str) -> ChalkError:
    # Every Containers failure is a ContainerError whose message is the SDK-wide one.
    return ContainerError(str(error_from_status(status, message)))


def _sandbox_status(status: Status, message: str) -> ChalkError:
    # The daemon says "sandbox <id> is terminated: ...", "... image build failed: ...", "... could not start: ...".
    head = message.split(":", 1)[0]
    if " is terminated" in head:
        return SandboxTerminatedError(message)
    if "image build failed" in head:
        return SandboxBuildError(message)
    if "could not start" in head or "still building" in head:
        return SandboxCreationError(message)
    return SandboxStatusError(message)


# ``(kind, None)`` is the kind's row for any status it has no row of its own for.
_TABLE: dict[tuple[ErrorKind, Status | None], _Row] = {
    (ErrorKind.SDK, Status.NOT_FOUND): _sdk(FunctionNotFoundError),
    (ErrorKind.SDK, Status.INVALID_ARGUMENT): _sdk(InvalidArgumentError),
    (ErrorKind.SDK, Status.FAILED_PRECONDITION): _sdk(FunctionError),
    (ErrorKind.SDK, Status.RESOURCE_EXHAUSTED): _sdk(ResourceExhaustedError),
    (ErrorKind.SDK, Status.UNAVAILABLE): _sdk(DaemonUnavailableError),
    (ErrorKind.SDK, Status.DEADLINE_EXCEEDED): _sdk(FunctionTimeoutError),
    (ErrorKind.SDK, Status.UNIMPLEMENTED): _sdk(NotSupportedError),
    (ErrorKind.SDK, Status.UNAUTHENTICATED): _sdk(AuthenticationError),
    (ErrorKind.SDK, Status.PERMISSION_DENIED): _sdk(PermissionDeniedError),
    (ErrorKind.SDK, None): _sdk(ChalkError),
    # Volumes: the SDK-wide AuthenticationError / PermissionDeniedError, else the Volume family.
    (ErrorKind.VOLUME, Status.UNAUTHENTICATED): _sdk(AuthenticationError),
    (ErrorKind.VOLUME, Status.PERMISSION_DENIED): _sdk(PermissionDeniedError),
    (ErrorKind.VOLUME, Status.NOT_FOUND): _volume_not_found,
    (ErrorKind.VOLUME, Status.INVALID_ARGUMENT): _volume(VolumeInvalidArgumentError),
    (ErrorKind.VOLUME, None): _volume(VolumeError),
    (ErrorKind.CONTAINER, None): _container,
    # Sandboxes: the SDK-wide rows for auth, arguments and limits; NOT_FOUND and states are the Sandbox family.
    (ErrorKind.SANDBOX, Status.NOT_FOUND): _sdk(SandboxNotFoundError),
    (ErrorKind.SANDBOX, Status.FAILED_PRECONDITION): _sandbox_status,
    (ErrorKind.SANDBOX, Status.INVALID_ARGUMENT): _sdk(InvalidArgumentError),
    (ErrorKind.SANDBOX, Status.RESOURCE_EXHAUSTED): _sdk(ResourceExhaustedError),
    (ErrorKind.SANDBOX, Status.UNAVAILABLE): _sdk(DaemonUnavailableError),
    (ErrorKind.SANDBOX, Status.UNAUTHENTICATED): _sdk(AuthenticationError),
    (ErrorKind.SANDBOX, Status.PERMISSION_DENIED): _sdk(PermissionDeniedError),
    (ErrorKind.SANDBOX, Status.ALREADY_EXISTS): _sdk(SandboxError),
    (ErrorKind.SANDBOX, None): _sdk(SandboxError),
    # Scaling groups: the SDK-wide rows for auth, arguments and limits; the rest is the ScalingGroup family.
    (ErrorKind.SCALING_GROUP, Status.NOT_FOUND): _sdk(ScalingGroupNotFoundError),
    (ErrorKind.SCALING_GROUP, Status.INVALID_ARGUMENT): _sdk(InvalidArgumentError),
    (ErrorKind.SCALING_GROUP, Status.RESOURCE_EXHAUSTED): _sdk(ResourceExhaustedError),
    (ErrorKind.SCALING_GROUP, Status.UNAVAILABLE): _sdk(DaemonUnavailableError),
    (ErrorKind.SCALING_GROUP, Status.UNAUTHENTICATED): _sdk(AuthenticationError),
    (ErrorKind.SCALING_GROUP, Status.PERMISSION_DENIED): _sdk(PermissionDeniedError),
    (ErrorKind.SCALING_GROUP, None): _sdk(ScalingGroupError),
}


def error_from_status(status: Status, message: str | None, kind: ErrorKind = ErrorKind.SDK) -> ChalkError:
    """Turn a gRPC status from the daemon (and its message) into the SDK's exception.

    >>> error_from_status(Status.NOT_FOUND, "no function 'f'")
    FunctionNotFoundError("no function 'f'")
    >>> error_from_status(Status.NOT_FOUND, "file 'a' is not in volume 'v'", ErrorKind.VOLUME).code
    'NOT_FOUND'
    """
    row = _TABLE.get((kind, status)) or _TABLE[(kind, None)]
    return row(status, message or status.name)


def unavailable_error(target: str, exc: BaseException, kind: ErrorKind = ErrorKind.SDK) -> ChalkError:
    """No daemon answers at ``target`` (``exc`` is the connection failure).

    >>> unavailable_error("127.0.0.1:1", ConnectionRefusedError("refused"))
    DaemonUnavailableError('no chalkd answers at 127.0.0.1:1 (refused); start one with `chalkd serve`')
    """
    message = f"no chalkd answers at {target} ({exc}); start one with `chalkd serve`"
    return ContainerError(message) if kind is ErrorKind.CONTAINER else DaemonUnavailableError(message)


def timeout_error(target: str, method: str, timeout: float | None, kind: ErrorKind = ErrorKind.SDK) -> ChalkError:
    """The daemon at ``target`` did not answer ``method`` within the RPC's ``timeout``.

    >>> timeout_error("h:1", "GetFunction", 30.0)
    DaemonUnavailableError('chalkd at h:1 did not answer GetFunction within 30s')
    """
    message = f"chalkd at {target} did not answer {method} within {timeout:g}s"
    return ContainerError(message) if kind is ErrorKind.CONTAINER else DaemonUnavailableError(message)


# Platform failures of a call (RemoteError.code) and the exception each becomes.
_CODE_TO_ERROR: dict[str, type[ChalkError]] = {
    "WORKER_LOST": WorkerLostError,
    "INTERRUPTED": CallInterruptedError,
    "NOT_FOUND": FunctionNotFoundError,
    "BUILD_FAILED": FunctionBuildError,
    "UNSCHEDULABLE": FunctionError,
    "INVALID_ARGUMENT": FunctionSignatureError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "TOO_LARGE": ResourceExhaustedError,  # a result or chunk over the size limit (never retried)
    "CANCELLED": CallCancelledError,
    "DEADLINE_EXCEEDED": FunctionTimeoutError,
    "DEADLOCK": ConcurrencyDeadlockError,
    "UNAVAILABLE": FunctionError,
    "ABORTED": FunctionError,
    "INTERNAL": FunctionError,
    "PERMISSION_DENIED": PermissionDeniedError,
}


def remote_error(err: Any, *, function_name: str = "", call_id: str = "") -> ChalkError:
    """The exception for a call's error event (a ``RemoteError`` message)."""
    cls = _CODE_TO_ERROR.get(err.code)
    if cls is None or issubclass(cls, RemoteExecutionError):
        return (cls or RemoteExecutionError)(
            err.message, function_name=function_name, exception_type=err.exception_type,
            remote_traceback=err.traceback, call_id=call_id, exception_mro=tuple(err.exception_mro),
            code=err.code,
        )
    return cls(err.message)
