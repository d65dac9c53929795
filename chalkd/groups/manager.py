"""Scaling groups: HTTP services as a group of replicas behind one URL, on the Docker engine.

    manager = GroupManager(builder, launcher, table, settings=GroupSettings(host="127.0.0.1"), scaler=scaler)
    await manager.recover(decode)            # at start: every recorded group is served again on its port
    rec = await manager.deploy(spec, spec_bytes)   # Pending at once; Running once a replica is ready
    rec = await manager.deploy(new_spec, new_bytes)  # same name: a rolling redeploy (a new revision)
    await manager.delete(rec.id)

Each group has a proxy (:mod:`chalkd.groups.proxy`) on a port of its own
from ``--group-ports``, kept across restarts, in front of a
:class:`~chalkd.groups.pool.ReplicaPool` of replicas
(:mod:`chalkd.groups.replicas`), each probed for readiness
(:mod:`chalkd.groups.probes`). One reconcile loop per group does the rest,
every ``TICK`` seconds or when something happens:

* **scaling**: the peak of requests in flight since the last pass, divided by
  ``target_in_flight`` per replica, between min and max replicas; a request
  that finds no ready replica (scaled to zero) asks for one at once. Up is
  immediate; down is one replica at a time after ``cooldown`` seconds below,
  drained first (no new requests, the in-flight ones finish), then stopped.
* **rollouts**: a deploy of an existing name makes a new revision; the loop
  starts as many new replicas as the old revision had live (at least what the
  load wants), and once they are all ready it switches: the old ones are
  drained, then stopped. Requests go to new replicas as soon as each is ready.
* **failures**: a replica that exits (or is not ready within
  ``ready_timeout``) before it was ever ready is a failed start; restarts back
  off (1, 2, 4, 8 s) and after ``MAX_START_FAILURES`` in a row the group is
  Failed with the app's last lines, unless an older revision still serves, in
  which case the rollout is abandoned (``rollout_error``) and it keeps serving.
  A replica that dies after being ready is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from secrets import token_hex, token_urlsafe

from chalkcompute._contract import quote, valid_container_name
from chalkd.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from chalkd.groups.pool import Backend, ReplicaPool
from chalkd.groups.records import GroupRecord, GroupTable
from chalkd.groups.replicas import LaunchFailed, ReplicaLaunch, ReplicaLauncher
from chalkd.groups.state import Group, GroupSettings, Replica, Revision
from chalkd.runtime.docker import MountError, check_mounts
from chalkd.specs import GroupSpec

log = logging.getLogger(__name__)

__all__ = ["GroupManager", "GroupSettings", "MAX_START_FAILURES", "MAX_REPLICAS"]

TICK = 0.25                 # seconds between two passes of a group's loop when nothing happens
MAX_START_FAILURES = 5      # failed starts in a row before the group (or its rollout) is given up
MAX_REPLICAS = 64


class GroupManager:
    def __init__(self, builder, launcher: ReplicaLauncher, table: GroupTable, *, settings: GroupSettings,
                 scaler=None, secrets=None, proxy_factory: Callable | None = None) -> None:
        self.builder = builder
        self.launcher = launcher
        self.table = table
        self.settings = settings
        self.scaler = scaler      # chalkd.scaling.autoscaler.Autoscaler: cpu/memory reservations and GPUs
        self.secrets = secrets
        self.groups: dict[str, Group] = {}
        self._proxy_factory = proxy_factory
        self._session = None      # aiohttp session for readiness probes
        self._closing = False

    # -- lookup ---------------------------------------------------------------------

    def get(self, *, id: str = "", name: str = "") -> Group:
        if id:
            g = self.groups.get(id)
            if g is None:
                raise NotFound(f"no scaling group with id {quote(id)}")
            return g
        if name:
            for g in self.groups.values():
                if g.rec.name == name:
                    return g
            raise NotFound(f"no scaling group named {quote(name)}")
        raise InvalidArgument("give a scaling group id or name")

    def list(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: g.rec.created_at)

    def web_url(self, g: Group) -> str:
        if not g.rec.host_port:
            return ""
        host = self.settings.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{g.rec.host_port}"

    # -- deploy -----------------------------------------------------------------------

    def _check(self, spec: GroupSpec) -> None:
        if not valid_container_name(spec.name):
            raise InvalidArgument(f"scaling group name {quote(spec.name)} is not DNS-safe: use lower-case letters, "
                                  "digits and '-', starting and ending with a letter or digit, at most 63 characters")
        if not 1 <= spec.port <= 65535:
            raise InvalidArgument(f"port must be between 1 and 65535, got {spec.port}")
        if spec.min_replicas < 0:
            raise InvalidArgument(f"min_replicas must be >= 0, got {spec.min_replicas}")
        if not 1 <= spec.max_replicas <= MAX_REPLICAS:
            raise InvalidArgument(f"max_replicas must be between 1 and {MAX_REPLICAS}, got {spec.max_replicas}")
        if spec.min_replicas > spec.max_replicas:
            raise InvalidArgument(f"min_replicas ({spec.min_replicas}) is more than max_replicas "
                                  f"({spec.max_replicas})")
        try:
            check_mounts(spec.volumes, spec.image)
        except MountError as exc:
            raise InvalidArgument(str(exc)) from None
        if spec.authenticated and getattr(self.launcher, "places_replicas", False):
            # On a swarm a replica's port is published on its node: a caller reaching the node would skip the
            # proxy's token check. Refused until the proxy reaches replicas on a path only it can use.
            raise FailedPrecondition(
                f"scaling group {spec.name!r}: authenticated=True is not supported on --runtime swarm yet: each "
                "replica's port is published on its node's address, where a caller could reach the app without "
                "the token the proxy checks; deploy it on --runtime docker, or with authenticated=False on nodes "
                "that only this daemon's host can reach")
        if spec.resources.gpu:
            if self.scaler is None:
                raise FailedPrecondition("gpu= needs the daemon's GPU allocator")
            from chalkd.gpus import GpuRequest

            why = self.scaler.gpus.unschedulable_reason(GpuRequest.parse(spec.resources.gpu))
            if why:
                raise FailedPrecondition(f"scaling group {spec.name!r}: {why}")

    async def deploy(self, spec: GroupSpec, spec_bytes: bytes, *,
                     local_secrets: dict[str, str] | None = None) -> GroupRecord:
        """Create the group named ``spec.name``, or roll out a new revision of it. Returns at once (the
        record is stored first); the build, the replicas and the switch run in the group's loop."""
        if self._closing:
            raise FailedPrecondition("chalkd is stopping")
        self._check(spec)
        if spec.secrets and self.secrets is not None:
            self.secrets.check(spec.secrets, set(local_secrets or {}))  # names what is missing, never a value
        existing = next((g for g in self.groups.values() if g.rec.name == spec.name), None)
        if existing is None:
            rec = GroupRecord(id="sg-" + token_hex(6), name=spec.name, spec=spec_bytes, target_revision=1,
                              auth_key=token_urlsafe(32) if spec.authenticated else "")
            rec.set_status("Pending", "building its image")
            g = self._new_group(rec)
            try:
                await self._bind(g, 0)
            except BaseException:
                del self.groups[rec.id]
                raise
            log.info("scaling group %s (%s) created on %s", rec.name, rec.id, self.web_url(g))
        else:
            g = existing
            rec = g.rec
            rec.spec = spec_bytes
            rec.target_revision = max(rec.target_revision, rec.revision) + 1
            rec.rollout_error = ""
            if spec.authenticated and not rec.auth_key:
                rec.auth_key = token_urlsafe(32)
            elif not spec.authenticated:
                rec.auth_key = ""
            if g.proxy is not None:
                g.proxy.set_auth_key(rec.auth_key or None)  # type: ignore[attr-defined]
            if g.failed:
                g.failed = False
                g.pool.unavailable = None
                rec.set_status("Pending", "building its image")
            g.failures, g.backoff_until = 0, 0.0
            log.info("scaling group %s (%s): rolling out revision %d", rec.name, rec.id, rec.target_revision)
        if self.secrets is not None:
            if local_secrets:
                self.secrets.set_owned(rec.id, dict(local_secrets))
            elif existing is not None:
                self.secrets.delete_owned(rec.id)
        self.table.save(rec)
        await self.table.flush()  # nothing acknowledged that is not stored
        self._spawn(g, self._build(g, spec, spec_bytes, rec.target_revision), f"group-build-{rec.id}")
        rec.touch()
        return rec

    def _new_group(self, rec: GroupRecord) -> Group:
        g = Group(rec=rec, pool=ReplicaPool(rec.name))
        g.pool.on_demand = lambda: self._demand(g)
        self.groups[rec.id] = g
        self._spawn(g, self._run(g), f"group-{rec.id}")
        return g

    def _spawn(self, g: Group, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        g.tasks.add(task)
        task.add_done_callback(g.tasks.discard)
        return task

    async def _bind(self, g: Group, preferred: int) -> None:
        """Start the group's proxy on ``preferred`` if free, else on the first free port of the range."""
        from chalkd.groups.proxy import GroupProxy

        factory = self._proxy_factory or GroupProxy
        proxy = factory(g.pool, name=g.rec.name, auth_key=g.rec.auth_key or None,
                        hold_timeout=self.settings.hold_timeout)
        lo, hi = self.settings.ports
        used = {o.rec.host_port for o in self.groups.values() if o is not g}
        candidates = ([preferred] if preferred else []) + [p for p in range(lo, hi + 1) if p not in used]
        for port in candidates:
            try:
                bound = await proxy.start(self.settings.host, port)
            except OSError:
                continue
            if preferred and bound != preferred:
                log.warning("scaling group %s: its port %d is taken; it now serves on %d", g.rec.name, preferred,
                            bound)
            g.proxy, g.rec.host_port = proxy, bound
            return
        raise ResourceExhausted(f"no free port for scaling group {g.rec.name!r} in --group-ports {lo}-{hi}")

    async def _build(self, g: Group, spec: GroupSpec, spec_bytes: bytes, number: int) -> None:
        try:
            built = await self.builder.build(spec.image)  # cached: the SDK built it with the log shown
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            msg = "image build failed: " + str(exc).split("\n--- build log", 1)[0]
            self._give_up(g, msg)
            return
        if number != g.rec.target_revision or g.deleted:
            return  # a newer deploy came while this one built
        g.target = Revision(number, spec, spec_bytes, built.tag, [*built.entrypoint, *built.cmd])
        g.kick.set()

    # -- the loop ---------------------------------------------------------------------

    def _demand(self, g: Group) -> None:
        """A request found no ready replica, or wait_ready woke the group: keep one up for a cooldown."""
        g.demand_until = time.monotonic() + max(self.settings.cooldown, 1.0)
        g.kick.set()

    def wake(self, g: Group) -> None:
        if not g.failed and g.pool.ready_count == 0:
            self._demand(g)

    async def _run(self, g: Group) -> None:
        while not g.deleted and not self._closing:
            try:
                self._pass(g)
            except Exception:
                log.exception("scaling group %s: reconcile pass failed", g.rec.name)
            g.kick.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(g.kick.wait(), TICK)

    def _pass(self, g: Group) -> None:
        target = g.target
        if target is None or g.failed:
            self._publish(g)
            return
        s, spec, now = self.settings, target.spec, time.monotonic()
        live = [r for r in g.replicas.values() if r.state != "stopping"]
        new = [r for r in live if r.revision == target.number]
        old = [r for r in live if r.revision != target.number]
        peak = g.pool.take_peak()
        want = max(spec.min_replicas, math.ceil(peak / s.target_in_flight), 1 if now < g.demand_until else 0)
        if old:
            want = max(want, len(old))  # a rollout keeps the capacity the old revision had
        want = min(want, spec.max_replicas)
        if want >= len(new) or old:
            g.below_since = None
            desired = want
        elif g.below_since is None:
            g.below_since, desired = now, len(new)
        elif now - g.below_since >= s.cooldown:
            g.below_since, desired = now, len(new) - 1
        else:
            desired = len(new)
        if desired != g.desired:
            self._decide(g, g.desired, desired, peak)
        g.desired = desired
        if len(new) < desired and now >= g.backoff_until:
            for _ in range(desired - len(new)):
                self._start_replica(g, target)
        elif len(new) > desired:
            idle = sorted(new, key=lambda r: (r.state == "ready", r.backend.outstanding if r.backend else 0))
            for r in idle[:len(new) - desired]:
                self._stop_replica(g, r)
        ready_new = [r for r in new if r.state == "ready"]
        if g.served is not target and len(ready_new) >= desired:
            self._switch(g, target, old)
        self._publish(g)

    def _decide(self, g: Group, before: int, after: int, peak: int) -> None:
        spec = g.target.spec if g.target else None
        if after > before:
            why = (f"{peak} request(s) in flight at the peak ({self.settings.target_in_flight} per replica)"
                   if peak else "min_replicas" if spec and after <= spec.min_replicas else "a request is waiting")
            text = f"scale up {before} -> {after}: {why}"
        else:
            text = f"scale down {before} -> {after}: fewer requests than replicas for {self.settings.cooldown:g}s"
        g.rec.last_decision = f"{time.strftime('%H:%M:%S')} {text}"
        log.info("scaling group %s: %s", g.rec.name, text)

    def _switch(self, g: Group, target: Revision, old: list[Replica]) -> None:
        """The new revision is ready: it is what is served now; the old replicas drain, then stop."""
        rec = g.rec
        first = g.served is None
        g.served = target
        rec.revision, rec.image, rec.spec = target.number, target.image, target.spec_bytes
        rec.target_revision = max(rec.target_revision, target.number)
        self.table.save(rec)
        if not first or rec.revision > 1:
            log.info("scaling group %s: revision %d serves; %d old replica(s) drain and stop", rec.name,
                     target.number, len(old))
        for r in old:
            self._stop_replica(g, r)

    def _publish(self, g: Group) -> None:
        """Status (and the record, when it changed) from what the loop sees."""
        rec, before = g.rec, (g.rec.status, g.rec.status_message)
        if g.failed:
            status, message = "Failed", rec.status_message
        elif g.pool.ready_count:
            rolling = g.target is not None and g.served is not g.target
            status, message = "Running", (f"rolling out revision {g.target.number}" if rolling and g.target
                                          else "")
        elif g.served is not None and g.desired == 0 and not g.replicas:
            status, message = "ScaledToZero", ""
        else:
            status, message = "Pending", self._pending_reason(g)
        rec.set_status(status, message)
        if (rec.status, rec.status_message) != before:
            self.table.save(rec)
        # Long-polls wake on what a caller sees change, not on every pass.
        seen = (rec.status, rec.status_message, rec.revision, rec.target_revision, rec.rollout_error,
                g.pool.ready_count, g.desired, tuple((r.id, r.state) for r in g.replicas.values()))
        if seen != g.seen:
            g.seen = seen
            rec.touch()

    def _pending_reason(self, g: Group) -> str:
        if g.target is None:
            return "building its image"
        waiting = [r.waiting_for or self.launcher.waiting(r.engine) for r in g.replicas.values()
                   if r.waiting_for or r.engine is not None]
        waiting = [w for w in waiting if w]
        if waiting:
            return f"waiting for resources: {waiting[0]}"
        if g.failures:
            return (f"restarting after {g.failures} failed start(s) of {MAX_START_FAILURES}: "
                    f"{g.last_failure.splitlines()[0] if g.last_failure else ''}")
        if g.replicas:
            return f"starting {len(g.replicas)} replica(s)"
        return "scaling up"

    # -- replicas ---------------------------------------------------------------------

    def _start_replica(self, g: Group, rev: Revision) -> None:
        r = Replica(id="sgr-" + token_hex(6), revision=rev.number)
        g.replicas[r.id] = r
        r.task = self._spawn(g, self._replica_life(g, r, rev), f"group-replica-{r.id}")

    def _stop_replica(self, g: Group, r: Replica) -> None:
        if r.state == "stopping":
            return
        r.state = "stopping"

        async def stop() -> None:
            if r.backend is not None:
                # Draining first, whatever its state: a replica whose first probe passes while it stops
                # must not be routed to (a draining backend is never made ready again).
                await g.pool.drain(r.id, self.settings.drain_timeout)
            if r.engine is not None:
                await self.launcher.stop(r.engine, r.id, self.settings.stop_grace)
            elif r.task is not None:
                r.task.cancel()

        self._spawn(g, stop(), f"group-stop-{r.id}")

    async def _reserve(self, g: Group, r: Replica, spec: GroupSpec) -> tuple[str, ...]:
        """Hold the replica's cpu/memory/GPUs, waiting (visibly) while others hold them."""
        res = spec.resources
        # On a swarm, Swarm reserves cpu/memory on the node it picks; GPUs are chalkd's to hand out on any node.
        placed = self.launcher.places_replicas
        if self.scaler is None or not (res.gpu or (res.cpu_millis or res.memory_bytes) and not placed):
            return ()
        from chalkd.gpus import GpuRequest

        while True:
            reason = "" if placed else self.scaler.reserve(r.id, res.cpu_millis, res.memory_bytes)
            uuids: tuple[str, ...] = ()
            if not reason and res.gpu:
                request = GpuRequest.parse(res.gpu)
                devices = self.scaler.gpus.allocate_for(r.id, request, spec)  # a swarm's: of one allowed node
                if devices is None:
                    self.scaler.release(r.id)
                    per_node = getattr(self.scaler.gpus, "waiting_reason", None)  # a swarm's: free GPUs per node
                    reason = f"{res.gpu}: " + (per_node(request, spec) if per_node is not None
                                               else "the matching GPUs are held by others")
                else:
                    uuids = tuple(d.uuid for d in devices)
            if not reason:
                r.waiting_for = ""
                return uuids
            r.state, r.waiting_for = "waiting", reason
            await asyncio.sleep(1.0)

    def _release(self, r: Replica) -> None:
        if self.scaler is not None:
            self.scaler.release(r.id)
            self.scaler.gpus.release(r.id)

    async def _replica_life(self, g: Group, r: Replica, rev: Revision) -> None:
        """Start the replica, route to it once its probe passes, and clean up when it ends."""
        from chalkd.groups.probes import ProbeLoop, ProbeSpec

        spec = rev.spec
        why, tail = "", ""
        try:
            uuids = await self._reserve(g, r, spec)
            if r.state == "stopping":
                return
            r.state = "starting"
            secret_env = self.secrets.resolve(spec.secrets, g.rec.id) if spec.secrets and self.secrets else {}
            launch = ReplicaLaunch(group_id=g.rec.id, group_name=g.rec.name, replica_id=r.id, revision=rev.number,
                                   spec=spec, image_tag=rev.image, image_command=rev.command,
                                   secret_env=secret_env, gpu_uuids=uuids)
            try:
                r.engine = await self.launcher.start(launch)
                host, port = await self.launcher.endpoint(r.engine, spec.port)
            except LaunchFailed as exc:
                why = str(exc)
                return
            r.backend = Backend(r.id, host, port, revision=rev.number,
                                state="draining" if r.state == "stopping" else "starting")
            g.pool.add(r.backend)
            r.probe = probe = ProbeLoop(spec.probe or ProbeSpec(), g.pool, r.backend, self._probe_session())
            probe.start()
            ended = asyncio.ensure_future(self.launcher.wait(r.engine))
            try:
                ready = asyncio.ensure_future(probe.first_ready.wait())
                done, _ = await asyncio.wait({ended, ready}, timeout=self.settings.ready_timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                if ready in done and r.state != "stopping":
                    r.state, r.ever_ready = "ready", True
                    g.failures, g.last_failure = 0, ""
                    log.info("scaling group %s: replica %s (revision %d) ready at %s:%d", g.rec.name, r.id,
                             rev.number, host, port)
                    g.kick.set()
                    why = await ended
                elif ended in done:
                    why = ended.result()
                elif r.state != "stopping":
                    last = getattr(probe, "last_error", None)
                    why = (f"not ready within {self.settings.ready_timeout:g}s"
                           + (f" (its probe: {last})" if last else ""))
            finally:
                ended.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("scaling group %s: replica %s failed", g.rec.name, r.id)
            why = str(exc)
        finally:
            stopping = r.state == "stopping"
            if r.probe is not None:
                with contextlib.suppress(Exception):
                    await r.probe.stop()  # type: ignore[attr-defined]
            g.pool.remove(r.id)
            if r.engine is not None:
                tail = await self.launcher.log_tail(r.engine)
                if tail:
                    g.ended.append((r.id, r.revision, tail))
                await self.launcher.remove(r.engine, r.id)
            self._release(r)
            g.replicas.pop(r.id, None)
            if not stopping and not g.deleted and not self._closing:
                self._ended(g, r, why or "it stopped", tail)
            g.kick.set()

    def _ended(self, g: Group, r: Replica, why: str, tail: str) -> None:
        if r.ever_ready:
            log.warning("scaling group %s: replica %s stopped on its own (%s); replacing it", g.rec.name, r.id, why)
            return
        g.failures += 1
        g.last_failure = why + (f"\n{tail}" if tail else "")
        log.warning("scaling group %s: replica %s failed to start (%d of %d in a row): %s", g.rec.name, r.id,
                    g.failures, MAX_START_FAILURES, why)
        if g.failures >= MAX_START_FAILURES:
            self._give_up(g, f"{MAX_START_FAILURES} replicas in a row failed to start; the last: {g.last_failure}")
        else:
            g.backoff_until = time.monotonic() + min(30.0, 2.0 ** (g.failures - 1))

    def _give_up(self, g: Group, why: str) -> None:
        """The target revision cannot run: abandon its rollout if an older revision serves, else Failed."""
        rec = g.rec
        failing = g.target.number if g.target else rec.target_revision
        for r in list(g.replicas.values()):
            if r.revision == failing or g.served is None:
                self._stop_replica(g, r)
        if g.served is not None and g.served.number != failing:
            rec.rollout_error = f"revision {failing}: {why}"
            rec.target_revision, rec.spec = g.served.number, g.served.spec_bytes
            g.target, g.failures = g.served, 0
            log.warning("scaling group %s: rollout of revision %d abandoned; revision %d keeps serving: %s",
                        rec.name, failing, g.served.number, why)
        else:
            g.failed = True
            rec.set_status("Failed", why)
            g.pool.unavailable = f"chalkd: group {rec.name!r} is Failed: {why.splitlines()[0]}"
            log.warning("scaling group %s is Failed: %s", rec.name, why)
        self.table.save(rec)
        rec.touch()

    def _probe_session(self):
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        return self._session

    # -- delete, logs, restarts ---------------------------------------------------------

    async def delete(self, *, id: str = "", name: str = "", grace: float | None = None) -> GroupRecord:
        g = self.get(id=id, name=name)
        g.deleted = True
        g.pool.unavailable = f"chalkd: group {g.rec.name!r} is being deleted"
        await self._teardown(g, self.settings.stop_grace if grace is None else grace)
        await self.launcher.group_deleted(g.rec.id)   # what the launcher keeps per group (a swarm network)
        self.groups.pop(g.rec.id, None)
        self.table.delete(g.rec.id)
        if self.secrets is not None:
            self.secrets.delete_owned(g.rec.id)
        await self.table.flush()
        log.info("scaling group %s (%s) deleted", g.rec.name, g.rec.id)
        g.rec.touch()
        return g.rec

    async def _teardown(self, g: Group, grace: float) -> None:
        """Close the proxy (in-flight requests get ``grace``) and stop every replica, all at once."""
        if g.proxy is not None:
            with contextlib.suppress(Exception):
                await g.proxy.close(grace)  # type: ignore[attr-defined]
        for r in list(g.replicas.values()):
            r.state = "stopping"
        engines = [(r.engine, r.id) for r in g.replicas.values() if r.engine is not None]
        await asyncio.gather(*(self.launcher.stop(e, rid, grace) for e, rid in engines), return_exceptions=True)
        tasks = list(g.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in list(g.replicas.values()):
            if r.engine is not None:
                await self.launcher.remove(r.engine, r.id)
            self._release(r)
        g.replicas.clear()

    async def logs(self, g: Group, *, tail: int = 200, replica: str = "") -> list[tuple[str, int, str]]:
        """The last ``tail`` lines of each replica's output (ended replicas' too, the last few)."""
        out: list[tuple[str, int, str]] = []
        for rid, rev, text in list(g.ended):
            if not replica or rid == replica:
                out += [(rid, rev, line) for line in text.splitlines()[-tail:]]
        for r in list(g.replicas.values()):
            if r.engine is not None and (not replica or r.id == replica):
                text = await self.launcher.log_tail(r.engine, tail)
                out += [(r.id, r.revision, line) for line in text.splitlines()]
        if replica and not out and replica not in g.replicas and all(rid != replica for rid, _, _ in g.ended):
            raise NotFound(f"scaling group {g.rec.name!r} has no replica {quote(replica)}")
        return out

    async def recover(self, decode: Callable[[bytes], GroupSpec]) -> None:
        """Serve every recorded group again: its port (another if taken, logged), its replicas started
        anew (replicas do not outlive the daemon: leftovers are removed). A group caught mid-rollout
        comes back on its newest revision; a Failed one answers 503 with its reason until redeployed."""
        removed = await self.launcher.remove_leftovers()
        if removed:
            log.info("removed %d scaling-group replica(s) left by an earlier run", removed)
        for rec in self.table.load():
            try:
                spec = decode(rec.spec)
            except Exception as exc:
                log.error("scaling group %s (%s): its stored spec does not decode (%s); skipped", rec.name,
                          rec.id, exc)
                continue
            g = self._new_group(rec)
            try:
                await self._bind(g, rec.host_port)
            except ResourceExhausted as exc:
                log.error("%s", exc)
            self.table.save(rec)
            if rec.status == "Failed":
                g.failed = True
                g.pool.unavailable = f"chalkd: group {rec.name!r} is Failed: {rec.status_message.splitlines()[0]}"
                continue
            rec.target_revision = max(rec.target_revision, rec.revision, 1)
            rec.set_status("Pending", "starting again after chalkd restarted")
            self._spawn(g, self._build(g, replace(spec, name=rec.name), rec.spec, rec.target_revision),
                        f"group-build-{rec.id}")
        await self.table.flush()

    async def close(self) -> None:
        """Daemon shutdown: proxies close and replicas stop (all groups at once); records stay."""
        self._closing = True
        await asyncio.gather(*(self._teardown(g, self.settings.stop_grace) for g in self.groups.values()),
                             return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self.launcher.remove_network()
        await self.table.flush()
