"""The swarm's nodes as chalkd sees them (``chalkd nodes``), and the dockerd setting that advertises GPUs.

Read from the manager's engine, never cached: ``GET /info`` (which node is the daemon's), ``GET /nodes``,
and this home's tasks and services (``GET /tasks`` / ``GET /services`` filtered by the label
``dev.chalkd.home=<home>``; a swarm shared by several homes shows each home only its own replicas)::

    cluster = await read_cluster(docker, home_label(home))
    [(n.name, n.state, n.generic) for n in cluster.nodes]
    # [('swnode1', 'ready', {}), ('swnode2', 'ready', {'gpu': ['GPU-fake-0', 'GPU-fake-1']})]
    cluster.nodes[1].replicas[0]
    # NodeReplica(replica_id='r-1a2b', function='train', kind='replica', state='running', ...)
    cluster.unplaced   # replicas Swarm has not placed yet, each with Swarm's reason

Every engine call has a deadline (a node's dockerd was seen silent for 26 s): a silent engine is an
:class:`EngineUnavailable`, an engine that is not a swarm manager a :class:`NotAManager`, both
:class:`NodesError` with a message that says what to do.

:func:`gpu_setting` is the other half of ``chalkd node gpus``: this host's NVML GPUs as the
``node-generic-resources`` a node's dockerd must advertise for Swarm to place ``gpu=`` replicas there.

    >>> from chalkd.gpus import GpuDevice
    >>> gpu_setting([GpuDevice(0, "GPU-5c1f", "NVIDIA L4")])
    {'node-generic-resources': ['gpu=GPU-5c1f']}
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from chalkd.errors import ChalkdError, FailedPrecondition, Unavailable
from chalkd.gpus import GpuDevice
from chalkd.runtime.docker import LABEL_HOME, LABEL_KIND

log = logging.getLogger(__name__)

__all__ = [
    "Cluster", "EngineUnavailable", "NodeInfo", "NodeReplica", "NodesError", "NotAManager", "gpu_setting",
    "gpu_setting_text", "list_nodes", "model_label", "parse_cluster", "parse_generic", "read_cluster",
]

LABEL_REPLICA = "dev.chalkd.replica"    # the same labels chalkd.swarm.runtime puts on each replica's service
LABEL_FUNCTION = "dev.chalkd.function"
GPU_KIND = "gpu"                        # the generic resource GPUs are advertised as (chalkd.swarm.spec.GPU_KIND)
NVIDIA_CONFIG = "/etc/nvidia-container-runtime/config.toml"
LABEL_GPU_MODEL = "chalkd.gpu"          # the node label chalkd.swarm.runtime constrains a named GPU model to

Generic = dict[str, list[str] | int]
T = TypeVar("T")


class NodesError(ChalkdError):
    """The nodes cannot be read; the subclass says why (and which status answers it)."""


class NotAManager(NodesError, FailedPrecondition):
    """The engine is not a swarm manager: not in a swarm, or a worker (which cannot see the cluster)."""


class EngineUnavailable(NodesError, Unavailable):
    """The engine did not answer in time, or refused a request."""


@dataclass(frozen=True)
class NodeReplica:
    """One of this home's replicas (a task Swarm was asked to keep running) and where it stands."""

    replica_id: str
    function: str          # the function's (or scaling group's) name
    kind: str              # "replica" | "group-replica" (the service's dev.chalkd.kind)
    state: str             # Swarm's task state: pending, assigned, preparing, starting, running, ...
    service: str           # the Swarm service's name (its id when the service was not listed)
    generic: Generic = field(default_factory=dict)   # what Swarm gave it: {"gpu": ["GPU-…"]}
    message: str = ""      # Swarm's error for a task not running ("no suitable node (insufficient resources …)")


@dataclass
class NodeInfo:
    """One node of the swarm, as ``GET /nodes`` describes it, with this home's replicas on it."""

    id: str
    name: str              # its hostname
    address: str
    role: str              # manager | worker
    leader: bool
    state: str             # ready | down | unknown | disconnected
    availability: str      # active | pause | drain
    cpu_nanos: int
    memory_bytes: int
    generic: Generic       # advertised generic resources: {"gpu": ["GPU-a", "GPU-b"], "fpga": 2}
    engine_version: str
    labels: dict[str, str]
    is_daemon_node: bool   # the node of the engine chalkd drives (where its volumes live)
    replicas: list[NodeReplica] = field(default_factory=list)


@dataclass
class Cluster:
    nodes: list[NodeInfo]
    unplaced: list[NodeReplica]   # desired running, no node yet (Swarm's reason in .message)


