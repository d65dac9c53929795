"""The Swarm service a replica runs as: one task, placed by Swarm, never restarted by it.

A pure function of what the runtime decided, so it is checked without an engine::

    spec = service_spec(ServiceRequest(name="chalkd-r-1", image="chalkd-img:ab12", env={"A": "1"},
                                       labels={"dev.chalkd.replica": "r-1"}, network="n1",
                                       secrets=[SecretFile("s1", "chalkd-key-r-1", KEY_FILE)]))
    spec["TaskTemplate"]["RestartPolicy"]   # {"Condition": "none"}: chalkd replaces lost replicas itself

Why each part is as it is:

* ``Replicas: 1`` and restart condition ``none``: chalkd decides how many replicas run and which drain
  (its autoscaler, as on the other runtimes); Swarm only decides where. A replica whose node is lost is
  replaced by chalkd with a new replica (new id, new credential), which Swarm places on a node left.
* Endpoint mode ``dnsrr``: no virtual IP, which needs IPVS (absent on some kernels; replicas dial out,
  nothing dials them).
* The replica's key and chalkd's CA are Swarm secrets, mounted as files under ``/run/secrets``: never
  in ``Env``, so ``docker service inspect`` shows their names only.
* Resources: ``cpu``/``memory`` are both reserved (Swarm places by reservations) and limited. GPUs are
  not reserved here: chalkd hands out the GPUs nodes advertise and pins the replica to their node (see
  :mod:`chalkd.swarm.gpus` for why).
* Least privilege as on the Docker runtime: every capability dropped, an init as PID 1, a pids limit.
  (Swarm's API of Docker 20.10 has no ``no-new-privileges`` for services; with no capabilities a
  set-uid binary still gains none.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["KEY_FILE", "CA_FILE", "SecretFile", "ServiceRequest", "service_spec", "template_literal"]

KEY_FILE = "/run/secrets/chalkd-replica-key"
CA_FILE = "/run/secrets/chalkd-ca.pem"
STOP_GRACE_NS = 10 * 10**9        # SIGTERM, then SIGKILL this much later (the worker leaves on SIGTERM)
LOG_OPTIONS = {"max-size": "10m", "max-file": "2"}


@dataclass(frozen=True)
class SecretFile:
    """A Swarm secret (``secret_id``, ``name``) mounted read-only at ``path`` (0444: any image USER reads it;
    only this task's containers have it)."""

    secret_id: str
    name: str
    path: str


@dataclass(frozen=True)
class ServiceRequest:
    name: str
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    network: str = ""                         # an attachable overlay network's id ("" for none)
    secrets: list[SecretFile] = field(default_factory=list)
    command: tuple[str, ...] = ("python3", "-m", "chalkcompute.worker")
    cpu_millis: int = 0
    memory_bytes: int = 0
    pids_limit: int = 4096
    constraints: tuple[str, ...] = ()         # Swarm placement constraints ("node.id==abc", "node.labels.x==y")
    binds: tuple[tuple[str, str], ...] = ()   # (source on the node, target in the container), read-write
    publish: tuple[int, ...] = ()             # container ports published in host mode on a free node port


def template_literal(value: str) -> str:
    """``value`` as Swarm's templates (Go's text/template, applied to Env) leave it: ``{{`` escaped.

    >>> template_literal("a{{b}}")
    'a{{"{{"}}b}}'
    """
    return value.replace("{{", '{{"{{"}}')


def service_spec(req: ServiceRequest) -> dict:
    """The body of ``POST /services/create`` for ``req``."""
    container: dict = {
        "Image": req.image,
        "Command": list(req.command),
        "Args": [],
        "Env": [f"{k}={v}" for k, v in req.env.items()],
        "Labels": dict(req.labels),
        "Init": True,
        "CapabilityDrop": ["ALL"],
        "StopGracePeriod": STOP_GRACE_NS,
        "Secrets": [{"SecretID": s.secret_id, "SecretName": s.name,
                     "File": {"Name": s.path, "UID": "0", "GID": "0", "Mode": 0o444}} for s in req.secrets],
        "Mounts": [{"Type": "bind", "Source": src, "Target": dst, "ReadOnly": False} for src, dst in req.binds],
    }
    limits: dict = {"Pids": req.pids_limit}
    reservations: dict = {}
    if req.cpu_millis:
        limits["NanoCPUs"] = reservations["NanoCPUs"] = req.cpu_millis * 1_000_000
    if req.memory_bytes:
        limits["MemoryBytes"] = reservations["MemoryBytes"] = req.memory_bytes
    task: dict = {
        "ContainerSpec": container,
        "Resources": {"Limits": limits, "Reservations": reservations},
        "RestartPolicy": {"Condition": "none"},
        "Placement": {"Constraints": list(req.constraints)},
        "LogDriver": {"Name": "json-file", "Options": dict(LOG_OPTIONS)},
    }
    if req.network:
        task["Networks"] = [{"Target": req.network}]
    endpoint: dict = {"Mode": "dnsrr"}
    if req.publish:
        endpoint["Ports"] = [{"Protocol": "tcp", "TargetPort": p, "PublishMode": "host"} for p in req.publish]
    return {
        "Name": req.name,
        "Labels": dict(req.labels),
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": endpoint,
    }
