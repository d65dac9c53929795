"""Containers: the SDK's ``Container`` API over :class:`chalkd.containers.manager.ContainerManager`.

    c = await ContainersStub(channel).Create(pb.CreateContainerRequest(spec=pb.ContainerSpec(name="web", image=img)))
    out = await ContainersStub(channel).Exec(pb.ExecRequest(container_id=c.info.id, argv=["echo", "hi"]))
"""

from __future__ import annotations

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ContainersBase
from chalkd.containers.manager import ContainerConflict, ManagedContainer
from chalkd.errors import FailedPrecondition, InvalidArgument
from chalkd.images.blobs import check_lazy_files
from chalkd.services.convert import decode_container
from chalkd.services.errors import grpc_errors


def info_pb(c: ManagedContainer) -> pb.ContainerInfo:
    return pb.ContainerInfo(id=c.id, name=c.name, status=c.status, pod_name=c.engine_name, web_url="",
                            image_uri=c.image_uri, created_at=c.created_at, error=c.error)


class ContainersService(ContainersBase):
    def __init__(self, manager, runtime_name: str = "process") -> None:
        self.manager = manager  # None without the Docker runtime
        self.runtime_name = runtime_name

    def _manager(self):
        if self.manager is None:
            raise FailedPrecondition(
                f"containers need the Docker runtime; this daemon runs --runtime {self.runtime_name}")
        return self.manager

    def _get(self, id: str = "", name: str = "") -> ManagedContainer:
        return self._manager().get(id=id, name=name)  # ContainerNotFound: NOT_FOUND by the error table

    @grpc_errors
    async def Create(self, stream) -> None:
        req: pb.CreateContainerRequest = await stream.recv_message()
        spec = decode_container(req.spec)
        check_lazy_files(spec.image)  # LazyFileError: INVALID_ARGUMENT by the error table
        try:
            c = await self._manager().create(spec, start_timeout=req.start_timeout or 60.0,
                                             local_secrets=dict(req.spec.local_secrets))
        except LookupError as exc:  # a secret or integration that does not exist (named, never a value)
            raise FailedPrecondition(str(exc)) from None
        except ContainerConflict:
            raise  # ALREADY_EXISTS by the error table (before the ValueError below catches it)
        except ValueError as exc:  # the spec's values, as the manager checks them
            raise InvalidArgument(str(exc)) from None
        # ImageBuildError ("image build failed: ...") and ContainerFailed: FAILED_PRECONDITION by the table
        await stream.send_message(pb.CreateContainerResponse(info=info_pb(c)))

    @grpc_errors
    async def Get(self, stream) -> None:
        req: pb.GetContainerRequest = await stream.recv_message()
        c = self._get(req.id, req.name)
        await c.wait_change(min(req.wait_seconds, 60.0))
        await stream.send_message(pb.GetContainerResponse(info=info_pb(c)))

    @grpc_errors
    async def List(self, stream) -> None:
        await stream.recv_message()
        items = [info_pb(c) for c in self._manager().list()] if self.manager is not None else []
        await stream.send_message(pb.ListContainersResponse(containers=items))

    @grpc_errors
    async def Exec(self, stream) -> None:
        req: pb.ExecRequest = await stream.recv_message()
        c = self._get(req.container_id)
        try:
            out = await self._manager().exec(c.id, list(req.argv), env=dict(req.env), cwd=req.cwd,
                                             timeout=req.timeout or None, stdin=req.stdin)
        except ValueError as exc:  # argv, env or cwd the manager refused
            raise InvalidArgument(str(exc)) from None
        resp = pb.ExecResponse(stdout=out.stdout, stderr=out.stderr, pid=out.pid or 0, error=out.error or "")
        if out.exit_code is not None:
            resp.exit_code = out.exit_code
        if out.signal is not None:
            resp.signal = out.signal
        await stream.send_message(resp)

    @grpc_errors
    async def Stop(self, stream) -> None:
        req: pb.StopContainerRequest = await stream.recv_message()
        c = self._get(req.id)
        c = await self._manager().stop(c.id, grace_period=req.grace_period)
        await stream.send_message(pb.StopContainerResponse(info=info_pb(c)))
