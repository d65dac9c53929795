"""The Docker runtime: each replica is a container built from its function's Image.

    docker = aiodocker.Docker()
    runtime = DockerRuntime(home, docker=docker, builder=DockerImageBuilder(docker, home),
                            run_dir=run_dir(home), instance_id=server.instance_id)
    await runtime.remove_leftovers()          # containers of an earlier daemon run
    await runtime.prepare(function_id, spec)  # builds the image (cached by content)
    handle = await runtime.start(ReplicaRequest(...))

What a replica container gets:

* the image's own environment, then the function's ``env``, then ours
  (``CHALK_*``): the worker dials chalkd through the daemon's socket
  directory, bind-mounted read-only at the same path (no network port), and
  authenticates with its own scoped key, a file bind-mounted read-only at
  :data:`chalkd.runtime.keys.CONTAINER_KEY_PATH` (never in ``Env``);
* the image's ``USER`` as its user (root when the image names none; the
  volumes it mounts are handed to that uid), plus the supplementary group
  :data:`REPLICA_GID` that may dial the daemon's sockets;
* ``cpu`` as ``NanoCpus``, ``memory`` as a hard limit with no extra swap, a
  pids limit, every capability dropped (``CapDrop: ALL``, nothing added back),
  ``no-new-privileges``, never privileged, an init process
  (``docker-init``) as PID 1 so signals and orphans are handled;
* its GPUs, exclusively, as a device request by UUID;
* the image's lazy local files, mounted read-only (see :mod:`chalkd.images.blobs`).

Every container is labelled ``dev.chalkd.home=<home>``: on start the daemon
removes those an earlier run of the same home left behind (their calls were
already re-queued by queue recovery), and never touches another home's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import aiodocker
from aiodocker.exceptions import DockerError

from chalkd.images.blobs import BlobError, BlobStore
from chalkd.images.docker_build import BuiltImage, DockerImageBuilder, ImageBuildError
from chalkd.logs.replica_file import ReplicaLogFile
from chalkd.model import ReplicaExit
from chalkd.runtime.base import (
    ReplicaHandle,
    ReplicaRequest,
    ReplicaStartError,
    Runtime,
    RuntimeUnsupported,
    format_size,
    refuse_placement,
)
from chalkd.runtime.image_user import ImageUserError, image_user
from chalkd.runtime.keys import CONTAINER_KEY_PATH, KEY_FILE_ENV, remove_key, write_key
from chalkd.specs import FunctionSpec, ImageSpec, VolumeMount

log = logging.getLogger(__name__)

LABEL_HOME = "dev.chalkd.home"
LABEL_KIND = "dev.chalkd.kind"          # replica | container
LABEL_OWNER = "dev.chalkd.owner"
DEFAULT_PIDS_LIMIT = 4096
# Capabilities added back after dropping all. None are needed: the worker and the
# agent only run, signal and reap their own processes (same uid), bind their
# socket in a directory they own, and read and write files they own or that
# are open to them. A root process inside cannot chown, bypass file modes,
# bind low ports, use raw sockets or change uid (so `apt-get install` in a
# Container API exec needs an image that already has its packages).
CAP_ADD: tuple[str, ...] = ()
# The group that may reach the daemon's sockets from a replica that runs as a
# non-root USER: the socket directory and both sockets are group-owned by it
# (0710 and 0660) and every replica gets it as a supplementary group. A gid no
# host account uses, so no other local user gains access through it.
REPLICA_GID = 1_999_999_001


def home_label(home: Path) -> str:
    return str(Path(home).resolve())


def host_config(*, binds: list[str], cpu_millis: int = 0, memory_bytes: int = 0,
                pids_limit: int = DEFAULT_PIDS_LIMIT, gpu_uuids: tuple[str, ...] = (),
                group_add: tuple[int, ...] = ()) -> dict:
    """The HostConfig every container of ours gets (replicas and the Container API)."""
    hc: dict = {
        "Binds": binds,
        "Init": True,
        "Privileged": False,
        # No capabilities at all (see CAP_ADD): uid 0 inside is then an ordinary
        # user that owns the image's files, not a near-root of the host.
        "CapDrop": ["ALL"],
        "CapAdd": list(CAP_ADD),
        "SecurityOpt": ["no-new-privileges"],
        "PidsLimit": pids_limit,
    }
    if group_add:
        hc["GroupAdd"] = [str(g) for g in group_add]
    if cpu_millis:
        hc["NanoCpus"] = cpu_millis * 1_000_000
    if memory_bytes:
        hc["Memory"] = memory_bytes
        hc["MemorySwap"] = memory_bytes  # no swap beyond the limit: over it means OOM, as on the process runtime
    if gpu_uuids:
        hc["DeviceRequests"] = [{"Driver": "nvidia", "DeviceIDs": list(gpu_uuids), "Capabilities": [["gpu"]]}]
    return hc


async def ensure_isolated_bridge(docker, name: str, labels: dict[str, str]) -> None:
    """Make the bridge network ``name`` with inter-container traffic off (its containers reach neither each
    other nor another bridge's; the host reaches them), unless it exists. Raises aiodocker's DockerError.

    Sandboxes and scaling-group replicas each get one (``chalkd-sandboxes-<hash>``, ``chalkd-groups-<hash>``).
    """
    from aiodocker.exceptions import DockerError

    try:
        await docker.networks.get(name)
        return
    except DockerError:
        pass
    try:
        await docker.networks.create({"Name": name, "Driver": "bridge", "CheckDuplicate": True,
                                      "Options": {"com.docker.network.bridge.enable_icc": "false"},
                                      "Labels": labels})
    except DockerError as exc:
        if exc.status != 409:  # 409: made by a concurrent start, which is fine
            raise


def lazy_binds(blobs: BlobStore, image: ImageSpec) -> list[str]:
    return [f"{host}:{mount}:ro" for host, mount in blobs.mounts(image)]


class MountError(ValueError):
    """A volume mount cannot be made (the message names the volume and path)."""


def check_mounts(mounts: Sequence[VolumeMount], image: ImageSpec) -> None:
    """Refuse mounts at '/', twice at one path, or over a lazy-file directory of the image."""
    from chalkd.images.blobs import mount_groups

    lazy = set(mount_groups(image))
    seen: set[str] = set()
    for m in mounts:
        if not m.path.startswith("/") or m.path == "/":
            raise MountError(f"volume {m.volume!r} cannot be mounted at {m.path!r}: use an absolute directory")
        if m.path in seen:
            raise MountError(f"two volumes are mounted at {m.path!r}")
        if m.path in lazy:
            raise MountError(f"volume {m.volume!r} is mounted at {m.path!r}, where the image's local files "
                             "are mounted too; choose another path")
        seen.add(m.path)


def volume_mounts(volumes, mounts: Sequence[VolumeMount], owner: tuple[int, int] | None = None
                  ) -> list[tuple[str, str]]:
    """(volume directory on this host, mount path) for each of ``mounts``, read-write.

    The one mount path for functions, containers, sandboxes and groups, on every engine runtime; a
    volume that does not exist yet is created here. ``owner`` (uid, gid), the user the container runs
    as, is made the owner of each mounted volume's files: with no capabilities, even uid 0 inside can
    write only what it owns."""
    if not mounts:
        return []
    if volumes is None:
        raise MountError("this daemon has no volume store")
    out = []
    for m in mounts:
        if ":" in m.path or "," in m.path:
            raise MountError(f"volume {m.volume!r} cannot be mounted at {m.path!r}: ':' and ',' are not allowed")
        if owner is not None and os.geteuid() == 0:
            volumes.hand_to(m.volume, *owner)
        out.append((str(volumes.ensure(m.volume)), m.path))
    return out


def volume_binds(volumes, mounts: Sequence[VolumeMount], owner: tuple[int, int] | None = None) -> list[str]:
    """:func:`volume_mounts` as Docker's bind specs (``"/home/.../volumes/data:/data"``)."""
    return [f"{host}:{path}" for host, path in volume_mounts(volumes, mounts, owner)]


def check_function(spec: FunctionSpec, volumes) -> None:
    """What the engine runtimes check at registration: an image with a base, mounts that can be made
    (created now, so a typo shows up in `chalkd volume ls`). Raises RuntimeUnsupported naming the problem."""
    if not spec.image.base and not any(s.kind == "dockerfile_commands" for s in spec.image.steps):
        # The SDK always sends a base; an empty one would only fail later, in the build.
        raise RuntimeUnsupported(f"function {spec.name!r} has an image with no base")
    try:
        check_mounts(spec.volumes, spec.image)
        volume_mounts(volumes, spec.volumes)
    except (BlobError, MountError, ValueError) as exc:
        raise RuntimeUnsupported(str(exc)) from None


def share_sockets(run_dir: Path, gid: int = REPLICA_GID) -> None:
    """Let replicas that run as a non-root USER dial the daemon's sockets: the
    directory and its sockets become group ``gid`` (which every replica gets),
    0710 and 0660. Idempotent and cheap (called before each replica start,
    since a restarted listener makes a new socket). Needs a root daemon; a
    daemon that is not root leaves them as they are (only images running as
    the daemon's own uid, or root, reach them then)."""
    if os.geteuid() != 0:
        return
    dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(dir_fd, -1, gid)
        os.fchmod(dir_fd, 0o710)  # traverse only: a replica cannot list or create anything here
        for name in ("chalkd.sock", "grpc.sock"):
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    # chmod/chown through /proc: an O_PATH fd takes neither directly.
                    os.chown(f"/proc/self/fd/{fd}", -1, gid)
                    os.chmod(f"/proc/self/fd/{fd}", 0o660)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


async def remove_labelled(docker: aiodocker.Docker, home: Path, kind: str | None = None) -> int:
    """Force-remove this home's containers (of one kind, or all); returns how many."""
    labels = [f"{LABEL_HOME}={home_label(home)}"]
    if kind:
        labels.append(f"{LABEL_KIND}={kind}")
    found = await docker.containers.list(all=True, filters={"label": labels})
    for c in found:
        with contextlib.suppress(DockerError):
            await c.delete(force=True)
    return len(found)


class DockerReplica(ReplicaHandle):
    def __init__(self, container, name: str, log_path: Path, memory_bytes: int) -> None:
        self.container = container
        self.name = name
        self.log_path = log_path
        self.memory_bytes = memory_bytes
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._exit: asyncio.Future[ReplicaExit] | None = None
        self._follower = asyncio.get_running_loop().create_task(self._follow_logs())
        self.cleanup: Callable[[], None] = lambda: None  # removes the replica's key file once it exited

    async def _follow_logs(self) -> None:
        with contextlib.suppress(DockerError, asyncio.CancelledError, Exception):
            with ReplicaLogFile(self.log_path) as out:  # 0600, rotated at its cap (chalkd.logs)
                async for line in self.container.log(stdout=True, stderr=True, follow=True):
                    out.write((line if line.endswith("\n") else line + "\n").encode(errors="replace"))
                    self._tail.append(line.rstrip("\n"))

    async def wait(self) -> ReplicaExit:
        try:
            result = await self.container.wait()
            code = int(result.get("StatusCode", -1))
            info = await self.container.show()
            oom = bool(info.get("State", {}).get("OOMKilled"))
        except DockerError as exc:
            # The container vanished (removed by hand, or the engine restarted).
            return ReplicaExit(code=-1, reason=f"its container is gone ({exc.message})")
        finally:
            try:
                await asyncio.wait_for(asyncio.shield(self._follower), 2.0)
            except (TimeoutError, Exception):
                self._follower.cancel()
        with contextlib.suppress(DockerError):
            await self.container.delete(force=True)
        self.cleanup()
        reason = f"out of memory (over its memory limit of {format_size(self.memory_bytes)})" if oom else ""
        if code > 128 and not oom:
            return ReplicaExit(signal=code - 128, reason=reason)
        if oom:
            return ReplicaExit(signal=9, reason=reason)
        return ReplicaExit(code=code, reason=reason)

    def terminate(self) -> None:
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._signal("SIGKILL")

    def _signal(self, sig: str) -> None:
        async def send() -> None:
            with contextlib.suppress(DockerError):
                await self.container.kill(signal=sig)
        asyncio.get_running_loop().create_task(send())

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self._tail)[-lines:])


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, home: Path, *, docker: aiodocker.Docker, builder: DockerImageBuilder, run_dir: Path,
                 instance_id: str, blobs: BlobStore, pids_limit: int = DEFAULT_PIDS_LIMIT, volumes=None) -> None:
        self.home = Path(home)
        self.docker = docker
        self.builder = builder
        self.run_dir = Path(run_dir)
        self.instance_id = instance_id
        self.blobs = blobs
        self.pids_limit = pids_limit
        self.images: dict[str, BuiltImage] = {}
        self.volumes = volumes  # chalkd.volumes.store.VolumeStore (the server's: volume mounts)
        self.logs = self.home / "logs" / "replicas"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.target = ""  # unused: containers dial the unix sockets in run_dir

    def check(self, spec: FunctionSpec) -> None:
        refuse_placement(spec, self.name)
        check_function(spec, self.volumes)

    async def prepare(self, function_id: str, spec: FunctionSpec) -> None:
        try:
            self.images[function_id] = await self.builder.build(spec.image)
        except ImageBuildError as exc:
            raise ReplicaStartError(f"image build failed: {exc}") from None

    async def start(self, request: ReplicaRequest) -> ReplicaHandle:
        built = self.images.get(request.function_id)
        if built is None:
            await self.prepare(request.function_id, request.spec)
            built = self.images[request.function_id]
        fs = request.spec
        target = f"unix:{self.run_dir / 'grpc.sock'}"
        env = {**fs.env, **request.env,
               "CHALK_WORKER_TARGET": target,
               "CHALK_COMPUTE_TARGET": target,
               "CHALK_WORKER_SOCKET": str(self.run_dir / "chalkd.sock"),
               "CHALK_DAEMON_INSTANCE": self.instance_id,
               "CHALK_REPLICA_ID": request.replica_id,
               # The key by path: the file is bind-mounted read-only, so `docker inspect` shows no secret.
               KEY_FILE_ENV: CONTAINER_KEY_PATH,
               "CHALK_FUNCTION_KIND": fs.kind,
               "PYTHONUNBUFFERED": "1"}
        try:
            # The replica runs as the image's USER (root if none), as `docker run` would.
            owner = await image_user(self.docker, built.tag)
        except (ImageUserError, DockerError) as exc:
            raise ReplicaStartError(f"cannot tell which user image {built.tag} runs as: {exc}",
                                    build_failed=False) from None
        try:
            share_sockets(self.run_dir)
            key_file = write_key(self.home, request.replica_id, request.token, mode=0o444)
            # Read-only: user code can dial the sockets but not replace them (connect works on a ro mount).
            # In a thread: handing a large volume to a new owner walks all of it.
            volumes = await asyncio.to_thread(volume_binds, self.volumes, fs.volumes, owner)
            binds = [f"{self.run_dir}:{self.run_dir}:ro", f"{key_file}:{CONTAINER_KEY_PATH}:ro",
                     *lazy_binds(self.blobs, fs.image), *volumes]
        except (BlobError, MountError, ValueError, OSError) as exc:
            raise ReplicaStartError(str(exc), build_failed=False) from None
        name = f"chalkd-{request.replica_id}"
        config = {
            "Image": built.tag,
            "Entrypoint": ["python3", "-m", "chalkcompute.worker"],
            "Cmd": [],
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {LABEL_HOME: home_label(self.home), LABEL_KIND: "replica", LABEL_OWNER: "chalkd",
                       "dev.chalkd.function": request.function_name, "dev.chalkd.replica": request.replica_id},
            "HostConfig": host_config(binds=binds, cpu_millis=request.cpu_millis,
                                      memory_bytes=request.memory_bytes, pids_limit=self.pids_limit,
                                      gpu_uuids=request.gpu_uuids, group_add=(REPLICA_GID,)),
        }
        try:
            container = await self.docker.containers.create(config, name=name)
            await container.start()
        except DockerError as exc:
            with contextlib.suppress(DockerError, UnboundLocalError):
                await container.delete(force=True)  # type: ignore[possibly-undefined]
            raise ReplicaStartError(f"starting container {name} failed: {exc.message}", build_failed=False) from None
        log.info("started replica %s of %s (container %s)", request.replica_id, request.function_name, name)
        handle = DockerReplica(container, name, self.logs / f"{request.replica_id}.log", request.memory_bytes)
        handle.cleanup = lambda: remove_key(self.home, request.replica_id)
        return handle

    async def remove_leftovers(self) -> int:
        n = await remove_labelled(self.docker, self.home, "replica")
        if n:
            log.warning("removed %d replica container(s) left by an earlier run of this daemon", n)
        return n

    async def close(self) -> None:
        # Replicas were stopped by the autoscaler; anything left is a straggler.
        with contextlib.suppress(DockerError, Exception):
            await remove_labelled(self.docker, self.home, "replica")
