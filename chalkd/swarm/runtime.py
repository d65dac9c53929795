"""The Swarm runtime: each replica is a Swarm service of one task; Swarm decides where, chalkd how many.

    runtime = SwarmRuntime(home, docker=manager, builder=builder, blobs=blobs, volumes=volumes,
                           target="10.0.0.5:50051", ca_pem=tls.ca_pem, shipper=ImageShipper(...),
                           instance_id=server.instance_id)
    await runtime.setup()                    # checks the engine is a manager; network, CA secret, leftovers
    await runtime.prepare(function_id, spec) # builds on the manager's engine, ships the image to the nodes
    handle = await runtime.start(ReplicaRequest(...))

What a replica gets (see :mod:`chalkd.swarm.spec` for the service itself):

* the worker dials chalkd at ``--advertise-addr`` over TLS, checking chalkd's certificate against chalkd's
  own CA (the Swarm secret ``/run/secrets/chalkd-ca.pem``), and authenticates with its own scoped key (the
  Swarm secret ``/run/secrets/chalkd-replica-key``, made for this replica alone and removed with it);
* an attachable overlay network of this home (``chalkd-<hash>``), whose ``docker_gwbridge`` takes it to the
  daemon's address; its CPU and memory reserved and limited; its GPUs, handed out by chalkd from what the nodes
  advertise (:mod:`chalkd.swarm.gpus`), with a constraint to their node;
* the image built on the manager's engine from the function's Image, with its lazy local files baked in (a
  node elsewhere has no copy of the daemon's blob store), shipped by :class:`~chalkd.swarm.images.ImageShipper`;
* when it mounts volumes: the volumes' directories, and a constraint to the daemon's node, where they live.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from chalkd.images.blobs import DEFAULT_MODE, BlobError, BlobStore
from chalkd.images.docker_build import DockerImageBuilder, ImageBuildError
from chalkd.logs.replica_file import ReplicaLogFile
from chalkd.model import ReplicaExit
from chalkd.runtime.base import ReplicaHandle, ReplicaRequest, ReplicaStartError, Runtime, RuntimeUnsupported
from chalkd.runtime.docker import (
    LABEL_HOME,
    LABEL_KIND,
    LABEL_OWNER,
    MountError,
    check_function,
    home_label,
    volume_mounts,
)
from chalkd.runtime.image_user import ImageUserError, image_user
from chalkd.runtime.keys import KEY_FILE_ENV
from chalkd.specs import FunctionSpec, ImageSpec, ImageStep
from chalkd.swarm.gpus import ClusterGpuAllocator
from chalkd.swarm.images import ImageShipper, ShipError, Shipped
from chalkd.swarm.spec import CA_FILE, KEY_FILE, SecretFile, ServiceRequest, service_spec, template_literal
from chalkd.swarm.watch import TaskState, TaskWatcher

log = logging.getLogger(__name__)

__all__ = ["SwarmRuntime", "SwarmReplica", "SwarmError", "bake_lazy_files", "home_hash"]

ENGINE_TIMEOUT = 30.0
# What an engine that is gone looks like through aiodocker: a refused or reset socket, a timeout, or (once the
# client is closed during shutdown) RuntimeError("Session is closed").
UNREACHABLE = (TimeoutError, OSError, aiohttp.ClientError, RuntimeError)


def _unreachable(exc: BaseException) -> bool:
    """aiodocker reports a refused socket as DockerError 900; a manager without quorum answers 503."""
    return isinstance(exc, UNREACHABLE) or (isinstance(exc, DockerError) and exc.status in (900, 503))
LABEL_REPLICA = "dev.chalkd.replica"
LABEL_FUNCTION = "dev.chalkd.function"


async def delete_when_free(delete: Callable[[], Awaitable[object]], *, tries: int, interval: float = 0.5) -> bool:
    """Call ``delete`` until it works or says the object is gone (404), at most ``tries`` times: a secret or
    network still held by a task that is stopping is refused until the task is gone. False when it never
    went (left for the next start's leftover sweep) or the manager cannot be reached."""
    for _ in range(tries):
        try:
            await asyncio.wait_for(delete(), ENGINE_TIMEOUT)
            return True
        except (DockerError, *UNREACHABLE) as exc:
            if isinstance(exc, DockerError) and exc.status == 404:
                return True
            if _unreachable(exc):
                return False
        await asyncio.sleep(interval)
    return False


class SwarmError(Exception):
    """The engine is not a usable swarm manager (the message says why and what to run)."""


def home_hash(home: Path) -> str:
    """Eight hex characters naming this home's networks, services and secrets in a swarm shared by several."""
    return hashlib.sha256(home_label(home).encode()).hexdigest()[:8]


def bake_lazy_files(image: ImageSpec, blobs: BlobStore) -> ImageSpec:
    """``image`` with each lazy local file as a ``copy_file`` step (its bytes from the blob store), so the built
    image carries them to any node. Raises BlobError for a file whose blob was never uploaded."""
    if not any(s.kind == "lazy_file" for s in image.steps):
        return image
    steps = []
    for s in image.steps:
        if s.kind == "lazy_file":
            path = blobs.path(s.digest)
            if not path.is_file():
                raise BlobError(f"the local file {s.path} was never uploaded (blob {s.digest[:12]}…)")
            steps.append(ImageStep("copy_file", path=s.path, content=path.read_bytes(), mode=s.mode or DEFAULT_MODE,
                                   source=s.source))
        else:
            steps.append(s)
    return dataclasses.replace(image, steps=tuple(steps), content_hash="")


class SwarmReplica(ReplicaHandle):
    """One replica: its service, followed by the runtime's :class:`TaskWatcher`."""

    def __init__(self, runtime: SwarmRuntime, request: ReplicaRequest, service_id: str, secret_id: str) -> None:
        self.runtime = runtime
        self.request = request
        self.service_id = service_id
        self.secret_id = secret_id
        self.state = TaskState()
        self._exit: asyncio.Future[ReplicaExit] = asyncio.get_running_loop().create_future()
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._follower: asyncio.Task | None = None
        self._removed = False       # chalkd removed the service itself (kill): its end is not a surprise
        self.chosen_node = ""       # the node chalkd pinned it to, to keep a function's replicas apart
        self._scaled_down = False

    @property
    def node(self) -> str:
        return self.state.node_name

    def on_state(self, state: TaskState) -> None:
        before, self.state = self.state, state
        if state.node_name and state.node_name != before.node_name:
            log.info("replica %s of %s placed on node %s", self.request.replica_id,
                     self.request.function_name, state.node_name)
        if state.state == "running" and self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow_logs())
        if state.ended and not self._exit.done():
            self._exit.set_result(self._exit_of(state))

    def _exit_of(self, state: TaskState) -> ReplicaExit:
        if state.state == "gone" and self._removed:
            return ReplicaExit(signal=9)
        if state.state in ("lost", "gone"):
            return ReplicaExit(reason=state.message)
        code = state.exit_code
        if state.state == "rejected" or code is None:
            return ReplicaExit(code=-1, reason=state.message or f"its task ended {state.state}")
        if code > 128:
            return ReplicaExit(signal=code - 128)
        reason = state.message if code and state.state == "failed" else ""
        return ReplicaExit(code=code, reason=reason)

    async def _follow_logs(self) -> None:
        path = self.runtime.logs / f"{self.request.replica_id}.log"
        with contextlib.suppress(DockerError, asyncio.CancelledError, Exception):
            with ReplicaLogFile(path) as out:
                logs = self.runtime.docker.services.logs(self.service_id, stdout=True, stderr=True, follow=True)
                async for line in logs:  # type: ignore[union-attr]
                    out.write((line if line.endswith("\n") else line + "\n").encode(errors="replace"))
                    self._tail.append(line.rstrip("\n"))

    async def wait(self) -> ReplicaExit:
        try:
            exit = await self._exit
        finally:
            self.runtime.watcher.untrack(self.service_id)
            if self._follower is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._follower), 1.0)
                except (TimeoutError, Exception):
                    self._follower.cancel()
            # In the background: a secret in use is removable only once the task is gone, moments later.
            self._spawn(self.runtime.remove_service(self.service_id, self.secret_id))
        if self.state.state == "lost":
            log.warning("replica %s of %s was on node %s, which is down", self.request.replica_id,
                        self.request.function_name, self.state.node_name)
        return exit

    def terminate(self) -> None:
        """SIGTERM to the worker (it leaves once its calls are done), SIGKILL ten seconds later: the service
        is scaled to zero, which stops its task the way ``docker stop`` does, wherever it runs."""
        if not self._scaled_down:
            self._scaled_down = True
            self._spawn(self._given_up_unless(self.runtime.scale_to_zero(self.service_id)))

    def kill(self) -> None:
        """The service is removed (its container stopped wherever its node still answers). Swarm cannot
        signal a task, so this is a stop with the short grace of :data:`chalkd.swarm.spec.STOP_GRACE_NS`."""
        if not self._removed:
            self._removed = True
            self._spawn(self._given_up_unless(self.runtime.remove_service(self.service_id, self.secret_id)))

    async def _given_up_unless(self, stopping) -> None:
        """Await a stop; when the manager cannot be reached, the replica ends now (its calls run again elsewhere)
        rather than wait for a task state nobody will report (a daemon stopping with its manager gone)."""
        if not await stopping and not self._exit.done():
            self._exit.set_result(ReplicaExit(reason=f"the swarm manager cannot be reached to stop it; its "
                                                     f"container may still run on {self.node or 'its node'}"))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.runtime._background.add(task)
        task.add_done_callback(self.runtime._background.discard)

    def log_tail(self, lines: int = 30) -> str:
        tail = list(self._tail)[-lines:]
        if self.state.message and self.state.state not in ("running", "complete"):
            tail.append(f"[swarm] task {self.state.state}: {self.state.message}")
        return "\n".join(tail)


