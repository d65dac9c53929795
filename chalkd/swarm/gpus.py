"""GPUs across a swarm: what each node advertises, handed out by chalkd, one node per replica.

Nodes advertise their GPUs as Swarm generic resources (``dockerd --node-generic-resource gpu=GPU-<uuid>``, see
``chalkd node gpus``). chalkd reads them from the manager and allocates them itself; a replica is then pinned to
its GPUs' node (``node.id==...``) and gets their ids in ``DOCKER_RESOURCE_GPU`` (the variable the NVIDIA
container runtime reads with ``swarm-resource = "DOCKER_RESOURCE_GPU"``) and ``NVIDIA_VISIBLE_DEVICES``.

Why not Swarm's own reservations (``--generic-resource gpu=1``)? In Docker before 23 (Debian bookworm ships
20.10) Swarm's constraint enforcer miscounts generic resources: a running task that holds a GPU is rejected
("assigned node no longer meets constraints") the next time its node changes, which any overlay network
reaching the node for the first time does (moby/moby#44378, fixed by moby/swarmkit#3082). Allocating here
keeps GPU replicas alive on every engine version, and keeps the one allocator the rest of chalkd already
uses (the autoscaler's waits and reasons, the catalog's refusals, the dashboard's GPU page)::

    gpus = ClusterGpuAllocator()
    gpus.update(nodes_json)                           # GET /nodes, on every watcher poll
    devices = gpus.allocate_for("r-1", GpuRequest.parse("2:any"), spec)   # all on one node, or None
    gpus.node_of("r-1")                               # ("node id", "gpu-box-2")

A GPU's model comes from the node label ``chalkd.gpu`` (``docker node update --label-add chalkd.gpu=nvidia-a100``);
a node without it offers GPUs that only ``gpu="any"`` (or ``"2:any"``) matches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from chalkcompute.gpu import GpuRequest
from chalkd.gpus import GpuAllocator, GpuDevice, summarize
from chalkd.specs import FunctionSpec

log = logging.getLogger(__name__)

__all__ = ["ClusterGpuAllocator", "MODEL_LABEL", "node_gpus"]

MODEL_LABEL = "chalkd.gpu"
GPU_KIND = "gpu"
UNKNOWN_MODEL = "GPU (no chalkd.gpu label)"


@dataclass(frozen=True)
class _Node:
    id: str
    name: str
    usable: bool                  # ready and active: Swarm places tasks there
    labels: dict[str, str]
    uuids: tuple[str, ...]


def node_gpus(node: dict) -> list[str]:
    """The GPU ids a node advertises (``GET /nodes`` item), named or counted.

    >>> node_gpus({"Description": {"Resources": {"GenericResources": [
    ...     {"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-a"}},
    ...     {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]}}})
    ['GPU-a']
    """
    out = []
    for res in ((node.get("Description") or {}).get("Resources") or {}).get("GenericResources") or []:
        named = res.get("NamedResourceSpec") or {}
        if named.get("Kind") == GPU_KIND and named.get("Value"):
            out.append(str(named["Value"]))
        # A counted gpu=2 names no device: nothing to hand a replica, so nothing to allocate.
    return out


class ClusterGpuAllocator(GpuAllocator):
    """:class:`chalkd.gpus.GpuAllocator` over every node's advertised GPUs; one replica's GPUs share a node."""

    def __init__(self) -> None:
        super().__init__(())
        self._nodes: dict[str, _Node] = {}
        self._node_of_uuid: dict[str, str] = {}
        self._owner_node: dict[str, str] = {}
        self.daemon_node = ""

    def update(self, nodes: list[dict]) -> None:
        """Take the nodes' advertised GPUs from ``GET /nodes``. GPUs held stay held (released with their owner)."""
        found: dict[str, _Node] = {}
        for n in nodes:
            spec = n.get("Spec") or {}
            usable = ((n.get("Status") or {}).get("State") == "ready"
                      and spec.get("Availability", "active") == "active")
            found[n["ID"]] = _Node(n["ID"], (n.get("Description") or {}).get("Hostname", n["ID"][:12]), usable,
                                   dict(spec.get("Labels") or {}), tuple(node_gpus(n)))
        devices = []
        uuid_node = {}
        for node in sorted(found.values(), key=lambda x: x.name):
            model = node.labels.get(MODEL_LABEL) or UNKNOWN_MODEL
            for uuid in node.uuids:
                if uuid in uuid_node:
                    log.warning("GPU %s is advertised by two nodes (%s and %s); only the first is used",
                                uuid, found[uuid_node[uuid]].name, node.name)
                    continue
                uuid_node[uuid] = node.id
                devices.append(GpuDevice(index=len(devices), uuid=uuid, name=model))
        if [d.uuid for d in devices] != [d.uuid for d in self.devices]:
            log.info("swarm GPUs: %s", ", ".join(f"{found[uuid_node[d.uuid]].name}: {d.uuid} ({d.name})"
                                                  for d in devices) or "none advertised")
        self.devices = tuple(devices)
        self._nodes = found
        self._node_of_uuid = uuid_node

    def allocate_for(self, owner: str, request: GpuRequest, spec: Any = None, *,
                     on_daemon_node: bool = False) -> list[GpuDevice] | None:
        """``request.count`` free matching GPUs of one usable node that ``spec``'s placement allows (``node=``,
        ``node_labels=``; a function with volumes runs on the daemon's node), or None (not now)."""
        if owner in self._held:
            raise ValueError(f"{owner!r} already holds GPUs {[d.uuid for d in self._held[owner]]}; release them first")
        taken = set(self.in_use())
        best: tuple[int, str, list[GpuDevice]] | None = None
        for node in self._nodes.values():
            if not node.usable or not self._allowed(node, spec):
                continue
            if on_daemon_node and node.id != self.daemon_node:
                continue
            free = [d for d in self.matching(request)
                    if self._node_of_uuid.get(d.uuid) == node.id and d.uuid not in taken]
            if len(free) < request.count:
                continue
            # The node with the most free GPUs left: small requests do not fragment a big box first.
            left = len(free) - request.count
            if best is None or left > best[0] or (left == best[0] and node.name < best[1]):
                best = (left, node.name, free[:request.count])
        if best is None:
            return None
        chosen = tuple(best[2])
        self._held[owner] = chosen
        self._owner_node[owner] = self._node_of_uuid[chosen[0].uuid]
        return list(chosen)

    def allocate(self, owner: str, request: GpuRequest) -> list[GpuDevice] | None:
        """GPUs of the daemon's node only: for sandboxes and containers, which run on the daemon's engine."""
        return self.allocate_for(owner, request, on_daemon_node=True)

    def hold(self, owner: str, uuids: tuple[str, ...]) -> list[GpuDevice]:
        held = super().hold(owner, uuids)
        if held:
            self._owner_node[owner] = self._node_of_uuid.get(held[0].uuid, "")
        return held

    def release(self, owner: str) -> list[GpuDevice]:
        self._owner_node.pop(owner, None)
        return super().release(owner)

    def node_of(self, owner: str) -> tuple[str, str] | None:
        """(node id, node name) of the GPUs ``owner`` holds, or None."""
        node_id = self._owner_node.get(owner)
        if not node_id:
            return None
        node = self._nodes.get(node_id)
        return node_id, node.name if node else node_id[:12]

    def unschedulable_reason(self, request: GpuRequest) -> str | None:
        """Why no single node could ever give ``request``, or None."""
        for node in self._nodes.values():
            if sum(1 for d in self.matching(request) if self._node_of_uuid.get(d.uuid) == node.id) >= request.count:
                return None
        per_node = "; ".join(f"{n.name}: {summarize([d for d in self.devices if self._node_of_uuid[d.uuid] == n.id])}"
                             for n in sorted(self._nodes.values(), key=lambda x: x.name)) or "no nodes"
        return (f"no swarm node has {request.describe()} (one replica's GPUs are on one node); nodes have: "
                f"{per_node}. A node advertises its GPUs with dockerd's node-generic-resources (`chalkd node gpus` "
                f"prints the setting) and their model with the node label {MODEL_LABEL}=<model>")

    def waiting_reason(self, request: GpuRequest, spec: FunctionSpec | None = None) -> str:
        """What each node that the placement allows has free, e.g. ``"free per node: swnode2 1 of 2"``, with why
        the others are out (volumes, ``node=``, labels, down)."""
        taken = set(self.in_use())
        parts, none, out = [], [], []
        for node in sorted(self._nodes.values(), key=lambda x: x.name):
            mine = [d for d in self.matching(request) if self._node_of_uuid.get(d.uuid) == node.id]
            if not node.usable:
                out.append(f"{node.name} (not ready)")
            elif not self._allowed(node, spec):
                out.append(f"{node.name} ({self._why_not(node, spec)})")
            elif not mine:
                none.append(node.name)
            else:
                parts.append(f"{node.name} {sum(d.uuid not in taken for d in mine)} of {len(mine)}")
        text = ("free per node: " + ", ".join(parts)) if parts else "no matching GPU on the nodes it may run on"
        if none:
            text += f" ({', '.join(none)} {'has' if len(none) == 1 else 'have'} none)"
        return text + (f"; not placed on {', '.join(out)}" if out else "")

    def _why_not(self, node: _Node, spec: FunctionSpec | None) -> str:
        assert spec is not None
        if spec.volumes and node.id != self.daemon_node:
            return "it mounts volumes, which live on the daemon's node"
        if spec.resources.node and node.name != spec.resources.node:
            return f"node={spec.resources.node!r}"
        return "node_labels=" + ", ".join(f"{k}={v}" for k, v in sorted(spec.resources.node_labels.items()))

    def _allowed(self, node: _Node, spec: FunctionSpec | None) -> bool:
        if spec is None:
            return True
        if spec.volumes and self.daemon_node and node.id != self.daemon_node:
            return False
        if spec.resources.node and node.name != spec.resources.node:
            return False
        return all(node.labels.get(k) == v for k, v in spec.resources.node_labels.items())
