"""ScalingGroups: the SDK's ``ScalingGroup`` over :class:`chalkd.groups.manager.GroupManager`.

    info = await ScalingGroupsStub(channel).Deploy(pb.DeployScalingGroupRequest(spec=pb.ScalingGroupSpec(
        name="web", image=img, port=8080, min_replicas=1, max_replicas=2)))
    info.web_url        # 'http://127.0.0.1:51000': the group's own port, proxied to its ready replicas
    info = await stub.Get(pb.GetScalingGroupRequest(id=info.id, wait_seconds=30))   # long-poll

Only the daemon's token reaches these RPCs (a replica's credential does not:
see ``chalkd.auth.REPLICA_METHODS``). An authenticated group's key is in its
info because whoever holds the token may already do anything with the group.
"""

from __future__ import annotations

import logging

from chalkcompute._contract import name_too_long, quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ScalingGroupsBase
from chalkd.errors import FailedPrecondition, InvalidArgument
from chalkd.images.blobs import check_lazy_files
from chalkd.services.convert import decode_group
from chalkd.services.errors import grpc_errors

log = logging.getLogger(__name__)

__all__ = ["ScalingGroupsService", "group_info_pb"]

MAX_SPEC_ARGS = 1 << 20   # bytes of env + entrypoint a group may carry
MAX_WAIT = 60.0           # a long-poll waits at most this long
MAX_LOG_BYTES = 3 << 20   # lines of one Logs answer (under the 4 MiB message limit)


def group_info_pb(manager, g) -> pb.ScalingGroupInfo:
    rec = g.rec
    replicas = []
    for r in list(g.replicas.values()):
        b = r.backend
        replicas.append(pb.GroupReplicaInfo(
            id=r.id, revision=r.revision, state=(b.state if b is not None and r.state != "stopping" else r.state),
            in_flight=b.outstanding if b is not None else 0, address=f"{b.host}:{b.port}" if b is not None else "",
            started_at=r.started_at, error=r.waiting_for or (getattr(r.probe, "last_error", None) or "")))
    spec = g.target.spec if g.target is not None else None
    available = sum(1 for b in g.pool.backends() if b.state == "ready")
    return pb.ScalingGroupInfo(
        id=rec.id, name=rec.name, status=rec.status, web_url=manager.web_url(g), ready_replicas=g.pool.ready_count,
        available_replicas=available, status_message=rec.status_message, revision=rec.revision,
        target_revision=rec.target_revision, rollout_error=rec.rollout_error, desired_replicas=g.desired,
        min_replicas=spec.min_replicas if spec else 0, max_replicas=spec.max_replicas if spec else 0,
        created_at=rec.created_at, auth_key=rec.auth_key, image=rec.image, replicas=replicas, port=rec.host_port,
        in_flight=g.pool.in_flight, last_decision=rec.last_decision)


class ScalingGroupsService(ScalingGroupsBase):
    def __init__(self, manager, runtime_name: str = "process") -> None:
        self.manager = manager  # None without the Docker or Swarm runtime
        self.runtime_name = runtime_name

    def _manager(self):
        if self.manager is None:
            raise FailedPrecondition(
                f"scaling groups need the Docker or Swarm runtime (each replica runs the group's image and "
                f"entrypoint); this daemon runs --runtime {self.runtime_name}: start it with `chalkd serve "
                f"--runtime docker` (or `--runtime swarm`)")
        return self.manager

    @grpc_errors
    async def Deploy(self, stream) -> None:
        req: pb.DeployScalingGroupRequest = await stream.recv_message()
        manager = self._manager()
        too_long = name_too_long("scaling group name", req.spec.name)
        if too_long:
            raise InvalidArgument(too_long)
        try:
            spec = decode_group(req.spec)
        except ValueError as exc:  # a bad readiness probe field, named
            raise InvalidArgument(str(exc)) from None
        check_lazy_files(spec.image)
        size = sum(len(k) + len(v) for k, v in spec.env.items()) + sum(len(a) for a in spec.entrypoint)
        if size > MAX_SPEC_ARGS:
            raise InvalidArgument(f"the group's env and entrypoint take {size} bytes, over the limit of "
                                  f"{MAX_SPEC_ARGS} bytes")
        stored = pb.ScalingGroupSpec()
        stored.CopyFrom(req.spec)
        stored.ClearField("local_secrets")  # values live in the secret store, owned by the group
        try:
            rec = await manager.deploy(spec, stored.SerializeToString(deterministic=True),
                                       local_secrets=dict(req.spec.local_secrets))
        except LookupError as exc:  # a secret or integration that does not exist (named, never a value)
            raise FailedPrecondition(str(exc)) from None
        await stream.send_message(group_info_pb(manager, manager.get(id=rec.id)))

    @grpc_errors
    async def Get(self, stream) -> None:
        req: pb.GetScalingGroupRequest = await stream.recv_message()
        manager = self._manager()
        g = manager.get(id=req.id, name=req.name)
        if req.wake:
            manager.wake(g)
        wait = min(max(req.wait_seconds, 0.0), MAX_WAIT)
        if wait > 0:
            await g.rec.wait_change(wait)
        await stream.send_message(group_info_pb(manager, g))

    @grpc_errors
    async def List(self, stream) -> None:
        await stream.recv_message()
        manager = self._manager()
        await stream.send_message(pb.ListScalingGroupsResponse(
            groups=[group_info_pb(manager, g) for g in manager.list()]))

    @grpc_errors
    async def Delete(self, stream) -> None:
        req: pb.DeleteScalingGroupRequest = await stream.recv_message()
        manager = self._manager()
        if req.grace_period < 0:
            raise InvalidArgument(f"grace_period must be >= 0, got {req.grace_period:g}")
        g = manager.get(id=req.id, name=req.name)
        info = group_info_pb(manager, g)
        await manager.delete(id=g.rec.id, grace=req.grace_period or None)
        info.status_message = "deleted"
        info.ready_replicas = info.available_replicas = 0
        del info.replicas[:]
        await stream.send_message(pb.DeleteScalingGroupResponse(info=info))

    @grpc_errors
    async def Logs(self, stream) -> None:
        req: pb.ScalingGroupLogsRequest = await stream.recv_message()
        manager = self._manager()
        if req.tail < 0 or req.tail > 100_000:
            raise InvalidArgument(f"tail must be between 0 and 100000 lines, got {req.tail}")
        if len(req.replica) > 64:
            raise InvalidArgument(f"replica id {quote(req.replica[:64])}... is too long")
        g = manager.get(id=req.id, name=req.name)
        lines = await manager.logs(g, tail=req.tail or 200, replica=req.replica)
        out, size = [], 0
        for r, rev, line in reversed(lines):  # the newest lines, up to what one message carries
            size += len(line) + len(r) + 16
            if size > MAX_LOG_BYTES:
                break
            out.append(pb.ScalingGroupLogLine(replica=r, revision=rev, line=line))
        await stream.send_message(pb.ScalingGroupLogsResponse(lines=out[::-1]))
