"""Sandboxes: long-lived isolated environments driven command by command.

    from chalkcompute import Image, SandboxClient

    client = SandboxClient()                       # $CHALK_COMPUTE_TARGET, else 127.0.0.1:50051
    sandbox = client.create(image=Image.debian_slim().pip_install(["numpy"]), name="scratch")
    sandbox.exec("python", "-c", "import numpy; print(numpy.__version__)").stdout_text   # '1.26.4\\n'
    for event in sandbox.exec_stream("sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"):
        print(event.stdout, end="")                # each line as it comes
    proc = sandbox.exec_start("cat")               # stdin, signals, reattach: chalkcompute._exec
    proc.write_stdin("hi\\n"); proc.close_stdin(); proc.wait().stdout_text               # 'hi\\n'
    sandbox.fs.write_bytes("/tmp/in.csv", b"a,b\\n1,2\\n")
    sandbox.terminate()

Every method blocks; each has an async twin (``await client.create.aio(...)``,
``await sandbox.exec.aio("ls")``, ``async for e in proc``).

A sandbox needs chalkd's Docker runtime. Any image works, with or without
Python (``"ubuntu:latest"`` or an :class:`Image`): the daemon builds it without
its runtime layer and runs its own agent in it. Statuses: ``"building"`` (the
image builds, resources are waited for, the container starts) → ``"ready"``,
or ``"error"``; then ``"terminated"``.

Differences from the reference, on purpose: ``target`` defaults to the SDK's
daemon rather than ``localhost:50051`` (the same thing unless
``$CHALK_COMPUTE_TARGET`` says otherwise); ``credentials`` is an
``ssl.SSLContext``, a CA bundle path or True (chalkd does not use grpcio);
``poll_interval=None`` (the default) waits on the daemon's long-poll, so
``create`` returns the moment the sandbox is ready instead of up to 5 seconds
later; a number polls at most that many seconds apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from grpclib.client import UnaryUnaryMethod

from chalkcompute import _rpc
from chalkcompute._bridge import Twin
from chalkcompute._build import ImageBuildFailed, prepare_image
from chalkcompute._client import Client, default_target
from chalkcompute._contract import name_too_long, path_too_long, quote
from chalkcompute._exec import ExecEvent, ExecProcess, ExecResult
from chalkcompute._mounts import check_secrets, secret_refs, volume_mounts
from chalkcompute._options import parse_cpu, parse_memory
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import SandboxesStub
from chalkcompute._sandbox_files import SandboxFileEntry, SandboxFiles
from chalkcompute.exceptions import (
    ErrorKind,
    ExecError,
    SandboxBuildError,
    SandboxCreationError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatusError,
    SandboxTerminatedError,
)
from chalkcompute.image import Image

__all__ = [
    "SandboxClient", "Sandbox", "SandboxInfo", "SandboxFiles", "SandboxFileEntry", "ExecEvent", "ExecProcess",
    "ExecResult", "SandboxError", "SandboxNotFoundError", "SandboxStatusError", "SandboxTerminatedError",
    "SandboxBuildError", "SandboxCreationError", "ExecError", "VolumeMount", "parse_duration",
]

S = TypeVar("S")
R = TypeVar("R")

#: The reference's volume mount type: ``VolumeMount(volume="data", path="/data")``.
VolumeMount = pb.VolumeMount

DEFAULT_GRACE = 10.0       # terminate()'s grace period when none is given
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: float | int | str, what: str = "lifetime") -> float:
    """Seconds from a number or a duration string.

        >>> parse_duration("30m"), parse_duration(90), parse_duration("1.5h")
        (1800.0, 90.0, 5400.0)
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be seconds or a duration such as '30m', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{what} must be seconds or a duration such as '30m', '2h', '45s', got {quote(value)}")
    if not seconds > 0:
        raise ValueError(f"{what} must be positive, got {quote(value)}")
    return seconds


def _positive(value: Any, what: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return float(value)


def _argv(command: str, args: tuple) -> list[str]:
    argv = [command, *args]
    for part in argv:
        if not isinstance(part, str):
            raise TypeError(f"every part of the command must be a str, got {part!r}")
    if not command:
        raise ValueError("exec needs a command, e.g. sandbox.exec('ls', '/')")
    return argv


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(env or {})
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"env must map str to str, got {k!r}: {v!r}")
    return out


