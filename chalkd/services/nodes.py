"""Nodes: the swarm's nodes and this home's replicas on each (``chalkd nodes``), over :mod:`chalkd.swarm.nodes`.

    resp = await NodesStub(channel).List(pb.ListNodesRequest())
    [(n.name, n.state, [(g.kind, list(g.names)) for g in n.generic]) for n in resp.nodes]
    # [('swnode1', 'ready', []), ('swnode2', 'ready', [('gpu', ['GPU-fake-0', 'GPU-fake-1'])])]

Only on ``--runtime swarm``: another runtime answers FAILED_PRECONDITION naming the runtime it runs. The
engine is asked at each call (nothing cached); a silent engine is UNAVAILABLE after the deadline. Only the
daemon's token reaches this (a replica's credential does not: see ``chalkd.auth.REPLICA_METHODS``): node
addresses and the replicas of every function are the operator's to see.
"""

from __future__ import annotations

import logging

import aiodocker

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import NodesBase
from chalkd.errors import FailedPrecondition
from chalkd.services.errors import grpc_errors
from chalkd.swarm.nodes import Generic, NodeInfo, NodeReplica, read_cluster

log = logging.getLogger(__name__)

__all__ = ["NodesService", "node_pb"]

ENGINE_TIMEOUT = 10.0   # per engine request; the RPC's own deadline (the SDK's default) is longer


def _generic_pb(generic: Generic) -> list[pb.GenericResource]:
    out = []
    for kind, value in generic.items():
        if isinstance(value, int):
            out.append(pb.GenericResource(kind=kind, count=value))
        else:
            out.append(pb.GenericResource(kind=kind, names=value, count=len(value)))
    return out


def _replica_pb(r: NodeReplica) -> pb.NodeReplica:
    return pb.NodeReplica(replica_id=r.replica_id, function=r.function, kind=r.kind, state=r.state,
                          service=r.service, generic=_generic_pb(r.generic), message=r.message)


def node_pb(n: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        id=n.id, name=n.name, address=n.address, role=n.role, leader=n.leader, state=n.state,
        availability=n.availability, cpu_nanos=n.cpu_nanos, memory_bytes=n.memory_bytes,
        generic=_generic_pb(n.generic), engine_version=n.engine_version, labels=n.labels,
        is_daemon_node=n.is_daemon_node, replicas=[_replica_pb(r) for r in n.replicas])


class NodesService(NodesBase):
    def __init__(self, docker: aiodocker.Docker | None, home_label: str, runtime_name: str) -> None:
        self.docker = docker   # the swarm manager's engine; None unless the daemon runs --runtime swarm
        self.home_label = home_label
        self.runtime_name = runtime_name

    @grpc_errors
    async def List(self, stream) -> None:
        await stream.recv_message()
        if self.docker is None:
            raise FailedPrecondition(f"chalkd nodes needs --runtime swarm (this daemon runs the "
                                     f"{self.runtime_name} runtime)")
        cluster = await read_cluster(self.docker, self.home_label, timeout=ENGINE_TIMEOUT)
        await stream.send_message(pb.ListNodesResponse(nodes=[node_pb(n) for n in cluster.nodes],
                                                       unplaced=[_replica_pb(r) for r in cluster.unplaced]))
