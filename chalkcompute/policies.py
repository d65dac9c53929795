"""Queue policies a function declares: rate limits, concurrency, queue bounds.

chalkd enforces them before dispatch (retries live in :mod:`chalkcompute.retries`)::

    @chalkcompute.function(
        rate_limit=RateLimitPolicy(rate=10, per="second"),          # or rate_limit=10
        concurrency=ConcurrencyPolicy(max_concurrent=4, key="gpu-pool"),  # or concurrency=4
        queue_policy=QueuePolicy(max_items=10_000, result_ttl_seconds=3600),
    )
    def call_provider(query: str) -> str: ...

- A rate limit spends one token per attempt (a retry takes a fresh one). With
  ``key``, every function naming the key shares one bucket. A function can also
  name a limit defined in the daemon with ``rate_limit_key=`` (``chalkd
  rate-limit set NAME --rate N --per minute``).
- Concurrency without a key is per replica: each replica runs up to
  ``max_concurrent`` inputs at once (async handlers as tasks, sync ones in
  threads), so ``max_replicas=4`` with the default of 1 runs four at once. With
  a key, the cap is shared across all replicas of every function naming it.
  Slots are taken before dispatch, so a burst waits in the queue.
- A full queue (``max_items`` calls waiting) refuses new calls with
  :class:`~chalkcompute.ResourceExhaustedError`; finished calls and their
  results are kept for ``result_ttl_seconds``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RateLimitPolicy", "ConcurrencyPolicy", "QueuePolicy", "PERIODS"]

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")


def check_key(key: str | None, what: str) -> None:
    if key is not None and (not isinstance(key, str) or not KEY_RE.match(key)):
        raise ValueError(f"{what} key must be 1-128 letters, digits, '_', '-', '.' or ':', got {key!r}")


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class RateLimitPolicy:
    """At most ``rate`` attempts per ``per`` ("second", "minute" or "hour").

    >>> RateLimitPolicy(rate=600, per="minute").per_second
    10.0
    """

    rate: float
    per: str = "second"
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not self.rate > 0:
            raise ValueError(f"rate_limit rate must be a positive number, got {self.rate!r}")
        if self.per not in PERIODS:
            raise ValueError(f"rate_limit per must be one of {', '.join(PERIODS)}, got {self.per!r}")
        check_key(self.key, "rate_limit")

    @property
    def per_second(self) -> float:
        return self.rate / PERIODS[self.per]

    @classmethod
    def normalize(cls, value: int | float | RateLimitPolicy) -> RateLimitPolicy:
        """A number n means ``RateLimitPolicy(rate=n, per="second")``."""
        if isinstance(value, RateLimitPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"rate_limit must be a number or a RateLimitPolicy, got {value!r}")
        return cls(rate=value)


@dataclass(frozen=True)
class ConcurrencyPolicy:
    """Inputs in flight at once: per replica, or in total across ``key``.

    >>> ConcurrencyPolicy.normalize(4)
    ConcurrencyPolicy(max_concurrent=4, key=None)
    """

    max_concurrent: int = 1
    key: str | None = None

    def __post_init__(self) -> None:
        _positive_int(self.max_concurrent, "concurrency max_concurrent")
        check_key(self.key, "concurrency")

    @classmethod
    def normalize(cls, value: int | ConcurrencyPolicy) -> ConcurrencyPolicy:
        """An int n means ``ConcurrencyPolicy(max_concurrent=n)``."""
        if isinstance(value, ConcurrencyPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"concurrency must be an int or a ConcurrencyPolicy, got {value!r}")
        return cls(max_concurrent=value)


@dataclass(frozen=True)
class QueuePolicy:
    """Bounds on a function's queue: waiting calls, and how long results are kept.

    >>> QueuePolicy().max_items
    500000
    """

    max_items: int = 500_000
    result_ttl_seconds: float = 86_400

    def __post_init__(self) -> None:
        _positive_int(self.max_items, "queue_policy max_items")
        ttl = self.result_ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"queue_policy result_ttl_seconds must be a positive number, got {ttl!r}")