@dataclass(frozen=True)
class SandboxInfo:
    """What the daemon knows about a sandbox. ``cpu``/``memory``/``gpu`` are what was reserved (None:
    nothing reserved, the defaults cap it); ``isolation`` says what is in force (runtime, network,
    capabilities, limits); ``created_at`` and ``expires_at`` are aware UTC datetimes."""

    id: str
    name: str
    status: str
    status_message: str
    status_details: dict[str, str]
    image: str
    created_at: datetime
    cpu: str | None = None
    memory: str | None = None
    gpu: str | None = None
    isolation: dict[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None

    @classmethod
    def _from_pb(cls, i: pb.SandboxInfo) -> SandboxInfo:
        return cls(id=i.id, name=i.name, status=i.status, status_message=i.status_message,
                   status_details=dict(i.status_details), image=i.image,
                   created_at=datetime.fromtimestamp(i.created_at, tz=UTC), cpu=i.cpu or None,
                   memory=i.memory or None, gpu=i.gpu or None, isolation=dict(i.isolation),
                   expires_at=datetime.fromtimestamp(i.expires_at, tz=UTC) if i.expires_at else None)


class SandboxClient:
    """Client for chalkd's Sandboxes service (see the module docstring).

    ``target``: ``"host:port"`` or ``"unix:/path"``; None means ``$CHALK_COMPUTE_TARGET`` or the
    default daemon. ``credentials``: TLS (an ``ssl.SSLContext``, a CA bundle path or True).
    ``metadata``: ``[(key, value), ...]`` sent with every call.
    """

    def __init__(self, target: str | None = None, credentials: ssl.SSLContext | str | bool | None = None,
                 metadata: list[tuple[str, str]] | None = None) -> None:
        md = _rpc.check_metadata(metadata)
        self.target = target or default_target()
        self._client = Client.get(self.target, credentials=credentials)
        self._metadata = md
        self.closed = False

    @property
    def _stub(self) -> SandboxesStub:
        return SandboxesStub(self._client.channel)  # made on use, on the SDK loop: the channel is its

    async def _call(self, method: UnaryUnaryMethod[S, R], request: S, timeout: float | None = 60.0) -> R:
        if self.closed:
            raise SandboxError(f"the SandboxClient for {self.target} is closed")
        return await _rpc.unary(method, request, target=self.target, timeout=timeout, metadata=self._metadata,
                                kind=ErrorKind.SANDBOX)

    def close(self) -> None:
        """End this client (the process's connection to the daemon stays for others)."""
        self.closed = True

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _create(self, image: Image | str | None = None, *, name: str | None = None,
                      cpu: str | int | float | None = None, memory: str | int | None = None,
                      gpu: str | None = None, env: Mapping[str, str] | None = None, secrets: list | None = None,
                      volumes: list | None = None, entrypoint: list[str] | None = None, network: bool = True,
                      lifetime: float | str | None = None, wait: bool = True, poll_interval: float | None = None,
                      timeout: float = 600.0) -> Sandbox:
        """Create a sandbox; with ``wait`` (default) return once it is ready (see the module docstring)."""
        if image is None:
            image = Image.debian_slim()
        elif isinstance(image, str):
            image = Image.base(image)
        elif not isinstance(image, Image):
            raise TypeError(f"image must be a chalkcompute.Image, an image reference string or None, got {image!r}")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a str, got {name!r}")
            too_long = name_too_long("sandbox name", name)
            if too_long:
                raise ValueError(too_long)
        if gpu is not None and not isinstance(gpu, str):
            raise TypeError(f"gpu must be a string such as 'nvidia-l4' or 'A100:2', got {gpu!r}")
        if entrypoint is not None and (isinstance(entrypoint, str)
                                       or not all(isinstance(a, str) for a in entrypoint)):
            raise TypeError(f"entrypoint must be a list of str, got {entrypoint!r}")
        if not isinstance(network, bool):
            raise TypeError(f"network must be True or False, got {network!r}")
        timeout_s = _positive(timeout, "timeout", allow_none=False)
        assert timeout_s is not None
        poll = _positive(poll_interval, "poll_interval")
        spec = pb.SandboxSpec(
            name=name or "", image=image.to_proto(),
            resources=pb.Resources(cpu_millis=parse_cpu(cpu) if cpu is not None else 0,
                                   memory_bytes=parse_memory(memory) if memory is not None else 0, gpu=gpu or ""),
            env=_env(env), volumes=volume_mounts(volumes), entrypoint=list(entrypoint or ()),
            no_network=not network, lifetime=parse_duration(lifetime) if lifetime is not None else 0.0)
        refs, local_secrets = secret_refs(check_secrets(secrets))
        spec.secrets.extend(refs)
        spec.local_secrets.update(local_secrets)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        what = f"sandbox {name!r}" if name else "a sandbox"
        if wait:
            # Build first, here, so the build log streams to this terminal; the daemon then finds it cached.
            try:
                await prepare_image(self._client, image, what=what, timeout=timeout_s, bare=True)
            except ImageBuildFailed as exc:
                raise SandboxBuildError(f"the image of {what} failed to build: {exc}", exc.step, exc.tail) from None
        else:
            from chalkcompute._build import upload_lazy_files

            await upload_lazy_files(self._client, image)
        info = await self._call(self._stub.Create, pb.CreateSandboxRequest(spec=spec))
        sandbox = Sandbox(info.id, client=self, _info=SandboxInfo._from_pb(info))
        if wait:
            try:
                await sandbox._wait_ready(deadline, poll)
            except BaseException:
                with contextlib.suppress(Exception):  # never leave a half-made sandbox behind
                    await sandbox._terminate(0)
                raise
        return sandbox

    create = Twin(_create)

    def get(self, id: str) -> Sandbox:
        """A handle to the sandbox ``id``, without asking the daemon (a missing one raises on first use)."""
        if not isinstance(id, str) or not id:
            raise ValueError(f"give a sandbox id, got {id!r}")
        return Sandbox(id, client=self)

    async def _list(self) -> list[SandboxInfo]:
        """One SandboxInfo per sandbox the daemon knows (live ones and recently ended ones)."""
        resp = await self._call(self._stub.List, pb.ListSandboxesRequest())
        return [SandboxInfo._from_pb(i) for i in resp.sandboxes]

    list = Twin(_list)

    def __repr__(self) -> str:
        return f"SandboxClient(target={self.target!r})"


class Sandbox:
    """A handle to a sandbox: ``exec``, ``exec_stream``, ``exec_start``, ``exec_attach``, ``fs``,
    ``terminate``. Get one from :meth:`SandboxClient.create`, :meth:`SandboxClient.get`,
    ``Sandbox.from_id(id)`` or ``Sandbox.from_name(name)``."""

    def __init__(self, id: str, client: SandboxClient | None = None, *, _info: SandboxInfo | None = None) -> None:
        self.id = id
        self._sandbox_client = client
        self._info = _info
        self.fs = SandboxFiles(self)

    @property
    def client(self) -> SandboxClient:
        if self._sandbox_client is None:
            self._sandbox_client = SandboxClient()
        return self._sandbox_client

    @property
    def _client_obj(self) -> Client:
        return self.client._client

    async def _from_id(cls: type[Sandbox], id: str, *, client: SandboxClient | None = None) -> Sandbox:  # type: ignore[misc]
        """The sandbox ``id``, checked now: SandboxNotFoundError when there is none."""
        client = client or SandboxClient()
        info = await client._call(client._stub.Get, pb.GetSandboxRequest(id=id))
        return cls(info.id, client=client, _info=SandboxInfo._from_pb(info))

    async def _from_name(cls: type[Sandbox], name: str, *, client: SandboxClient | None = None) -> Sandbox:  # type: ignore[misc]
        """The newest live sandbox named ``name``: SandboxNotFoundError when there is none."""
        too_long = name_too_long("sandbox name", name)
        if too_long:
            raise ValueError(too_long)
        client = client or SandboxClient()
        info = await client._call(client._stub.Get, pb.GetSandboxRequest(name=name))
        return cls(info.id, client=client, _info=SandboxInfo._from_pb(info))

    from_id = Twin(_from_id, name="from_id", on_class=True)
    from_name = Twin(_from_name, name="from_name", on_class=True)

    # -- info -------------------------------------------------------------------------

    async def _refresh(self, wait: float = 0.0) -> SandboxInfo:
        """Force-refresh the sandbox's info from the daemon."""
        client = self.client
        resp = await client._call(client._stub.Get, pb.GetSandboxRequest(id=self.id, wait_seconds=wait),
                                  timeout=wait + 60)
        self._info = SandboxInfo._from_pb(resp)
        return self._info

    refresh = Twin(_refresh)

    @property
    def info(self) -> SandboxInfo:
        """The sandbox's info, fetched from the daemon if this handle has none yet."""
        if self._info is None:
            return self.refresh()
        return self._info

    @property
    def status(self) -> str:
        return self.info.status

    async def _wait_ready(self, deadline: float, poll: float | None) -> None:
        loop = asyncio.get_running_loop()
        info = self._info or await self._refresh()
        while info.status == "building":
            left = deadline - loop.time()
            if left <= 0:
                waiting = info.status_details.get("waiting_for") or info.status_message
                raise SandboxCreationError(f"sandbox {self.id} was not ready within the timeout"
                                           + (f" ({waiting})" if waiting else ""))
            if poll is None:
                info = await self._refresh(wait=min(left, 30.0))
            else:
                await asyncio.sleep(min(poll, left))
                info = await self._refresh()
        _raise_for_status(info)

    # -- exec ---------------------------------------------------------------------------

    def _start_request(self, command: str, args: tuple, timeout_secs: float | None, workdir: str | None,
                       env: Mapping[str, str] | None) -> pb.SandboxExecRequest:
        argv = _argv(command, args)
        timeout = _positive(timeout_secs, "timeout_secs")
        if workdir is not None:
            too_long = path_too_long("workdir", workdir)
            if too_long:
                raise ValueError(too_long)
        return pb.SandboxExecRequest(start=pb.ExecStart(
            sandbox_id=self.id, argv=argv, env=_env(env), workdir=workdir or "", timeout=timeout or 0.0,
            wait_ready=600.0))

    async def _exec_start(self, command: str, *args: str, timeout_secs: float | None = None,
                          workdir: str | None = None, env: Mapping[str, str] | None = None) -> ExecProcess:
        """Start a command and return an ExecProcess for stdin, signals and its events."""
        request = self._start_request(command, args, timeout_secs, workdir, env)
        return await ExecProcess(self, request)._start()

    exec_start = Twin(_exec_start)

    async def _exec_attach(self, session_id: str, after: int = 0) -> ExecProcess:
        """Attach to a running exec by its session id (from another handle or process); its events
        after ``after`` (0: every one the agent still holds) come again."""
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"give an exec session id, got {session_id!r}")
        request = pb.SandboxExecRequest(attach=pb.ExecAttach(sandbox_id=self.id, session_id=session_id,
                                                             after_seq=after))
        return await ExecProcess(self, request, after=after)._start()

    exec_attach = Twin(_exec_attach)

    def _exec_sync(self, command: str, *args: str, timeout_secs: float | None = None, workdir: str | None = None,
                   env: Mapping[str, str] | None = None) -> ExecResult:
        proc = self.exec_start(command, *args, timeout_secs=timeout_secs, workdir=workdir, env=env)
        proc.close_stdin()
        return proc.wait()

    async def _exec_async(self, command: str, *args: str, timeout_secs: float | None = None,
                          workdir: str | None = None, env: Mapping[str, str] | None = None) -> ExecResult:
        proc = await self.exec_start.aio(command, *args, timeout_secs=timeout_secs, workdir=workdir, env=env)
        await proc.close_stdin.aio()
        return await proc.wait.aio()

    #: Execute a command and wait for it (stdin closed at once): an ExecResult.
    exec = Twin.pair("exec", _exec_sync, _exec_async)

    def _exec_stream_sync(self, command: str, *args: str, timeout_secs: float | None = None,
                          workdir: str | None = None, env: Mapping[str, str] | None = None) -> Iterator[ExecEvent]:
        proc = self.exec_start(command, *args, timeout_secs=timeout_secs, workdir=workdir, env=env)
        proc.close_stdin()
        return _closing(proc)

    async def _exec_stream_async(self, command: str, *args: str, timeout_secs: float | None = None,
                                 workdir: str | None = None,
                                 env: Mapping[str, str] | None = None) -> AsyncIterator[ExecEvent]:
        proc = await self.exec_start.aio(command, *args, timeout_secs=timeout_secs, workdir=workdir, env=env)
        await proc.close_stdin.aio()
        try:
            async for event in proc:
                yield event
        finally:
            await proc.aclose()  # left early: detach (the command runs on; exec_attach finds it)

    #: Execute a command and stream its ExecEvents as they arrive (stdout and stderr kept apart).
    exec_stream = Twin.pair("exec_stream", _exec_stream_sync, _exec_stream_async)

    async def _terminate(self, grace_period_seconds: float | None = None) -> None:
        """Terminate: SIGTERM to everything in it, SIGKILL after the grace period (None: 10 s). Harmless twice."""
        grace = DEFAULT_GRACE if grace_period_seconds is None else grace_period_seconds
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
            raise ValueError(f"grace_period_seconds must be >= 0 or None, got {grace_period_seconds!r}")
        client = self.client
        resp = await client._call(client._stub.Terminate, pb.TerminateSandboxRequest(id=self.id, grace_period=grace),
                                  timeout=grace + 60)
        self._info = SandboxInfo._from_pb(resp)

    terminate = Twin(_terminate)

    def __repr__(self) -> str:
        status = self._info.status if self._info else "?"
        return f"Sandbox(id={self.id!r}, status={status!r})"


def _closing(proc: ExecProcess) -> Iterator[ExecEvent]:
    """``proc``'s events; a loop that leaves early detaches it (the command runs on; exec_attach finds it)."""
    try:
        yield from proc
    finally:
        proc.close()


def _raise_for_status(info: SandboxInfo) -> None:
    if info.status == "ready":
        return
    message = f"sandbox {info.id}: {info.status_message or info.status}"
    if info.status == "terminated":
        raise SandboxTerminatedError(message)
    if info.status_message.startswith("image build failed"):
        raise SandboxBuildError(message, info.status_details.get("failed_step", ""),
                                info.status_details.get("log_tail", ""))
    if info.status == "error":
        raise SandboxCreationError(message)
    raise SandboxStatusError(message)
