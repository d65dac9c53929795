"""Replicas: how many each function version has, where they fit, when they go.

The autoscaler keeps each function's replicas between ``min_replicas`` (only
for the latest version of a name) and ``max_replicas``: it wants one replica
per ``max_concurrent`` calls waiting or running (queue depth per replica), one
more whenever the oldest queued call has waited past ``wait_window`` (0.2 s)
and none is starting, and stops idle replicas above that once
``suspend_cooldown_period`` has passed with nothing in flight. Placement is accounted against the host's CPU, memory and
GPUs (sandboxes' reservations included): a replica that does not fit waits
until one does, and says why (:meth:`Autoscaler.status`, ``waiting``).

Scale-down drains: the replica takes no new call, finishes what it holds, then
gets SIGTERM (a class runs ``@after``) and exits. Every decision is logged at
INFO with its reason and kept for ``chalkd functions -v``.

    scaler = Autoscaler(runtime, queue, catalog, host=HostResources.detect())
    await scaler.start()
    await scaler.wait_ready(fv, timeout=120)   # brings one replica up even at min 0
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, field

import psutil

from chalkcompute._contract import quote
from chalkcompute.gpu import GpuRequest
from chalkd.catalog import Catalog
from chalkd.errors import Unauthenticated
from chalkd.gpus import GpuAllocator
from chalkd.model import CallError, ErrorCode, FunctionVersion, ReplicaExit, new_id
from chalkd.queue.core import Queue
from chalkd.runtime.base import ReplicaHandle, ReplicaRequest, ReplicaStartError, Runtime
from chalkd.scaling.hooks import ScalerHooks

log = logging.getLogger(__name__)

STARTUP_FAILURES_BEFORE_GIVING_UP = 5
# After a replica exits before it is ready, the next start waits 0.25 s, 0.5 s, 1 s, ... (at most 4 s):
# a class whose @before keeps failing is not restarted in a tight loop.
RESTART_BACKOFF_BASE = 0.25
RESTART_BACKOFF_MAX = 4.0
# How long a daemon that stops waits for its replicas to exit: a class's @after may take 30 s.
STOP_WAIT_SECONDS = 35.0
# A queued call that has waited longer than this gets its function one more replica (bounded as any other).
# A healthy dispatch takes well under a few milliseconds, so a queue that drains normally never trips it;
# 0.2 s is below what a caller notices as lag, and with the loop's 0.25 s tick a wait is acted on within
# about 0.45 s. Shorter would add replicas for waits a replica that is about to free a slot would end anyway.
OLDEST_WAIT_WINDOW = 0.2


@dataclass
class ScaleStatus:
    """What the autoscaler wants for one function version and why, for ``chalkd functions -v``.

    >>> s = ScaleStatus(desired=2, decision="scale up 0 -> 2: 4 call(s) waiting, 0 running, 1 per replica")
    >>> s.waiting   # both could start
    ''
    """

    desired: int = 0
    decision: str = ""        # the last decision with its reason
    decision_at: float = 0.0  # when (unix seconds; 0 before any)
    waiting: str = ""         # why wanted replicas do not start ("waiting: ..."), "" when none wait


@dataclass(frozen=True)
class HostResources:
    cpu_millis: int
    memory_bytes: int

    @classmethod
    def detect(cls) -> HostResources:
        return cls(cpu_millis=(os.cpu_count() or 1) * 1000, memory_bytes=psutil.virtual_memory().total)


@dataclass(eq=False)
class Replica:
    id: str
    token: str
    function: FunctionVersion
    state: str = "starting"            # starting | ready | stopping (draining) | stopped
    handle: ReplicaHandle | None = None
    created_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_busy: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    stop_reason: str = ""
    gpu_uuids: tuple[str, ...] = ()
    # A class with shared_replicas: the pool's key and every version this replica serves
    # (``function`` is the first of them, the one it was started for); empty for a plain replica.
    pool_key: str = ""
    pool: tuple[FunctionVersion, ...] = ()
    # Draining: SIGTERM goes once nothing is in flight (or at drain_until, when its calls run again elsewhere).
    drain_until: float = 0.0
    terminated: bool = False

    @property
    def serves(self) -> tuple[FunctionVersion, ...]:
        return self.pool or (self.function,)


def _waits_for_tokens(fv: FunctionVersion) -> bool:
    """Its queued calls may wait for a rate limit's token or a shared concurrency slot, which no
    added replica brings sooner (the queue's dispatcher asks for replicas only when no gate is shut)."""
    p = fv.policies
    return bool(p.rate_per_second or p.rate_limit_key or p.concurrency_key)


class ReplicaUnknown(Unauthenticated):  # UNAUTHENTICATED by the error table (chalkd.services.errors)
    pass


class Autoscaler:
    def __init__(
        self, runtime: Runtime, queue: Queue, catalog: Catalog, *, host: HostResources,
        heartbeat_timeout: float = 15.0, interval: float = 0.25, drain_timeout: float = 30.0,
        gpus: GpuAllocator | None = None, hooks: ScalerHooks | None = None, wait_window: float = OLDEST_WAIT_WINDOW,
    ) -> None:
        if not wait_window > 0:
            raise ValueError(f"wait_window must be a positive number of seconds, got {wait_window!r}")
        self.wait_window = wait_window
        self.runtime = runtime
        # Swarm places replicas by their own reservations: no CPU, memory or GPUs of this host are held for them.
        self._placed_by_runtime = bool(getattr(runtime, "places_replicas", False))
        self.gpus = gpus if gpus is not None else GpuAllocator([])
        self.queue = queue
        self.catalog = catalog
        self.host = host
        self.heartbeat_timeout = heartbeat_timeout
        self.interval = interval
        self.drain_timeout = drain_timeout
        # The hooks the queue was made with (see chalkd.scaling.hooks): their replica table and wake-up
        # event are this autoscaler's own, so the queue's demand and prefetch questions see its state.
        self.hooks = hooks if hooks is not None else ScalerHooks(catalog.by_id)
        self.replicas: dict[str, Replica] = self.hooks.replicas
        self._warm_until: dict[str, float] = {}
        self._startup_failures: dict[str, int] = {}
        self._status: dict[str, ScaleStatus] = {}  # function id -> (a pool's members share one)
        self._excess_since: dict[str, float] = {}  # function id -> since when it has more replicas than it wants
        self._restart_at: dict[str, float] = {}  # function id -> no new replica before (monotonic)
        self._prepared: dict[str, asyncio.Task] = {}
        self._wake = self.hooks.wake
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._watchers: set[asyncio.Task] = set()
        # CPU and memory held by others than replicas (sandboxes given explicit resources), by owner id.
        self.reserved: dict[str, tuple[int, int]] = {}

    # -- reservations (sandboxes) ---------------------------------------------------

    def _used(self) -> tuple[int, int]:
        live = [r.function for r in self.replicas.values() if r.state != "stopped"]
        return (sum(f.cpu_millis for f in live) + sum(c for c, _ in self.reserved.values()),
                sum(f.memory_bytes for f in live) + sum(m for _, m in self.reserved.values()))

    def reserve(self, owner: str, cpu_millis: int, memory_bytes: int, *, force: bool = False) -> str:
        """Hold ``cpu_millis`` and ``memory_bytes`` for ``owner`` if they fit beside what replicas and
        other reservations hold: "" when held, else what it waits for. ``force`` holds them anyway
        (re-adopting a sandbox that is already running)."""
        used_cpu, used_mem = self._used()
        if not force and (used_cpu + cpu_millis > self.host.cpu_millis
                          or used_mem + memory_bytes > self.host.memory_bytes):
            return (f"{cpu_millis}m CPU and {memory_bytes} bytes of memory: replicas and sandboxes hold "
                    f"{used_cpu}m of {self.host.cpu_millis}m and {used_mem} of {self.host.memory_bytes} bytes")
        self.reserved[owner] = (cpu_millis, memory_bytes)
        return ""

    def release(self, owner: str) -> None:
        if self.reserved.pop(owner, None) is not None:
            self.notify()  # replicas that did not fit may fit now

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="autoscaler")

    async def shutdown(self) -> None:
        """Drain: no new work, wait for in-flight calls, then stop every replica."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for r in self.replicas.values():
            for fv in r.serves:
                self.queue.worker_draining(r.id, fv.id)
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline and any(
            self.queue.inflight_count(fv.id, r.id) for r in self.replicas.values() for fv in r.serves
        ):
            await asyncio.sleep(0.05)
        for r in list(self.replicas.values()):
            self._stop(r, "daemon shutting down", drain=False)
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=STOP_WAIT_SECONDS)
        for r in list(self.replicas.values()):
            if r.handle is not None:
                r.handle.kill()

    def notify(self) -> None:
        self._wake.set()

    # -- what the services call ---------------------------------------------------

    def connect(self, replica_id: str, token: str) -> Replica:
        replica = self.replicas.get(replica_id)
        if replica is None or not secrets.compare_digest(replica.token, token) or replica.state == "stopped":
            raise ReplicaUnknown(f"unknown replica {quote(replica_id)} (started by an earlier daemon?)")
        return replica

    def replica_ready(self, replica: Replica) -> None:
        if replica.state != "starting":  # stopped while it started (its function deleted): stays so
            return
        replica.state = "ready"
        replica.ready_at = time.monotonic()
        replica.last_seen = replica.ready_at
        self._startup_failures.pop(replica.function.id, None)
        self._restart_at.pop(replica.function.id, None)
        self._notify_changed()

    def seen(self, replica: Replica) -> None:
        replica.last_seen = time.monotonic()

    def replica_disconnected(self, replica: Replica) -> None:
        # A worker whose stream ended is of no use: make sure its process goes too.
        if replica.state != "stopped":
            replica.stop_reason = replica.stop_reason or "its connection to the daemon closed"
            if replica.handle is not None:
                replica.handle.kill()

    async def wait_ready(self, fv: FunctionVersion, timeout: float) -> None:
        """Until one replica of ``fv`` is ready; raise on failure or timeout."""
        self._warm_until[fv.id] = time.monotonic() + max(fv.cooldown, timeout)
        self._wake.set()
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                if fv.failed:
                    raise ReplicaStartError(fv.failed)
                if fv.deleted:
                    raise ReplicaStartError(f"function {fv.name!r} version {fv.version} was deleted")
                if any(r.state == "ready" and fv in r.serves for r in self.replicas.values()):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no replica of {fv.name!r} became ready within {timeout:g}s"
                        + self._pending_reason(fv)
                    )
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    pass

    def status(self, fv: FunctionVersion) -> ScaleStatus:
        """Desired replicas, the last scaling decision and what the wanted ones wait for."""
        return self._status.get(fv.id) or ScaleStatus()

    def counts(self, fv: FunctionVersion) -> tuple[int, int]:
        mine = [r for r in self.replicas.values() if r.state != "stopped" and fv in r.serves]
        return sum(r.state == "ready" for r in mine), len(mine)

    def function_deleted(self, fv: FunctionVersion) -> None:
        self.queue.fail_waiting(fv.id, CallError.platform(
            ErrorCode.NOT_FOUND, f"function {fv.name!r} version {fv.version} was deleted"))
        self._status.pop(fv.id, None)
        for r in list(self.replicas.values()):
            if fv in r.serves:
                self._stop(r, "function deleted", drain=False)
        self._notify_changed()

    # -- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                self._reconcile()
            except Exception:
                log.exception("autoscaler pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    def _reconcile(self) -> None:
        now = time.monotonic()
        used_cpu, used_mem = self._used()
        for r in list(self.replicas.values()):
            if r.state in ("ready", "stopping") and not r.terminated and now - r.last_seen > self.heartbeat_timeout:
                r.stop_reason = f"no heartbeat for {self.heartbeat_timeout:g}s"
                if r.handle is not None:
                    r.handle.kill()
            elif r.state == "stopping":
                self._terminate_if_drained(r)
        pools = self._pools()
        for fv in list(self.catalog.by_id.values()):
            if fv.deleted or fv.failed:
                continue
            key = fv.spec.replica_pool
            members: tuple[FunctionVersion, ...] = (fv,)
            if key:
                # A pool is scaled once, as its first live member; not before all its members registered.
                everyone = pools.get(key, [])
                members = tuple(m for m in everyone if not (m.deleted or m.failed))
                if members[0] is not fv or len(everyone) < fv.spec.replica_pool_size:
                    continue
                mine = [r for r in self.replicas.values() if r.pool_key == key and r.state in ("starting", "ready")]
            else:
                mine = [r for r in self.replicas.values() if r.function is fv and r.state in ("starting", "ready")]
            for r in mine:
                if any(self.queue.inflight_count(m.id, r.id) for m in members):
                    r.last_busy = now
                else:  # a call that began and ended between two passes counts too
                    r.last_busy = max(r.last_busy, *(self.queue.last_done(m.id, r.id) for m in members))
            status = self._status.get(fv.id)
            if status is None:
                status = ScaleStatus()
                for m in members:
                    self._status[m.id] = status
            floor = fv.min_replicas if fv.latest else 0
            floor_why = f"min_replicas {floor}" if floor else ""
            if floor < 1 and any(self._warm_until.get(m.id, 0) > now for m in members):
                floor, floor_why = 1, "wait_ready asked for a replica"
            waiting = sum(self.queue.waiting(m.id) for m in members)
            running = sum(self.queue.inflight(m.id) for m in members)
            # A pool's replica has slots for each method (a stream each): the busiest method sets the need,
            # not the sum (one call of each of two methods fits on one replica).
            needed = max(self._needed(m) for m in members)
            mc, bs = fv.policies.max_concurrent, fv.policies.batch_size
            per_replica = f"{mc} batch(es) of up to {bs} per replica" if bs else f"{mc} per replica"
            desired = min(fv.max_replicas, max(floor, needed))
            # Calls waiting past the window though depth per replica is content (slots held by attempts
            # being cancelled, a replica that stopped taking work, prefetched inputs): keep what there is
            # and add one more once none is starting, until they stop waiting. Not for a function whose
            # calls wait for a rate limit's token or a shared slot (more replicas would not help), and a
            # batch's own window does not count.
            oldest = max(self.queue.oldest_wait(m.id) for m in members) if waiting else 0.0
            window = self.wait_window + (fv.policies.batch_wait if fv.policies.batch_size else 0.0)
            by_wait = 0
            if oldest > window and not _waits_for_tokens(fv):
                by_wait = min(fv.max_replicas, len(mine) + (not any(r.state == "starting" for r in mine)))
            grown_by_wait = by_wait > desired
            desired = max(desired, by_wait)
            status.desired = desired
            before = len(mine)
            blocked = ""
            while len(mine) < desired:
                if not self._fits(fv, used_cpu, used_mem):
                    blocked = "waiting" + self._cpu_reason(fv, used_cpu, used_mem)
                    break
                if self._restart_at.get(fv.id, 0) > now:
                    blocked = (f"waiting: backing off after {self._startup_failures.get(fv.id, 0)} replica(s) "
                               "in a row exited before they were ready")
                    break
                replica_id = new_id("r")
                devices: list = []
                if fv.gpu:
                    request = GpuRequest.parse(fv.gpu)
                    got = self.gpus.allocate_for(replica_id, request, fv.spec)  # a swarm's: of one allowed node
                    if got is None:  # enough matching GPUs exist, but others hold them now
                        blocked = self._gpu_reason(fv)
                        break
                    devices = got
                mine.append(self._launch(fv, replica_id, tuple(d.uuid for d in devices),
                                         pool=members if key else ()))
                used_cpu += fv.cpu_millis
                used_mem += fv.memory_bytes
            if len(mine) > before:
                why = (f"{waiting} call(s) waiting, {running} running, {per_replica}"
                       + (" and method" if key else "")
                       if needed >= floor else floor_why)
                if grown_by_wait:
                    why = (f"the oldest queued call has waited {oldest:.2f}s (over {window:g}s), "
                           f"{waiting} call(s) waiting, {running} running")
                if needed > fv.max_replicas:
                    why += f" (capped at max_replicas {fv.max_replicas})"
                self._decide(fv, status, f"scale up {before} -> {len(mine)}: {why}")
            if blocked != status.waiting:
                status.waiting = blocked
                if blocked:
                    log.info("scaling %s: %d of %d wanted replica(s) cannot start now, %s",
                             fv.name, desired - len(mine), desired, blocked)
            # Scale down above the floor once the cooldown has passed: replicas idle that long, or, when
            # the function has had more replicas than it wants for that long, the least busy ones (their
            # calls finish first: draining). Load spread over every replica would keep each one busy.
            excess = len(mine) - max(floor, desired)
            if excess <= 0:
                self._excess_since.pop(fv.id, None)
                continue
            excess_for = now - self._excess_since.setdefault(fv.id, now)

            def busy(r: Replica, members: tuple[FunctionVersion, ...] = members) -> int:
                return sum(self.queue.inflight_count(m.id, r.id) for m in members)

            ready = [r for r in mine if r.state == "ready"]
            idle = sorted((r for r in ready if not busy(r) and now - r.last_busy >= fv.cooldown),
                          key=lambda r: r.last_busy)
            if excess_for >= fv.cooldown:
                idle += sorted((r for r in ready if r not in idle), key=busy)
            for r in idle[:excess]:
                held = busy(r)
                why = (f"replica {r.id} idle for {fv.cooldown:g}s" if not held else
                       f"more replicas than wanted for {fv.cooldown:g}s, replica {r.id} drains its {held} call(s)")
                self._decide(fv, status, f"scale down {len(mine)} -> {len(mine) - 1}: {why} "
                             f"(suspend_cooldown_period), {waiting + running} call(s) waiting or running, "
                             f"floor {floor}" + (f" ({floor_why})" if floor_why else ""))
                mine.remove(r)
                self._stop(r, f"scaled down after {fv.cooldown:g}s (suspend_cooldown_period)")
                self._excess_since.pop(fv.id, None)  # any further excess waits a cooldown of its own

    def _needed(self, fv: FunctionVersion) -> int:
        """Replicas ``fv``'s calls need now: a replica runs ``max_concurrent`` calls at once, or, batched,
        ``max_concurrent`` batches of any size up to ``batch_size``. A batch holds its slot however few items
        it carries, and which items share a batch is not known here: a replica's items in flight count as
        a slot each, up to its max_concurrent (exact at the default of one: a busy replica is full)."""
        mc, bs = fv.policies.max_concurrent, fv.policies.batch_size
        waiting = self.queue.waiting(fv.id)
        if not bs:
            return -(-(waiting + self.queue.inflight(fv.id)) // mc)
        busy = sum(min(mc, self.queue.inflight_count(fv.id, r.id)) for r in self.replicas.values() if fv in r.serves)
        return -(-(busy + -(-waiting // bs)) // mc)

    def _decide(self, fv: FunctionVersion, status: ScaleStatus, decision: str) -> None:
        status.decision = decision
        status.decision_at = time.time()
        log.info("scaling %s v%d: %s", fv.name, fv.version, decision)

    def _fits(self, fv: FunctionVersion, used_cpu: int, used_mem: int) -> bool:
        if self._placed_by_runtime:  # Swarm places by reservations across its nodes, not this host's
            return True
        return (used_cpu + fv.cpu_millis <= self.host.cpu_millis
                and used_mem + fv.memory_bytes <= self.host.memory_bytes)

    def _cpu_reason(self, fv: FunctionVersion, used_cpu: int, used_mem: int) -> str:
        return (f": it needs {fv.cpu_millis}m CPU and {fv.memory_bytes} bytes of memory, and replicas and "
                f"sandboxes hold {used_cpu}m of {self.host.cpu_millis}m and {used_mem} of "
                f"{self.host.memory_bytes} bytes")

    def _gpu_reason(self, fv: FunctionVersion) -> str:
        """``waiting: 2 GPUs of type nvidia-l4 wanted, 1 free (held by ...)``."""
        request = GpuRequest.parse(fv.gpu)
        taken = self.gpus.in_use()
        matching = self.gpus.matching(request)
        free = self._gpus_free(request)
        holders = sorted({taken[d.uuid] for d in matching if d.uuid in taken})
        names = sorted({self.replicas[h].function.name if h in self.replicas else h for h in holders})
        kind = "any type" if request.model == "any" else f"type {request.model}"
        held = f" (held by {', '.join(names)})" if names else ""
        on_nodes = getattr(self.gpus, "waiting_reason", None)  # a swarm's: free GPUs are counted per node
        if on_nodes is not None:
            return f"waiting: {request.count} GPU{'s' if request.count != 1 else ''} of {kind} wanted, " \
                   f"{on_nodes(request, fv.spec)}{held}"
        return f"waiting: {request.count} GPU{'s' if request.count != 1 else ''} of {kind} wanted, {free} free{held}"

    def _gpus_free(self, request: GpuRequest) -> int:
        taken = self.gpus.in_use()
        return sum(d.uuid not in taken for d in self.gpus.matching(request))

    def _pending_reason(self, fv: FunctionVersion) -> str:
        placing = self.runtime.pending_reason(fv.id) if self._placed_by_runtime else ""
        if placing:
            return f": {placing}"
        used_cpu, used_mem = self._used()
        if not self._fits(fv, used_cpu, used_mem):
            return self._cpu_reason(fv, used_cpu, used_mem)
        if fv.gpu and self._gpus_free(request := GpuRequest.parse(fv.gpu)) < request.count:
            return ": " + self._gpu_reason(fv)
        waiting = self.status(fv).waiting
        return f": {waiting}" if waiting else ""

    def _pools(self) -> dict[str, list[FunctionVersion]]:
        """Pool key -> its versions by name (deleted and failed ones too: they count as registered)."""
        pools: dict[str, list[FunctionVersion]] = {}
        for v in self.catalog.by_id.values():
            if v.spec.replica_pool:
                pools.setdefault(v.spec.replica_pool, []).append(v)
        for members in pools.values():
            members.sort(key=lambda v: v.name)
        return pools

    def _launch(self, fv: FunctionVersion, replica_id: str | None = None, gpu_uuids: tuple[str, ...] = (),
                pool: tuple[FunctionVersion, ...] = ()) -> Replica:
        replica = Replica(id=replica_id or new_id("r"), token=secrets.token_urlsafe(24), function=fv,
                          gpu_uuids=gpu_uuids, pool_key=fv.spec.replica_pool if pool else "", pool=pool)
        self.replicas[replica.id] = replica
        task = asyncio.get_running_loop().create_task(self._run_replica(replica), name=f"replica-{replica.id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return replica

    async def _run_replica(self, replica: Replica) -> None:
        try:
            await self._replica_lifetime(replica)
        finally:
            self.gpus.release(replica.id)

    async def _replica_lifetime(self, replica: Replica) -> None:
        fv = replica.function
        try:
            prep = self._prepared.get(fv.id)
            if prep is None or (prep.done() and prep.exception() is not None):
                prep = asyncio.get_running_loop().create_task(self.runtime.prepare(fv.id, fv.spec))
                self._prepared[fv.id] = prep
            await asyncio.shield(prep)
            if replica.state in ("stopping", "stopped"):  # stopped (its function deleted) while it prepared
                replica.state = "stopped"
                self.replicas.pop(replica.id, None)
                return
            replica.handle = await self.runtime.start(ReplicaRequest(
                replica_id=replica.id, token=replica.token, function_id=fv.id, function_name=fv.name,
                spec=fv.spec, cpu_millis=fv.cpu_millis, memory_bytes=fv.memory_bytes, gpu_uuids=replica.gpu_uuids,
            ))
            if replica.state == "stopping":  # deleted or drained while it started
                self._terminate_if_drained(replica)
        except ReplicaStartError as exc:
            for member in replica.serves:
                self._function_failed(member, str(exc),
                                      ErrorCode.BUILD_FAILED if exc.build_failed else ErrorCode.UNSCHEDULABLE)
            replica.state = "stopped"
            self.replicas.pop(replica.id, None)
            return
        except Exception as exc:
            log.exception("starting a replica of %s failed", fv.name)
            for member in replica.serves:
                self._function_failed(member, f"starting a replica failed: {exc}", ErrorCode.INTERNAL)
            replica.state = "stopped"
            self.replicas.pop(replica.id, None)
            return
        exit = await replica.handle.wait()
        was_ready = replica.ready_at is not None
        stopping = replica.state == "stopping"
        replica.state = "stopped"
        self.replicas.pop(replica.id, None)
        if replica.stop_reason and not exit.reason:
            # The runtime's own reason (e.g. out of memory) says more than ours, which for a
            # killed worker is only that its connection closed.
            exit = ReplicaExit(exit.code, exit.signal, replica.stop_reason)
        for member in replica.serves:
            self.queue.worker_lost(member.id, replica.id, exit)
        if not was_ready and not stopping and not self._closing:
            count = self._startup_failures.get(fv.id, 0) + 1
            self._startup_failures[fv.id] = count
            self._restart_at[fv.id] = time.monotonic() + min(RESTART_BACKOFF_MAX,
                                                             RESTART_BACKOFF_BASE * 2 ** (count - 1))
            tail = replica.handle.log_tail()
            log.warning("replica %s of %s exited before it was ready (%s)", replica.id, fv.name, exit.describe())
            if count >= STARTUP_FAILURES_BEFORE_GIVING_UP:
                for member in replica.serves:
                    self._function_failed(
                        member, f"replicas of {fv.name!r} exit before they are ready ({exit.describe()}); "
                        f"last output:\n{tail}", ErrorCode.UNSCHEDULABLE)
        elif not stopping and not self._closing:
            log.warning("replica %s of %s was lost (%s)", replica.id, fv.name, exit.describe())
        self._notify_changed()
        self._wake.set()

    def _function_failed(self, fv: FunctionVersion, reason: str, code: ErrorCode) -> None:
        fv.failed = reason
        fv.failed_code = code.value
        self.queue.fail_waiting(fv.id, CallError.platform(code, reason))
        self._notify_changed()

    def _stop(self, replica: Replica, reason: str, *, drain: bool = True) -> None:
        """Drain ``replica`` (no new calls; SIGTERM once it holds none: its calls' own timeouts bound
        that), or with ``drain=False`` send SIGTERM now (its calls run again elsewhere, or fail if
        streamed: a deleted function, a daemon past its drain_timeout)."""
        if replica.state == "stopped" or (replica.state == "stopping" and (drain or replica.terminated)):
            return
        log.info("stopping replica %s of %s: %s", replica.id, replica.function.name, reason)
        replica.state = "stopping"
        replica.stop_reason = reason
        replica.drain_until = math.inf if drain else 0.0
        for member in replica.serves:
            self.queue.worker_draining(replica.id, member.id)
        self._terminate_if_drained(replica)

    def _terminate_if_drained(self, replica: Replica) -> None:
        if replica.terminated or replica.handle is None:  # not started yet: the handle comes back terminated
            return
        busy = sum(self.queue.inflight_count(m.id, replica.id) for m in replica.serves)
        if busy and time.monotonic() < replica.drain_until:
            return
        replica.terminated = True
        replica.handle.terminate()

    def _notify_changed(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()
        asyncio.get_running_loop().create_task(notify())
