"""Translations between protobuf messages and domain objects, in one place: the daemon's wire codecs.

Specs are decoded here once, where they come in (a request, or the catalog
loading the bytes it stored), into :mod:`chalkd.specs`; below the services
nothing reads protobuf::

    fs = decode_function(req.spec)               # chalkd.specs.FunctionSpec
    catalog.load(decode_function_bytes)          # stored specs, through the same codec
    msg = version_to_pb(fv)                      # and back to the wire
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.model import CallError, ErrorCode, FunctionVersion, Payload, Policies, Retry
from chalkd.queue.limits import PERIOD_SECONDS
from chalkd.secrets.store import DIGEST_PREFIX
from chalkd.specs import (
    ContainerSpec,
    FunctionSpec,
    GroupSpec,
    ImageSpec,
    ImageStep,
    Resources,
    SandboxSpec,
    SecretRef,
    VolumeMount,
)


def _policies(spec: pb.FunctionSpec) -> Policies:
    """The queue policies a FunctionSpec declares (validated by the catalog service)."""
    retry = None
    if spec.HasField("retries"):
        r = spec.retries
        retry = Retry(max_retries=r.max_retries, initial_wait=r.initial_wait_seconds, multiplier=r.backoff_multiplier,
                      max_wait=r.max_wait_seconds, jitter=r.jitter,
                      retry_on=frozenset(r.retry_on or ["builtins.Exception"]))
    rate = burst = 0.0
    rate_key = ""
    if spec.HasField("rate_limit"):
        period = PERIOD_SECONDS.get(spec.rate_limit.per or "second", 1.0)
        rate, burst, rate_key = spec.rate_limit.rate / period, spec.rate_limit.rate, spec.rate_limit.key
    qp = spec.queue_policy if spec.HasField("queue_policy") else None
    return Policies(
        retry=retry, rate_per_second=rate, rate_burst=burst, rate_key=rate_key,
        rate_limit_key=spec.rate_limit_key,
        max_concurrent=max(1, spec.concurrency.max_concurrent), concurrency_key=spec.concurrency.key,
        max_items=(qp.max_items if qp and qp.max_items else 500_000),
        result_ttl=(qp.result_ttl_seconds if qp and qp.result_ttl_seconds else 86_400.0),
        batch_size=spec.batching.max_batch_size, batch_wait=spec.batching.max_buffer_seconds,
        timeout=spec.timeout_seconds,
    )


# -- specs: decoded once, here; the domain (chalkd.specs) never sees protobuf ----------------------

def decode_image(image: pb.ImageSpec) -> ImageSpec:
    """``chalk.v1.ImageSpec`` -> :class:`chalkd.specs.ImageSpec`, every field kept."""
    keyless = pb.ImageSpec()
    keyless.CopyFrom(image)
    keyless.content_hash = ""
    return ImageSpec(
        base=image.base, python_version=image.python_version, content_hash=image.content_hash,
        steps=tuple(ImageStep(kind=s.kind, args=tuple(s.args), env=dict(s.env), path=s.path, content=s.content,
                              mode=s.mode, source=s.source, mount_root=s.mount_root, digest=s.digest)
                    for s in image.steps),
        # Computed as chalkd 0.1 did in process_env._env_key, so existing virtualenvs keep their key.
        wire_digest=hashlib.sha256(keyless.SerializeToString(deterministic=True)).hexdigest(),
    )


def decode_resources(r: pb.Resources) -> Resources:
    return Resources(cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes, gpu=r.gpu, node=r.node,
                     node_labels=dict(r.node_labels))


def decode_mounts(mounts: Iterable[pb.VolumeMount]) -> tuple[VolumeMount, ...]:
    return tuple(VolumeMount(volume=m.volume, path=m.path) for m in mounts)


def decode_secrets(refs: Iterable[pb.SecretRef]) -> tuple[SecretRef, ...]:
    return tuple(SecretRef(kind=r.kind, name=r.name, alias=r.alias, prefix=r.prefix, keys=tuple(r.keys),
                           aliases=dict(r.aliases), digest=r.digest) for r in refs)


def decode_function(spec: pb.FunctionSpec) -> FunctionSpec:
    """``chalk.v1.FunctionSpec`` -> :class:`chalkd.specs.FunctionSpec` (what the daemon's domain reads)::

        fs = decode_function(req.spec)
        runtime.check(fs)
    """
    return FunctionSpec(
        name=spec.name, image=decode_image(spec.image), resources=decode_resources(spec.resources),
        env=dict(spec.env), min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
        cooldown=spec.suspend_cooldown_seconds, is_generator=spec.is_generator, is_async=spec.is_async,
        policies=_policies(spec), volumes=decode_mounts(spec.volumes), secrets=decode_secrets(spec.secrets),
        replica_pool=spec.replica_pool, replica_pool_size=spec.replica_pool_size,
    )


def decode_function_bytes(data: bytes) -> FunctionSpec:
    """A FunctionSpec as stored (the catalog's ``functions.spec`` column): the catalog's loader."""
    return decode_function(pb.FunctionSpec.FromString(data))


def decode_container(spec: pb.ContainerSpec) -> ContainerSpec:
    """``chalk.v1.ContainerSpec`` -> :class:`chalkd.specs.ContainerSpec` (its local secret values stay apart)."""
    return ContainerSpec(name=spec.name, image=decode_image(spec.image), resources=decode_resources(spec.resources),
                         env=dict(spec.env), volumes=decode_mounts(spec.volumes),
                         secrets=decode_secrets(spec.secrets))


def decode_sandbox(spec: pb.SandboxSpec) -> SandboxSpec:
    """``chalk.v1.SandboxSpec`` -> :class:`chalkd.specs.SandboxSpec` (its local secret values stay apart)."""
    return SandboxSpec(name=spec.name, image=decode_image(spec.image), resources=decode_resources(spec.resources),
                       env=dict(spec.env), volumes=decode_mounts(spec.volumes), secrets=decode_secrets(spec.secrets),
                       entrypoint=tuple(spec.entrypoint), network=not spec.no_network, lifetime=spec.lifetime)


def decode_group(spec: pb.ScalingGroupSpec) -> GroupSpec:
    """``chalk.v1.ScalingGroupSpec`` -> :class:`chalkd.specs.GroupSpec` (ValueError naming a bad probe field)."""
    from chalkd.groups.probes import ProbeSpec

    probe = None
    if spec.HasField("readiness_probe"):
        p = spec.readiness_probe
        probe = ProbeSpec(kind=p.kind or "tcp", path=p.path or "/", period_seconds=p.period_seconds or 5.0,
                          timeout_seconds=p.timeout_seconds or 2.0, failure_threshold=p.failure_threshold or 3)
    return GroupSpec(name=spec.name, image=decode_image(spec.image), port=spec.port,
                     resources=decode_resources(spec.resources), env=dict(spec.env),
                     volumes=decode_mounts(spec.volumes), secrets=decode_secrets(spec.secrets),
                     entrypoint=tuple(spec.entrypoint), min_replicas=spec.min_replicas,
                     max_replicas=spec.max_replicas, probe=probe, authenticated=spec.authenticated)


def decode_group_bytes(data: bytes) -> GroupSpec:
    """A stored ScalingGroupSpec (``scaling_groups.spec``) -> GroupSpec."""
    return decode_group(pb.ScalingGroupSpec.FromString(data))


def key_local_digests(spec: pb.FunctionSpec, local_secrets, digest) -> None:
    """Replace the SDK's plain sha256 ``digest`` of each local SecretRef with the daemon's keyed one
    (``digest(values)``, :meth:`chalkd.secrets.store.SecretStore.digest`), before the spec is hashed
    and stored: a changed value still makes a new version, but what clients read back is keyed.

        key_local_digests(spec, req.local_secrets, secret_store.digest)
    """
    for ref in spec.secrets:
        if ref.kind == "local":
            ref.digest = digest({k: local_secrets[k] for k in ref.keys if k in local_secrets})


def content_hash(spec: pb.FunctionSpec) -> str:
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


def version_to_pb(fv: FunctionVersion, *, ready: int = 0, replicas: int = 0,
                  with_spec: bool = True) -> pb.FunctionVersion:
    msg = pb.FunctionVersion(
        id=fv.id, function_name=fv.name, version=fv.version, scaling_group_name=fv.scaling_group_name,
        created_at=fv.created_at, ready_replicas=ready, replicas=replicas,
        state="deleted" if fv.deleted else "failed" if fv.failed else "ready" if ready else "pending",
        error=fv.failed, latest=fv.latest, error_code=fv.failed_code,
    )
    if with_spec:
        msg.spec.ParseFromString(fv.wire)  # as the client sent it (keyed digests), never re-encoded
        for ref in msg.spec.secrets:
            if not ref.digest.startswith(DIGEST_PREFIX):
                ref.digest = ""  # stored by an older daemon: an unkeyed hash of values is never sent
    return msg


def payload_from_pb(p: pb.Payload) -> Payload:
    return Payload(p.schema, p.batch, p.rows or 1)


def payload_to_pb(p: Payload) -> pb.Payload:
    return pb.Payload(schema=p.schema, batch=p.batch, rows=p.rows)


def error_to_pb(e: CallError) -> pb.RemoteError:
    return pb.RemoteError(
        exception_type=e.exception_type, message=e.message, traceback=e.traceback,
        code=e.code.value, exception_mro=list(e.exception_mro),
    )


def error_from_pb(e: pb.RemoteError) -> CallError:
    try:
        code = ErrorCode(e.code)
    except ValueError:
        code = ErrorCode.INTERNAL
    return CallError(e.exception_type, e.message, e.traceback, code, tuple(e.exception_mro))
