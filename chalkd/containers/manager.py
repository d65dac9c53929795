"""Long-running containers for the SDK's ``Container`` API, on the Docker engine.

    manager = ContainerManager(docker, builder, blobs, ContainerTable(store), home=home, run_dir=run_dir(home))
    await manager.recover()          # at start: re-adopt the containers an earlier run left
    c = await manager.create(ContainerSpec(name="web", image=image, resources=Resources(cpu_millis=1000)))
    out = await manager.exec(c.id, ["ls", "/does-not-exist"])   # exit_code 2, stderr from ls
    await manager.stop(c.id, grace_period=5)

Every container runs our agent (``python3 -m chalkcompute.agent``) as its main
process: it starts the image's own entrypoint and cmd, if any, as a child and
stays up when that exits, so ``exec`` works on any image we built. ``exec``
goes to the agent over a unix socket in a per-container directory of the
daemon's run dir, bind-mounted into the container: no Engine API exec, which
costs tens of milliseconds per call.

Containers outlive the daemon. Each has a record in the store
(:mod:`chalkd.containers.records`), saved on every status change. SIGTERM and
``kill -9`` of the daemon leave running containers running; a daemon started
on the same home re-adopts each Running record whose engine container still
runs, re-dialling its agent (whose socket stays in the run dir) through the
checked connect of :class:`~chalkd.containers.agent_client.AgentSocket`. A
container that was still Pending, or whose engine container is gone, ends
Failed with the reason; a labelled container of this home with no live record
is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from secrets import token_hex

import aiodocker
from aiodocker.exceptions import DockerError

from chalkcompute._contract import quote, valid_container_name
from chalkcompute.agent import entrypoint as agent_entrypoint
from chalkd.containers.agent_client import (
    AgentUnavailableError,
    ExecOutcome,
    agent_exec,
    agent_set_env,
    wait_agent_ready,
)
from chalkd.containers.records import ContainerTable, ManagedContainer
from chalkd.images.blobs import BlobError, BlobStore
from chalkd.images.docker_build import DockerImageBuilder
from chalkd.runtime.docker import (
    LABEL_HOME,
    LABEL_KIND,
    LABEL_OWNER,
    MountError,
    check_mounts,
    home_label,
    host_config,
    lazy_binds,
    volume_binds,
)
from chalkd.runtime.image_user import ImageUserError, image_user
from chalkd.specs import ContainerSpec

log = logging.getLogger(__name__)

# Ended containers remembered for lookups; the oldest beyond this are forgotten (and their rows deleted).
KEEP_ENDED = 256
KIND = "container"

__all__ = ["ContainerManager", "ManagedContainer", "ContainerNotFound", "ContainerConflict", "ContainerFailed"]

AGENT_MOUNT = "/run/chalk-agent"


class ContainerNotFound(LookupError):
    pass


class ContainerConflict(ValueError):
    pass


class ContainerFailed(RuntimeError):
    """The container could not start or is not running (the message says why)."""


def _hand_agent_dir(agent_dir: Path, uid: int, gid: int) -> int:
    """Make the agent directory usable by the container's uid; the mode for its socket.

    The agent runs as the image's USER with no capabilities, so it can create
    its socket only in a directory it owns (or one open to it). A root daemon
    gives the 0700 directory to that uid: only the container and root reach
    it, and the 0600 socket is the agent's. A daemon that is not root cannot
    chown, so unless the container runs as the daemon's own uid the directory
    is opened up (0777, socket 0666): its parent, the daemon's 0700 run
    directory, still keeps every other host user out."""
    if os.geteuid() == 0:
        os.chown(agent_dir, uid, gid)
        return 0o600
    if uid == os.getuid():
        return 0o600
    os.chmod(agent_dir, 0o777)
    return 0o666


class ContainerManager:
    def __init__(self, docker: aiodocker.Docker, builder: DockerImageBuilder, blobs: BlobStore,
                 table: ContainerTable, *, home: Path, run_dir: Path, pids_limit: int = 4096, volumes=None,
                 secrets=None) -> None:
        self.docker = docker
        self.builder = builder
        self.blobs = blobs
        self.table = table
        self.home = Path(home)
        self.agents = Path(run_dir) / "agents"
        self.pids_limit = pids_limit
        self.by_id: dict[str, ManagedContainer] = {}
        self.volumes = volumes  # chalkd.volumes.store.VolumeStore (the server's: mounts)
        self.secrets = secrets  # chalkd.secrets.store.SecretStore (the server's: the agent's env)
        self._starting: set[asyncio.Task] = set()
        self._closing = False
        # (container id, a line about an exec): its command, exit code and duration, never its output
        # (chalkd.logs.service.LogsService.record_exec, set by the server).
        self.on_exec: Callable[[str, str], None] = lambda container_id, text: None

    # -- lookup -------------------------------------------------------------------

    def get(self, *, id: str = "", name: str = "") -> ManagedContainer:
        if id:
            c = self.by_id.get(id)
            if c is None:
                raise ContainerNotFound(f"no container with id {quote(id)}")
            return c
        if name:
            live = [c for c in self.by_id.values() if c.name == name]
            if not live:
                raise ContainerNotFound(f"no container named {quote(name)}")
            return max(live, key=lambda c: (c.status == "Running", c.created_at))
        raise ContainerNotFound("give a container id or name")

    def list(self) -> list[ManagedContainer]:
        return sorted(self.by_id.values(), key=lambda c: c.created_at)

    # -- lifecycle ----------------------------------------------------------------

    async def create(self, spec: ContainerSpec, *, start_timeout: float = 60.0,
                     local_secrets: dict[str, str] | None = None) -> ManagedContainer:
        """Start a container for ``spec``: Pending at once, Running (or Failed) within ``start_timeout``.
        ``local_secrets`` are the values of its ``local`` secret refs (stored under the container)."""
        name, image, volumes, secrets = spec.name, spec.image, spec.volumes, spec.secrets
        if name and not valid_container_name(name):
            raise ValueError(f"container name {quote(name)} is not DNS-safe: use lower-case letters, digits and '-', "
                             "starting and ending with a letter or digit, at most 63 characters")
        if name and any(c.name == name and c.live for c in self.by_id.values()):
            raise ContainerConflict(f"a container named {name!r} is already running; stop it or pick another name")
        cid = "ct-" + token_hex(6)
        name = name or cid
        try:
            check_mounts(volumes, image)
        except (BlobError, MountError) as exc:
            raise ValueError(str(exc)) from None
        built = await self.builder.build(image)  # cached: the SDK built it with the log shown
        try:
            # The agent and everything it starts run as the image's USER (root if none).
            uid, gid = await image_user(self.docker, built.tag)
        except (ImageUserError, DockerError) as exc:
            raise ContainerFailed(f"cannot tell which user image {built.tag} runs as: {exc}") from None
        try:
            # In a thread: handing a large volume to a new owner walks all of it.
            binds = [*lazy_binds(self.blobs, image),
                     *await asyncio.to_thread(volume_binds, self.volumes, volumes, (uid, gid))]
        except (BlobError, MountError) as exc:
            raise ValueError(str(exc)) from None
        secret_env: dict[str, str] = {}
        if secrets:
            # Raises SecretNotFound naming what is missing (never a value).
            self.secrets.check(secrets, set(local_secrets or {}))
            self.secrets.set_owned(cid, dict(local_secrets or {}))
            try:
                secret_env = self.secrets.resolve(secrets, cid)
            except Exception:
                self.secrets.delete_owned(cid)
                raise
        agent_dir = self.agents / cid
        agent_dir.mkdir(parents=True, mode=0o700)
        socket_mode = _hand_agent_dir(agent_dir, uid, gid)
        c = ManagedContainer(id=cid, name=name, engine_name=f"chalkd-{name}-{cid[3:]}", image_uri=built.tag,
                             agent_dir=agent_dir, uid=uid)
        self.by_id[cid] = c
        self.table.save(c)
        config = {
            "Image": built.tag,
            # By path, not `-m`: PID 1 need not import the SDK (pyarrow, grpclib): ~0.5 s and ~40 MB less.
            "Entrypoint": agent_entrypoint(f"{AGENT_MOUNT}/agent.sock",
                                           extra=("--socket-mode", f"{socket_mode:o}",
                                                  *(("--await-env",) if secret_env else ()))),
            "Cmd": [*built.entrypoint, *built.cmd],
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": {LABEL_HOME: home_label(self.home), LABEL_KIND: KIND, LABEL_OWNER: "chalkd",
                       "dev.chalkd.container": cid, "dev.chalkd.name": name},
            "HostConfig": host_config(binds=[f"{agent_dir}:{AGENT_MOUNT}", *binds],
                                      cpu_millis=spec.resources.cpu_millis,
                                      memory_bytes=spec.resources.memory_bytes, pids_limit=self.pids_limit),
        }
        try:
            c.engine = await self.docker.containers.create(config, name=c.engine_name)
            await c.engine.start()
        except DockerError as exc:
            await self._fail(c, f"the engine refused to start it: {exc.message}")
            raise ContainerFailed(f"container {name!r} could not start: {exc.message}") from None
        c.watcher = asyncio.get_running_loop().create_task(self._watch(c), name=f"container-{cid}")
        starter = asyncio.get_running_loop().create_task(self._await_agent(c, start_timeout, built.tag, secret_env))
        self._starting.add(starter)
        starter.add_done_callback(self._starting.discard)
        await self.table.flush()  # nothing acknowledged that is not stored (its record, its local secrets)
        return c

    async def _await_agent(self, c: ManagedContainer, start_timeout: float, tag: str,
                           secret_env: dict[str, str]) -> None:
        """Pending -> Running once the agent answers (and has its secrets), or Failed with the output."""

        async def ready_with_env() -> None:
            await wait_agent_ready(c.socket, start_timeout)
            if secret_env:
                await agent_set_env(c.socket, secret_env)

        ready = asyncio.get_running_loop().create_task(ready_with_env())
        try:
            done, _ = await asyncio.wait({ready, c.watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            ready.cancel()  # the daemon is stopping: close() removes this Pending container
            raise
        if c.stopping:
            ready.cancel()
            return
        if ready not in done or ready.exception() is not None:
            ready.cancel()
            why = c.error or f"it was not running within start_timeout={start_timeout:g}s"
            tail = await self._log_tail(c)
            await self._remove(c, "Failed", f"failed to start: {why}" + (f"\n{tail}" if tail else ""))
            return
        c.set_status("Running")
        self.table.save(c)
        log.info("container %s (%s) running from %s", c.name, c.id, tag)

    async def _watch(self, c: ManagedContainer) -> None:
        try:
            result = await c.engine.wait()  # type: ignore[attr-defined]
            code = result.get("StatusCode")
        except DockerError as exc:
            code, c.error = None, f"its engine container is gone ({exc.message})"
        if not c.stopping and c.status != "Failed" and not self._closing:
            c.set_status("Failed", c.error or f"its main process exited with code {code}")
            self.table.save(c)
            log.warning("container %s (%s) stopped on its own: %s", c.name, c.id, c.error)

    async def _log_tail(self, c: ManagedContainer, lines: int = 30) -> str:
        with contextlib.suppress(DockerError, Exception):
            out = await c.engine.log(stdout=True, stderr=True, tail=lines)  # type: ignore[attr-defined]
            return "".join(out).rstrip()
        return ""

    async def _fail(self, c: ManagedContainer, why: str) -> None:
        await self._remove(c, "Failed", why)

    async def _remove(self, c: ManagedContainer, status: str, why: str = "", grace: float = 0.0) -> None:
        c.stopping = True
        if c.engine is not None:
            with contextlib.suppress(DockerError):
                if grace > 0:
                    await c.engine.stop(t=max(1, round(grace)))  # type: ignore[attr-defined]
                await c.engine.delete(force=True)  # type: ignore[attr-defined]
        if c.watcher is not None:
            c.watcher.cancel()
        shutil.rmtree(c.agent_dir, ignore_errors=True)
        if self.secrets is not None:
            self.secrets.delete_owned(c.id)  # local secrets go with their container
        c.set_status(status, why)
        self.table.save(c)
        self._forget_ended()

    def _forget_ended(self) -> None:
        """Keep the newest KEEP_ENDED stopped or failed containers (for ``from_id`` and ``info``
        after the fact); older ones are forgotten, rows too, so a long-lived daemon's memory and
        database stay flat."""
        ended = [c for c in self.by_id.values() if c.ended]
        for c in sorted(ended, key=lambda c: c.created_at)[:-KEEP_ENDED or None]:
            del self.by_id[c.id]
            self.table.delete(c.id)

    async def stop(self, id: str, grace_period: float = 0.0) -> ManagedContainer:
        """Stop (SIGTERM, then SIGKILL after ``grace_period``) and remove the container."""
        c = self.get(id=id)
        if c.status in ("Running", "Pending", "Failed") and not c.stopping:
            await self._remove(c, "Stopped", grace=grace_period)
        elif c.status == "Failed":
            await self._remove(c, "Failed")
        return c

    async def exec(self, id: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: str = "",
                   timeout: float | None = None, stdin: bytes = b"") -> ExecOutcome:
        c = self.get(id=id)
        if c.status != "Running":
            raise ContainerFailed(f"container {c.name!r} is not running (status {c.status}"
                                  + (f": {c.error}" if c.error else "") + ")")
        if not argv:
            raise ValueError("exec needs a command")
        started = time.monotonic()
        try:
            out = await agent_exec(c.socket, argv, env=env or None, cwd=cwd or None, timeout=timeout, stdin=stdin)
        except AgentUnavailableError as exc:
            raise ContainerFailed(f"container {c.name!r} does not answer: {exc}") from None
        ended = f"exit code {out.exit_code}" if out.exit_code is not None else f"signal {out.signal}"
        self.on_exec(c.id, f"exec {argv!r}: {ended} after {time.monotonic() - started:.3f}s"
                     + (f" ({out.error})" if out.error else ""))
        return out

    # -- restarts ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Re-adopt what an earlier run of this home left: each Running record whose engine container
        still runs (its agent re-dialled through the checked connect, its watcher restarted). A
        container that was still Pending, or whose engine container is gone or stopped, ends Failed
        with the reason; a labelled container of this home with no Running record is removed, and
        so is an agent directory that no adopted container holds."""
        for c in self.table.load():
            if not c.agent_dir.parts:
                c.agent_dir = self.agents / c.id
            self.by_id[c.id] = c
        found = await self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_HOME}={home_label(self.home)}", f"{LABEL_KIND}={KIND}"]})
        running: dict[str, object] = {}
        stopped: dict[str, str] = {}  # id -> the engine's words for a container that had stopped
        for engine in found:
            seen = engine._container
            c = self.by_id.get((seen.get("Labels") or {}).get("dev.chalkd.container", ""))
            if c is not None and c.status == "Running" and seen.get("State") == "running":
                running[c.id] = engine
                continue
            if c is not None and c.status == "Running":
                stopped[c.id] = str(seen.get("Status") or seen.get("State") or "not running")
            with contextlib.suppress(DockerError):
                await engine.delete(force=True)
        candidates: list[ManagedContainer] = []
        for c in list(self.by_id.values()):
            if c.status == "Pending":
                await self._remove(c, "Failed", "failed to start: chalkd restarted while it was starting")
            elif c.status == "Running" and c.id not in running:
                why = stopped.get(c.id)
                await self._remove(c, "Failed", f"its engine container had stopped ({why}) when chalkd restarted"
                                   if why else "its engine container was gone when chalkd restarted")
            elif c.status == "Running":
                c.engine = running[c.id]
                candidates.append(c)
            elif not c.stopping:
                await self._remove(c, c.status)  # Failed with its exited container: removed above
        # All agents at once: one that does not answer costs its timeout once, not once per container.
        answers = await asyncio.gather(*(wait_agent_ready(c.socket, 10.0) for c in candidates),
                                       return_exceptions=True)
        adopted = 0
        for c, answer in zip(candidates, answers, strict=True):
            if isinstance(answer, BaseException):
                await self._remove(c, "Failed", f"its agent did not answer after chalkd restarted ({answer})")
                continue
            c.watcher = asyncio.get_running_loop().create_task(self._watch(c), name=f"container-{c.id}")
            adopted += 1
            log.info("container %s (%s) re-adopted", c.name, c.id)
        # Agent directories of containers that are gone (a kill -9 mid-create, a removal cut short).
        keep = {c.agent_dir for c in self.by_id.values() if c.status == "Running"}
        if self.agents.is_dir():
            for d in self.agents.iterdir():
                if d not in keep:
                    shutil.rmtree(d, ignore_errors=True)
        self._forget_ended()
        await self.table.flush()
        if adopted:
            log.info("re-adopted %d container(s) left running by an earlier run of this daemon", adopted)

    async def close(self) -> None:
        """Daemon shutdown: Running containers keep running (the next start re-adopts them); only
        this process's tasks end. A container still Pending cannot be re-adopted: it is removed."""
        self._closing = True
        for t in list(self._starting):
            t.cancel()
        for c in list(self.by_id.values()):
            if c.status == "Pending":
                await self._remove(c, "Failed", "failed to start: chalkd stopped while it was starting")
            elif c.watcher is not None:
                c.watcher.cancel()
        await self.table.flush()
