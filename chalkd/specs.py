"""What a client asks the daemon to run: function, image and container specs as plain values.

The services decode each protobuf spec into these once, at the edge
(:mod:`chalkd.services.convert`); the catalog, runtimes, container manager
and image builders only see these. Specs stay stored in the database as the
protobuf bytes a client sent (``FunctionVersion.wire``), decoded through the
same codec when the catalog loads.

    >>> image = ImageSpec(base="python:3.11-slim-bookworm", python_version="3.11",
    ...                   steps=(ImageStep("pip_install", args=("six",)),))
    >>> image_identity(image)[:12]   # == Image.debian_slim("3.11").pip_install(["six"]).content_hash
    '9642e4f05e96'
    >>> spec = FunctionSpec(name="add", image=image, resources=Resources(cpu_millis=500))
    >>> spec.resources.cpu_millis, spec.policies.max_concurrent
    (500, 1)

The parts only the worker reads (code bundle, Arrow schemas, serialization
options) are not decoded: they reach the worker in the stored bytes, as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chalkcompute._contract import IMAGE_STEP_KINDS, image_content_hash, image_step_canonical
from chalkd.model import Policies

__all__ = [
    "ImageStep", "ImageSpec", "Resources", "VolumeMount", "SecretRef", "FunctionSpec", "ContainerSpec",
    "SandboxSpec", "GroupSpec",
    "image_identity",
]


@dataclass(frozen=True, slots=True)
class ImageStep:
    """One step of an image (``kind`` is one of the SDK's ``Image`` builder steps)."""

    kind: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # in the order sent (Dockerfile ENV sorts them)
    path: str = ""
    content: bytes = field(default=b"", repr=False)        # copy_file / copy_dir bytes
    mode: int = 0                                          # 0: the default (0o644 for files)
    source: str = ""                                       # the client's local path (messages only)
    mount_root: str = ""                                   # lazy files of one add_local_dir
    digest: str = ""                                       # lazy file content's sha256 hex


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """An image: a base, the Python it has, and its steps."""

    base: str = ""
    python_version: str = ""
    steps: tuple[ImageStep, ...] = ()
    content_hash: str = ""  # the client's claim: a cache key only where it is safe (see image_identity)
    # sha256 of the spec's deterministic wire form with content_hash cleared, set by the codec: the
    # process runtime's virtualenv key when a client sent no usable content_hash (kept: existing envs).
    wire_digest: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_millis: int = 0     # 0: no request
    memory_bytes: int = 0   # 0: no request
    gpu: str = ""           # a GpuRequest string ("2:nvidia-a100"), "" for none
    node: str = ""          # swarm only: the node's hostname (chalkd.swarm)
    node_labels: Mapping[str, str] = field(default_factory=dict)  # swarm only: labels the node must carry


@dataclass(frozen=True, slots=True)
class VolumeMount:
    volume: str
    path: str


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Secrets injected as env vars: kind "name", "integration" or "local" (see chalk.proto's SecretRef)."""

    kind: str
    name: str = ""
    alias: str = ""
    prefix: str = ""
    keys: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    digest: str = ""        # local only: the daemon's keyed digest of the values


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function as registered: what its replicas run in and what the queue enforces for it."""

    name: str
    image: ImageSpec = field(default_factory=ImageSpec)
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)
    min_replicas: int = 0
    max_replicas: int = 0
    cooldown: float = 0.0   # seconds an idle replica stays up
    is_generator: bool = False
    is_async: bool = False
    policies: Policies = field(default_factory=Policies)
    volumes: tuple[VolumeMount, ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    # A class with shared_replicas: versions with the same pool share replicas (see chalk.proto).
    replica_pool: str = ""
    # A class's method count (sent by the SDK for every class): with a pool, how many versions it waits
    # for; without one, how many methods keep min_replicas of their own (chalkd.scaling.capacity).
    replica_pool_size: int = 0

    @property
    def kind(self) -> str:
        """What the worker runs: "generator", "async" or "sync" (it picks its link before loading code);
        "pooled" for a replica serving a class's methods (several streams, never the one-stream sync link)."""
        if self.replica_pool:
            return "pooled"
        return "generator" if self.is_generator else "async" if self.is_async else "sync"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """A Container API container (the values of its local secrets travel beside it, never in it)."""

    name: str = ""
    image: ImageSpec = field(default_factory=ImageSpec)
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[VolumeMount, ...] = ()
    secrets: tuple[SecretRef, ...] = ()


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """A sandbox (the values of its local secrets travel beside it, never in it). ``resources`` given are
    reserved against the host; ``entrypoint`` empty keeps it alive with nothing else running."""

    name: str = ""
    image: ImageSpec = field(default_factory=ImageSpec)
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[VolumeMount, ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    entrypoint: tuple[str, ...] = ()
    network: bool = True
    lifetime: float = 0.0  # seconds; 0: until terminated


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A scaling group: replicas of one image serving HTTP on ``port``, behind the daemon's proxy.
    ``probe`` is a :class:`chalkd.groups.probes.ProbeSpec`; ``entrypoint`` empty runs the image's own."""

    name: str = ""
    image: ImageSpec = field(default_factory=ImageSpec)
    port: int = 8080
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[VolumeMount, ...] = ()
    secrets: tuple[SecretRef, ...] = ()
    entrypoint: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 1
    probe: Any = None
    authenticated: bool = False


def image_identity(spec: ImageSpec) -> str:
    """The image's content hash, recomputed from its content (a client's claim is not trusted).

    The formula is the SDK's ``Image.content_hash`` (:mod:`chalkcompute._contract`), so
    built images stay cached under the same key. ValueError for a step kind the SDK
    does not know.
    """
    for step in spec.steps:
        if step.kind not in IMAGE_STEP_KINDS:
            raise ValueError(f"unknown image step kind {step.kind!r}")
    return image_content_hash(spec.base, spec.python_version, [
        image_step_canonical(s.kind, s.args, sorted(s.env.items()), s.path, s.content, s.mode,
                             s.mount_root, s.digest)
        for s in spec.steps])
