"""A function's options, validated once into one frozen object.

``@chalkcompute.function(...)`` and ``RemoteFunction(fn, ...)`` pass their keyword
arguments to :meth:`FunctionOptions.validate`; every bad value is refused there,
naming the argument, before anything is registered::

    opts = FunctionOptions.validate(fn, cpu="500m", memory="1Gi", retries=3)
    opts.cpu_millis, opts.memory_bytes   # (500, 1073741824)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chalkcompute._contract import FUNCTION_NAME_RE, name_too_long, quote
from chalkcompute._mounts import check_secrets, volume_mounts
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.exceptions import FunctionSignatureError
from chalkcompute.image import Image
from chalkcompute.policies import ConcurrencyPolicy, QueuePolicy, RateLimitPolicy, check_key
from chalkcompute.retries import RetryPolicy

__all__ = ["FunctionOptions", "parse_cpu", "parse_memory", "DEFAULT_BATCH_SIZE", "DEFAULT_BUFFER_MS"]

_MEMORY_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                 "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_cpu(value: str | int | float) -> int:
    """CPU request in millicores: ``"1"`` -> 1000, ``"500m"`` -> 500, ``2`` -> 2000."""
    if isinstance(value, bool):
        raise ValueError(f"cpu must be a number or a string like '500m', got {value!r}")
    if isinstance(value, (int, float)):
        millis = value * 1000
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m?)\s*", value)):
        millis = float(m.group(1)) * (1 if m.group(2) else 1000)
    else:
        raise ValueError(f"cpu must be a number or a string like '2' or '500m', got {value!r}")
    if millis <= 0:
        raise ValueError(f"cpu must be positive, got {value!r}")
    return int(round(millis))


def parse_memory(value: str | int) -> int:
    """Memory request in bytes: ``"2Gi"``, ``"512Mi"``, ``"1G"`` or an int of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size like '2Gi', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]i?)?\s*", value)):
        size = int(float(m.group(1)) * _MEMORY_UNITS[(m.group(2) or "").lower()])
    else:
        raise ValueError(f"memory must be a size like '2Gi', '512Mi' or a number of bytes, got {value!r}")
    if size <= 0:
        raise ValueError(f"memory must be positive, got {value!r}")
    return size


DEFAULT_BATCH_SIZE = 10
DEFAULT_BUFFER_MS = 1000


