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
    "error_from_status",
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

    def __reduce__(self):  # keep it picklable with its keyword-only fields
        return (
            _rebuild_remote_error,
            (self.message, self.function_name, self.exception_type, self.remote_traceback,
             self.call_id, self.exception_mro, self.code),
        )


def _rebuild_remote_error(*args) -> RemoteExecutionError:
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


# The one table from gRPC status to SDK exception.
_STATUS_TO_ERROR: dict[Status, type[ChalkError]] = {
    Status.NOT_FOUND: FunctionNotFoundError,
    Status.INVALID_ARGUMENT: InvalidArgumentError,
    Status.FAILED_PRECONDITION: FunctionError,
    Status.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    Status.UNAVAILABLE: DaemonUnavailableError,
    Status.DEADLINE_EXCEEDED: FunctionTimeoutError,
    Status.UNIMPLEMENTED: NotSupportedError,
    Status.UNAUTHENTICATED: AuthenticationError,
    Status.PERMISSION_DENIED: PermissionDeniedError,
}


def error_from_status(status: Status, message: str | None) -> ChalkError:
    """Turn a gRPC status from the daemon into the SDK's exception."""
    cls = _STATUS_TO_ERROR.get(status, ChalkError)
    return cls(message or status.name)


# Platform failures of a call (RemoteError.code) and the exception each becomes.
_CODE_TO_ERROR: dict[str, type[ChalkError]] = {
    "WORKER_LOST": WorkerLostError,
    "INTERRUPTED": CallInterruptedError,
    "NOT_FOUND": FunctionNotFoundError,
    "BUILD_FAILED": FunctionBuildError,
    "UNSCHEDULABLE": FunctionError,
    "INVALID_ARGUMENT": FunctionSignatureError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "CANCELLED": CallCancelledError,
    "DEADLINE_EXCEEDED": FunctionTimeoutError,
    "DEADLOCK": ConcurrencyDeadlockError,
    "UNAVAILABLE": FunctionError,
    "ABORTED": FunctionError,
    "INTERNAL": FunctionError,
    "PERMISSION_DENIED": PermissionDeniedError,
}


def remote_error(err, *, function_name: str = "", call_id: str = "") -> ChalkError:
    """The exception for a call's error event (a ``RemoteError`` message)."""
    cls = _CODE_TO_ERROR.get(err.code)
    if cls is None or issubclass(cls, RemoteExecutionError):
        return (cls or RemoteExecutionError)(
            err.message, function_name=function_name, exception_type=err.exception_type,
            remote_traceback=err.traceback, call_id=call_id, exception_mro=tuple(err.exception_mro),
            code=err.code,
        )
    return cls(err.message)
