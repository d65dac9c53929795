"""A scaling group's replicas on a Docker Swarm: each one a Swarm service of one task, its app's port published
in host mode on whichever node Swarm picks, so the group's proxy (in the daemon) balances across nodes.

The :class:`~chalkd.groups.manager.GroupManager` drives it as it drives the Docker launcher
(:class:`chalkd.groups.replicas.ReplicaLauncher`)::

    launcher = SwarmReplicaLauncher(runtime)                  # runtime: the daemon's SwarmRuntime, set up
    manager = GroupManager(SwarmGroupImages(runtime), launcher, table, settings=settings)
    handle = await launcher.start(launch)                     # the service exists; Swarm places its task
    host, port = await launcher.endpoint(handle, 8080)        # ("10.0.0.12", 30123): its node, the published port
    why = await launcher.wait(handle)                         # "its node swnode2 is down", "the app exited with code 1"
    await launcher.stop(handle, launch.replica_id, grace=10)

What each replica gets, and why:

* **the image** built on the manager's engine with its lazy local files baked in (a node elsewhere has no copy
  of the daemon's blob store), shipped to the nodes as functions' images are (:class:`SwarmGroupImages`);
  nodes the image cannot reach are left out of its placement;
* **chalkd's agent as its main process** with ``--exit-with-main``, as on the Docker runtime: the task ends
  with the app's exit code and its last lines are the replica's log;
* **its secrets as a Swarm secret**, a JSON file at :data:`ENV_FILE` the agent adds to the app's environment
  (``--env-file``) before the app starts: a node elsewhere has no agent socket to send them over, and a
  Swarm secret is never in ``Env`` nor in ``docker service inspect`` (its data cannot be read back at all);
  made for this replica alone and removed with it;
* **a network of its group alone**, an overlay ``chalkd-<home hash>-g-<group id>``: host-mode publishing
  needs a bridge on the node (the overlay's ``docker_gwbridge``, whose inter-container traffic is off),
  and a replica reaches no other group's replica over it;
* **its port published in host mode** on a free port of its node (no routing mesh: it needs IPVS); the
  proxy dials ``node address:published port``. That port is open to whoever reaches the node's address
  (as any ``docker run -p``): keep the nodes' addresses on a private network, or firewall them to the
  daemon's host. ``authenticated=True`` is refused on a swarm for that reason (the proxy's token check could
  be bypassed at the node);
* **placement** by Swarm: CPU and memory reserved (and limited; the manager reserves nothing on the
  daemon's host for it: ``places_replicas``), ``node=``/``node_labels=`` as constraints; a group that mounts
  volumes runs on the daemon's node, where they live. GPUs are handed out by chalkd from what the nodes
  advertise (:mod:`chalkd.swarm.gpus`, as for functions): the replica is pinned to its GPUs' node.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork

from chalkcompute.agent import entrypoint as agent_entrypoint
from chalkd.groups.replicas import KIND, LaunchFailed, ReplicaLaunch
from chalkd.images.blobs import BlobError
from chalkd.images.docker_build import BuiltImage, ImageBuildError
from chalkd.runtime.docker import LABEL_HOME, LABEL_KIND, LABEL_OWNER, MountError, volume_mounts
from chalkd.swarm.images import ShipError
from chalkd.swarm.runtime import delete_when_free
from chalkd.swarm.spec import SecretFile, ServiceRequest, service_spec, template_literal
from chalkd.swarm.watch import TaskState

if TYPE_CHECKING:
    from chalkd.swarm.runtime import SwarmRuntime

log = logging.getLogger(__name__)

__all__ = ["SwarmReplicaLauncher", "SwarmGroupImages", "SwarmGroupReplica", "group_service_spec", "ENV_FILE",
           "AGENT_SOCKET", "NETWORK_KIND", "ENV_KIND"]

ENV_FILE = "/run/secrets/chalkd-group-env"
AGENT_SOCKET = "/tmp/chalk-agent.sock"   # inside the task only: nothing dials it from outside on a swarm
NETWORK_KIND = "group-network"
ENV_KIND = "group-env"
ENGINE_TIMEOUT = 30.0
START_TIMEOUT = 300.0     # placed and running (the image pulled or loaded, a node with room found) within this
TAIL_LINES = 2000         # kept per replica: `chalkd groups logs` reads them even after its node is gone
LABEL_GROUP = "dev.chalkd.group"
LABEL_REPLICA = "dev.chalkd.replica"
LABEL_REVISION = "dev.chalkd.revision"
LABEL_FUNCTION = "dev.chalkd.function"


def group_service_spec(launch: ReplicaLaunch, *, image: str, home_label: str, home_hash: str, network: str,
                       env_secret: SecretFile | None = None, excluded: tuple[str, ...] = (), daemon_node: str = "",
                       gpu_node: str = "", binds: tuple[tuple[str, str], ...] = (), pids_limit: int = 4096,
                       stop_grace: float = 10.0) -> dict:
    """The body of ``POST /services/create`` for one group replica (pure: checked without an engine).

        spec = group_service_spec(launch, image="chalkd-img:ab12", home_label="/srv/chalkd", home_hash="1a2b3c4d",
                                  network="netid")
        spec["EndpointSpec"]   # {"Mode": "dnsrr", "Ports": [{"TargetPort": 8080, "PublishMode": "host", ...}]}

    ``gpu_node``: the node id of the GPUs chalkd gave the replica (``launch.gpu_uuids``; see
    :mod:`chalkd.swarm.gpus`). Raises LaunchFailed when the group has no command to run, or wants GPUs or
    volumes and is not told where they are.
    """
    spec = launch.spec
    app = list(spec.entrypoint) or list(launch.image_command)
    if not app:
        raise LaunchFailed(f"group {launch.group_name!r} has no command to run: give entrypoint= or an image "
                           "with an entrypoint (Image.entrypoint([...]))")
    res = spec.resources
    constraints = [f"node.id!={n}" for n in excluded]
    if spec.volumes:
        if not daemon_node:
            raise LaunchFailed("the daemon's swarm node is not known: a group with volumes cannot be placed")
        constraints = [f"node.id=={daemon_node}"]   # volumes live in the daemon's home, on its node
    if res.node:
        constraints.append(f"node.hostname=={res.node}")
    constraints += [f"node.labels.{k}=={v}" for k, v in sorted(res.node_labels.items())]
    gpu_env = {}
    if res.gpu:
        # chalkd gave this replica GPUs of one node: it runs there and is told which (the NVIDIA runtime reads
        # DOCKER_RESOURCE_GPU with swarm-resource set, NVIDIA_VISIBLE_DEVICES without).
        if not gpu_node or not launch.gpu_uuids:
            raise LaunchFailed(f"replica {launch.replica_id} wants gpu={res.gpu!r} but holds no swarm GPUs")
        constraints.append(f"node.id=={gpu_node}")
        gpu_env = {"DOCKER_RESOURCE_GPU": ",".join(launch.gpu_uuids),
                   "NVIDIA_VISIBLE_DEVICES": ",".join(launch.gpu_uuids)}
    agent = agent_entrypoint(AGENT_SOCKET, extra=("--exit-with-main",
                                                  *(("--env-file", ENV_FILE) if env_secret else ())))
    # Swarm expands templates in Env: the group's own values are escaped; CHALK_NODE uses one on purpose.
    env = {"PORT": str(spec.port), **{k: template_literal(v) for k, v in spec.env.items()}, **gpu_env,
           "CHALK_NODE": "{{.Node.Hostname}}"}
    # dev.chalkd.function names the group: `chalkd nodes` lists each node's replicas by it (chalkd.swarm.nodes).
    labels = {LABEL_HOME: home_label, LABEL_KIND: KIND, LABEL_OWNER: "chalkd", LABEL_GROUP: launch.group_id,
              LABEL_FUNCTION: launch.group_name, LABEL_REPLICA: launch.replica_id,
              LABEL_REVISION: str(launch.revision)}
    body = service_spec(ServiceRequest(
        name=f"chalkd-{home_hash}-{launch.replica_id}", image=image, env=env, labels=labels, network=network,
        secrets=[env_secret] if env_secret else [], command=(*agent, *app), cpu_millis=res.cpu_millis,
        memory_bytes=res.memory_bytes, pids_limit=pids_limit, constraints=tuple(constraints),
        binds=binds, publish=(spec.port,)))
    container = body["TaskTemplate"]["ContainerSpec"]
    container["StopGracePeriod"] = int(max(1.0, stop_grace) * 1e9)
    if spec.port < 1024:
        container["CapabilityAdd"] = ["CAP_NET_BIND_SERVICE"]  # the app listens on a low port
    return body


def ended_words(state: TaskState) -> str:
    """How a replica's task ended, in words for the group's status and log.

    >>> ended_words(TaskState("lost", node_name="swnode2", message="its node swnode2 is down", ended=True))
    'its node swnode2 is down'
    """
    if state.state in ("lost", "gone"):
        return state.message or f"its task is {state.state}"
    if state.state == "rejected":
        return f"Swarm could not start it: {state.message}"
    if state.exit_code is not None and state.state in ("complete", "failed"):
        return f"the app exited with code {state.exit_code}"
    return f"its task ended {state.state}" + (f": {state.message}" if state.message else "")


@dataclass(eq=False)
class SwarmGroupReplica:
    """One replica's service, followed by the runtime's task watcher (what the manager keeps as ``engine``)."""

    launch: ReplicaLaunch
    service_id: str
    secret_id: str = ""
    state: TaskState = field(default_factory=TaskState)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    running: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ended: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    follower: asyncio.Task | None = None
    removed: bool = False
    chosen_node: str = ""   # the node chalkd pinned it to, to keep a group's replicas apart (SwarmRuntime.spread)

    @property
    def node(self) -> str:
        return self.state.node_name


class SwarmGroupImages:
    """The GroupManager's builder on a swarm: bakes the lazy files in, builds on the manager's engine, ships
    the image to the nodes; the built image's tag is the reference the nodes run (a registry's, with one)."""

    def __init__(self, runtime: SwarmRuntime) -> None:
        self.runtime = runtime
        self.excluded: dict[str, tuple[str, ...]] = {}   # image reference -> node ids it could not reach

    async def build(self, image: Any, log: Any = None) -> BuiltImage:
        from chalkd.swarm.runtime import bake_lazy_files

        rt = self.runtime
        try:
            baked = await asyncio.to_thread(bake_lazy_files, image, rt.blobs)
        except BlobError as exc:
            raise ImageBuildError(str(exc)) from None
        built = await rt.builder.build(baked, log)
        try:
            shipped = await rt.shipper.ship(built.tag, built.image_id)
        except ShipError as exc:
            raise ImageBuildError(f"the image was built but could not reach the nodes: {exc}") from None
        self.excluded[shipped.image] = shipped.excluded
        return dataclasses.replace(built, tag=shipped.image)


class SwarmReplicaLauncher:
    """Group replicas as one-task Swarm services; the interface of :class:`chalkd.groups.replicas.ReplicaLauncher`."""

    places_replicas = True   # Swarm places by reservations over its nodes: the manager reserves nothing here

    def __init__(self, runtime: SwarmRuntime, images: SwarmGroupImages | None = None, *, volumes: Any = None,
                 pids_limit: int = 4096, stop_grace: float = 10.0, start_timeout: float = START_TIMEOUT) -> None:
        self.runtime = runtime
        self.docker = runtime.docker
        self.images = images
        self.volumes = volumes
        self.pids_limit = pids_limit
        self.stop_grace = stop_grace
        self._live: dict[str, SwarmGroupReplica] = {}   # by service id, until their task ends
        self._choosing: dict[str, tuple[str, str]] = {}  # replica id -> (group id, node) while being created
        self.start_timeout = start_timeout
        self.networks: dict[str, str] = {}     # group id -> its overlay network's id
        self._network_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self._warned: set[str] = set()          # groups told once that their nodes' ports bypass the proxy

    # -- networks -----------------------------------------------------------------------------

    def network_name(self, group_id: str) -> str:
        return f"chalkd-{self.runtime.hh}-g-{group_id}"

    async def ensure_network(self, group_id: str) -> str:
        """The group's own overlay network (made once; kept until the daemon stops)."""
        async with self._network_lock:
            if group_id in self.networks:
                return self.networks[group_id]
            name = self.network_name(group_id)
            try:
                net = await asyncio.wait_for(self.docker.networks.create({
                    "Name": name, "Driver": "overlay", "CheckDuplicate": True,
                    "Labels": {LABEL_HOME: self.runtime.label, LABEL_KIND: NETWORK_KIND, LABEL_OWNER: "chalkd",
                               LABEL_GROUP: group_id}}), ENGINE_TIMEOUT)
                net_id = net.id
            except DockerError as exc:
                if exc.status != 409:
                    raise LaunchFailed(f"the manager would not create the group's network {name}: "
                                       f"{exc.message}") from None
                net_id = (await self.docker.networks.get(name)).id
            except TimeoutError:
                raise LaunchFailed(f"creating the network {name}: the manager did not answer") from None
            self.networks[group_id] = net_id
            return net_id

    # -- one replica ----------------------------------------------------------------------------

    async def start(self, launch: ReplicaLaunch) -> SwarmGroupReplica:
        """Create the replica's service (and its secret); returns once the manager accepted it. Where it runs
        and when is Swarm's: :meth:`endpoint` waits for that."""
        rt = self.runtime
        spec = launch.spec
        binds: tuple[tuple[str, str], ...] = ()
        if spec.volumes:
            try:
                owner = None
                if self.volumes is not None:
                    from chalkd.runtime.image_user import image_user

                    owner = await image_user(self.docker, launch.image_tag)
                binds = tuple(await asyncio.to_thread(volume_mounts, self.volumes, spec.volumes, owner))
            except (MountError, ValueError, OSError, DockerError) as exc:
                raise LaunchFailed(str(exc)) from None
        if launch.group_id not in self._warned:
            self._warned.add(launch.group_id)
            log.warning("scaling group %s: on a swarm each replica's port is published on its node, open to "
                        "whoever reaches the node's address, not only through chalkd's proxy: keep the nodes on a "
                        "private network or firewall them to this host", launch.group_name)
        network = await self.ensure_network(launch.group_id)
        env_secret = await self._env_secret(launch) if launch.secret_env else None
        excluded = self.images.excluded.get(launch.image_tag, ()) if self.images is not None else ()
        chosen = ""
        res = spec.resources
        if not (spec.volumes or res.node or res.node_labels or res.gpu or res.cpu_millis or res.memory_bytes):
            # The group's replicas apart, one node lost takes one (see SwarmRuntime.spread).
            siblings = [h.state.node_id or h.chosen_node for h in self._live.values()
                        if h.launch.group_id == launch.group_id and not h.state.ended
                        and (h.state.node_id or h.chosen_node)]
            # Replicas being created right now (no service yet) count where they are going.
            siblings += [node for gid, node in self._choosing.values() if gid == launch.group_id]
            chosen = rt.spread(siblings, excluded)
            if chosen:
                excluded = (*excluded, *(nid for nid in rt.watcher.nodes if nid != chosen))
                self._choosing[launch.replica_id] = (launch.group_id, chosen)  # until it is in _live
        try:
            return await self._create(launch, network, env_secret, excluded, chosen, binds)
        finally:
            self._choosing.pop(launch.replica_id, None)

    async def _create(self, launch: ReplicaLaunch, network: str, env_secret: SecretFile | None,
                      excluded: tuple[str, ...], chosen: str, binds: tuple[tuple[str, str], ...]) -> SwarmGroupReplica:
        rt = self.runtime
        gpus = getattr(rt, "gpus", None)   # chalkd.swarm.gpus.ClusterGpuAllocator: who holds which node's GPUs
        held = gpus.node_of(launch.replica_id) if gpus is not None and launch.gpu_uuids else None
        try:
            body = group_service_spec(launch, image=launch.image_tag, home_label=rt.label, home_hash=rt.hh,
                                      network=network, env_secret=env_secret, excluded=excluded,
                                      daemon_node=rt.daemon_node, gpu_node=held[0] if held else "", binds=binds,
                                      pids_limit=self.pids_limit,
                                      stop_grace=self.stop_grace)
            created = await asyncio.wait_for(
                self.docker._query_json("services/create", method="POST", data=body), ENGINE_TIMEOUT)
        except (LaunchFailed, DockerError, TimeoutError) as exc:
            if env_secret is not None:
                self._spawn(self._delete_secret(env_secret.secret_id))
            if isinstance(exc, LaunchFailed):
                raise
            why = exc.message if isinstance(exc, DockerError) else "the manager did not answer"
            raise LaunchFailed(f"creating the Swarm service of replica {launch.replica_id} failed: {why}") from None
        handle = SwarmGroupReplica(launch, created["ID"], env_secret.secret_id if env_secret else "")
        handle.chosen_node = chosen
        self._live[handle.service_id] = handle
        rt.watcher.track(handle.service_id, lambda state: self._on_state(handle, state))
        log.info("scaling group %s: replica %s is service %s", launch.group_name, launch.replica_id, body["Name"])
        return handle

    async def _env_secret(self, launch: ReplicaLaunch) -> SecretFile:
        rt = self.runtime
        name = f"chalkd-{rt.hh}-genv-{launch.replica_id}"
        try:
            secret = await asyncio.wait_for(self.docker.secrets.create(
                name=name, data=json.dumps(launch.secret_env), b64=False,
                labels={LABEL_HOME: rt.label, LABEL_KIND: ENV_KIND, LABEL_OWNER: "chalkd",
                        LABEL_GROUP: launch.group_id, LABEL_REPLICA: launch.replica_id}), ENGINE_TIMEOUT)
        except DockerError as exc:
            raise LaunchFailed(f"cannot create the Swarm secret {name}: {exc.message}") from None
        except TimeoutError:
            raise LaunchFailed(f"creating the Swarm secret {name}: the manager did not answer") from None
        return SecretFile(secret["ID"], name, ENV_FILE)

    def _on_state(self, handle: SwarmGroupReplica, state: TaskState) -> None:
        before, handle.state = handle.state, state
        if state.node_name and state.node_name != before.node_name:
            log.info("scaling group %s: replica %s placed on node %s", handle.launch.group_name,
                     handle.launch.replica_id, state.node_name)
        if state.state == "running" and handle.follower is None and not handle.removed:
            handle.follower = asyncio.get_running_loop().create_task(self._follow_logs(handle))
        if state.state == "running" and state.ports and not handle.running.done():
            handle.running.set_result(state)
        if state.ended:
            self._live.pop(handle.service_id, None)
            words = ended_words(state)
            if not handle.running.done():
                handle.running.set_exception(LaunchFailed(f"the replica did not start: {words}"))
                handle.running.exception()  # retrieved here: endpoint() may never be awaited
            if not handle.ended.done():
                handle.ended.set_result(words)

    async def _follow_logs(self, handle: SwarmGroupReplica) -> None:
        with contextlib.suppress(DockerError, asyncio.CancelledError, Exception):
            lines = self.docker.services.logs(handle.service_id, stdout=True, stderr=True, follow=True)
            async for line in lines:  # type: ignore[union-attr]
                handle.tail.append(line.rstrip("\n"))

    def _node_address(self, state: TaskState) -> str:
        addr = state.node_addr
        if addr and addr != "0.0.0.0":
            return addr
        # A manager may report Status.Addr 0.0.0.0; its ManagerStatus.Addr ("ip:2377") is the real one.
        node = self.runtime.watcher.nodes.get(state.node_id) or {}
        manager = ((node.get("ManagerStatus") or {}).get("Addr") or "").rpartition(":")[0]
        return manager.strip("[]")

    async def endpoint(self, handle: SwarmGroupReplica, port: int) -> tuple[str, int]:
        """``(node address, published port)`` of the replica's app, once Swarm runs its task. While Swarm finds
        no node with room it waits (as replicas wait for resources on the Docker runtime; :meth:`waiting`
        says why); LaunchFailed when the task ends first, or is placed but not running (its image pulled or
        loaded, its container started) within ``start_timeout``."""
        spent = 0.0
        while True:
            try:
                state: TaskState = await asyncio.wait_for(asyncio.shield(handle.running), 1.0)
                break
            except TimeoutError:
                if handle.state.state not in ("new", "pending"):
                    spent += 1.0
                if spent >= self.start_timeout:
                    said = handle.state.message or handle.state.state
                    if handle.state.state == "running":
                        said = f"it runs, but Swarm reports no published port (ports {list(handle.state.ports)})"
                    raise LaunchFailed(f"Swarm placed replica {handle.launch.replica_id} on node "
                                       f"{handle.state.node_name} but it was not running within "
                                       f"{self.start_timeout:g}s: {said}") from None
        published = next((pub for target, pub in state.ports if target == port and pub), 0)
        host = self._node_address(state)
        if not published or not host:
            raise LaunchFailed(f"replica {handle.launch.replica_id} runs on node {state.node_name} but Swarm "
                               f"reports no published port for {port} (ports {list(state.ports)}, address "
                               f"{state.node_addr!r})")
        return host, published

    def waiting(self, handle: SwarmGroupReplica) -> str:
        """Why Swarm has not placed the replica yet, in Swarm's words ("" once it runs or when none is given)."""
        state = handle.state
        if state.state in ("new", "pending") and state.message and not handle.running.done():
            where = " (it mounts volumes: the daemon's node only)" if handle.launch.spec.volumes else ""
            return f"Swarm has not placed replica {handle.launch.replica_id}{where}: {state.message}"
        return ""

    async def address(self, handle: SwarmGroupReplica) -> str:
        return (await self.endpoint(handle, handle.launch.spec.port))[0]

    async def wait(self, handle: SwarmGroupReplica) -> str:
        """Until the replica's task ends (its app exited, its node went down, its service was removed)."""
        return await asyncio.shield(handle.ended)

    async def log_tail(self, handle: SwarmGroupReplica, lines: int = 30) -> str:
        tail = list(handle.tail)[-lines:] if lines > 0 else []
        state = handle.state
        removed_by_us = handle.removed and state.state in ("gone", "shutdown", "remove")
        if state.message and state.state not in ("running", "complete") and not removed_by_us:
            tail.append(f"[swarm] task {state.state}: {state.message}")  # why Swarm ended or holds it
        return "\n".join(tail)

    async def stop(self, handle: SwarmGroupReplica, replica_id: str, grace: float) -> None:
        """The service is removed: Swarm stops its task with SIGTERM (the agent passes it to the app) and
        SIGKILL after the stop grace it was made with; its secret goes once the task is gone."""
        await self._remove(handle, wait=max(1.0, grace) + 5.0)

    async def remove(self, handle: SwarmGroupReplica, replica_id: str) -> None:
        await self._remove(handle, wait=0.0)

    async def _remove(self, handle: SwarmGroupReplica, wait: float) -> None:
        if handle.removed:
            return
        handle.removed = True
        try:
            await asyncio.wait_for(self.docker.services.delete(handle.service_id), ENGINE_TIMEOUT)
        except (DockerError, TimeoutError) as exc:
            if not (isinstance(exc, DockerError) and exc.status == 404):
                log.warning("removing the service of replica %s failed: %s", handle.launch.replica_id, exc)
        if wait and not handle.ended.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(handle.ended), wait)
        self.runtime.watcher.untrack(handle.service_id)
        if not handle.ended.done():  # no word from the manager in time: untracked, it ends here for chalkd
            self._on_state(handle, TaskState("gone", handle.state.node_id, handle.state.node_name,
                                             handle.state.node_addr, "its service was removed", ended=True))
        if handle.follower is not None:
            handle.follower.cancel()
        if handle.secret_id:
            # A secret is removable once no task uses it: in the background, retried a while.
            self._spawn(self._delete_secret(handle.secret_id))

    async def _delete_secret(self, secret_id: str) -> None:
        if not await delete_when_free(lambda: self.docker.secrets.delete(secret_id), tries=60):
            log.warning("the Swarm secret %s is still in use; it is removed at the daemon's next start",
                        secret_id[:12])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def group_deleted(self, group_id: str) -> None:
        """The group is deleted (its replicas stopped): its network goes, in the background (a task may hold it
        a moment longer)."""
        async with self._network_lock:
            net_id = self.networks.pop(group_id, "")
        if net_id:
            self._spawn(self._delete_network(net_id))

    async def _delete_network(self, net_id: str) -> None:
        if not await delete_when_free(lambda: DockerNetwork(self.docker, net_id).delete(), tries=40):
            log.warning("the network %s is still in use; it is removed at the daemon's next start", net_id[:12])

    # -- this home's leftovers --------------------------------------------------------------------

    async def remove_leftovers(self) -> int:
        """Remove this home's group replica services, their secrets and the groups' networks (never another
        home's): replicas do not outlive the daemon, which starts its groups anew."""
        label = f"{LABEL_HOME}={self.runtime.label}"
        services = await self.docker.services.list(filters={"label": [label, f"{LABEL_KIND}={KIND}"]})
        for s in services:
            with contextlib.suppress(DockerError):
                await self.docker.services.delete(s["ID"])
        secrets = await self.docker.secrets.list(filters={"label": [label, f"{LABEL_KIND}={ENV_KIND}"]})
        for s in secrets:
            self._spawn(self._delete_secret(s["ID"]))
        await self._remove_networks()
        return len(services)

    async def _remove_networks(self, tries: int = 1) -> None:
        """The groups' networks of this home; one still in use (a task moments from gone) is tried again."""
        label = {"label": [f"{LABEL_HOME}={self.runtime.label}", f"{LABEL_KIND}={NETWORK_KIND}"]}
        for attempt in range(tries):
            nets = await asyncio.wait_for(self.docker.networks.list(filters=label), ENGINE_TIMEOUT)
            busy = 0
            for n in nets:
                try:
                    await asyncio.wait_for(DockerNetwork(self.docker, n["Id"]).delete(), ENGINE_TIMEOUT)
                except (DockerError, TimeoutError):
                    busy += 1
            if not busy:
                break
            if attempt + 1 < tries:
                await asyncio.sleep(0.5)
        self.networks.clear()

    async def remove_network(self) -> None:
        """At shutdown (the replicas are stopped): the groups' networks and what is left of their secrets."""
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 35)
        with contextlib.suppress(DockerError, TimeoutError):
            await self._remove_networks(tries=10)