def parse_generic(entries: Iterable[Mapping[str, Any]] | None) -> Generic:
    """Swarm's ``GenericResources`` list as ``{kind: [names]}`` (named) or ``{kind: count}`` (discrete).

    A kind given both ways (Swarm allows it) is reported as a count, the names counted in.

    >>> parse_generic([{"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-0"}},
    ...                {"NamedResourceSpec": {"Kind": "gpu", "Value": "GPU-1"}},
    ...                {"DiscreteResourceSpec": {"Kind": "fpga", "Value": 2}}])
    {'gpu': ['GPU-0', 'GPU-1'], 'fpga': 2}
    """
    named: dict[str, list[str]] = {}
    discrete: dict[str, int] = {}
    for entry in entries or ():
        if spec := entry.get("NamedResourceSpec"):
            named.setdefault(str(spec.get("Kind", "")), []).append(str(spec.get("Value", "")))
        elif spec := entry.get("DiscreteResourceSpec"):
            kind = str(spec.get("Kind", ""))
            discrete[kind] = discrete.get(kind, 0) + int(spec.get("Value", 0) or 0)
    out: Generic = {}
    for kind in [*named, *(k for k in discrete if k not in named)]:
        if kind in discrete:
            out[kind] = discrete[kind] + len(named.get(kind, ()))
        else:
            out[kind] = named[kind]
    return out


def _node(raw: Mapping[str, Any], daemon_node_id: str) -> NodeInfo:
    spec = raw.get("Spec") or {}
    desc = raw.get("Description") or {}
    res = desc.get("Resources") or {}
    status = raw.get("Status") or {}
    manager = raw.get("ManagerStatus") or {}
    node_id = str(raw.get("ID", ""))
    return NodeInfo(
        id=node_id, name=str(desc.get("Hostname") or node_id[:12]), address=str(status.get("Addr", "")),
        role=str(spec.get("Role", "")), leader=bool(manager.get("Leader", False)),
        state=str(status.get("State", "unknown")), availability=str(spec.get("Availability", "")),
        cpu_nanos=int(res.get("NanoCPUs", 0) or 0), memory_bytes=int(res.get("MemoryBytes", 0) or 0),
        generic=parse_generic(res.get("GenericResources")),
        engine_version=str((desc.get("Engine") or {}).get("EngineVersion", "")),
        labels={str(k): str(v) for k, v in (spec.get("Labels") or {}).items()},
        is_daemon_node=bool(daemon_node_id) and node_id == daemon_node_id)


def _replica(task: Mapping[str, Any], service_names: Mapping[str, str]) -> NodeReplica:
    labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
    status = task.get("Status") or {}
    state = str(status.get("State", "new"))
    service_id = str(task.get("ServiceID", ""))
    message = "" if state == "running" else str(status.get("Err") or status.get("Message") or "")
    return NodeReplica(
        replica_id=str(labels.get(LABEL_REPLICA, "")), function=str(labels.get(LABEL_FUNCTION, "")),
        kind=str(labels.get(LABEL_KIND, "")), state=state, service=service_names.get(service_id, service_id),
        generic=parse_generic(task.get("GenericResources")), message=message)


def parse_cluster(info: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]], tasks: Sequence[Mapping[str, Any]],
                  home_label: str, services: Sequence[Mapping[str, Any]] = ()) -> Cluster:
    """The engine's answers (``/info``, ``/nodes``, ``/tasks``, ``/services``) as a :class:`Cluster`.

    Only tasks Swarm is asked to keep running (``DesiredState`` running) and whose container labels name
    ``home_label`` count: the engine's label filter matches the service's labels, and a task of another
    home that slipped through (an engine that ignores the filter) must not show here.
    """
    daemon_node = str((info.get("Swarm") or {}).get("NodeID", ""))
    out = [_node(n, daemon_node) for n in nodes]
    by_id = {n.id: n for n in out}
    names = {str(s.get("ID", "")): str((s.get("Spec") or {}).get("Name", "")) for s in services}
    names = {k: v for k, v in names.items() if k and v}
    unplaced: list[NodeReplica] = []
    for task in tasks:
        labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
        if labels.get(LABEL_HOME) != home_label or task.get("DesiredState") != "running":
            continue
        replica = _replica(task, names)
        node = by_id.get(str(task.get("NodeID", "")))
        (node.replicas if node is not None else unplaced).append(replica)
    for n in out:
        n.replicas.sort(key=lambda r: (r.function, r.replica_id))
    # The daemon's node first, then managers, then by name: a stable order for the table and for tests.
    out.sort(key=lambda n: (not n.is_daemon_node, n.role != "manager", n.name, n.id))
    unplaced.sort(key=lambda r: (r.function, r.replica_id))
    return Cluster(out, unplaced)


async def _call(what: str, awaitable: Awaitable[T], timeout: float) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise EngineUnavailable(f"the swarm manager's engine did not answer {what} within {timeout:g} s") from None
    except DockerError as exc:
        message = str(exc.message or "").strip()
        if exc.status == 503 and "not a swarm manager" in message:
            raise NotAManager(f"this engine is not a swarm manager: {message}") from None
        if exc.status == 900:  # aiodocker's code for "no connection"
            raise EngineUnavailable(f"the swarm manager's engine cannot be reached for {what}: {message}") from None
        raise EngineUnavailable(f"the swarm manager's engine refused {what}: {message or exc.status}") from None
    except (OSError, aiohttp.ClientError) as exc:
        raise EngineUnavailable(f"the swarm manager's engine cannot be reached for {what}: {exc}") from None


