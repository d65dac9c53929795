"""The daemon: one ``Server(config)`` owning every subsystem, in uvicorn's shape.

    server = Server(Config(port=0, home=tmp))
    await server.startup()        # socket bound, store open, memory rebuilt, gRPC listening
    print(server.port)
    await server.main_loop()      # until request_stop() or SIGTERM/SIGINT
    await server.shutdown()       # stop accepting, drain, close the store
    # or all three: await server.serve()

Everything is declared and wired in :meth:`Server._startup`, in start-up order,
each part given its collaborators in its constructor (nothing rebinds another's
hooks afterwards): listening socket -> store -> catalog, limits, secrets ->
queue (with the autoscaler's :class:`~chalkd.scaling.hooks.ScalerHooks`) ->
runtime (Docker engine, containers) -> autoscaler -> services -> gRPC (TCP and
unix) -> fast path -> autoscaler loop -> result sweeper. Each resource's close
is pushed on one :class:`contextlib.AsyncExitStack` as it opens, so shutdown
runs backwards, and a start that fails half-way closes what it had opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.server import Server as GrpcServer

import chalkd
from chalkcompute import _auth
from chalkd.auth import Authenticator, load_or_create_token
from chalkd.catalog import Catalog
from chalkd.config import Config
from chalkd.connections import ConnectionGuard, bind_socket, raise_fd_limit
from chalkd.gpus import FAKE_GPUS_ENV, GpuAllocator, detect_gpus
from chalkd.images.blobs import BlobStore
from chalkd.logs.service import LogsService
from chalkd.logs.store import LogStore
from chalkd.queue.core import Queue
from chalkd.queue.limits import Limits
from chalkd.runtime.base import Runtime
from chalkd.runtime.process import ProcessRuntime
from chalkd.scaling.autoscaler import Autoscaler, HostResources
from chalkd.scaling.hooks import ScalerHooks
from chalkd.secrets.store import SecretStore
from chalkd.services.catalog import CatalogService
from chalkd.services.containers import ContainersService
from chalkd.services.convert import decode_function_bytes
from chalkd.services.fastpath import FastPathServer, grpc_socket_path, run_dir, socket_path
from chalkd.services.groups import ScalingGroupsService
from chalkd.services.images import ImagesService
from chalkd.services.policies import PoliciesService
from chalkd.services.sandboxes import SandboxesService
from chalkd.services.secrets import SecretsService
from chalkd.services.streams import QueueService, WorkerService
from chalkd.services.volumes import VolumesService
from chalkd.store.db import Store
from chalkd.volumes.store import VolumeStore
from chalkd.web.app import WebServer, web_ssl_context

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupError(RuntimeError):
    """The daemon cannot start as configured (no engine for --runtime docker, a bad GPU inventory)."""


class LimitedCodec(ProtoCodec):
    """grpclib has no message size limit: refuse oversized messages at the edge.

    This is grpclib's codec hook, called while a handler reads its request: it answers with
    grpclib's own error (the one place outside chalkd.services.errors that makes a status)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self.limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes exceeds the daemon's limit of {self.limit} bytes "
                "(chalkd serve --max-message-size)",
            )
        return super().decode(data, message_type)


@contextlib.contextmanager
def captured_signals(loop: asyncio.AbstractEventLoop, on_signal: Any) -> Iterator[None]:
    """SIGTERM/SIGINT call ``on_signal`` while inside; the handlers found are put back on the way out
    (the pattern of grpclib's ``utils.graceful_exit`` and uvicorn's ``capture_signals``)."""
    installed: list[tuple[signal.Signals, Any]] = []
    for sig in HANDLED_SIGNALS:
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            continue
        installed.append((sig, previous))
    try:
        yield
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)


