"""The daemon: one ``Server(config)`` owning every subsystem.

    server = Server(Config(port=0, home=tmp))
    await server.start()          # store open, memory rebuilt, gRPC listening
    print(server.port)
    await server.serve_forever()  # until stop() or a signal
    await server.stop()           # stop accepting, drain, close the store

Start-up order: store -> catalog -> queue recovery -> runtime -> autoscaler ->
gRPC. Shutdown runs it backwards, draining in-flight calls first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.server import Server as GrpcServer

import chalkd
from chalkcompute import _auth
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.auth import Authenticator, load_or_create_token
from chalkd.catalog import Catalog
from chalkd.config import Config
from chalkd.gpus import GpuAllocator, detect_gpus
from chalkd.images.blobs import BlobStore
from chalkd.queue.core import Queue
from chalkd.queue.limits import Limits
from chalkd.queue.retention import expire_results
from chalkd.runtime.process import ProcessRuntime
from chalkd.scaling.autoscaler import Autoscaler, HostResources
from chalkd.secrets.store import SecretStore
from chalkd.services.catalog import CatalogService
from chalkd.services.containers import ContainersService
from chalkd.services.convert import settings_from_bytes
from chalkd.services.fastpath import FastPathServer, grpc_socket_path, run_dir, socket_path
from chalkd.services.images import ImagesService
from chalkd.services.policies import PoliciesService
from chalkd.services.secrets import SecretsService
from chalkd.services.streams import QueueService, WorkerService
from chalkd.services.volumes import VolumesService
from chalkd.store.db import Store
from chalkd.volumes.store import VolumeStore

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The daemon cannot start as configured (no engine for --runtime docker, a bad GPU inventory)."""


