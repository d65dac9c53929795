"""Sandboxes: long-lived isolated containers driven command by command, on the Docker engine.

    manager = SandboxManager(docker, builder, blobs, table, home=home, run_dir=run_dir(home), scaler=scaler)
    await manager.recover()                      # at start: re-adopt the sandboxes an earlier run left
    rec = await manager.create(SandboxSpec(image=ImageSpec(base="python:3.11-slim")))   # "building" at once
    rec = await manager.ready(rec.id, wait=60)   # "ready": its agent answers
    sock = manager.agent_socket(rec)             # exec sessions go to the agent (chalkd.sandboxes.agent_link)
    await manager.terminate(rec.id, grace_period=10)

A sandbox runs code nobody reviewed, so it is shut in more tightly than a
replica: no daemon socket, token or run directory is mounted (only its own
agent directory), capabilities are a small set, ``no-new-privileges``, pids
and memory are capped even when no resources are asked for, and it gets its
own bridge network with inter-container traffic off (no route to replicas or
to other sandboxes; the daemon listens on the host's loopback, which no
bridge reaches), or no network at all. Any image works: the image is built
bare (no chalkd runtime layer) and the agent runs from the daemon's own
injected Python runtime (:mod:`chalkd.sandboxes.agent_runtime`), mounted
read-only.

Sandboxes outlive the daemon. SIGTERM and ``kill -9`` leave them running; a
daemon started on the same home re-adopts each live record's container (and
removes sandbox containers that have no record), re-dials its agent through
the checked connect of :class:`~chalkd.containers.agent_client.AgentSocket`,
and keeps counting its lifetime. Exec sessions live in the agent, so one in
flight survives the restart and is reattached by its session id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex

import aiodocker
from aiodocker.exceptions import DockerError

from chalkcompute._contract import quote
from chalkd.containers.agent_client import AgentSocket, agent_set_env, wait_agent_ready
from chalkd.containers.manager import _hand_agent_dir
from chalkd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from chalkd.images.blobs import BlobError, BlobStore
from chalkd.runtime.docker import (
    LABEL_HOME,
    LABEL_KIND,
    LABEL_OWNER,
    MountError,
    check_mounts,
    ensure_isolated_bridge,
    home_label,
    host_config,
    lazy_binds,
    volume_binds,
)
from chalkd.runtime.image_user import ImageUserError, image_user
from chalkd.sandboxes.records import ENDED, SandboxRecord, SandboxTable
from chalkd.specs import SandboxSpec

log = logging.getLogger(__name__)

__all__ = ["SandboxManager", "SandboxSettings", "SANDBOX_CAPS"]

AGENT_MOUNT = "/run/chalk-agent"
RUNTIME_MOUNT = "/.chalkd"
KIND = "sandbox"
# Ended sandboxes remembered for lookups; the oldest beyond this are forgotten (and their rows deleted).
KEEP_ENDED = 256
# A root process in a sandbox can install packages (apt needs to chown and to drop to its _apt user)
# and bind low ports, and nothing more: no mounts, no raw sockets, no ptrace, no module loading.
SANDBOX_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE")


@dataclass(frozen=True)
class SandboxSettings:
    """The daemon's sandbox flags (``chalkd serve --sandbox-*``)."""

    runtime: str = "runc"                  # the engine's OCI runtime for sandboxes (runsc: gVisor)
    runtime_args: tuple[str, ...] = ()     # what the engine passes it (docker info), shown in isolation
    memory_bytes: int = 2 << 30            # the cap when a sandbox asks for no memory
    pids_limit: int = 1024
    disk_bytes: int = 10 << 30             # each sandbox's writable layer
    disk_check_interval: float = 30.0
    min_free_disk: int = 2 << 30           # below this, new sandboxes are refused
    start_timeout: float = 60.0
    base_image: str = field(default_factory=lambda: f"python:{sys.version_info.major}.{sys.version_info.minor}-slim")


def _parse_details(exc: BaseException) -> dict[str, str]:
    step, tail = getattr(exc, "step", ""), getattr(exc, "tail", "")
    return {k: v for k, v in (("failed_step", step), ("log_tail", tail[-4000:] if tail else "")) if v}


