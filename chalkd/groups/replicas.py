"""A scaling group's replicas as Docker containers: start one, find its address, read its output, stop it.

    launcher = ReplicaLauncher(docker, blobs, home=home, run_dir=run_dir(home), volumes=volumes)
    engine = await launcher.start(ReplicaLaunch(group_id="sg-1", replica_id="sgr-2", revision=1, spec=spec,
                                                image_tag=built.tag, secret_env={"TOKEN": "..."}))
    host = await launcher.address(engine)          # its IP on the groups' network: the proxy dials host:spec.port
    code = await launcher.wait(engine)             # the app exited (the agent runs with --exit-with-main)
    await launcher.stop(engine, grace=10)

Each replica runs our agent as its main process (as a ``Container`` does), and
the agent runs the app (the group's entrypoint, else the image's) and ends
with it, so a crash is the container's exit with the app's code and its last
lines are the container's log. Secrets reach the agent over its socket and
never sit in the container's config. The replicas share one bridge network,
``chalkd-groups-<home hash>``, with inter-container traffic off: a replica
reaches neither another replica nor a sandbox (sandboxes have a network of
their own), and nothing of the daemon is mounted or routed to it; only the
daemon on the host dials in, to the app's port. Logs are the engine's
json-file, capped per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
from aiodocker.exceptions import DockerError

from chalkcompute.agent import entrypoint as agent_entrypoint
from chalkd.containers.agent_client import AgentSocket, agent_set_env, wait_agent_ready
from chalkd.containers.manager import _hand_agent_dir
from chalkd.images.blobs import BlobStore
from chalkd.runtime.docker import (
    LABEL_HOME,
    LABEL_KIND,
    LABEL_OWNER,
    ensure_isolated_bridge,
    home_label,
    host_config,
    lazy_binds,
    volume_binds,
)
from chalkd.runtime.image_user import image_user
from chalkd.specs import GroupSpec

log = logging.getLogger(__name__)

__all__ = ["ReplicaLauncher", "ReplicaLaunch", "LaunchFailed", "KIND"]

KIND = "group-replica"
AGENT_MOUNT = "/run/chalk-agent"
LOG_MAX_SIZE = "10m"     # the engine's json-file log per replica: 2 files of this at most
LOG_MAX_FILES = "2"


class LaunchFailed(RuntimeError):
    """The replica could not be started (the message says why)."""


@dataclass
class ReplicaLaunch:
    group_id: str
    group_name: str
    replica_id: str
    revision: int
    spec: GroupSpec
    image_tag: str
    image_command: list[str] = field(default_factory=list)   # the image's own ENTRYPOINT + CMD
    secret_env: dict[str, str] = field(default_factory=dict)
    gpu_uuids: tuple[str, ...] = ()


class ReplicaLauncher:
    places_replicas = False   # replicas run on this engine's host: the manager reserves their cpu/memory/GPUs

    def __init__(self, docker: aiodocker.Docker, blobs: BlobStore, *, home: Path, run_dir: Path,
                 volumes=None, pids_limit: int = 4096, start_timeout: float = 60.0) -> None:
        self.docker = docker
        self.blobs = blobs
        self.home = Path(home)
        self.agents = Path(run_dir) / "groups"
        self.volumes = volumes
        self.pids_limit = pids_limit
        self.start_timeout = start_timeout
        self.network = "chalkd-groups-" + hashlib.sha256(home_label(self.home).encode()).hexdigest()[:12]
        self._network_ready = False
        self._network_lock = asyncio.Lock()

    def labels(self, launch: ReplicaLaunch | None = None) -> dict[str, str]:
        labels = {LABEL_HOME: home_label(self.home), LABEL_KIND: KIND, LABEL_OWNER: "chalkd"}
        if launch is not None:
            labels |= {"dev.chalkd.group": launch.group_id, "dev.chalkd.replica": launch.replica_id,
                       "dev.chalkd.revision": str(launch.revision)}
        return labels

    async def ensure_network(self) -> str:
        """The groups' own bridge (inter-container traffic off), made once per home."""
        async with self._network_lock:
            if self._network_ready:
                return self.network
            try:
                await ensure_isolated_bridge(self.docker, self.network, {
                    LABEL_HOME: home_label(self.home), LABEL_OWNER: "chalkd", LABEL_KIND: KIND})
            except DockerError as exc:
                raise LaunchFailed(f"the engine would not create the groups' network: {exc.message}") from None
            self._network_ready = True
            return self.network

    async def start(self, launch: ReplicaLaunch):
        """Create and start the replica's container; returns the engine's container once its agent has
        answered (and has the secrets). The app itself may still be starting: readiness is the probe's."""
        spec = launch.spec
        try:
            uid, gid = await image_user(self.docker, launch.image_tag)
        except Exception as exc:
            raise LaunchFailed(f"cannot tell which user image {launch.image_tag} runs as: {exc}") from None
        try:
            binds = [*lazy_binds(self.blobs, spec.image),
                     *await asyncio.to_thread(volume_binds, self.volumes, spec.volumes, (uid, gid))]
        except Exception as exc:
            raise LaunchFailed(str(exc)) from None
        agent_dir = self.agents / launch.replica_id
        agent_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        socket_mode = _hand_agent_dir(agent_dir, uid, gid)
        hc = host_config(binds=[f"{agent_dir}:{AGENT_MOUNT}", *binds], cpu_millis=spec.resources.cpu_millis,
                         memory_bytes=spec.resources.memory_bytes, pids_limit=self.pids_limit,
                         gpu_uuids=launch.gpu_uuids)
        if spec.port < 1024:
            hc["CapAdd"] = [*hc["CapAdd"], "NET_BIND_SERVICE"]  # the app listens on a low port
        hc["NetworkMode"] = await self.ensure_network()
        hc["LogConfig"] = {"Type": "json-file", "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES}}
        app = list(spec.entrypoint) or list(launch.image_command)
        if not app:
            raise LaunchFailed(f"group {launch.group_name!r} has no command to run: give entrypoint= or an image "
                               "with an entrypoint (Image.entrypoint([...]))")
        env = {"PORT": str(spec.port), **spec.env}
        config = {
            "Image": launch.image_tag,
            "Entrypoint": agent_entrypoint(f"{AGENT_MOUNT}/agent.sock",
                                           extra=("--socket-mode", f"{socket_mode:o}", "--exit-with-main",
                                                  *(("--await-env",) if launch.secret_env else ()))),
            "Cmd": app,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "ExposedPorts": {f"{spec.port}/tcp": {}},
            "Labels": self.labels(launch),
            "HostConfig": hc,
        }
        name = f"chalkd-{launch.group_name}-{launch.replica_id[4:]}"
        try:
            engine = await self.docker.containers.create(config, name=name)
        except DockerError as exc:
            shutil.rmtree(agent_dir, ignore_errors=True)
            raise LaunchFailed(f"the engine refused the replica: {exc.message}") from None
        try:
            await engine.start()
            sock = AgentSocket(agent_dir / "agent.sock", uid)
            await wait_agent_ready(sock, self.start_timeout)
            if launch.secret_env:
                await agent_set_env(sock, launch.secret_env)
        except BaseException as exc:
            tail = await self.log_tail(engine)
            await self.remove(engine, launch.replica_id)
            if isinstance(exc, asyncio.CancelledError):
                raise
            why = exc.message if isinstance(exc, DockerError) else str(exc) or type(exc).__name__
            raise LaunchFailed(f"the replica did not start: {why}" + (f"\n{tail}" if tail else "")) from None
        return engine

    async def address(self, engine) -> str:
        """The replica's IP on the groups' network."""
        info = await engine.show()
        nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
        ip = (nets.get(self.network) or {}).get("IPAddress") or ""
        if not ip:
            raise LaunchFailed(f"the replica has no address on network {self.network}")
        return ip

    async def endpoint(self, engine, port: int) -> tuple[str, int]:
        """Where the proxy dials the app: its IP on the groups' network and the app's own ``port``."""
        return await self.address(engine), port

    def waiting(self, engine) -> str:
        """What a started replica waits for before it runs: nothing here (resources are held before start)."""
        return ""

    async def wait(self, engine) -> str:
        """Wait until the container ends; how it ended, in words."""
        try:
            result = await engine.wait()
            return f"the app exited with code {result.get('StatusCode')}"
        except DockerError as exc:
            return f"its container is gone ({exc.message})"

    async def log_tail(self, engine, lines: int = 30) -> str:
        with contextlib.suppress(Exception):
            out = await engine.log(stdout=True, stderr=True, tail=lines)
            return "".join(out).rstrip()
        return ""

    async def stop(self, engine, replica_id: str, grace: float) -> None:
        """SIGTERM (the agent forwards it to the app), SIGKILL after ``grace``; then removed."""
        with contextlib.suppress(DockerError):
            await engine.stop(t=max(1, round(grace)))
        await self.remove(engine, replica_id)

    async def remove(self, engine, replica_id: str) -> None:
        with contextlib.suppress(DockerError):
            await engine.delete(force=True)
        shutil.rmtree(self.agents / replica_id, ignore_errors=True)

    async def group_deleted(self, group_id: str) -> None:
        """A group is gone (its replicas stopped): nothing is kept per group here (one network for all)."""

    async def remove_leftovers(self) -> int:
        """Remove every group replica container of this home (the daemon starts its groups anew)."""
        found = await self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_HOME}={home_label(self.home)}", f"{LABEL_KIND}={KIND}"]})
        for engine in found:
            with contextlib.suppress(DockerError):
                await engine.delete(force=True)
        if self.agents.is_dir():
            shutil.rmtree(self.agents, ignore_errors=True)
        return len(found)

    async def remove_network(self) -> None:
        """At shutdown: the groups' network goes when nothing uses it (no replica runs across restarts)."""
        with contextlib.suppress(DockerError):
            net = await self.docker.networks.get(self.network)
            await net.delete()
        self._network_ready = False
