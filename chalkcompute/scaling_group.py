"""Scaling groups: an HTTP service as a group of replicas of one image behind one URL.

    from chalkcompute import Image, ReadinessProbe, ScalingGroup

    img = (
        Image.debian_slim()
        .pip_install(["flask"])
        .add_local_file("./app.py", "/app/app.py")
        .entrypoint(["python", "/app/app.py"])
    )
    sg = ScalingGroup(image=img, name="web", port=8080, max_replicas=3,
                      readiness_probe=ReadinessProbe.http("/health")).deploy().wait_ready()
    sg.web_url                                   # 'http://127.0.0.1:51000'
    sg.call("/health", method="GET").status_code  # 200 (an httpx.Response)
    sg.deploy()                                  # again: a rolling redeploy, no request fails
    sg.delete()

Every method blocks; each has an async twin (``await sg.deploy.aio()``,
``await sg.call.aio("/")``). Groups need chalkd's Docker runtime.

The daemon serves each group on a port of its own (``chalkd serve
--group-ports``, on the daemon's host) and proxies each request to the ready
replica with the fewest requests in flight; replicas scale between
``min_replicas`` and ``max_replicas`` on the requests in flight. With
``authenticated=True`` a request needs ``Authorization: Bearer <key>``;
:meth:`ScalingGroup.call` adds it (``info.auth_key`` holds it for other
clients).

Differences from the reference, on purpose: ``wait_ready``'s
``poll_interval=None`` (the default) waits on the daemon's long-poll, and
``deploy``'s ``poll_interval`` is the longest wait between two looks (a change
is seen at once); statuses are the reference's "Pending", "Running",
"Failed" and "ScaledToZero".
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json as _json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from secrets import token_hex
from typing import Any, TypeVar

from grpclib.client import UnaryUnaryMethod

from chalkcompute import _rpc
from chalkcompute._bridge import Twin, on_new_loop, run_sync
from chalkcompute._build import ImageBuildFailed, prepare_image
from chalkcompute._client import Client
from chalkcompute._contract import Probe, name_too_long, quote, valid_container_name
from chalkcompute._mounts import check_secrets, secret_refs, volume_mounts
from chalkcompute._options import parse_cpu, parse_memory
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ScalingGroupsStub
from chalkcompute.exceptions import (
    ErrorKind,
    ScalingGroupBuildError,
    ScalingGroupError,
    ScalingGroupNotFoundError,
)
from chalkcompute.image import Image

__all__ = ["ScalingGroup", "ScalingGroupInfo", "ScalingGroupReplica", "ReadinessProbe", "ScalingGroupError",
           "ScalingGroupNotFoundError", "ScalingGroupBuildError"]

S = TypeVar("S")
R = TypeVar("R")

MAX_REPLICAS = 64


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ReadinessProbe(Probe):
    """When a replica takes requests: ``ReadinessProbe.tcp()`` (the default: the port accepts a
    connection) or ``ReadinessProbe.http("/health")`` (a 2xx or 3xx answer to ``GET /health``).
    A new replica is probed every ~100 ms until it first passes, then every ``period_seconds``;
    ``failure_threshold`` failures in a row take it out of rotation until it passes again."""

    @classmethod
    def http(cls, path: str = "/", period_seconds: float = 5, timeout_seconds: float = 2,
             failure_threshold: int = 3) -> ReadinessProbe:
        return cls("http", path, period_seconds, timeout_seconds, failure_threshold)

    @classmethod
    def tcp(cls, period_seconds: float = 5, timeout_seconds: float = 2, failure_threshold: int = 3) -> ReadinessProbe:
        return cls("tcp", "/", period_seconds, timeout_seconds, failure_threshold)

    def _to_proto(self) -> pb.ReadinessProbeSpec:
        return pb.ReadinessProbeSpec(kind=self.kind, path=self.path, period_seconds=self.period_seconds,
                                     timeout_seconds=self.timeout_seconds, failure_threshold=self.failure_threshold)


@dataclass(frozen=True)
class ScalingGroupReplica:
    id: str
    revision: int
    state: str          # waiting | starting | ready | unready | draining | stopping
    in_flight: int
    address: str
    error: str = ""


@dataclass(frozen=True)
class ScalingGroupInfo:
    """Metadata about a scaling group: the reference's six fields first, then what chalkd adds
    (``revision`` being served, ``target_revision`` rolling out, why the last rollout was abandoned,
    replicas, the autoscaler's last decision)."""

    id: str
    name: str
    status: str
    web_url: str | None
    ready_replicas: int
    available_replicas: int
    status_message: str = ""
    revision: int = 0
    target_revision: int = 0
    rollout_error: str = ""
    desired_replicas: int = 0
    min_replicas: int = 0
    max_replicas: int = 0
    in_flight: int = 0
    last_decision: str = ""
    replicas: tuple[ScalingGroupReplica, ...] = ()
    auth_key: str | None = field(default=None, repr=False)

    @classmethod
    def _from_pb(cls, i: pb.ScalingGroupInfo) -> ScalingGroupInfo:
        return cls(id=i.id, name=i.name, status=i.status, web_url=i.web_url or None, ready_replicas=i.ready_replicas,
                   available_replicas=i.available_replicas, status_message=i.status_message, revision=i.revision,
                   target_revision=i.target_revision, rollout_error=i.rollout_error,
                   desired_replicas=i.desired_replicas, min_replicas=i.min_replicas, max_replicas=i.max_replicas,
                   in_flight=i.in_flight, last_decision=i.last_decision,
                   replicas=tuple(ScalingGroupReplica(r.id, r.revision, r.state, r.in_flight, r.address, r.error)
                                  for r in i.replicas),
                   auth_key=i.auth_key or None)


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_REPLICAS:
        raise ValueError(f"{what} must be an integer from {low} to {MAX_REPLICAS}, got {value!r}")
    return value


class ScalingGroup:
    """A managed scaling group on chalkd (see the module docstring)."""

    def __init__(self, *, image: Image | str, name: str | None = None, port: int = 8080,
                 cpu: str | int | float | None = None, memory: str | int | None = None, gpu: str | None = None,
                 env: Mapping[str, str] | None = None, secrets: list | None = None, volumes: list | None = None,
                 entrypoint: list[str] | None = None, min_replicas: int = 1, max_replicas: int = 1,
                 readiness_probe: ReadinessProbe | None = None, authenticated: bool = False,
                 target: str | None = None) -> None:
        if isinstance(image, str):
            image = Image.base(image)
        elif not isinstance(image, Image):
            raise TypeError(f"image must be a chalkcompute.Image or an image reference string, got {image!r}")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a str, got {name!r}")
            too_long = name_too_long("scaling group name", name)
            if too_long:
                raise ValueError(too_long)
            if not valid_container_name(name):
                raise ValueError(f"name {quote(name)} is not DNS-safe: use lower-case letters, digits and '-', "
                                 "starting and ending with a letter or digit, at most 63 characters")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
        if gpu is not None and not isinstance(gpu, str):
            raise TypeError(f"gpu must be a string such as 'nvidia-l4' or 'A100:2', got {gpu!r}")
        if entrypoint is not None and (isinstance(entrypoint, str)
                                       or not all(isinstance(a, str) for a in entrypoint) or not entrypoint):
            raise TypeError(f"entrypoint must be a non-empty list of str, got {entrypoint!r}")
        self.min_replicas = _count(min_replicas, "min_replicas", 0)
        self.max_replicas = _count(max_replicas, "max_replicas", 1)
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({min_replicas}) is more than max_replicas ({max_replicas})")
        if readiness_probe is not None and not isinstance(readiness_probe, ReadinessProbe):
            raise TypeError(f"readiness_probe must be a ReadinessProbe (ReadinessProbe.http('/health') or "
                            f"ReadinessProbe.tcp()), got {readiness_probe!r}")
        if not isinstance(authenticated, bool):
            raise TypeError(f"authenticated must be True or False, got {authenticated!r}")
        self.env = dict(env or {})
        for k, v in self.env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"env must map str to str, got {k!r}: {v!r}")
        self.image: Image | None = image
        self.name = name
        self.port = port
        self.cpu_millis = parse_cpu(cpu) if cpu is not None else 0
        self.memory_bytes = parse_memory(memory) if memory is not None else 0
        self.gpu = gpu or ""
        self.secrets = check_secrets(secrets)
        self.volumes = volume_mounts(volumes)
        self.entrypoint = list(entrypoint or ())
        self.readiness_probe = readiness_probe
        self.authenticated = authenticated
        self.target = target
        self.id: str | None = None
        self.info: ScalingGroupInfo | None = None

    # -- plumbing -----------------------------------------------------------------------

    @property
    def _client(self) -> Client:
        return Client.get(self.target)

    @property
    def _stub(self) -> ScalingGroupsStub:
        return ScalingGroupsStub(self._client.channel)  # made on use, on the SDK loop: the channel is its

    async def _call_rpc(self, method: UnaryUnaryMethod[S, R], request: S, timeout: float | None = 60.0) -> R:
        return await _rpc.unary(method, request, target=self._client.target, timeout=timeout,
                                kind=ErrorKind.SCALING_GROUP)

    def _adopt(self, info: pb.ScalingGroupInfo) -> ScalingGroupInfo:
        self.id, self.name = info.id, info.name
        self.info = adopted = ScalingGroupInfo._from_pb(info)
        return adopted

    @property
    def web_url(self) -> str | None:
        """The group's URL (None before deploy)."""
        return self.info.web_url if self.info else None

    @property
    def status(self) -> str | None:
        return self.info.status if self.info else None

    # -- attaching ----------------------------------------------------------------------

    @classmethod
    def _attached(cls, info: pb.ScalingGroupInfo, target: str | None) -> ScalingGroup:
        sg = cls.__new__(cls)
        sg.image, sg.name, sg.port, sg.cpu_millis, sg.memory_bytes, sg.gpu = None, info.name, 0, 0, 0, ""
        sg.env, sg.secrets, sg.volumes, sg.entrypoint = {}, [], [], []
        sg.min_replicas, sg.max_replicas, sg.readiness_probe = info.min_replicas, info.max_replicas, None
        sg.authenticated, sg.target, sg.id, sg.info = bool(info.auth_key), target, None, None
        sg._adopt(info)
        return sg

    async def _from_id(cls: type[ScalingGroup], id: str, *, target: str | None = None) -> ScalingGroup:  # type: ignore[misc]
        """The group ``id``, checked now: ScalingGroupNotFoundError when there is none."""
        if not isinstance(id, str) or not id:
            raise ValueError(f"give a scaling group id, got {id!r}")
        probe = cls._attached(pb.ScalingGroupInfo(id=id), target)
        info = await probe._call_rpc(probe._stub.Get, pb.GetScalingGroupRequest(id=id))
        return cls._attached(info, target)

    async def _from_name(cls: type[ScalingGroup], name: str, *, target: str | None = None) -> ScalingGroup:  # type: ignore[misc]
        """The group named ``name``, checked now: ScalingGroupNotFoundError when there is none."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"give a scaling group name, got {name!r}")
        too_long = name_too_long("scaling group name", name)
        if too_long:
            raise ValueError(too_long)
        probe = cls._attached(pb.ScalingGroupInfo(name=name), target)
        info = await probe._call_rpc(probe._stub.Get, pb.GetScalingGroupRequest(name=name))
        return cls._attached(info, target)

    from_id = Twin(_from_id, name="from_id", on_class=True)
    from_name = Twin(_from_name, name="from_name", on_class=True)

    # -- deploy and wait ----------------------------------------------------------------------

    def _spec(self) -> pb.ScalingGroupSpec:
        assert self.image is not None and self.name is not None
        spec = pb.ScalingGroupSpec(
            name=self.name, image=self.image.to_proto(), port=self.port,
            resources=pb.Resources(cpu_millis=self.cpu_millis, memory_bytes=self.memory_bytes, gpu=self.gpu),
            env=self.env, volumes=self.volumes, entrypoint=self.entrypoint, min_replicas=self.min_replicas,
            max_replicas=self.max_replicas, authenticated=self.authenticated)
        if self.readiness_probe is not None:
            spec.readiness_probe.CopyFrom(self.readiness_probe._to_proto())
        refs, local_secrets = secret_refs(self.secrets)
        spec.secrets.extend(refs)
        spec.local_secrets.update(local_secrets)
        return spec

    async def _deploy(self, poll_interval: float = 0.5, build_timeout: float = 600.0,
                      ready_timeout: float = 300.0) -> ScalingGroup:
        """Build the image (its log shown here), create the group or roll out a new revision of it, and
        wait until that revision serves (or, with min_replicas=0, is deployed). Returns self."""
        poll = _seconds(poll_interval, "poll_interval")
        build_s = _seconds(build_timeout, "build_timeout")
        ready_s = _seconds(ready_timeout, "ready_timeout")
        if self.image is None:
            raise ScalingGroupError("this handle came from from_id/from_name and has no image to deploy; "
                                    "deploy a ScalingGroup(image=...) with the same name to roll out a new revision")
        if self.name is None:
            self.name = f"group-{token_hex(4)}"
        what = f"scaling group {self.name!r}"
        # First, a cheap question: a daemon that cannot run groups (the process runtime) says so now,
        # not after an image build it cannot do either.
        await self._call_rpc(self._stub.List, pb.ListScalingGroupsRequest())
        try:
            await prepare_image(self._client, self.image, what=what, timeout=build_s)
        except ImageBuildFailed as exc:
            raise ScalingGroupBuildError(f"the image of {what} failed to build: {exc}", exc.step, exc.tail) from None
        info = self._adopt(await self._call_rpc(self._stub.Deploy, pb.DeployScalingGroupRequest(spec=self._spec())))
        revision = info.target_revision
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_s
        while True:
            if info.revision >= revision and info.status in ("Running", "ScaledToZero"):
                return self
            if info.status == "Failed":
                raise _failed(info)
            if info.target_revision < revision and info.rollout_error:
                raise ScalingGroupError(f"{what}: the rollout of revision {revision} was abandoned, revision "
                                        f"{info.revision} keeps serving: {info.rollout_error}")
            left = deadline - loop.time()
            if left <= 0:
                raise ScalingGroupError(f"{what}: revision {revision} was not serving within "
                                        f"ready_timeout={ready_s:g}s ({info.status}: {info.status_message})")
            info = await self._refresh(wait=min(poll, left))

    deploy = Twin(_deploy)

    async def _wait_ready(self, timeout: float = 120.0, poll_interval: float | None = None) -> ScalingGroup:
        """Wait until the group has at least one ready replica; a group scaled to zero starts one.
        Returns self; ScalingGroupError when it is Failed or not ready within ``timeout``."""
        timeout_s = _seconds(timeout, "timeout")
        poll = None if poll_interval is None else _seconds(poll_interval, "poll_interval")
        if self.id is None and self.name is None:
            raise ScalingGroupError("this scaling group was never deployed: call deploy() first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        info = await self._refresh(wake=True)
        while info.ready_replicas < 1:
            if info.status == "Failed":
                raise _failed(info)
            left = deadline - loop.time()
            if left <= 0:
                raise ScalingGroupError(f"scaling group {info.name!r} had no ready replica within {timeout_s:g}s "
                                        f"({info.status}: {info.status_message})")
            if poll is None:
                info = await self._refresh(wait=min(left, 30.0))
            else:
                await asyncio.sleep(min(poll, left))
                info = await self._refresh(wake=True)
        return self

    wait_ready = Twin(_wait_ready)

    async def _refresh(self, wait: float = 0.0, wake: bool = False) -> ScalingGroupInfo:
        """Fetch the latest info from the daemon (ScalingGroupError if never deployed)."""
        if self.id is None and self.name is None:
            raise ScalingGroupError("this scaling group has no id: deploy() was never called")
        req = pb.GetScalingGroupRequest(id=self.id or "", name="" if self.id else (self.name or ""),
                                        wait_seconds=wait, wake=wake)
        return self._adopt(await self._call_rpc(self._stub.Get, req, timeout=wait + 60))

    refresh = Twin(_refresh)

    # -- requests ----------------------------------------------------------------------

    async def _call(self, path: str = "/", *, method: str = "POST", json: Any = None, data: bytes | str | None = None,
                    headers: Mapping[str, str] | None = None, timeout: float = 30.0):
        """An HTTP request to the group (``web_url`` + ``path``): an ``httpx.Response``."""
        if json is not None and data is not None:
            raise ValueError("give json or data, not both")
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, got {path!r}")
        timeout_s = _seconds(timeout, "timeout")
        if self.id is None:
            raise ScalingGroupError(f"scaling group {self.name!r} has no web_url yet: deploy() it first")
        info = self.info if self.info is not None and self.info.web_url else await self._refresh()
        if not info.web_url:
            raise ScalingGroupError(f"scaling group {info.name!r} has no web_url yet ({info.status}); deploy() it")
        sent = dict(headers or {})
        if info.auth_key and not any(k.lower() == "authorization" for k in sent):
            sent["Authorization"] = f"Bearer {info.auth_key}"
        body: bytes | str | None = data
        if json is not None:
            body = _json.dumps(json).encode()
            if not any(k.lower() == "content-type" for k in sent):
                sent["Content-Type"] = "application/json"
        url = info.web_url.rstrip("/") + ("" if path.startswith("/") else "/") + path
        return await _http_client().request(method, url, content=body, headers=sent, timeout=timeout_s)

    call = Twin(_call)

    async def _delete(self) -> None:
        """Delete the group: its URL stops answering, its replicas stop. Harmless twice."""
        if self.id is None and self.name is None:
            raise ScalingGroupError("this scaling group has no id: deploy() was never called")
        try:
            resp = await self._call_rpc(self._stub.Delete, pb.DeleteScalingGroupRequest(
                id=self.id or "", name="" if self.id else (self.name or "")), timeout=120)
            self._adopt(resp.info)
        except ScalingGroupNotFoundError:
            pass

    delete = Twin(_delete)

    def __repr__(self) -> str:
        status = self.info.status if self.info else "not deployed"
        return f"ScalingGroup(name={self.name!r}, id={self.id!r}, status={status!r})"


_HTTP: Any = None   # one httpx.AsyncClient for every group's call(), on the SDK loop (its connections pool)


def _http_client() -> Any:
    global _HTTP
    if _HTTP is None:
        import httpx

        _HTTP = httpx.AsyncClient()
    return _HTTP


def _forget_http() -> None:
    global _HTTP
    _HTTP = None   # a new SDK loop (a forked child): the old client's connections belong to the old one


def _close_http() -> None:
    client = _HTTP
    if client is not None:
        with contextlib.suppress(Exception):
            run_sync(client.aclose(), timeout=2)


on_new_loop(_forget_http)
atexit.register(_close_http)


def _failed(info: ScalingGroupInfo) -> ScalingGroupError:
    message = f"scaling group {info.name!r} is Failed: {info.status_message}"
    if info.status_message.startswith("image build failed"):
        return ScalingGroupBuildError(message)
    return ScalingGroupError(message)