class SwarmRuntime(Runtime):
    name = "swarm"
    places_replicas = True   # Swarm places replicas by their reservations: the autoscaler reserves nothing here

    def __init__(self, home: Path, *, docker: aiodocker.Docker, builder: DockerImageBuilder, blobs: BlobStore,
                 target: str, ca_pem: bytes, shipper: ImageShipper, instance_id: str, volumes=None,
                 pids_limit: int = 4096) -> None:
        self.home = Path(home)
        self.docker = docker
        self.builder = builder
        self.blobs = blobs
        self.volumes = volumes
        self.target = target                 # host:port of the TLS worker listener (--advertise-addr)
        self.ca_pem = ca_pem
        self.shipper = shipper
        self.instance_id = instance_id
        self.pids_limit = pids_limit
        self.label = home_label(self.home)
        self.hh = home_hash(self.home)
        self.network_name = f"chalkd-{self.hh}"
        self.network_id = ""
        self.ca_secret: SecretFile | None = None
        self.daemon_node = ""
        self.daemon_node_name = ""
        self.images: dict[str, Shipped] = {}
        self.replicas: dict[str, SwarmReplica] = {}   # by replica id, while their service exists
        self.gpus = ClusterGpuAllocator()   # the autoscaler's allocator on this runtime (chalkd.swarm.gpus)
        self.watcher = TaskWatcher(docker, self.label, on_nodes=self.gpus.update)
        self.logs = self.home / "logs" / "replicas"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._background: set[asyncio.Task] = set()
        self._choosing: dict[str, tuple[str, str]] = {}   # replica id -> (function id, node) while being created

    # -- start and stop ---------------------------------------------------------------------------

    async def setup(self) -> None:
        """Check the engine is a swarm manager; make the network and the CA secret; remove what an earlier run
        of this home left (its calls were re-queued by queue recovery). Raises SwarmError."""
        try:
            info = await asyncio.wait_for(self.docker.system.info(), ENGINE_TIMEOUT)
        except (DockerError, TimeoutError, OSError) as exc:
            raise SwarmError(f"no Docker engine answers at --engine ({exc})") from None
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active":
            raise SwarmError("--runtime swarm: this engine is not part of a swarm (run `docker swarm init "
                             "--advertise-addr ADDR` on it first, then `docker swarm join` on the other nodes)")
        if not swarm.get("ControlAvailable"):
            raise SwarmError("--runtime swarm: this engine is a swarm worker, not a manager; point --engine at a "
                             "manager's engine (`docker node ls` works there)")
        self.daemon_node = swarm.get("NodeID", "")
        self.daemon_node_name = info.get("Name", self.daemon_node[:12])
        self.shipper.daemon_node = self.gpus.daemon_node = self.daemon_node
        try:
            nodes = await asyncio.wait_for(self.docker._query_json("nodes"), ENGINE_TIMEOUT)
            self.gpus.update(nodes)
            self.watcher.nodes = {n["ID"]: n for n in nodes}  # known before the first poll
        except (DockerError, TimeoutError) as exc:
            raise SwarmError(f"cannot list the swarm's nodes: {exc}") from None
        await self.remove_leftovers()
        self.network_id = await self._ensure_network()
        self.ca_secret = await self._ensure_ca_secret()
        await self.watcher.start()
        log.info("swarm runtime: daemon node %s, workers dial %s over TLS, %s", self.daemon_node_name, self.target,
                 self.shipper.describe())

    async def _ensure_network(self) -> str:
        labels = {LABEL_HOME: self.label, LABEL_OWNER: "chalkd"}
        try:
            return (await self.docker.networks.get(self.network_name)).id
        except DockerError:
            pass
        try:
            net = await self.docker.networks.create({
                "Name": self.network_name, "Driver": "overlay", "Attachable": True, "CheckDuplicate": True,
                "Labels": labels})
            return net.id
        except DockerError as exc:
            if exc.status == 409:
                return (await self.docker.networks.get(self.network_name)).id
            raise SwarmError(f"cannot create the overlay network {self.network_name}: {exc.message}") from None

    async def _ensure_ca_secret(self) -> SecretFile:
        fingerprint = hashlib.sha256(self.ca_pem).hexdigest()[:12]
        name = f"chalkd-{self.hh}-ca-{fingerprint}"
        found = await self.docker.secrets.list(filters={"name": [name]})
        for s in found:
            if s["Spec"]["Name"] == name:
                return SecretFile(s["ID"], name, CA_FILE)
        created = await self.docker.secrets.create(
            name=name, data=self.ca_pem.decode(), b64=False,
            labels={LABEL_HOME: self.label, LABEL_KIND: "ca", LABEL_OWNER: "chalkd"})
        return SecretFile(created["ID"], name, CA_FILE)

    async def remove_leftovers(self) -> int:
        """Remove this home's replica services and key secrets (never another home's)."""
        filters = {"label": [f"{LABEL_HOME}={self.label}", f"{LABEL_KIND}=replica"]}
        services = await self.docker.services.list(filters=filters)
        for s in services:
            with contextlib.suppress(DockerError):
                await self.docker.services.delete(s["ID"])
        secrets = await self.docker.secrets.list(
            filters={"label": [f"{LABEL_HOME}={self.label}", f"{LABEL_KIND}=replica-key"]})
        for s in secrets:
            with contextlib.suppress(DockerError):
                await self.docker.secrets.delete(s["ID"])
        if services:
            log.warning("removed %d replica service(s) left by an earlier run of this daemon", len(services))
        return len(services)

    async def close(self) -> None:
        await self.watcher.close()
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        with contextlib.suppress(Exception):
            await self.remove_leftovers()
        await self.shipper.close()

    # -- functions --------------------------------------------------------------------------------

    def check(self, spec: FunctionSpec) -> None:
        check_function(spec, self.volumes)
        node = spec.resources.node
        if spec.volumes and node and self.daemon_node_name and node != self.daemon_node_name:
            raise RuntimeUnsupported(f"function {spec.name!r} mounts volumes, which live on the daemon's node "
                                     f"{self.daemon_node_name}, so it cannot run on node={node!r}")

    async def prepare(self, function_id: str, spec: FunctionSpec) -> None:
        try:
            image = await asyncio.to_thread(bake_lazy_files, spec.image, self.blobs)
            built = await self.builder.build(image)
        except ImageBuildError as exc:
            raise ReplicaStartError(f"image build failed: {exc}") from None
        except BlobError as exc:
            raise ReplicaStartError(str(exc)) from None
        try:
            self.images[function_id] = await self.shipper.ship(built.tag, built.image_id)
        except ShipError as exc:
            raise ReplicaStartError(str(exc), build_failed=False) from None

    def pending_reason(self, function_id: str) -> str:
        """Why a starting replica of ``function_id`` is not running yet, in Swarm's words ("" when none waits)."""
        for r in self.replicas.values():
            if r.request.function_id == function_id and r.state.state in ("new", "pending", "assigned") \
                    and r.state.message:
                where = (f"it mounts volumes, so it runs on the daemon's node {self.daemon_node_name} only; "
                         if r.request.spec.volumes else "")
                return f"Swarm has not placed replica {r.request.replica_id}: {where}{r.state.message}"
        return ""

    async def start(self, request: ReplicaRequest) -> ReplicaHandle:
        shipped = self.images.get(request.function_id)
        if shipped is None:
            await self.prepare(request.function_id, request.spec)
            shipped = self.images[request.function_id]
        assert self.ca_secret is not None, "setup() first"
        fs = request.spec
        # Swarm expands templates in Env: the function's own values are escaped, ours use one on purpose.
        env = {**{k: template_literal(v) for k, v in {**fs.env, **request.env}.items()},
               "CHALK_WORKER_TARGET": self.target,
               "CHALK_COMPUTE_TARGET": self.target,
               "CHALK_COMPUTE_TLS": CA_FILE,            # the worker checks chalkd's certificate against this CA
               "CHALK_DAEMON_INSTANCE": self.instance_id,
               "CHALK_REPLICA_ID": request.replica_id,
               KEY_FILE_ENV: KEY_FILE,                  # the key by path: a Swarm secret, never in Env
               "CHALK_FUNCTION_KIND": fs.kind,
               "CHALK_NODE": "{{.Node.Hostname}}",    # a Swarm template: the node the task runs on
               "PYTHONUNBUFFERED": "1"}
        constraints = [f"node.id!={n}" for n in shipped.excluded]
        binds: list[tuple[str, str]] = []
        if fs.volumes:
            # Volumes live in the daemon's home, on the daemon's node: the replica runs there.
            constraints = [f"node.id=={self.daemon_node}"]
            try:
                # As on the Docker runtime: the image's USER gets the volumes' files (it has no capabilities).
                owner = await image_user(self.docker, shipped.image)
                binds = await asyncio.to_thread(volume_mounts, self.volumes, fs.volumes, owner)
            except (ImageUserError, DockerError, MountError, ValueError, OSError) as exc:
                raise ReplicaStartError(str(exc), build_failed=False) from None
        chosen = ""
        if not (fs.volumes or fs.resources.node or fs.resources.node_labels or fs.resources.gpu
                or request.cpu_millis or request.memory_bytes):
            chosen = self.spread(self.sibling_nodes(request.function_id), shipped.excluded)
            if chosen:
                constraints.append(f"node.id=={chosen}")
                self._choosing[request.replica_id] = (request.function_id, chosen)  # until its handle exists
        try:
            return await self._create(request, shipped, env, constraints, binds, chosen)
        finally:
            self._choosing.pop(request.replica_id, None)

    async def _create(self, request: ReplicaRequest, shipped: Shipped, env: dict[str, str], constraints: list[str],
                      binds: list[tuple[str, str]], chosen: str) -> ReplicaHandle:
        fs = request.spec
        if fs.resources.node:
            constraints.append(f"node.hostname=={fs.resources.node}")
        constraints += [f"node.labels.{k}=={v}" for k, v in sorted(fs.resources.node_labels.items())]
        if fs.resources.gpu:
            # chalkd gave this replica GPUs of one node (chalkd.swarm.gpus): it runs there, and is told which.
            placed = self.gpus.node_of(request.replica_id)
            if not request.gpu_uuids or placed is None:
                raise ReplicaStartError(f"replica {request.replica_id} of {request.function_name!r} wants "
                                        f"gpu={fs.resources.gpu!r} but holds no swarm GPUs", build_failed=False)
            constraints.append(f"node.id=={placed[0]}")
            env["DOCKER_RESOURCE_GPU"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(request.gpu_uuids)
        labels = {LABEL_HOME: self.label, LABEL_KIND: "replica", LABEL_OWNER: "chalkd",
                  LABEL_FUNCTION: request.function_name, LABEL_REPLICA: request.replica_id}
        secret_name = f"chalkd-{self.hh}-key-{request.replica_id}"
        try:
            secret = await self.docker.secrets.create(
                name=secret_name, data=request.token, b64=False,
                labels={LABEL_HOME: self.label, LABEL_KIND: "replica-key", LABEL_OWNER: "chalkd",
                        LABEL_REPLICA: request.replica_id})
        except DockerError as exc:
            raise ReplicaStartError(f"cannot create the Swarm secret {secret_name}: {exc.message}",
                                    build_failed=False) from None
        spec = service_spec(ServiceRequest(
            name=f"chalkd-{self.hh}-{request.replica_id}", image=shipped.image, env=env, labels=labels,
            network=self.network_id, secrets=[self.ca_secret, SecretFile(secret["ID"], secret_name, KEY_FILE)],
            cpu_millis=request.cpu_millis, memory_bytes=request.memory_bytes,
            pids_limit=self.pids_limit, constraints=tuple(constraints), binds=tuple(binds)))
        try:
            created = await asyncio.wait_for(
                self.docker._query_json("services/create", method="POST", data=spec), ENGINE_TIMEOUT)
        except (DockerError, TimeoutError) as exc:
            with contextlib.suppress(DockerError):
                await self.docker.secrets.delete(secret["ID"])
            why = exc.message if isinstance(exc, DockerError) else "the manager did not answer"
            raise ReplicaStartError(f"creating the Swarm service for replica {request.replica_id} failed: {why}",
                                    build_failed=False) from None
        handle = SwarmReplica(self, request, created["ID"], secret["ID"])
        handle.chosen_node = chosen
        self.replicas[request.replica_id] = handle
        self.watcher.track(created["ID"], handle.on_state)
        log.info("started replica %s of %s (service %s)", request.replica_id, request.function_name, spec["Name"])
        return handle

    def spread(self, sibling_nodes: list[str], excluded: tuple[str, ...] = ()) -> str:
        """The node for a new replica of a function (or group) whose replicas are on ``sibling_nodes`` (one entry
        per replica, placed or chosen): the usable node with the fewest of them, or "" to leave it to Swarm.

        Swarm spreads the tasks of one service, but each replica is a service of its own, so Swarm alone would
        pile them on the node with the fewest tasks of all kinds, and a node lost would take them all. Used only
        for replicas that reserve nothing and are pinned nowhere, for which any usable node has room.
        """
        usable = sorted(nid for nid, n in self.watcher.nodes.items()
                        if (n.get("Status") or {}).get("State") == "ready"
                        and (n.get("Spec") or {}).get("Availability", "active") == "active" and nid not in excluded)
        if len(usable) < 2:
            return ""
        return min(usable, key=lambda nid: (sibling_nodes.count(nid), usable.index(nid)))

    def sibling_nodes(self, function_id: str) -> list[str]:
        """Where ``function_id``'s live replicas are: each one's node, or the node chosen for it before Swarm
        placed it."""
        placed = [r.state.node_id or r.chosen_node for r in self.replicas.values()
                  if r.request.function_id == function_id and not r.state.ended and (r.state.node_id or r.chosen_node)]
        # Replicas being created right now (their service not there yet) count where they are going.
        return placed + [node for fid, node in self._choosing.values() if fid == function_id]

    # -- what handles ask of the engine ---------------------------------------------------------------

    async def scale_to_zero(self, service_id: str) -> bool:
        """Stop the service's task (SIGTERM, then SIGKILL after the grace). False when the manager cannot be
        reached (the task may still run; its replica is given up)."""
        try:
            current = await asyncio.wait_for(self.docker.services.inspect(service_id), ENGINE_TIMEOUT)
            spec = current["Spec"]
            spec["Mode"] = {"Replicated": {"Replicas": 0}}
            await asyncio.wait_for(self.docker._query_json(
                f"services/{service_id}/update", method="POST", params={"version": current["Version"]["Index"]},
                data=spec), ENGINE_TIMEOUT)
            return True
        except (DockerError, *UNREACHABLE) as exc:
            if _unreachable(exc):
                log.warning("cannot stop service %s: the manager's engine cannot be reached (%s)", service_id[:12],
                            exc or type(exc).__name__)
                return False
            log.warning("stopping service %s failed (%s); removing it", service_id[:12], exc)
            return await self.remove_service(service_id, "")

    async def remove_service(self, service_id: str, secret_id: str) -> bool:
        """Remove the service and the replica's key secret. False when the manager cannot be reached."""
        for replica_id, r in list(self.replicas.items()):
            if r.service_id == service_id:
                self.replicas.pop(replica_id, None)
        try:
            await asyncio.wait_for(self.docker.services.delete(service_id), ENGINE_TIMEOUT)
        except (DockerError, *UNREACHABLE) as exc:
            if _unreachable(exc):
                log.warning("cannot remove service %s: the manager's engine cannot be reached (%s)",
                            service_id[:12], exc or type(exc).__name__)
                return False
            # otherwise gone already
        if secret_id:
            # A secret in use cannot be removed: the service goes first, its task a moment later.
            await delete_when_free(lambda: self.docker.secrets.delete(secret_id), tries=20)
        return True
