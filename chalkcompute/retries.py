"""Retry configuration for handler invocations.

    RetryPolicy.exponential(attempts=5, initial=0.5, max_wait=30.0)
    RetryPolicy.linear(attempts=3, delay=2.0, retry_on=(ConnectionError, TimeoutError))
    RetryPolicy.normalize(3)  # == RetryPolicy.exponential(attempts=3)

``max_retries`` does not count the first run: ``attempts=3`` means up to 4 runs.
The wait before retry k (1-based) is ``min(initial * multiplier**(k-1), max_wait)``;
with jitter, a uniform draw in ``[wait/2, wait]``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from chalkcompute._code import caller_module

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Construct with :meth:`exponential` or :meth:`linear` (see the module docstring)."""

    max_retries: int = 3
    initial_wait_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_wait_seconds: float = 60.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"attempts must be a non-negative int, got {self.max_retries!r}")
        if self.initial_wait_seconds < 0 or self.max_wait_seconds < 0:
            raise ValueError("retry wait times must be >= 0")
        if self.backoff_multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.backoff_multiplier!r}")
        for t in self.retry_on:
            if not (isinstance(t, type) and issubclass(t, BaseException)):
                raise TypeError(f"retry_on must hold exception types, got {t!r}")

    @classmethod
    def exponential(
        cls, attempts: int = 3, initial: float = 1.0, multiplier: float = 2.0, max_wait: float = 60.0,
        jitter: bool = True, retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> RetryPolicy:
        """Waits grow geometrically: initial, initial*multiplier, ... capped at max_wait.

        >>> RetryPolicy.exponential(attempts=5, initial=0.5, max_wait=30.0).max_retries
        5
        """
        return cls(attempts, float(initial), float(multiplier), float(max_wait), jitter, tuple(retry_on))

    @classmethod
    def linear(
        cls, attempts: int = 3, delay: float = 1.0, jitter: bool = False,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> RetryPolicy:
        """A fixed wait of ``delay`` seconds between retries.

        >>> RetryPolicy.linear(attempts=3, delay=2.0).wait_before(3, rng=None)
        2.0
        """
        return cls(attempts, float(delay), 1.0, float(delay), jitter, tuple(retry_on))

    @classmethod
    def normalize(cls, value: int | RetryPolicy) -> RetryPolicy:
        """An int n means ``RetryPolicy.exponential(attempts=n)``."""
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"retries must be an int or a RetryPolicy, got {value!r}")
        return cls.exponential(attempts=value)

    def wait_before(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        wait = min(self.initial_wait_seconds * self.backoff_multiplier ** (retry - 1), self.max_wait_seconds)
        if self.jitter and rng is not None:
            return rng.uniform(wait / 2, wait)
        if self.jitter:
            return random.uniform(wait / 2, wait)
        return wait

    def to_dict(self) -> dict:
        """A JSON-serializable dict; ``retry_on`` only when not the default ``(Exception,)``."""
        d: dict[str, object] = {
            "max_retries": self.max_retries,
            "initial_wait_seconds": self.initial_wait_seconds,
            "backoff_multiplier": self.backoff_multiplier,
            "max_wait_seconds": self.max_wait_seconds,
            "jitter": self.jitter,
        }
        if self.retry_on != (Exception,):
            # Named as the worker reports them: a class shipped in a bundle (a policy made
            # inside a worker) under its caller's module, not __chalk_fn__<hash>.
            d["retry_on"] = [f"{caller_module(t.__module__)}.{t.__qualname__}" for t in self.retry_on]
        return d
