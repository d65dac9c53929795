"""The daemon's domain exceptions: what went wrong, in words a caller can act on, with no gRPC in sight.

Domain code and the services' input checks raise these; the one table in
:mod:`chalkd.services.errors` turns them (and the older domain errors such as
``CallNotFound``, ``VolumeNotFound``, ``DiskFull``, listed there as rows) into a
gRPC status at the edge. The message is the reply's message, word for word.

    >>> from chalkd.errors import NotFound
    >>> try:
    ...     raise NotFound("no rate limit named 'openai'")
    ... except LookupError as exc:           # a NotFound is also a LookupError
    ...     print(exc)
    no rate limit named 'openai'
"""

from __future__ import annotations

__all__ = [
    "ChalkdError", "NotFound", "AlreadyExists", "InvalidArgument", "FailedPrecondition", "ResourceExhausted",
    "PermissionDenied", "Unauthenticated", "Unavailable", "DeadlineExceeded", "Unimplemented", "Internal",
]


class ChalkdError(Exception):
    """A failure the daemon expects and explains; its message goes to the caller as it is."""


class NotFound(ChalkdError, LookupError):
    """The named thing (call, function, secret, volume, rate limit, container) does not exist."""


class AlreadyExists(ChalkdError):
    """The name is taken by another thing of the same kind."""


class InvalidArgument(ChalkdError, ValueError):
    """The request itself is wrong, whatever the daemon's state (a bad name, a malformed spec)."""


class FailedPrecondition(ChalkdError):
    """The request is well formed but the daemon's state refuses it (a missing secret, the wrong runtime)."""


class ResourceExhausted(ChalkdError):
    """A limit is reached: disk full, a message too large, a session that stopped reading."""


class PermissionDenied(ChalkdError):
    """The caller is known but may not do this (a replica's credential reaching beyond its function)."""


class Unauthenticated(ChalkdError):
    """The caller did not prove who it is (no session, an unknown replica)."""


class Unavailable(ChalkdError):
    """The daemon cannot serve this now (it is stopping, its store is gone); a retry elsewhere/later may work."""


class DeadlineExceeded(ChalkdError):
    """The operation did not finish in the time it was given."""


class Unimplemented(ChalkdError):
    """The daemon has no such method or stream."""


class Internal(ChalkdError):
    """A failure of chalkd itself that was logged where it happened; the message says what was being done."""
