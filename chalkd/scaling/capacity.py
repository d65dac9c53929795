"""Up-front GPU capacity: refuse a version whose ``min_replicas`` can never all hold their GPUs here.

The allocator (``chalkd.gpus``) already refuses a request no single replica can get (two A100s on
a one-L4 host). This adds the floor: replicas kept up by ``min_replicas`` each hold their GPUs for
as long as the version is the latest, so a version whose floor wants more matching GPUs than the
host has would leave some of them waiting forever. For a class (``chalkcompute.cls``) every method
carries the class's options, so the daemon knows what the whole class wants from the first method
it registers, before any replica starts:

- replicas per method (the default): ``FunctionSpec.replica_pool`` is empty and
  ``replica_pool_size`` is the class's method count; each method keeps ``min_replicas`` replicas of
  its own, so the class wants ``methods x min_replicas x count`` GPUs;
- ``shared_replicas=True``: one pool (``replica_pool`` set) keeps ``min_replicas`` replicas for the
  class: ``min_replicas x count``, as a plain function.

    >>> from chalkcompute.gpu import GpuRequest
    >>> from chalkd.gpus import GpuAllocator, GpuDevice
    >>> one_l4 = GpuAllocator([GpuDevice(0, "GPU-0", "NVIDIA L4")])
    >>> why = gpu_floor_refusal(GpuRequest.parse("nvidia-l4"), min_replicas=1, methods=2, gpus=one_l4)
    >>> why.split(" (with")[0]
    '2 methods with replicas of their own (the default) at min_replicas=1, each replica with 1 x nvidia-l4: \
2 GPUs of type nvidia-l4 wanted, this host has 1 x NVIDIA L4'

    >>> gpu_floor_refusal(GpuRequest.parse("nvidia-l4"), min_replicas=1, methods=1, gpus=one_l4) is None
    True
"""

from __future__ import annotations

from chalkcompute.gpu import GpuRequest
from chalkd.gpus import GpuAllocator

__all__ = ["gpu_floor_refusal", "methods_with_own_replicas"]

#: Said wherever a class's per-method replicas are what does not fit (the SDK's ClassError repeats it).
SHARED_HINT = "with shared_replicas=True one pool of replicas serves every method, with one set of GPUs per replica"


def methods_with_own_replicas(replica_pool: str, replica_pool_size: int) -> int:
    """How many versions keep a floor of replicas of their own for this spec: the class's method count
    for a class with replicas per method, else 1 (a plain function, or a shared pool counted once)."""
    return max(1, replica_pool_size) if not replica_pool else 1


def gpu_floor_refusal(request: GpuRequest, *, min_replicas: int, methods: int,
                      gpus: GpuAllocator) -> str | None:
    """Why ``min_replicas`` (for each of ``methods`` versions) can never hold their GPUs on this host,
    or None when they fit once the GPUs are free. GPUs other versions hold now do not count: they
    are released when those stop, so a version that fits the host waits for them instead."""
    wanted = min_replicas * request.count * methods
    have = len(gpus.matching(request))
    if wanted <= have:
        return None
    kind = "any type" if request.model == "any" else f"type {request.model}"
    counted = f"min_replicas={min_replicas}, each replica with {request.describe()}"
    if methods > 1:
        counted = f"{methods} methods with replicas of their own (the default) at {counted}"
    return (f"{counted}: {wanted} GPU{'s' if wanted != 1 else ''} of {kind} wanted, this host has "
            f"{gpus.summary()}" + (f" ({SHARED_HINT})" if methods > 1 else ""))