class Server:
    """See the module docstring. ``services`` holds the gRPC services by name once started."""

    def __init__(self, config: Config) -> None:
        config.validate()
        self.config = config
        self.home = config.home
        self.port: int | None = None
        self.http_port: int | None = None  # chalkd.web's port (/metrics), once bound
        self.started = time.monotonic()
        self.instance_id = secrets.token_hex(8)
        self.services: dict[str, Any] = {}
        self.fast: FastPathServer | None = None
        self.docker: Any = None
        self.containers: Any = None
        self.sandboxes: Any = None
        self.groups: Any = None
        self._should_exit = asyncio.Event()
        self._stack: contextlib.AsyncExitStack | None = None
        self._volumes_of: dict[str, frozenset[str]] = {}  # see _replica_volumes
        self._records: list[str] = []

    # -- lifecycle ------------------------------------------------------------------

    async def serve(self) -> None:
        """Start, run until asked to stop (or a signal), then shut down."""
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        """Open everything in order; when a step fails, what was opened is closed (backwards) and the
        error is raised: no listening socket, task, open store or container is left behind."""
        stack = contextlib.AsyncExitStack()
        try:
            await self._startup(stack)
        except BaseException:
            log.info("chalkd start failed: closing what was opened")
            await stack.aclose()
            raise
        self._stack = stack

    async def main_loop(self) -> None:
        """Wait for :meth:`request_stop` or SIGTERM/SIGINT (their previous handlers restored after)."""
        with captured_signals(asyncio.get_running_loop(), self._should_exit.set):
            await self._should_exit.wait()

    def request_stop(self) -> None:
        self._should_exit.set()

    async def shutdown(self) -> None:
        """Stop accepting, drain in-flight calls, stop replicas, close the store (startup's order, backwards)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        log.info("chalkd shutting down")
        await stack.aclose()
        log.info("chalkd stopped")

    # The names the daemon had before startup/main_loop/shutdown.
    start = startup
    serve_forever = main_loop
    stop = shutdown

    # -- wiring ---------------------------------------------------------------------

    async def _startup(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)  # an existing home too: it holds the database, token, keys and logs
        self.token = load_or_create_token(self.home)
        fd_limit = raise_fd_limit()  # before anything opens: every connection and replica pipe is a descriptor

        # The port first: a taken one fails before anything is opened, and port 0's pick is known to all.
        sock = bind_socket(cfg.host, cfg.port)
        stack.callback(sock.close)
        self.port = sock.getsockname()[1]
        target = f"{cfg.host}:{self.port}" if ":" not in cfg.host else f"[{cfg.host}]:{self.port}"
        stack.callback(self._remove_records)
        self._write_records(self.port)  # before listening, so a client that sees the port finds the token
        # The HTTP port (/metrics; the dashboard later) is bound now too: a taken --http-port fails here.
        self.web = WebServer(self, host=cfg.host, port=cfg.http_port, metrics_open=cfg.metrics_open,
                             ssl_context=web_ssl_context(cfg.tls_cert, cfg.tls_key))
        self.http_port = self.web.bind()
        stack.push_async_callback(self.web.close)

        self.store = Store(self.home / "chalkd.db", durability=cfg.durability)
        await self.store.open()
        stack.push_async_callback(self.store.close)
        # What handlers print, per call (chalkd.logs): written by a thread of its own, capped on disk.
        self.log_store = LogStore(self.home / "logs" / "calls", max_bytes=cfg.log_max_bytes,
                                  max_age=cfg.log_max_age)
        stack.callback(self.log_store.close)
        self.catalog = Catalog(self.store)
        self.catalog.load(decode_function_bytes)  # stored specs through the services' one codec
        self.limits = Limits(self.store)
        self.limits.load()
        self.secrets = SecretStore(self.store)
        for fv in self.catalog.by_id.values():
            if not fv.deleted:
                self.limits.register(fv)
        hooks = ScalerHooks(self.catalog.by_id)  # the queue's calls into scaling (see chalkd.scaling.hooks)
        self.queue = Queue(self.store, max_attempts=cfg.max_attempts, cancel_grace=cfg.cancel_grace,
                           limits=self.limits, memory_budget=cfg.memory_budget, hooks=hooks,
                           chunk_window_bytes=cfg.chunk_window_bytes,
                           detached_stream_timeout=cfg.detached_stream_timeout,
                           spawned_stream_budget=cfg.spawned_stream_budget,
                           known_functions=lambda: self.catalog.by_id)
        self.queue.load(self.catalog.by_id)
        self.blobs = BlobStore(self.home / "blobs")
        self.volumes = VolumeStore(self.home, self.store)
        fast_path = socket_path(self.home)

        builder = None
        if await self._use_docker():
            builder = await self._start_docker(stack)
        else:
            self.runtime: Runtime = ProcessRuntime(self.home, target=target, pip_extra_args=cfg.pip_extra_args,
                                          replica_env=cfg.replica_env,
                                          fast_socket=(str(fast_path), self.instance_id))
            stack.push_async_callback(self.runtime.close)
        self.scaler = Autoscaler(
            self.runtime, self.queue, self.catalog, host=HostResources.detect(),
            heartbeat_timeout=cfg.heartbeat_timeout, drain_timeout=cfg.drain_timeout,
            # On a swarm, the GPUs every node advertises (chalkd.swarm.gpus); else this host's.
            gpus=self.runtime.gpus if self.runtime.name == "swarm" else GpuAllocator(self._gpus()), hooks=hooks,
        )
        if self.sandboxes is not None:
            self.sandboxes.scaler = self.scaler  # explicit resources are reserved beside replicas'
            await self.sandboxes.recover()       # what an earlier run left keeps running: re-adopted
        if self.groups is not None:
            from chalkd.services.convert import decode_group_bytes

            self.groups.scaler = self.scaler     # replicas' cpu/memory/GPUs are reserved beside others'
            await self.groups.recover(decode_group_bytes)  # every recorded group serves again on its port
        info = {"version": chalkd.__version__, "home": str(self.home), "started": self.started,
                "durability": cfg.durability, "instance_id": self.instance_id, "fast_socket": str(fast_path),
                "http_port": self.http_port}

        queue_service = QueueService(self.queue, self.catalog, max_payload=cfg.max_message_bytes)
        logs_service = LogsService(self.log_store, self.queue, self.catalog,
                                   replica_logs=self.home / "logs" / "replicas",
                                   containers=self.containers, sandboxes=self.sandboxes)
        volumes_service = VolumesService(self.volumes, replica_volumes=self._replica_volumes)
        self.auth = Authenticator(self.token, self._replica_key)
        self.services = {
            "catalog": CatalogService(self.catalog, self.queue, self.scaler, self.runtime, info,
                                      secrets=self.secrets, replica_owns=queue_service.owns),
            "queue": queue_service,
            "worker": WorkerService(self.queue, self.scaler, max_payload=cfg.max_message_bytes,
                                    secrets=self.secrets, on_replica_gone=self._replica_gone,
                                    logs=logs_service),
            "logs": logs_service,
            "policies": PoliciesService(self.limits, self.catalog, self.queue),
            "images": ImagesService(self.blobs, builder, self.runtime.name),
            "containers": ContainersService(self.containers, self.runtime.name),
            "sandboxes": SandboxesService(self.sandboxes, self.runtime.name),  # on_exec set below
            "groups": ScalingGroupsService(self.groups, self.runtime.name),
            "volumes": volumes_service,
            "secrets": SecretsService(self.secrets),
            "auth": self.auth,
        }
        from chalkd.runtime.docker import home_label
        from chalkd.services.nodes import NodesService  # chalkd nodes: answers on --runtime swarm only
        self.services["nodes"] = NodesService(getattr(self.runtime, "docker", None) if self.runtime.name == "swarm"
                                              else None, home_label(self.home), self.runtime.name)
        # Each exec in a sandbox or container leaves a line (command, exit code, duration) in the log store.
        self.services["sandboxes"].on_exec = functools.partial(logs_service.record_exec, "sandboxes")
        if self.containers is not None:
            self.containers.on_exec = functools.partial(logs_service.record_exec, "containers")

        # Unauthenticated and idle connections are closed, capped per peer (see chalkd.connections).
        self.connections = ConnectionGuard(auth_timeout=cfg.auth_timeout, idle_timeout=cfg.idle_timeout,
                                           max_unauthenticated_per_peer=cfg.max_unauthenticated_per_peer,
                                           fd_limit=fd_limit)
        grpc_tcp = GrpcServer(list(self.services.values()), codec=LimitedCodec(cfg.max_message_bytes))
        self.auth.install(grpc_tcp)
        self.connections.install(grpc_tcp)  # after auth: it marks the connections whose RPCs passed
        await grpc_tcp.start(sock=sock, ssl=cfg.ssl_context())
        stack.push_async_callback(_close_grpc, grpc_tcp)
        listener = getattr(self, "worker_listener", None)
        if listener is not None:  # --runtime swarm: workers on every node dial --advertise-addr, over TLS only
            grpc_workers = GrpcServer(list(self.services.values()), codec=LimitedCodec(cfg.max_message_bytes))
            self.auth.install(grpc_workers)
            self.connections.install(grpc_workers)
            await grpc_workers.start(sock=listener.sock, ssl=listener.tls.server_context())
            stack.push_async_callback(_close_grpc, grpc_workers)
        # Containers cannot reach the host's loopback: they get the run dir mounted and dial this.
        unix_path = grpc_socket_path(self.home)
        unix_path.unlink(missing_ok=True)
        grpc_unix = GrpcServer(list(self.services.values()), codec=LimitedCodec(cfg.max_message_bytes))
        self.auth.install(grpc_unix)
        self.connections.install(grpc_unix)
        await grpc_unix.start(path=str(unix_path))
        stack.push_async_callback(_close_grpc, grpc_unix)
        await self.connections.start()
        stack.push_async_callback(self.connections.close)
        os.chmod(unix_path, 0o600)

        # Local callers and workers skip HTTP/2: same streams, framed on a unix socket.
        self.fast = FastPathServer(
            fast_path, session_handler=queue_service.Session, worker_handler=self.services["worker"].Connect,
            instance_id=self.instance_id, limit=2 * cfg.max_message_bytes + 2**20, auth=self.auth,
            # bulk file data and exec output skip HTTP/2
            streams={**volumes_service.framed_handlers(), **self.services["sandboxes"].framed_handlers()},
        )
        await self.fast.start()
        stack.push_async_callback(self.fast.close)

        await self.scaler.start()
        stack.push_async_callback(self.scaler.shutdown)  # drains calls before the fast path and gRPC close
        sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="result-sweeper")
        stack.push_async_callback(_cancel, sweeper)
        await self.web.start()  # last: a scrape reads everything above
        stack.push_async_callback(self.web.close)  # first to close: no scrape of a half-stopped daemon
        log.info("chalkd %s listening on %s (home %s, runtime %s, durability %s)",
                 chalkd.__version__, target, self.home, self.runtime.name, cfg.durability)

    def _replica_key(self, replica_id: str) -> str | None:
        """A running replica's own key (its scoped credential's secret), else None."""
        replica = self.scaler.replicas.get(replica_id)
        if replica is None or replica.state == "stopped":
            return None
        return replica.token

    def _replica_volumes(self, replica_id: str) -> frozenset[str]:
        """The volumes a running replica's function mounts (all a replica's credential reaches)."""
        replica = self.scaler.replicas.get(replica_id)
        if replica is None or replica.state == "stopped":
            return frozenset()
        cached = self._volumes_of.get(replica_id)
        if cached is None:  # made once per replica, dropped with it
            cached = self._volumes_of[replica_id] = frozenset(m.volume for m in replica.function.spec.volumes)
        return cached

    def _replica_gone(self, replica_id: str) -> None:
        """A replica's worker stream ended: its scoped sessions and its started-calls list go."""
        self.auth.forget_replica(replica_id)
        self.services["queue"].forget_replica(replica_id)
        self._volumes_of.pop(replica_id, None)

    def _write_records(self, port: int) -> None:
        """The per-user records that let the SDK and CLI find this daemon's token by its address."""
        host = self.config.host
        targets = [f"{host}:{port}"]
        if host in ("127.0.0.1", "localhost"):
            targets = [f"127.0.0.1:{port}", f"localhost:{port}"]
        targets.append(f"unix:{grpc_socket_path(self.home)}")
        for target in targets:
            try:
                _auth.write_record(target, self.token)
                self._records.append(target)
            except OSError as exc:  # the token file in the home still works
                log.warning("could not write the token record for %s: %s", target, exc)

    def _gpus(self) -> list:
        """This host's GPUs, for the Docker runtime (the process runtime refuses ``gpu=``, except with a fake
        inventory: CHALKD_FAKE_GPUS makes GPU scheduling testable there)."""
        if self.runtime.name != "docker" and not os.environ.get(FAKE_GPUS_ENV):
            return []
        try:
            devices = detect_gpus()
        except ValueError as exc:  # only a malformed CHALKD_FAKE_GPUS
            raise StartupError(str(exc)) from None
        if devices:
            log.info("GPUs: %s", ", ".join(f"{d.index}: {d.name}" for d in devices))
        return devices

    def _remove_records(self) -> None:
        for target in self._records:
            _auth.remove_record(target, self.token)
        self._records.clear()

    async def _use_docker(self) -> bool:
        """``docker``: yes (an engine must answer); ``auto``: only when an engine
        answers and has the default base image; ``process``: no."""
        mode = self.config.runtime
        if mode == "process":
            return False
        import aiodocker

        docker = aiodocker.Docker(url=self.config.engine)
        try:
            await asyncio.wait_for(docker.version(), 5)
            if mode in ("docker", "swarm"):
                return True
            base = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
            await asyncio.wait_for(docker.images.inspect(base), 5)
            return True
        except Exception as exc:
            if mode in ("docker", "swarm"):
                where = self.config.engine or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
                raise StartupError(f"--runtime {mode}: no Docker engine answers at {where} ({exc})") from None
            log.info("runtime auto: using the process runtime (%s)", exc or type(exc).__name__)
            return False
        finally:
            await docker.close()

    async def _start_docker(self, stack: contextlib.AsyncExitStack) -> Any:
        import aiodocker

        from chalkd.containers.manager import ContainerManager
        from chalkd.containers.records import ContainerTable
        from chalkd.images.docker_build import DockerImageBuilder
        from chalkd.runtime.docker import DockerRuntime

        cfg = self.config
        self.docker = aiodocker.Docker(url=cfg.engine)
        stack.push_async_callback(self.docker.close)
        builder = DockerImageBuilder(self.docker, self.home, ca_bundle=cfg.build_ca_bundle)
        rdir = run_dir(self.home)
        # One mount path (volumes) and one secret path (the agent) for replicas and containers.
        runtime: Any
        if cfg.runtime == "swarm":
            from chalkd.swarm.startup import start_swarm_runtime

            # Replicas on every node of the swarm; containers and sandboxes stay on this engine's node.
            runtime = await start_swarm_runtime(self, builder, stack)
        else:
            runtime = DockerRuntime(self.home, docker=self.docker, builder=builder, run_dir=rdir,
                                    instance_id=self.instance_id, blobs=self.blobs, pids_limit=cfg.pids_limit,
                                    volumes=self.volumes)
        self.runtime = runtime
        stack.push_async_callback(runtime.close)
        self.containers = ContainerManager(self.docker, builder, self.blobs, ContainerTable(self.store), home=self.home,
                                           run_dir=rdir, pids_limit=cfg.pids_limit, volumes=self.volumes,
                                           secrets=self.secrets)
        stack.push_async_callback(self.containers.close)
        from chalkd.sandboxes.manager import SandboxManager, SandboxSettings
        from chalkd.sandboxes.records import SandboxTable

        runtime_args = await self._check_sandbox_runtime()
        self.sandboxes = SandboxManager(
            self.docker, builder, self.blobs, SandboxTable(self.store), home=self.home, run_dir=rdir,
            volumes=self.volumes, secrets=self.secrets,
            settings=SandboxSettings(runtime=cfg.sandbox_runtime, memory_bytes=cfg.sandbox_memory,
                                     pids_limit=cfg.sandbox_pids_limit, disk_bytes=cfg.sandbox_disk,
                                     disk_check_interval=cfg.sandbox_disk_check_interval,
                                     runtime_args=runtime_args))
        stack.push_async_callback(self.sandboxes.close)  # sandboxes keep running; only our tasks end
        from chalkd.groups.manager import GroupManager, GroupSettings
        from chalkd.groups.records import GroupTable
        from chalkd.groups.replicas import ReplicaLauncher

        launcher: Any
        group_builder: Any = builder
        if cfg.runtime == "swarm":
            from chalkd.groups.swarm_replicas import SwarmGroupImages, SwarmReplicaLauncher

            # Each group replica a one-task Swarm service, its port published on its node (host mode).
            group_builder = SwarmGroupImages(runtime)
            launcher = SwarmReplicaLauncher(runtime, group_builder, volumes=self.volumes, pids_limit=cfg.pids_limit)
        else:
            launcher = ReplicaLauncher(self.docker, self.blobs, home=self.home, run_dir=rdir, volumes=self.volumes,
                                       pids_limit=cfg.pids_limit)
        self.groups = GroupManager(group_builder, launcher, GroupTable(self.store), secrets=self.secrets,
                                   settings=GroupSettings(host=cfg.host, ports=cfg.group_ports,
                                                          cooldown=cfg.group_cooldown))
        stack.push_async_callback(self.groups.close)  # proxies close, replicas stop; records stay
        # What an earlier run left: its calls were re-queued by queue recovery above.
        await runtime.remove_leftovers()
        await self.containers.recover()  # Container API containers keep running too: re-adopted
        return builder

    async def _check_sandbox_runtime(self) -> tuple[str, ...]:
        """``--sandbox-runtime`` must be registered with the engine (``docker info``'s Runtimes); its
        runtime arguments (shown in ``SandboxInfo.isolation``)."""
        name = self.config.sandbox_runtime
        if name == "runc":
            return ()
        registered = (await self.docker.system.info()).get("Runtimes") or {}
        runtimes = sorted(registered)
        if name not in runtimes:
            raise StartupError(
                f"--sandbox-runtime {name}: the Docker engine has no runtime named {name!r} (it has "
                f"{', '.join(runtimes) or 'none'}); install it and register it in /etc/docker/daemon.json "
                '(e.g. {"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": '
                '["--host-uds=create", "--network=host"]}}}) then reload dockerd (SIGHUP) or restart it')
        return tuple(str(a) for a in (registered[name] or {}).get("runtimeArgs") or ())

    async def _sweep(self) -> None:
        """Drop finished calls past their function's result TTL, every sweep interval."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                self.queue.expire_results(time.time())
            except Exception:
                log.exception("expiring old results failed")


async def _close_grpc(server: GrpcServer) -> None:
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 5)
    except TimeoutError:
        log.warning("some streams did not close within 5s")


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
