"""Rate-limit buckets and shared concurrency slots, taken by the queue before dispatch.

    limits = Limits(store)
    limits.load()                                  # daemon-defined rate limits from the database
    limits.set_named("provider-api", rate=100, per="minute")
    buckets = limits.buckets_for(fv)               # every bucket an attempt of fv must take from
    if all(b.available() for b in buckets):
        for b in buckets: b.take()
    slots = limits.slots_for(fv)                   # None without a concurrency key
    if slots is None or slots.free > 0: ...

A bucket holds up to ``burst`` tokens (the policy's rate over its period, so
"10 per second" allows a burst of 10) and refills continuously. Named limits
and keyed buckets are shared by every function naming them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chalkcompute.policies import PERIODS as PERIOD_SECONDS
from chalkd.model import FunctionVersion
from chalkd.store.db import Store


class TokenBucket:
    """Continuous refill at ``rate`` tokens/second up to ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "last", "clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.last = clock()

    def configure(self, rate: float, burst: float) -> None:
        self._refill()
        self.rate, self.burst = rate, max(burst, 1.0)
        self.tokens = min(self.tokens, self.burst)

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def available(self) -> int:
        self._refill()
        return int(self.tokens + 1e-9)

    def take(self, n: int = 1) -> None:
        self.tokens -= n

    def wait_time(self) -> float:
        """Seconds until one token is there."""
        self._refill()
        return max(0.0, (1.0 - self.tokens) / self.rate) if self.rate > 0 else float("inf")


class Slots:
    """A counting semaphore the queue takes before dispatch and gives back when an attempt has ended."""

    __slots__ = ("key", "cap", "held")

    def __init__(self, key: str, cap: int) -> None:
        self.key, self.cap, self.held = key, cap, 0

    @property
    def free(self) -> int:
        return self.cap - self.held


@dataclass(frozen=True)
class NamedLimit:
    name: str
    rate: float
    per: str

    @property
    def per_second(self) -> float:
        return self.rate / PERIOD_SECONDS[self.per]


class LimitError(Exception):
    """A rate-limit definition or reference that cannot be accepted (the message says why)."""


class Limits:
    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.named: dict[str, NamedLimit] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._slots: dict[str, Slots] = {}

    def load(self) -> None:
        for r in self.store.query("SELECT name, rate, per FROM rate_limits"):
            self.named[r["name"]] = NamedLimit(r["name"], r["rate"], r["per"])

    # -- daemon-defined rate limits ------------------------------------------------------

    def set_named(self, name: str, rate: float, per: str) -> tuple[NamedLimit, bool]:
        if per not in PERIOD_SECONDS:
            raise LimitError(f"--per must be one of {', '.join(PERIOD_SECONDS)}, got {per!r}")
        if not rate > 0:
            raise LimitError(f"--rate must be a positive number, got {rate:g}")
        created = name not in self.named
        limit = self.named[name] = NamedLimit(name, float(rate), per)
        self.store.write("INSERT OR REPLACE INTO rate_limits (name, rate, per, updated_at) VALUES (?,?,?,?)",
                         (name, float(rate), per, time.time()))
        bucket = self._buckets.get(f"named:{name}")
        if bucket is not None:
            bucket.configure(limit.per_second, limit.rate)
        return limit, created

    def delete_named(self, name: str, used_by: list[str]) -> None:
        if name not in self.named:
            raise KeyError(name)
        if used_by:
            raise LimitError(f"rate limit {name!r} is used by {', '.join(sorted(used_by))}: delete those first")
        del self.named[name]
        self._buckets.pop(f"named:{name}", None)
        self.store.write("DELETE FROM rate_limits WHERE name=?", (name,))

    # -- per function --------------------------------------------------------------------

    def register(self, fv: FunctionVersion) -> None:
        """A version was registered (or loaded): its keyed slots and buckets take its settings."""
        p = fv.policies
        if p.concurrency_key:
            slots = self._slots.get(p.concurrency_key)
            if slots is None:
                self._slots[p.concurrency_key] = Slots(p.concurrency_key, p.max_concurrent)
            else:
                slots.cap = p.max_concurrent  # the newest definition of a key wins
        if p.rate_per_second:
            # Versions of a function share its bucket, functions naming a key share the key's:
            # the newest definition sets the rate.
            name = f"key:{p.rate_key}" if p.rate_key else f"fn:{fv.name}"
            bucket = self._buckets.get(name)
            if bucket is None:
                self._buckets[name] = TokenBucket(p.rate_per_second, p.rate_burst, self.clock)
            else:
                bucket.configure(p.rate_per_second, p.rate_burst)

    def buckets_for(self, fv: FunctionVersion) -> list[TokenBucket]:
        p = fv.policies
        out = []
        if p.rate_per_second:
            name = f"key:{p.rate_key}" if p.rate_key else f"fn:{fv.name}"
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = TokenBucket(p.rate_per_second, p.rate_burst, self.clock)
            out.append(bucket)
        if p.rate_limit_key:
            name = f"named:{p.rate_limit_key}"
            bucket = self._buckets.get(name)
            if bucket is None:
                limit = self.named.get(p.rate_limit_key)
                if limit is None:  # deleted while a version still names it: nothing can pass
                    bucket = TokenBucket(0.0, 1.0, self.clock)
                    bucket.tokens = 0.0
                    return out + [bucket]
                bucket = self._buckets[name] = TokenBucket(limit.per_second, limit.rate, self.clock)
            out.append(bucket)
        return out

    def slots_for(self, fv: FunctionVersion) -> Slots | None:
        key = fv.policies.concurrency_key
        if not key:
            return None
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = Slots(key, fv.policies.max_concurrent)
        return slots

    def scope_cap(self, fv: FunctionVersion) -> tuple[str, int]:
        """The concurrency scope a call of ``fv`` waits in, and how many slots it has in all."""
        p = fv.policies
        if p.concurrency_key:
            slots = self.slots_for(fv)
            return f"key:{p.concurrency_key}", slots.cap  # type: ignore[union-attr]
        return f"fn:{fv.id}", p.max_concurrent * max(1, fv.max_replicas)
