"""Long-running containers: build an Image, run it, exec commands in it, stop it.

    from chalkcompute import Container, Image

    img = Image.debian_slim().pip_install(["requests"]).add_local_file("./script.py", "/app/script.py")
    c = Container(image=img, name="hello-container", cpu="1", memory="2Gi", env={"LOG_LEVEL": "INFO"}).run()
    result = c.exec("python", "/app/script.py")
    result.stdout_text            # 'hello\\n'
    err = c.exec("ls", "/does-not-exist")
    err.exit_code, err.stderr_text  # 2, "ls: cannot access '/does-not-exist': No such file or directory\\n"
    c.stop()

Every method has an async twin: ``await c.run.aio()``, ``await c.exec.aio("ls")``.
Containers need chalkd's Docker runtime (``chalkd serve --runtime docker``).
Their image always has our agent as its main process: it starts the image's
own entrypoint/cmd, if any, and keeps the container up so ``exec`` works.
A container outlives the daemon: after a chalkd restart, ``Container.from_name``
finds it still Running until ``stop()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from grpclib.client import UnaryUnaryMethod

from chalkcompute import _rpc
from chalkcompute._bridge import Twin
from chalkcompute._build import ImageBuildFailed, prepare_image
from chalkcompute._client import Client
from chalkcompute._contract import name_too_long, quote, valid_container_name
from chalkcompute._exec import ExecResult
from chalkcompute._mounts import check_secrets, secret_refs, volume_mounts
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ContainersStub
from chalkcompute.exceptions import ChalkError, ContainerError, ErrorKind, ImageBuildError
from chalkcompute.functions import parse_cpu, parse_memory
from chalkcompute.image import Image

__all__ = ["Container", "ContainerInfo", "ExecResult"]

S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True)
class ContainerInfo:
    """Metadata about a container: ``status`` is "Pending", "Running", "Stopped" or "Failed";
    ``pod_name`` is the engine's container name; ``web_url`` is None (no port is published)."""

    id: str
    name: str
    status: str
    pod_name: str
    web_url: str | None = None
    error: str | None = None

    @classmethod
    def _from_pb(cls, info: pb.ContainerInfo) -> ContainerInfo:
        return cls(id=info.id, name=info.name, status=info.status, pod_name=info.pod_name,
                   web_url=info.web_url or None, error=info.error or None)


