"""The replicas of one scaling group that its HTTP proxy may route to.

The manager adds a `Backend` per replica (state ``starting``); its `ProbeLoop` (probes.py) marks it ready;
the proxy (proxy.py) picks one per request with `acquire` (least outstanding requests, ties rotating) and
gives it back with `release`. A rolling redeploy calls `drain` (no new requests; wait for the in-flight
ones) before stopping the old replica, then `remove`.

    pool = ReplicaPool("web", on_demand=manager.scale_from_zero)
    pool.add(Backend("r-1", "10.0.0.5", 8080, revision=1))
    pool.set_ready("r-1", True)
    b = pool.acquire()            # -> the Backend, its outstanding count raised by one
    ...
    pool.release(b)
    await pool.drain("r-1", timeout=30.0)
    pool.remove("r-1")

Everything here runs on the daemon's event loop and is synchronous except the waits; the hot path
(`acquire`/`release`) allocates nothing. Ties rotate:

>>> pool = ReplicaPool("web")
>>> for id in ("a", "b"):
...     pool.add(Backend(id, "127.0.0.1", 8080, state="ready"))
>>> [pool.acquire().id for _ in range(4)], pool.in_flight
(['a', 'b', 'a', 'b'], 4)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

STATES = ("starting", "ready", "unready", "draining")


@dataclass(eq=False)
class Backend:
    """One replica's address and routing state. ``outstanding``: requests (and open websockets) on it now."""

    id: str
    host: str
    port: int
    revision: int = 0
    state: str = "starting"  # starting | ready | unready | draining
    outstanding: int = 0


