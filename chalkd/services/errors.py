"""The daemon's one error table: domain exceptions -> gRPC status, applied at the edge.

Domain code and the services' input checks raise :mod:`chalkd.errors` (or the
older domain errors listed in :data:`TABLE`); nothing else in the daemon makes
a ``GRPCError``. Two ways in:

- :func:`grpc_errors`, a decorator on a handler that ends with one status
  (unary RPCs and streams that stop at the first error);
- :func:`status_of`, for a long-lived stream that answers one bad item with its
  own code and goes on (a submit refused inside a caller's session).

Anything the table does not know is chalkd's fault, never the caller's: it is
logged with its traceback and answered INTERNAL "internal error in chalkd; see
its log".

    >>> from chalkd.errors import NotFound
    >>> status_of(NotFound("no rate limit named 'openai'"))
    (<Status.NOT_FOUND: 5>, "no rate limit named 'openai'")
    >>> from chalkd.volumes.paths import VolumePathConflict
    >>> status_of(VolumePathConflict("a.txt is a directory"))[0]
    <Status.FAILED_PRECONDITION: 9>
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpclib import GRPCError
from grpclib.const import Status

from chalkd import errors
from chalkd.catalog import InvalidFunction
from chalkd.catalog import NotFound as FunctionNotFound
from chalkd.containers.manager import ContainerConflict, ContainerFailed, ContainerNotFound
from chalkd.images.blobs import BlobError
from chalkd.images.process_env import ImageBuildError
from chalkd.queue.core import CallNotFound
from chalkd.runtime.base import RuntimeUnsupported
from chalkd.secrets.store import InvalidSecret, SecretNotFound
from chalkd.store.db import DiskFull, StoreStopped
from chalkd.volumes.paths import (
    InvalidVolumeName,
    InvalidVolumePath,
    VolumeFileNotFound,
    VolumeNotFound,
    VolumePathConflict,
)

log = logging.getLogger(__name__)

__all__ = ["TABLE", "INTERNAL_MESSAGE", "MAX_STATUS_MESSAGE", "cap_message", "status_of", "to_grpc", "grpc_errors"]

INTERNAL_MESSAGE = "internal error in chalkd; see its log"
#: A status message goes out in the ``grpc-message`` header, whose encoder (grpclib's) is quadratic in
#: its length: a megabyte message stalled every other caller of the daemon for a minute. Messages quote
#: at most 100 characters of what a user sent (``chalkcompute._contract.quote``); this is the backstop.
MAX_STATUS_MESSAGE = 1024
_CUT = "... (message cut)"


def cap_message(message: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    """``message`` cut to at most ``limit`` characters, with a marker saying so.

    >>> cap_message("x" * 2000, limit=30)
    'xxxxxxxxxxxxx... (message cut)'
    """
    if len(message) <= limit:
        return message
    return message[: max(0, limit - len(_CUT))] + _CUT


def _same(exc: BaseException) -> str:
    return str(exc)


# (exception type, status, message) rows; the first row the exception is an instance of wins,
# so a subclass row must come before its base's. The message is the exception's own unless said.
TABLE: tuple[tuple[type[BaseException], Status, Callable[[BaseException], str]], ...] = (
    # chalkd.errors: the daemon's own hierarchy
    (errors.NotFound, Status.NOT_FOUND, _same),
    (errors.AlreadyExists, Status.ALREADY_EXISTS, _same),
    (errors.InvalidArgument, Status.INVALID_ARGUMENT, _same),
    (errors.FailedPrecondition, Status.FAILED_PRECONDITION, _same),
    (errors.ResourceExhausted, Status.RESOURCE_EXHAUSTED, _same),
    (errors.PermissionDenied, Status.PERMISSION_DENIED, _same),
    (errors.Unauthenticated, Status.UNAUTHENTICATED, _same),
    (errors.Unavailable, Status.UNAVAILABLE, _same),
    (errors.DeadlineExceeded, Status.DEADLINE_EXCEEDED, _same),
    (errors.Unimplemented, Status.UNIMPLEMENTED, _same),
    (errors.Internal, Status.INTERNAL, _same),
    # the older domain errors, by the module that raises them
    (CallNotFound, Status.NOT_FOUND, _same),
    (FunctionNotFound, Status.NOT_FOUND, _same),
    (InvalidFunction, Status.INVALID_ARGUMENT, _same),
    (VolumeNotFound, Status.NOT_FOUND, _same),
    (VolumeFileNotFound, Status.NOT_FOUND, _same),
    (InvalidVolumeName, Status.INVALID_ARGUMENT, _same),
    (InvalidVolumePath, Status.INVALID_ARGUMENT, _same),
    (VolumePathConflict, Status.FAILED_PRECONDITION, _same),
    (SecretNotFound, Status.NOT_FOUND, _same),
    (InvalidSecret, Status.INVALID_ARGUMENT, _same),
    (ContainerNotFound, Status.NOT_FOUND, _same),
    (ContainerConflict, Status.ALREADY_EXISTS, _same),
    (ContainerFailed, Status.FAILED_PRECONDITION, _same),
    (ImageBuildError, Status.FAILED_PRECONDITION, lambda exc: f"image build failed: {exc}"),
    (BlobError, Status.INVALID_ARGUMENT, _same),  # LazyFileError included
    (RuntimeUnsupported, Status.FAILED_PRECONDITION, _same),
    (DiskFull, Status.RESOURCE_EXHAUSTED, _same),
    (StoreStopped, Status.UNAVAILABLE, _same),
)


def status_of(exc: BaseException) -> tuple[Status, str]:
    """The status and message that answer ``exc``; an exception no row knows is logged (with its
    traceback, so call this inside the ``except``) and answered INTERNAL."""
    if isinstance(exc, GRPCError):  # grpclib's own (a codec's size check, the deadline): already a status
        return exc.status, cap_message(exc.message or "")
    for kind, status, message in TABLE:
        if isinstance(exc, kind):
            return status, cap_message(message(exc))
    log.error("internal error in chalkd", exc_info=exc)
    return Status.INTERNAL, INTERNAL_MESSAGE


def to_grpc(exc: BaseException) -> GRPCError:
    """``exc`` as the GRPCError grpclib answers with (see :func:`status_of`)."""
    if isinstance(exc, GRPCError):
        if exc.message is not None and len(exc.message) > MAX_STATUS_MESSAGE:
            return GRPCError(exc.status, cap_message(exc.message), exc.details)
        return exc
    return GRPCError(*status_of(exc))


H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def grpc_errors(handler: H) -> H:
    """Decorate a service handler ``async def X(self, stream)`` so that what it raises is answered
    through :data:`TABLE`. ``TimeoutError`` passes through: grpclib answers it DEADLINE_EXCEEDED when
    the request's deadline expired (the handler converts its own timeouts)."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except TimeoutError:
            raise
        except GRPCError as exc:
            capped = to_grpc(exc)
            if capped is exc:
                raise
            raise capped from None
        except Exception as exc:
            raise to_grpc(exc) from None

    return wrapper  # type: ignore[return-value]