class Container:
    """A managed container on chalkd (see the module docstring)."""

    def __init__(self, image: Image | str, name: str | None = None, cpu: str | int | float | None = None,
                 memory: str | int | None = None, env: Mapping[str, str] | None = None, *,
                 volumes: list | None = None, secrets: list | None = None, target: str | None = None) -> None:
        if isinstance(image, str):
            self._ref: str | None = image
            image = Image.base(image)
        elif isinstance(image, Image):
            self._ref = None
        else:
            raise TypeError(f"image must be a chalkcompute.Image or an image reference string, got {image!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        too_long = name_too_long("container name", name)  # first: nothing below reads a long name
        if too_long:
            raise ValueError(too_long)
        if name is not None and not valid_container_name(name):
            raise ValueError(f"name {quote(name)} is not DNS-safe: use lower-case letters, digits and '-', "
                             "starting and ending with a letter or digit, at most 63 characters")
        self.image: Image | None = image
        self.name = name
        self.cpu_millis = parse_cpu(cpu) if cpu is not None else 0
        self.memory_bytes = parse_memory(memory) if memory is not None else 0
        self.env = dict(env or {})
        for k, v in self.env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"env must map str to str, got {k!r}: {v!r}")
        self.volumes = volume_mounts(volumes)
        self.secrets = check_secrets(secrets)
        self.target = target
        self.id: str | None = None
        self.info: ContainerInfo | None = None
        self._image_uri: str | None = None

    @property
    def container_id(self) -> str | None:
        """Same as :attr:`id`."""
        return self.id

    @property
    def image_uri(self) -> str | None:
        """The local tag of the built image (the reference itself for a string image); None before run."""
        if self._image_uri is None:
            return None
        return self._ref or self._image_uri

    @property
    def _client(self) -> Client:
        return Client.get(self.target)

    @property
    def _stub(self) -> ContainersStub:
        # Made on use, on the SDK loop: the channel belongs to it.
        return ContainersStub(self._client.channel)

    async def _call(self, method: UnaryUnaryMethod[S, R], request: S, timeout: float | None = 60.0) -> R:
        """A Containers RPC: every failure is a ContainerError (the table's CONTAINER rows)."""
        client = self._client
        return await _rpc.unary(method, request, target=client.target, timeout=timeout, kind=ErrorKind.CONTAINER)

    def _adopt(self, info: pb.ContainerInfo) -> ContainerInfo:
        self.id, self.name = info.id, info.name
        self._image_uri = info.image_uri or self._image_uri
        self.info = adopted = ContainerInfo._from_pb(info)
        return adopted

    # -- attaching ----------------------------------------------------------------

    @classmethod
    def _attached(cls, info: pb.ContainerInfo, target: str | None) -> Container:
        c = cls.__new__(cls)
        c.image, c._ref, c.name, c.cpu_millis, c.memory_bytes, c.env = None, None, info.name, 0, 0, {}
        c.volumes, c.secrets = [], []
        c.target, c.id, c.info, c._image_uri = target, None, None, None
        c._adopt(info)
        return c

    async def _from_id(cls, container_id: str, *, target: str | None = None) -> Container:
        """Attach to an existing container by id; raises ContainerError if there is none."""
        return await cls._lookup(pb.GetContainerRequest(id=container_id), target)

    async def _from_name(cls, name: str, *, target: str | None = None) -> Container:
        """Attach to an existing container by name; raises ContainerError if there is none."""
        too_long = name_too_long("container name", name)  # before anything reads it
        if too_long:
            raise ValueError(too_long)
        return await cls._lookup(pb.GetContainerRequest(name=name), target)

    # Class-bound twins: ``Container.from_id(id)`` blocks, ``await Container.from_id.aio(id)``.
    from_id = Twin(_from_id, name="from_id", on_class=True)
    from_name = Twin(_from_name, name="from_name", on_class=True)

    @classmethod
    async def _lookup(cls, request: pb.GetContainerRequest, target: str | None) -> Container:
        if not (request.id or request.name):
            raise ValueError("give a container id or name")
        probe = cls._attached(pb.ContainerInfo(), target)
        resp = await probe._call(probe._stub.Get, request)
        return cls._attached(resp.info, target)

    # -- lifecycle ----------------------------------------------------------------

    async def _run(self, poll_interval: float = 1.0, build_timeout: float = 600.0,
                   start_timeout: float = 300.0) -> Container:
        """Build the image (log in this terminal), upload lazy files, start, and wait for Running.

        ``poll_interval`` is the longest the SDK waits between status checks
        while the container starts; ``build_timeout`` and ``start_timeout``
        bound the two phases. Raises :class:`ImageBuildError` or :class:`ContainerError`.
        """
        for label, value in (("poll_interval", poll_interval), ("build_timeout", build_timeout),
                             ("start_timeout", start_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        if self.image is None:
            raise ContainerError("this handle was attached with from_id/from_name: it is already running")
        if self.id is not None and self.info is not None and self.info.status in ("Pending", "Running"):
            return self
        what = f"container {self.name!r}" if self.name else "a container"
        try:
            built = await prepare_image(self._client, self.image, what=what, timeout=build_timeout)
        except ImageBuildFailed as exc:
            raise ImageBuildError(f"the image of {what} failed to build: {exc}", exc.step, exc.tail) from None
        except ChalkError as exc:
            raise ContainerError(str(exc)) from None
        self._image_uri = built.image_ref
        spec = pb.ContainerSpec(name=self.name or "", image=self.image.to_proto(),
                                resources=pb.Resources(cpu_millis=self.cpu_millis, memory_bytes=self.memory_bytes),
                                env=self.env, volumes=self.volumes)
        # Local secrets are read now; their values travel beside the spec, stored under the container.
        refs, local_secrets = secret_refs(self.secrets)
        spec.secrets.extend(refs)
        spec.local_secrets.update(local_secrets)
        resp = await self._call(self._stub.Create, pb.CreateContainerRequest(spec=spec, start_timeout=start_timeout))
        info = self._adopt(resp.info)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout + 5
        while info.status == "Pending":
            left = deadline - loop.time()
            if left <= 0:
                raise ContainerError(f"{what} was not Running within start_timeout={start_timeout:g}s")
            wait = min(poll_interval, left)
            resp = await self._call(self._stub.Get, pb.GetContainerRequest(id=self.id, wait_seconds=wait),
                                    timeout=wait + 30)
            info = self._adopt(resp.info)
        if info.status != "Running":
            raise ContainerError(f"{what} {info.error or 'did not start'} (status {info.status})")
        return self

    run = Twin(_run)

    async def _exec(self, *cmd: str, timeout: float | None = None) -> ExecResult:
        """Run a command in the container and return its whole output (like ``docker exec``)."""
        if self.id is None:
            raise ContainerError("the container is not running: call run() first")
        if not cmd:
            raise ValueError("exec needs a command, e.g. c.exec('ls', '/')")
        for part in cmd:
            if not isinstance(part, str):
                raise TypeError(f"every part of the command must be a str, got {part!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        rpc_timeout = None if timeout is None else timeout + 30
        request = pb.ExecRequest(container_id=self.id, argv=list(cmd), timeout=timeout or 0)
        resp = await self._call(self._stub.Exec, request, timeout=rpc_timeout)
        return ExecResult(
            stdout_text=resp.stdout.decode(errors="replace"), stderr_text=resp.stderr.decode(errors="replace"),
            exit_code=resp.exit_code if resp.HasField("exit_code") else None,
            signal=resp.signal if resp.HasField("signal") else None,
            pid=resp.pid or None, error=resp.error or None)

    exec = Twin(_exec)

    async def _stop(self, grace_period: float | None = None) -> None:
        """Stop the container (SIGTERM, then SIGKILL after ``grace_period`` seconds) and remove what run created."""
        if self.id is None:
            raise ContainerError("the container was never started: nothing to stop")
        if grace_period is not None and (isinstance(grace_period, bool) or not isinstance(grace_period, (int, float))
                                         or grace_period < 0):
            raise ValueError(f"grace_period must be a non-negative number of seconds, got {grace_period!r}")
        resp = await self._call(self._stub.Stop, pb.StopContainerRequest(id=self.id, grace_period=grace_period or 0),
                                timeout=(grace_period or 0) + 60)
        self._adopt(resp.info)

    stop = Twin(_stop)

    async def _refresh_info(self) -> ContainerInfo:
        """Fetch the latest state from chalkd."""
        if self.id is None:
            raise ContainerError("no container id: run() was never called")
        resp = await self._call(self._stub.Get, pb.GetContainerRequest(id=self.id))
        return self._adopt(resp.info)

    refresh_info = Twin(_refresh_info)

    def __repr__(self) -> str:
        status = self.info.status if self.info else "not started"
        return f"Container(name={self.name!r}, id={self.id!r}, status={status!r})"