class LimitedCodec(ProtoCodec):
    """grpclib has no message size limit: refuse oversized messages at the edge."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def decode(self, data: bytes, message_type):
        if len(data) > self.limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes exceeds the daemon's limit of {self.limit} bytes "
                "(chalkd serve --max-message-size)",
            )
        return super().decode(data, message_type)


class Server:
    def __init__(self, config: Config) -> None:
        config.validate()
        self.config = config
        self.home = config.home
        self.port: int | None = None
        self._stopped = asyncio.Event()
        self._grpc: GrpcServer | None = None
        self.fast: FastPathServer | None = None
        self.started = time.monotonic()
        self.instance_id = secrets.token_hex(8)
        self._volumes_of: dict[str, frozenset[str]] = {}  # see _replica_volumes

    async def start(self) -> None:
        cfg = self.config
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)  # an existing home too: it holds the database, token, keys and logs
        self.token = load_or_create_token(self.home)
        self.store = Store(self.home / "chalkd.db", durability=cfg.durability)
        await self.store.open()
        self.catalog = Catalog(self.store)
        self.catalog.load(settings_from_bytes)
        self.limits = Limits(self.store)
        self.limits.load()
        self.secrets = SecretStore(self.store)
        for fv in self.catalog.by_id.values():
            if not fv.deleted:
                self.limits.register(fv)
        self.queue = Queue(self.store, max_attempts=cfg.max_attempts, cancel_grace=cfg.cancel_grace,
                           limits=self.limits, memory_budget=cfg.memory_budget)
        self.queue.known_functions = lambda: self.catalog.by_id
        self.queue.load(self.catalog.by_id)
        self.blobs = BlobStore(self.home / "blobs")
        self.docker = None
        self.containers = None
        builder = None
        if await self._use_docker():
            builder = await self._start_docker()
        else:
            self.runtime = ProcessRuntime(self.home, target="", pip_extra_args=cfg.pip_extra_args,
                                          replica_env=cfg.replica_env)
        self.scaler = Autoscaler(
            self.runtime, self.queue, self.catalog, host=HostResources.detect(),
            heartbeat_timeout=cfg.heartbeat_timeout, drain_timeout=cfg.drain_timeout,
            gpus=GpuAllocator(self._gpus()),
        )
        info = {"version": chalkd.__version__, "home": str(self.home), "started": self.started,
                "durability": cfg.durability, "instance_id": self.instance_id, "fast_socket": ""}
        self.volumes = VolumeStore(self.home, self.store)
        if self.runtime.name == "docker":
            # One mount path (volumes) and one secret path (the agent) for replicas and containers.
            self.runtime.volumes = self.volumes
            self.containers.volumes = self.volumes
            self.containers.secrets = self.secrets
        handlers = [
            CatalogService(self.catalog, self.queue, self.scaler, self.runtime, info, secrets=self.secrets),
            QueueService(self.queue, self.catalog, max_payload=cfg.max_message_bytes),
            WorkerService(self.queue, self.scaler, max_payload=cfg.max_message_bytes, secrets=self.secrets),
            PoliciesService(self.limits, self.catalog, self.queue),
            ImagesService(self.blobs, builder, self.runtime.name),
            ContainersService(self.containers, self.runtime.name),
            volumes_service := VolumesService(self.volumes),
            SecretsService(self.secrets),
        ]
        self.auth = Authenticator(self.token, self._replica_key)
        handlers.append(self.auth)
        handlers[2].on_replica_gone = self._replica_gone
        handlers[0].replica_owns = handlers[1].owns
        volumes_service.replica_volumes = self._replica_volumes
        self._handlers = handlers
        self._grpc = GrpcServer(handlers, codec=LimitedCodec(cfg.max_message_bytes))
        self.auth.install(self._grpc)
        self._records: list[str] = []
        if cfg.port:  # before listening, so a client that sees the port also finds the token
            self._write_records(cfg.port)
        await self._grpc.start(cfg.host, cfg.port, ssl=cfg.ssl_context())
        # Containers cannot reach the host's loopback: they get the run dir mounted and dial this.
        unix_path = grpc_socket_path(self.home)
        unix_path.unlink(missing_ok=True)
        self._grpc_unix = GrpcServer(handlers, codec=LimitedCodec(cfg.max_message_bytes))
        self.auth.install(self._grpc_unix)
        await self._grpc_unix.start(path=str(unix_path))
        os.chmod(unix_path, 0o600)
        # Port 0 picks a free port; replicas dial back the one we got.
        self.port = self._grpc._server.sockets[0].getsockname()[1]  # grpclib has no public accessor
        target = f"{cfg.host}:{self.port}" if ":" not in cfg.host else f"[{cfg.host}]:{self.port}"
        if not cfg.port:
            self._write_records(self.port)
        self.runtime.target = target
        # Local callers and workers skip HTTP/2: same streams, framed on a unix socket.
        self.fast = FastPathServer(
            socket_path(self.home), session_handler=handlers[1].Session, worker_handler=handlers[2].Connect,
            instance_id=self.instance_id, limit=2 * cfg.max_message_bytes + 2**20, auth=self.auth,
        )
        self.fast.handlers.update(volumes_service.framed_handlers())  # bulk file data skips HTTP/2
        await self.fast.start()
        info["fast_socket"] = str(self.fast.path)
        self.runtime.fast_socket = (str(self.fast.path), self.instance_id)
        await self.scaler.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="result-sweeper")
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
        if cached is None:  # parsed once per replica, dropped with it
            spec = pb.FunctionSpec()
            spec.ParseFromString(replica.function.spec)
            cached = self._volumes_of[replica_id] = frozenset(m.volume for m in spec.volumes)
        return cached

    def _replica_gone(self, replica_id: str) -> None:
        """A replica's worker stream ended: its scoped sessions and its started-calls list go."""
        self.auth.forget_replica(replica_id)
        self._handlers[1].forget_replica(replica_id)
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
        """This host's GPUs, for the Docker runtime (the process runtime refuses ``gpu=``)."""
        if self.runtime.name != "docker":
            return []
        try:
            devices = detect_gpus()
        except ValueError as exc:  # only a malformed CHALKD_FAKE_GPUS
            raise StartupError(str(exc)) from None
        if devices:
            log.info("GPUs: %s", ", ".join(f"{d.index}: {d.name}" for d in devices))
        return devices

    async def _use_docker(self) -> bool:
        """``docker``: yes (an engine must answer); ``auto``: only when an engine
        answers and has the default base image; ``process``: no."""
        mode = self.config.runtime
        if mode == "process":
            return False
        import aiodocker

        docker = aiodocker.Docker()
        try:
            await asyncio.wait_for(docker.version(), 5)
            if mode == "docker":
                return True
            base = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
            await asyncio.wait_for(docker.images.inspect(base), 5)
            return True
        except Exception as exc:
            if mode == "docker":
                raise StartupError(
                    f"--runtime docker: no Docker engine answers at "
                    f"{os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} ({exc})") from None
            log.info("runtime auto: using the process runtime (%s)", exc or type(exc).__name__)
            return False
        finally:
            await docker.close()

    async def _start_docker(self):
        import aiodocker

        from chalkd.containers.manager import ContainerManager
        from chalkd.images.docker_build import DockerImageBuilder
        from chalkd.runtime.docker import DockerRuntime

        cfg = self.config
        self.docker = aiodocker.Docker()
        builder = DockerImageBuilder(self.docker, self.home, ca_bundle=cfg.build_ca_bundle)
        rdir = run_dir(self.home)
        self.runtime = DockerRuntime(self.home, docker=self.docker, builder=builder, run_dir=rdir,
                                     instance_id=self.instance_id, blobs=self.blobs, pids_limit=cfg.pids_limit)
        self.containers = ContainerManager(self.docker, builder, self.blobs, home=self.home, run_dir=rdir,
                                           pids_limit=cfg.pids_limit)
        # What an earlier run left: its calls were re-queued by queue recovery above.
        await self.runtime.remove_leftovers()
        await self.containers.remove_leftovers()
        return builder

    async def _sweep(self) -> None:
        """Drop finished calls past their function's result TTL, every sweep interval."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                expire_results(self.queue, time.time())
            except Exception:
                log.exception("expiring old results failed")

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._stopped.set)
            except (NotImplementedError, RuntimeError):
                pass
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Stop accepting, drain in-flight calls, stop replicas, close the store."""
        log.info("chalkd shutting down")
        if getattr(self, "_sweeper", None) is not None:
            self._sweeper.cancel()
        await self.scaler.shutdown()
        if self.fast is not None:
            await self.fast.close()
        if self.containers is not None:
            await self.containers.close()
        for grpc in (self._grpc, getattr(self, "_grpc_unix", None)):
            if grpc is None:
                continue
            grpc.close()
            try:
                await asyncio.wait_for(grpc.wait_closed(), 5)
            except asyncio.TimeoutError:
                log.warning("some streams did not close within 5s")
        for target in getattr(self, "_records", ()):
            _auth.remove_record(target, self.token)
        await self.store.close()
        await self.runtime.close()
        if self.docker is not None:
            await self.docker.close()
        log.info("chalkd stopped")