class SandboxManager:
    def __init__(self, docker: aiodocker.Docker, builder, blobs: BlobStore, table: SandboxTable, *, home: Path,
                 run_dir: Path, scaler=None, volumes=None, secrets=None,
                 settings: SandboxSettings | None = None) -> None:
        self.docker = docker
        self.builder = builder
        self.blobs = blobs
        self.table = table
        self.home = Path(home)
        self.agents = Path(run_dir) / "sandboxes"
        self.scaler = scaler      # chalkd.scaling.autoscaler.Autoscaler: reservations
        self.volumes = volumes
        self.secrets = secrets
        self.settings = settings or SandboxSettings()
        self.by_id: dict[str, SandboxRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}      # each sandbox's create task, then its watcher
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._network: str | None = None
        self._network_lock = asyncio.Lock()
        self._disk_enforced: bool | None = None        # whether the engine takes StorageOpt size
        self._disk_task: asyncio.Task | None = None
        self._closing = False

    # -- lookup ---------------------------------------------------------------------

    def get(self, *, id: str = "", name: str = "") -> SandboxRecord:
        if id:
            rec = self.by_id.get(id)
            if rec is None:
                raise NotFound(f"no sandbox with id {quote(id)}")
            return rec
        if name:
            found = [r for r in self.by_id.values() if r.name == name]
            if not found:
                raise NotFound(f"no sandbox named {quote(name)}")
            return max(found, key=lambda r: (r.live, r.created_at))
        raise InvalidArgument("give a sandbox id or name")

    def list(self) -> list[SandboxRecord]:
        return sorted(self.by_id.values(), key=lambda r: r.created_at)

    def agent_socket(self, rec: SandboxRecord) -> AgentSocket:
        return AgentSocket(self.agents / rec.id / "agent.sock", rec.uid)

    async def ready(self, id: str, wait: float) -> SandboxRecord:
        """The sandbox once it is ready, waiting up to ``wait`` seconds while it builds; the clear
        FailedPrecondition when it is terminated, failed to build or could not start."""
        rec = self.get(id=id)
        deadline = time.monotonic() + max(0.0, wait)
        while rec.status == "building":
            left = deadline - time.monotonic()
            if left <= 0:
                raise FailedPrecondition(f"sandbox {rec.id} is still building after {wait:g}s"
                                         + _waiting(rec))
            await rec.wait_change(left)
        if rec.status == "ready":
            return rec
        raise FailedPrecondition(status_error(rec))

    # -- create ---------------------------------------------------------------------

    async def create(self, spec: SandboxSpec, *, local_secrets: dict[str, str] | None = None) -> SandboxRecord:
        """Record the sandbox as "building" and return; the image build, the wait for resources and the
        container start run in the background (``ready`` or GetSandbox's long-poll see them end)."""
        if spec.name and any(r.name == spec.name and r.live for r in self.by_id.values()):
            raise AlreadyExists(f"a sandbox named {quote(spec.name)} is already running; terminate it or "
                                "pick another name")
        if spec.resources.gpu and self.scaler is None:
            raise FailedPrecondition("gpu= needs the daemon's GPU allocator")
        free = shutil.disk_usage(self.home).free
        if free < self.settings.min_free_disk:
            raise ResourceExhausted(f"the disk holding {self.home} has only {free >> 20} MiB free; new sandboxes "
                                    f"are refused under {self.settings.min_free_disk >> 20} MiB")
        try:
            check_mounts(spec.volumes, spec.image)
        except (BlobError, MountError) as exc:
            raise InvalidArgument(str(exc)) from None
        if spec.secrets and self.secrets is not None:
            # Raises SecretNotFound naming what is missing (never a value): before anything is recorded.
            self.secrets.check(spec.secrets, set(local_secrets or {}))
        sid = "sb-" + token_hex(6)
        now = time.time()
        rec = SandboxRecord(id=sid, name=spec.name or sid, created_at=now,
                            expires_at=now + spec.lifetime if spec.lifetime > 0 else 0.0,
                            cpu_millis=spec.resources.cpu_millis, memory_bytes=spec.resources.memory_bytes,
                            gpu=spec.resources.gpu, image=spec.image.base)
        rec.set_status("building", "building its image", phase="image")
        self.by_id[sid] = rec
        self.table.save(rec)
        if local_secrets:
            self.secrets.set_owned(sid, dict(local_secrets))
        self._arm_lifetime(rec)
        task = asyncio.get_running_loop().create_task(self._bring_up(rec, spec), name=f"sandbox-{sid}")
        self._tasks[sid] = task
        await self.table.flush()  # nothing acknowledged that is not stored
        return rec

    async def _bring_up(self, rec: SandboxRecord, spec: SandboxSpec) -> None:
        try:
            built = await self.builder.build(spec.image, bare=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            msg = str(exc).split("\n--- build log", 1)[0]
            await self._end(rec, "error", f"image build failed: {msg}", **_parse_details(exc))
            return
        rec.image = built.tag
        try:
            await self._reserve(rec)
            rec.set_status("building", "starting its container", phase="starting", waiting_for="")
            await self._start(rec, spec)
        except asyncio.CancelledError:
            raise
        except _StartFailed as exc:
            await self._end(rec, "error", f"could not start: {exc}")
        except Exception as exc:
            log.exception("sandbox %s could not start", rec.id)
            await self._end(rec, "error", f"could not start: {exc}")

    async def _reserve(self, rec: SandboxRecord) -> None:
        """Hold the resources asked for (none: nothing is held, the defaults cap it), waiting while
        replicas and other sandboxes hold them; the wait is visible in status_details."""
        if not (rec.cpu_millis or rec.memory_bytes or rec.gpu) or self.scaler is None:
            return
        from chalkd.gpus import GpuRequest

        while True:
            reason = self.scaler.reserve(rec.id, rec.cpu_millis, rec.memory_bytes)
            if not reason and rec.gpu:
                request = GpuRequest.parse(rec.gpu)
                why = self.scaler.gpus.unschedulable_reason(request)
                if why:
                    self.scaler.release(rec.id)
                    raise _StartFailed(why)
                devices = self.scaler.gpus.allocate(rec.id, request)
                if devices is None:
                    self.scaler.release(rec.id)
                    reason = f"{rec.gpu}: the matching GPUs are held by others"
                else:
                    rec.gpu_uuids = tuple(d.uuid for d in devices)
            if not reason:
                return
            rec.set_status("building", "waiting for resources", phase="resources", waiting_for=reason)
            await asyncio.sleep(1.0)  # reservations are released by replicas and sandboxes alike

    async def _ensure_network(self) -> str:
        """The sandboxes' own bridge (inter-container traffic off), made once per home."""
        async with self._network_lock:
            if self._network is not None:
                return self._network
            name = "chalkd-sandboxes-" + hashlib.sha256(home_label(self.home).encode()).hexdigest()[:12]
            try:
                await ensure_isolated_bridge(self.docker, name, {
                    LABEL_HOME: home_label(self.home), LABEL_OWNER: "chalkd", LABEL_KIND: KIND})
            except DockerError as exc:
                raise _StartFailed(f"the engine would not create the sandbox network: {exc.message}") from None
            self._network = name
            return name

    async def _start(self, rec: SandboxRecord, spec: SandboxSpec) -> None:
        from chalkd.sandboxes.agent_runtime import agent_entrypoint, prepare_agent_runtime, runtime_bind

        s = self.settings
        try:
            runtime = await prepare_agent_runtime(self.docker, self.home, s.base_image)
        except Exception as exc:
            raise _StartFailed(f"the agent's runtime could not be prepared from {s.base_image} ({exc}); "
                               "run `chalkd image bootstrap`") from None
        try:
            uid, gid = await image_user(self.docker, rec.image)
        except (ImageUserError, DockerError) as exc:
            raise _StartFailed(f"cannot tell which user image {rec.image} runs as: {exc}") from None
        rec.uid = uid
        try:
            binds = [*lazy_binds(self.blobs, spec.image),
                     *await asyncio.to_thread(volume_binds, self.volumes, spec.volumes, (uid, gid))]
        except (BlobError, MountError) as exc:
            raise _StartFailed(str(exc)) from None
        secret_env: dict[str, str] = {}
        if spec.secrets and self.secrets is not None:
            secret_env = self.secrets.resolve(spec.secrets, rec.id)
        agent_dir = self.agents / rec.id
        agent_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        socket_mode = _hand_agent_dir(agent_dir, uid, gid)
        rec.engine_name = f"chalkd-sandbox-{rec.id[3:]}"
        memory = rec.memory_bytes or s.memory_bytes
        hc = host_config(binds=[f"{agent_dir}:{AGENT_MOUNT}", runtime_bind(runtime, RUNTIME_MOUNT), *binds],
                         cpu_millis=rec.cpu_millis, memory_bytes=memory, pids_limit=s.pids_limit)
        hc["CapAdd"] = list(SANDBOX_CAPS)
        if s.runtime != "runc":
            hc["Runtime"] = s.runtime
        if rec.gpu_uuids:
            hc["DeviceRequests"] = [{"Driver": "nvidia", "DeviceIDs": list(rec.gpu_uuids),
                                     "Capabilities": [["gpu"]]}]
        hc["NetworkMode"] = "none" if not spec.network else await self._ensure_network()
        entry = agent_entrypoint(runtime, f"{AGENT_MOUNT}/agent.sock", mount=RUNTIME_MOUNT,
                                 extra=("--socket-mode", f"{socket_mode:o}",
                                        *(("--await-env",) if secret_env else ())))
        config = {
            "Image": rec.image, "Entrypoint": entry, "Cmd": list(spec.entrypoint),
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": {LABEL_HOME: home_label(self.home), LABEL_KIND: KIND, LABEL_OWNER: "chalkd",
                       "dev.chalkd.sandbox": rec.id},
            "HostConfig": hc,
        }
        engine = await self._create_container(rec, config)
        rec.isolation = self._isolation(hc, spec)
        self.table.save(rec)
        try:
            await engine.start()
        except DockerError as exc:
            raise _StartFailed(f"the engine refused to start it: {exc.message}") from None

        async def agent_up() -> None:
            await wait_agent_ready(self.agent_socket(rec), s.start_timeout)
            if secret_env:
                await agent_set_env(self.agent_socket(rec), secret_env)

        try:
            await agent_up()
        except Exception as exc:
            tail = await _log_tail(engine)
            raise _StartFailed(f"its agent did not answer within {s.start_timeout:g}s ({exc})"
                               + (f"\n{tail}" if tail else "")) from None
        rec.set_status("ready", "", phase="", waiting_for="")
        self.table.save(rec)
        self._watch(rec, engine)
        log.info("sandbox %s (%s) ready from %s", rec.name, rec.id, rec.image)

    async def _create_container(self, rec: SandboxRecord, config: dict):
        """Create it with the disk limit enforced where the storage driver takes one (overlay2 on xfs
        with project quotas), else without: the writable layer is then measured and watched."""
        hc = config["HostConfig"]
        if self._disk_enforced is not False:
            hc["StorageOpt"] = {"size": str(self.settings.disk_bytes)}
            try:
                engine = await self.docker.containers.create(config, name=rec.engine_name)
                self._disk_enforced = True
                return engine
            except DockerError as exc:
                if "storage" not in exc.message.lower() and "quota" not in exc.message.lower():
                    raise _StartFailed(f"the engine refused it: {exc.message}") from None
                self._disk_enforced = False
                log.info("the storage driver takes no size limit (%s): sandbox disks are watched", exc.message)
            hc.pop("StorageOpt", None)
        try:
            return await self.docker.containers.create(config, name=rec.engine_name)
        except DockerError as exc:
            raise _StartFailed(f"the engine refused it: {exc.message}") from None

    def _isolation(self, hc: dict, spec: SandboxSpec) -> dict[str, str]:
        disk = f"{self.settings.disk_bytes} bytes ({'enforced' if self._disk_enforced else 'watched'})"
        return {
            "runtime": self.settings.runtime, "runtime_args": " ".join(self.settings.runtime_args),
            "privileged": "false", "no_new_privileges": "true",
            "capabilities": ",".join(SANDBOX_CAPS), "pids_limit": str(hc.get("PidsLimit", "")),
            "memory_bytes": str(hc.get("Memory", "")),
            "network": "none" if not spec.network else "own bridge, no route to replicas, sandboxes or the daemon",
            "daemon_access": "none (no daemon socket, token or port mounted)", "disk": disk,
        }

    # -- running ----------------------------------------------------------------------

    def _watch(self, rec: SandboxRecord, engine) -> None:
        async def watch() -> None:
            try:
                result = await engine.wait()
                code = result.get("StatusCode")
                why = f"its container stopped on its own (exit code {code})"
            except DockerError as exc:
                why = f"its container is gone ({exc.message})"
            if rec.live and not self._closing:
                log.warning("sandbox %s (%s): %s", rec.name, rec.id, why)
                await self._end(rec, "terminated", why, remove=True)

        self._tasks[rec.id] = asyncio.get_running_loop().create_task(watch(), name=f"sandbox-watch-{rec.id}")
        self._ensure_disk_watch()

    def _ensure_disk_watch(self) -> None:
        if self._disk_task is None or self._disk_task.done():
            self._disk_task = asyncio.get_running_loop().create_task(self._watch_disks(), name="sandbox-disks")

    async def _watch_disks(self) -> None:
        """Terminate a sandbox whose writable layer passes the disk limit (where the driver does not
        enforce it). The engine measures the layer; one sandbox at a time, every interval."""
        while any(r.status == "ready" for r in self.by_id.values()):
            await asyncio.sleep(self.settings.disk_check_interval)
            if self._disk_enforced:
                continue
            for rec in [r for r in self.by_id.values() if r.status == "ready"]:
                try:
                    info = await self.docker.containers.container(rec.engine_name).show(size=1)
                except DockerError:
                    continue
                size = int(info.get("SizeRw") or 0)
                if size > self.settings.disk_bytes:
                    await self.terminate(rec.id, 0.0, reason=(
                        f"terminated: its writable layer grew to {size} bytes, over the disk limit of "
                        f"{self.settings.disk_bytes} bytes (chalkd serve --sandbox-disk)"))

    def _arm_lifetime(self, rec: SandboxRecord) -> None:
        if not rec.expires_at:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, rec.expires_at - time.time())

        def expire() -> None:
            self._timers.pop(rec.id, None)
            if rec.live:
                lifetime = rec.expires_at - rec.created_at
                loop.create_task(self.terminate(rec.id, 10.0, reason=f"its lifetime of {lifetime:g}s ended"))

        self._timers[rec.id] = loop.call_later(delay, expire)

    # -- ending -----------------------------------------------------------------------

    async def terminate(self, id: str, grace_period: float = 10.0, *, reason: str = "") -> SandboxRecord:
        """SIGTERM to everything in it, SIGKILL after ``grace_period``, then removed. Harmless twice."""
        rec = self.get(id=id)
        if not rec.live:
            return rec
        task = self._tasks.pop(rec.id, None)
        if task is not None and not task.done() and rec.status == "building":
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._end(rec, "terminated", reason or "terminated by request", remove=True, grace=grace_period)
        return rec

    async def _end(self, rec: SandboxRecord, status: str, why: str, *, remove: bool = True,
                   grace: float = 0.0, **details: str) -> None:
        if rec.status in ENDED:
            return
        rec.set_status(status, why, phase="", waiting_for="", **details)
        timer = self._timers.pop(rec.id, None)
        if timer is not None:
            timer.cancel()
        if remove and rec.engine_name:
            engine = self.docker.containers.container(rec.engine_name)
            with contextlib.suppress(DockerError):
                if grace > 0:
                    await engine.stop(t=max(1, round(grace)))
                await engine.delete(force=True)
        watcher = self._tasks.pop(rec.id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        shutil.rmtree(self.agents / rec.id, ignore_errors=True)
        if self.scaler is not None:
            self.scaler.release(rec.id)
            if rec.gpu_uuids:
                self.scaler.gpus.release(rec.id)
        if self.secrets is not None:
            self.secrets.delete_owned(rec.id)
        self.table.save(rec)
        self._forget_ended()

    def _forget_ended(self) -> None:
        ended = sorted((r for r in self.by_id.values() if not r.live), key=lambda r: r.created_at)
        for rec in ended[:-KEEP_ENDED or None]:
            del self.by_id[rec.id]
            self.table.delete(rec.id)

    # -- restarts ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt what an earlier run of this home left: each live record's running container
        (its agent re-dialled through the checked connect), its reservations and lifetime; a
        sandbox that was still building, or whose container is gone, is ended with the reason; a
        labelled sandbox container with no live record is removed."""
        for rec in self.table.load():
            self.by_id[rec.id] = rec
        live = {r.engine_name: r for r in self.by_id.values() if r.live and r.engine_name}
        found = await self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_HOME}={home_label(self.home)}", f"{LABEL_KIND}={KIND}"]})
        running: dict[str, object] = {}
        for c in found:
            names = [n.lstrip("/") for n in c._container.get("Names", [])]
            rec = next((live[n] for n in names if n in live), None)
            if rec is None or c._container.get("State") != "running":
                with contextlib.suppress(DockerError):
                    await c.delete(force=True)
                continue
            running[rec.engine_name] = c
        adopt: list[tuple[SandboxRecord, object]] = []
        for rec in list(self.by_id.values()):
            if not rec.live:
                continue
            if rec.status == "building":
                await self._end(rec, "error", "could not start: chalkd restarted while it was being created")
                continue
            engine = running.get(rec.engine_name)
            if engine is None:
                await self._end(rec, "terminated", "its container was gone when chalkd restarted", remove=False)
                continue
            adopt.append((rec, engine))
        # All agents at once: one that does not answer costs its 10 s once, not once per sandbox.
        answers = await asyncio.gather(*(wait_agent_ready(self.agent_socket(rec), 10.0) for rec, _ in adopt),
                                       return_exceptions=True)
        for (rec, engine), answer in zip(adopt, answers, strict=True):
            if isinstance(answer, BaseException):
                await self._end(rec, "terminated", f"its agent did not answer after chalkd restarted ({answer})")
                continue
            if self.scaler is not None and (rec.cpu_millis or rec.memory_bytes):
                self.scaler.reserve(rec.id, rec.cpu_millis, rec.memory_bytes, force=True)
            if self.scaler is not None and rec.gpu_uuids:
                self.scaler.gpus.hold(rec.id, rec.gpu_uuids)  # its container still has them
            self._arm_lifetime(rec)
            self._watch(rec, engine)
            log.info("sandbox %s (%s) re-adopted", rec.name, rec.id)
        self._forget_ended()
        await self.table.flush()

    async def close(self) -> None:
        """Daemon shutdown: sandboxes keep running (the next start re-adopts them); only this
        process's tasks end. A sandbox still building cannot be re-adopted: it is ended."""
        self._closing = True
        for timer in self._timers.values():
            timer.cancel()
        for rec in [r for r in self.by_id.values() if r.status == "building"]:
            task = self._tasks.pop(rec.id, None)
            if task is not None:
                task.cancel()
            await self._end(rec, "error", "could not start: chalkd stopped while it was being created")
        for task in self._tasks.values():
            task.cancel()
        if self._disk_task is not None:
            self._disk_task.cancel()
        if not any(r.live for r in self.by_id.values()):
            await self._remove_network()  # the engine has a few dozen address pools: give ours back
        await self.table.flush()

    async def _remove_network(self) -> None:
        """Remove this home's sandbox network(s) once no sandbox uses them (made again on demand)."""
        with contextlib.suppress(DockerError):
            for net in await self.docker.networks.list(
                    filters={"label": [f"{LABEL_HOME}={home_label(self.home)}", f"{LABEL_KIND}={KIND}"]}):
                with contextlib.suppress(DockerError):  # still used (a sandbox the engine runs): kept
                    await (await self.docker.networks.get(net["Id"])).delete()
        self._network = None


class _StartFailed(RuntimeError):
    pass


def _waiting(rec: SandboxRecord) -> str:
    waiting = rec.status_details.get("waiting_for")
    return f" (waiting for {waiting})" if waiting else f" ({rec.status_message})" if rec.status_message else ""


def status_error(rec: SandboxRecord) -> str:
    """The FailedPrecondition message for a sandbox that is not ready; the SDK picks its exception by
    the words after the id ("is terminated", "image build failed", "could not start")."""
    if rec.status == "terminated":
        return f"sandbox {rec.id} is terminated: {rec.status_message}"
    if rec.status_message.startswith("image build failed"):
        step = rec.status_details.get("failed_step")
        return f"sandbox {rec.id} {rec.status_message}" + (f" (at {step})" if step else "")
    return f"sandbox {rec.id} {rec.status_message}"


async def _log_tail(engine, lines: int = 30) -> str:
    with contextlib.suppress(Exception):
        out = await engine.log(stdout=True, stderr=True, tail=lines)
        return "".join(out).rstrip()
    return ""