def _check_manager(info: Mapping[str, Any]) -> None:
    swarm = info.get("Swarm") or {}
    state = swarm.get("LocalNodeState", "inactive")
    if state != "active":
        error = f" ({swarm['Error']})" if swarm.get("Error") else ""
        raise NotAManager(f"this engine is not a swarm manager: its swarm state is {state!r}{error}; run "
                          "`docker swarm init` on it, or point chalkd at a manager's engine")
    if not swarm.get("ControlAvailable"):
        managers = ", ".join(str(m.get("Addr", "")) for m in swarm.get("RemoteManagers") or []) or "unknown"
        raise NotAManager(f"this engine is not a swarm manager: it is a worker (node {swarm.get('NodeID', '')}); "
                          f"the managers are at {managers}: point chalkd at a manager's engine")


async def read_cluster(docker: aiodocker.Docker, home_label: str, *, timeout: float = 10.0) -> Cluster:
    """Nodes, this home's replicas on each, and the ones not placed yet, from the manager's engine.

    Each request has ``timeout`` seconds. Raises :class:`NotAManager` or :class:`EngineUnavailable`.
    """
    info = await _call("GET /info", docker.system.info(), timeout)
    _check_manager(info)
    home = {"label": [f"{LABEL_HOME}={home_label}"]}
    nodes, tasks, services = await asyncio.gather(
        _call("GET /nodes", docker.nodes.list(), timeout),
        _call("GET /tasks", docker.tasks.list(filters={**home, "desired-state": ["running"]}), timeout),
        _call("GET /services", docker.services.list(filters=home), timeout))
    return parse_cluster(info, nodes, tasks, home_label, services)


async def list_nodes(docker: aiodocker.Docker, home_label: str, *, timeout: float = 10.0) -> list[NodeInfo]:
    """The swarm's nodes with this home's replicas on each (see :func:`read_cluster`)."""
    return (await read_cluster(docker, home_label, timeout=timeout)).nodes


def model_label(name: str) -> str:
    """A GPU's NVML name as the ``chalkd.gpu`` node label value a ``gpu="<model>"`` request is matched to.

    >>> model_label("NVIDIA L4"), model_label("NVIDIA A100-SXM4-80GB")
    ('nvidia-l4', 'nvidia-a100-sxm4-80gb')
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def gpu_setting(devices: Iterable[GpuDevice]) -> dict[str, list[str]]:
    """The ``daemon.json`` entry that makes a node advertise ``devices`` to Swarm as ``gpu`` resources."""
    return {"node-generic-resources": [f"{GPU_KIND}={d.uuid}" for d in sorted(devices, key=lambda d: d.index)]}


def gpu_setting_text(devices: Sequence[GpuDevice], source: str = "NVML") -> str:
    """What ``chalkd node gpus`` prints: the daemon.json entry, the same as dockerd flags, and the
    nvidia-container-runtime setting that hands a task the GPUs Swarm gave it."""
    setting = gpu_setting(devices)
    flags = " ".join(f"--node-generic-resource {r}" for r in setting["node-generic-resources"])
    names = "\n".join(f"#   {d.index}: {d.name} {d.uuid}" for d in sorted(devices, key=lambda d: d.index))
    models = sorted({model_label(d.name) for d in devices})
    labels = "".join(f"#   docker node update --label-add {LABEL_GPU_MODEL}={m} <this node>\n" for m in models)
    if len(models) > 1:
        labels += "#   (one label per node: a node with several models can be labelled with one of them only)\n"
    return (
        f"# This host's GPUs ({source}):\n{names}\n"
        "# For Swarm to place gpu= replicas here, this node's dockerd must advertise them.\n"
        "# In /etc/docker/daemon.json (merge with what is there), then restart dockerd:\n"
        f"{json.dumps(setting, indent=2)}\n"
        "# or as dockerd flags:\n"
        f"#   dockerd {flags}\n"
        "# A task gets the GPUs Swarm gave it as DOCKER_RESOURCE_GPU=<uuid>. For the container to see them,\n"
        "# make nvidia the default runtime (\"default-runtime\": \"nvidia\" in daemon.json: a Swarm service\n"
        "# cannot choose a runtime) and, in " + NVIDIA_CONFIG + ", set (uncomment):\n"
        'swarm-resource = "DOCKER_RESOURCE_GPU"\n'
        "# A function that names a model (gpu=\"nvidia-l4\", not \"any\") goes only to nodes labelled with it,\n"
        "# the request's model exactly; on a manager:\n"
        f"{labels}"
        "# Check on a manager: docker node inspect <this node> --format '{{json .Description.Resources}}'\n")