def _policies_spec(*, retries, rate_limit, rate_limit_key, concurrency, queue_policy, timeout,
                   max_batching_size, max_buffer_duration, is_generator: bool) -> dict:
    """Validate the queue-policy parameters; the FunctionSpec fields they become."""
    spec: dict = {}
    if retries is not None:
        policy = RetryPolicy.normalize(retries)
        spec["retries"] = pb.RetrySpec(
            max_retries=policy.max_retries, initial_wait_seconds=policy.initial_wait_seconds,
            backoff_multiplier=policy.backoff_multiplier, max_wait_seconds=policy.max_wait_seconds,
            jitter=policy.jitter, retry_on=[f"{t.__module__}.{t.__qualname__}" for t in policy.retry_on])
    if rate_limit is not None:
        rl = RateLimitPolicy.normalize(rate_limit)
        spec["rate_limit"] = pb.RateLimitSpec(rate=float(rl.rate), per=rl.per, key=rl.key or "")
    if rate_limit_key is not None:
        check_key(rate_limit_key, "rate_limit_key")
        spec["rate_limit_key"] = rate_limit_key
    if concurrency is not None:
        cp = ConcurrencyPolicy.normalize(concurrency)
        spec["concurrency"] = pb.ConcurrencySpec(max_concurrent=cp.max_concurrent, key=cp.key or "")
    if queue_policy is not None:
        if not isinstance(queue_policy, QueuePolicy):
            raise TypeError(f"queue_policy must be a chalkcompute.QueuePolicy, got {queue_policy!r}")
        spec["queue_policy"] = pb.QueuePolicySpec(
            max_items=queue_policy.max_items, result_ttl_seconds=float(queue_policy.result_ttl_seconds))
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        spec["timeout_seconds"] = float(timeout)
    if max_batching_size is not None or max_buffer_duration is not None:
        if is_generator:
            raise FunctionSignatureError(
                "a generator function cannot be batched: drop max_batching_size/max_buffer_duration "
                "or return a list instead of yielding")
        size = DEFAULT_BATCH_SIZE if max_batching_size is None else max_batching_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"max_batching_size must be a positive int, got {max_batching_size!r}")
        wait_ms = DEFAULT_BUFFER_MS if max_buffer_duration is None else max_buffer_duration
        if isinstance(wait_ms, bool) or not isinstance(wait_ms, (int, float)) or wait_ms < 0:
            raise ValueError(f"max_buffer_duration must be a number of milliseconds >= 0, got {max_buffer_duration!r}")
        spec["batching"] = pb.BatchingSpec(max_batch_size=size, max_buffer_seconds=wait_ms / 1000.0)
    return spec


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def check_placement(node: str | None, node_labels: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """``node=`` (a swarm node's hostname) and ``node_labels=`` (labels the node must carry), checked.

    >>> check_placement("gpu-box-2", {"zone": "a"})
    ('gpu-box-2', {'zone': 'a'})
    """
    if node is not None and (not isinstance(node, str) or not _NODE_NAME.fullmatch(node)):
        raise ValueError(f"node must be a node's hostname (letters, digits, '.', '_', '-'), got {node!r}")
    labels = dict(node_labels or {})
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_KEY.fullmatch(k):
            raise ValueError(f"node_labels: {k!r} is not a node label name")
        if not isinstance(v, str) or any(c in v for c in "\n\r\"'") or len(v) > 256:
            raise ValueError(f"node_labels[{k!r}] must be a str without quotes or line breaks, got {v!r}")
    return node or "", labels


@dataclass(frozen=True)
class FunctionOptions:
    """Everything ``@function(...)`` was given, checked and normalised."""

    name: str
    image: Image
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: list[Any] = field(default_factory=list)   # pb.VolumeMount
    secrets: list[Any] = field(default_factory=list)
    min_replicas: int = 1
    max_replicas: int = 1
    suspend_cooldown_period: float = 60.0
    options: Mapping[str, str] = field(default_factory=dict)
    serialization_format: str = "pyarrow"
    policy_spec: Mapping[str, Any] = field(default_factory=dict)  # FunctionSpec policy fields
    node: str = ""                                                # swarm placement (chalkd --runtime swarm)
    node_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def batched(self) -> bool:
        return "batching" in self.policy_spec

    @classmethod
    def validate(
        cls, fn: Callable[..., Any], *, image: Image | None = None, cpu: str | int | float | None = None,
        memory: str | int | None = None, gpu: str | None = None, name: str | None = None,
        env: dict[str, str] | None = None, min_replicas: int | None = None, max_replicas: int | None = None,
        volumes: list | None = None, secrets: list | None = None, serialization_format: str = "pyarrow",
        suspend_cooldown_period: float | None = None, options: dict[str, str] | None = None,
        max_buffer_duration: int | None = None, max_batching_size: int | None = None,
        retries: int | RetryPolicy | None = None, rate_limit_key: str | None = None,
        rate_limit: int | float | RateLimitPolicy | None = None,
        concurrency: int | ConcurrencyPolicy | None = None, queue_policy: QueuePolicy | None = None,
        timeout: float | None = None, node: str | None = None, node_labels: dict[str, str] | None = None,
    ) -> FunctionOptions:
        checked_secrets = check_secrets(secrets)
        if serialization_format != "pyarrow":
            raise ValueError(f"serialization_format must be 'pyarrow' (the only format), got {serialization_format!r}")
        fn_name = name or fn.__name__
        too_long = name_too_long("function name", fn_name)  # first: nothing below reads a long name
        if too_long:
            raise ValueError(too_long)
        if not FUNCTION_NAME_RE.match(fn_name):
            raise ValueError(
                f"invalid function name {quote(fn_name)}: use 1-128 letters, digits, '_', '-' or '.', "
                "starting with a letter or '_'")
        if image is not None and not isinstance(image, Image):
            raise TypeError(f"image must be a chalkcompute.Image, got {type(image).__name__}")
        gpu_text = ""
        if gpu is not None:
            from chalkcompute.gpu import GpuRequest
            gpu_text = str(GpuRequest.parse(gpu))
        node_text, labels = check_placement(node, node_labels)
        env_map = dict(env or {})
        for k, v in env_map.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"env must map str to str, got {k!r}: {v!r}")
        mounts = volume_mounts(volumes)
        for label, value in (("min_replicas", min_replicas), ("max_replicas", max_replicas)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{label} must be a non-negative int, got {value!r}")
        lo = 1 if min_replicas is None else min_replicas
        hi = max_replicas if max_replicas is not None else max(1, lo)
        if hi < 1:
            raise ValueError(f"max_replicas must be at least 1, got {hi}")
        if lo > hi:
            raise ValueError(f"min_replicas ({lo}) is greater than max_replicas ({hi})")
        cooldown = 60.0 if suspend_cooldown_period is None else float(suspend_cooldown_period)
        if cooldown < 0:
            raise ValueError(f"suspend_cooldown_period must be >= 0, got {suspend_cooldown_period!r}")
        is_gen = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        policy_spec = _policies_spec(
            retries=retries, rate_limit=rate_limit, rate_limit_key=rate_limit_key, concurrency=concurrency,
            queue_policy=queue_policy, timeout=timeout, max_batching_size=max_batching_size,
            max_buffer_duration=max_buffer_duration, is_generator=is_gen)
        return cls(
            name=fn_name, image=image or Image.debian_slim(),
            cpu_millis=parse_cpu(cpu) if cpu is not None else 0,
            memory_bytes=parse_memory(memory) if memory is not None else 0,
            gpu=gpu_text, env=env_map, volumes=mounts, secrets=checked_secrets, min_replicas=lo, max_replicas=hi,
            suspend_cooldown_period=cooldown, options={str(k): str(v) for k, v in (options or {}).items()},
            serialization_format=serialization_format, policy_spec=policy_spec, node=node_text, node_labels=labels)