class ReplicaPool:
    """The routable replicas of group ``group``; see the module docstring.

    ``on_demand`` is called (synchronously, errors logged) when a request finds no ready replica: the
    manager starts one when the group is scaled to zero. ``unavailable``, when set by the manager (e.g.
    "group 'web' is Failed: app exited with code 1"), makes the proxy answer 503 with that text at once,
    and wakes the requests it holds so they get it too.

    ``changed`` is set on every change of ``in_flight``, of readiness or of membership; the autoscaler
    waits on it (then clears it and reads ``in_flight``/``ready_count``/``take_peak()``) instead of polling.
    """

    def __init__(self, group: str, *, on_demand: Callable[[], None] | None = None) -> None:
        self.group = group
        self.on_demand = on_demand
        self.on_failure: Callable[[Backend, str], None] | None = None  # the proxy reported a dead connection
        self.changed = asyncio.Event()
        self.in_flight = 0
        self._backends: dict[str, Backend] = {}
        self._ready: list[Backend] = []  # the routable ones, in insertion order (rotation walks it)
        self._rotation = 0
        self._peak = 0
        self._unavailable: str | None = None
        self._wake = asyncio.Event()  # replaced after each wake-up: readiness or `unavailable` changed
        self._drains: dict[str, asyncio.Future[None]] = {}

    # -- membership and readiness (the manager and the probes) --------------------------------------------

    def add(self, b: Backend) -> None:
        """Add a replica (usually ``starting``; a ``ready`` one is routable at once)."""
        if b.state not in STATES:
            raise ValueError(f"backend {b.id!r}: state must be one of {', '.join(STATES)}, not {b.state!r}")
        if b.id in self._backends:
            raise ValueError(f"group {self.group!r}: backend {b.id!r} is already in the pool")
        self._backends[b.id] = b
        self._refresh()

    def remove(self, id: str) -> None:
        """Forget a replica (no-op when unknown). Requests still on it finish; `release` stays correct."""
        b = self._backends.pop(id, None)
        if b is None:
            return
        fut = self._drains.pop(id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._refresh()

    def get(self, id: str) -> Backend | None:
        return self._backends.get(id)

    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def set_ready(self, id: str, ready: bool) -> None:
        """The probe's verdict. A draining replica stays draining; an unknown id is ignored (it was removed
        while its probe ran)."""
        b = self._backends.get(id)
        if b is None or b.state == "draining":
            return
        state = "ready" if ready else "unready"
        if b.state != state:
            b.state = state
            self._refresh()

    def report_failure(self, id: str, reason: str) -> None:
        """The proxy could not talk to the replica: stop routing to it until its probe succeeds again."""
        b = self._backends.get(id)
        if b is None:
            return
        if b.state == "ready":
            log.warning("group %r: replica %s unreachable (%s); unready until its probe succeeds",
                        self.group, id, reason)
            b.state = "unready"
            self._refresh()
        if self.on_failure is not None:
            try:
                self.on_failure(b, reason)
            except Exception:
                log.exception("group %r: on_failure callback failed", self.group)

    @property
    def unavailable(self) -> str | None:
        return self._unavailable

    @unavailable.setter
    def unavailable(self, reason: str | None) -> None:
        self._unavailable = reason
        self._signal()

    def notify_demand(self) -> None:
        """A request found no ready replica: tell the manager (it scales up from zero)."""
        if self.on_demand is not None:
            try:
                self.on_demand()
            except Exception:
                log.exception("group %r: on_demand callback failed", self.group)

    def wake_waiters(self) -> None:
        """Wake every `wait_ready` to look again (the proxy closing answers its held requests)."""
        self._signal()

    # -- the proxy's hot path ---------------------------------------------------------------------------

    def acquire(self, exclude: frozenset[str] = frozenset()) -> Backend | None:
        """The ready replica with the fewest outstanding requests (ties rotate), its count raised by one;
        None when no ready replica is left outside ``exclude``."""
        ready = self._ready
        n = len(ready)
        if n == 0:
            return None
        start = self._rotation % n
        self._rotation = start + 1
        best: Backend | None = None
        for i in range(n):
            b = ready[(start + i) % n]
            if (best is None or b.outstanding < best.outstanding) and b.id not in exclude:
                best = b
                if b.outstanding == 0:
                    break
        if best is None:
            return None
        best.outstanding += 1
        self.in_flight += 1
        if self.in_flight > self._peak:
            self._peak = self.in_flight
        self.changed.set()
        return best

    def release(self, b: Backend) -> None:
        """Give back what `acquire` took; wakes a `drain` waiting on ``b``."""
        b.outstanding -= 1
        self.in_flight -= 1
        self.changed.set()
        if b.outstanding == 0 and b.state == "draining":
            fut = self._drains.get(b.id)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def take_peak(self) -> int:
        """The highest ``in_flight`` since the last call (a burst shorter than the autoscaler's pass counts)."""
        peak, self._peak = self._peak, self.in_flight
        return peak

    # -- waits -----------------------------------------------------------------------------------------

    async def drain(self, id: str, timeout: float) -> bool:
        """Stop routing to ``id`` and wait until its in-flight requests are done: True when they are
        (or it is gone), False after ``timeout`` seconds with some still running."""
        b = self._backends.get(id)
        if b is None:
            return True
        if b.state != "draining":
            b.state = "draining"
            self._refresh()
        if b.outstanding == 0:
            return True
        fut = self._drains.get(id)
        if fut is None or fut.done():
            fut = self._drains[id] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False
        return b.outstanding == 0

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until some replica is ready: True then; False after ``timeout`` seconds, or at once when
        (or as soon as) ``unavailable`` is set."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._ready:
            if self._unavailable is not None:
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return bool(self._ready)
        return True

    async def wait_signal(self, timeout: float) -> None:
        """Return at the next change of readiness, of membership, of ``unavailable`` or `wake_waiters`,
        or after ``timeout`` seconds (the caller looks again either way)."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    # -- internals ---------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        self._ready = [b for b in self._backends.values() if b.state == "ready"]
        self._signal()

    def _signal(self) -> None:
        self.changed.set()
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()
