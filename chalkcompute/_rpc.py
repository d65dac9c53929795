"""The SDK's one typed way to make an RPC to the daemon, and to map its failures.

Every unary RPC of the SDK goes through :func:`unary`, every stream RPC runs
inside :func:`guarded`: a gRPC status becomes the SDK's exception through the
one table in :mod:`chalkcompute.exceptions` (chosen by status and by which
object asked, :class:`~chalkcompute.exceptions.ErrorKind`), a connection
failure becomes ``DaemonUnavailableError`` (``ContainerError`` for
containers), an RPC past its timeout says which method did not answer.

The method is the grpclib stub's own attribute, so mypy checks the request
and the response types against the proto::

    stub = FunctionCatalogStub(client.channel)
    resp = await unary(stub.GetFunction, pb.GetFunctionRequest(name="add"), target=client.target)
    resp.function.id                 # a GetFunctionResponse, typed

    async with client.open_stream(...) as stream:     # streams: the same mapping
        with guarded(client.target, ErrorKind.VOLUME):
            ...

Cost: one extra coroutine frame over calling the stub (a ``try`` is free in
CPython 3.11+); nothing is looked up or allocated unless the call fails. The
warm call path (``RemoteFunction.__call__``) does not make unary RPCs: it rides
the session stream in ``_client.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TypeVar

from grpclib import GRPCError
from grpclib.client import UnaryUnaryMethod
from grpclib.exceptions import StreamTerminatedError

from chalkcompute.exceptions import ErrorKind, error_from_status, timeout_error, unavailable_error

__all__ = ["unary", "guarded", "Metadata", "DEFAULT_TIMEOUT", "check_metadata"]

S = TypeVar("S")
R = TypeVar("R")

#: ``[(key, value), ...]`` sent with an RPC (``VolumeClient(metadata=...)``).
Metadata = Sequence[tuple[str, str]]

#: The default deadline of a unary RPC, in seconds.
DEFAULT_TIMEOUT = 30.0

# What "no daemon answers" looks like from grpclib: refused/reset sockets, a
# connection dropped mid-stream, the h2 layer giving up.
_CONNECTION_ERRORS = (OSError, StreamTerminatedError, ConnectionError)


def check_metadata(metadata: Metadata | None) -> list[tuple[str, str]] | None:
    """A client's ``metadata=`` argument checked: a list of (str, str) pairs, or None when empty.

        >>> check_metadata([("x-team", "ml")]), check_metadata(None)
        ([('x-team', 'ml')], None)
    """
    md = list(metadata or ())
    for item in md:
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(s, str) for s in item)):
            raise TypeError(f"metadata must be a list of (str, str) pairs, got {item!r}")
    return md or None


def _method_name(method: UnaryUnaryMethod[S, R]) -> str:
    return method.name.rsplit("/", 1)[-1]  # '/chalk.v1.Volumes/Get' -> 'Get'


async def unary(method: UnaryUnaryMethod[S, R], request: S, *, target: str,
                timeout: float | None = DEFAULT_TIMEOUT, metadata: Metadata | None = None,
                kind: ErrorKind = ErrorKind.SDK) -> R:
    """``await method(request)`` with the SDK's error mapping (see the module docstring).

    ``target`` names the daemon in the messages; ``kind`` picks the table's rows.
    """
    try:
        return await method(request, timeout=timeout, metadata=metadata)
    except GRPCError as exc:
        raise error_from_status(exc.status, exc.message, kind) from None
    except TimeoutError:  # first: since 3.11 it is also an OSError
        raise timeout_error(target, _method_name(method), timeout, kind) from None
    except _CONNECTION_ERRORS as exc:
        raise unavailable_error(target, exc, kind) from None


@contextlib.contextmanager
def guarded(target: str, kind: ErrorKind = ErrorKind.SDK) -> Iterator[None]:
    """Map a stream RPC's failures raised inside the block, as :func:`unary` does.

    Timeouts are left alone: a stream's deadline is its caller's (a build's
    ``build_timeout``), which words its own message.
    """
    try:
        yield
    except GRPCError as exc:
        raise error_from_status(exc.status, exc.message, kind) from None
    except TimeoutError:  # an OSError too since 3.11: not a connection failure
        raise
    except _CONNECTION_ERRORS as exc:
        raise unavailable_error(target, exc, kind) from None
