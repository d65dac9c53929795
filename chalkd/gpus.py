"""This host's GPUs, and handing them out to replicas one owner at a time.

Inventory comes from NVML (the ``pynvml`` module of nvidia-ml-py), read once at
start-up. A host without GPUs, or without the NVIDIA driver and its
``libnvidia-ml`` library, is normal: the inventory is empty and the reason is
kept for ``chalkd gpus``; nothing is raised. Whole GPUs only: MIG instances are
not listed separately.

On a host with one L4::

    alloc = GpuAllocator(detect_gpus())   # [GpuDevice(index=0, uuid='GPU-5c1f…', name='NVIDIA L4', …)]
    alloc.unschedulable_reason(GpuRequest.parse("2:nvidia-a100"))
    # -> 'no host has 2 x nvidia-a100; hosts have: 1 x NVIDIA L4'  (refuse the function up front)
    alloc.allocate("r-1", GpuRequest.parse("nvidia-l4"))   # -> [the L4], held by r-1 alone
    alloc.allocate("r-2", GpuRequest.parse("nvidia-l4"))   # -> None: it fits this host, but not now
    alloc.release("r-1")                                   # when replica r-1 stops

Testing aid: ``CHALKD_FAKE_GPUS`` replaces NVML with a made-up inventory so the
scheduling paths can be exercised on machines without GPUs. It holds a JSON list,
or the path of a file holding one::

    CHALKD_FAKE_GPUS='[{"name": "NVIDIA L4", "uuid": "GPU-fake-0", "memory_bytes": 24000000000}]'

Each entry needs ``name``; ``uuid`` (default ``GPU-fake-<index>``),
``memory_bytes`` (default 0, unknown) and ``index`` (default its position) are
optional; so are ``utilization_percent`` and ``memory_used_bytes``, what ``/metrics``
reports for it (read again at each scrape when the value is a file). ``[]`` fakes a
host with no GPUs. A malformed value raises ValueError
rather than silently becoming an empty inventory. Fake devices do not exist:
containers asking for them will fail to start, so this is for scheduler tests
and demos only. An empty ``CHALKD_FAKE_GPUS`` counts as unset.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalkcompute.gpu import GpuRequest

__all__ = [
    "FAKE_GPUS_ENV", "GpuAllocator", "GpuDevice", "GpuInventory", "detect_gpus", "format_memory", "probe_gpus",
    "summarize",
]

log = logging.getLogger(__name__)

FAKE_GPUS_ENV = "CHALKD_FAKE_GPUS"


@dataclass(frozen=True)
class GpuDevice:
    """One physical GPU: NVML index, UUID (what Docker device requests name), driver name, total memory."""

    index: int
    uuid: str
    name: str
    memory_bytes: int = 0   # 0 when unknown


@dataclass(frozen=True)
class GpuInventory:
    """The result of probing: the devices, where they came from, and a note (why empty, driver version)."""

    devices: tuple[GpuDevice, ...]
    source: str            # "nvml" or "fake"
    note: str = ""         # e.g. "NVML Shared Library Not Found", "driver 550.54.15"


def detect_gpus() -> list[GpuDevice]:
    """This host's GPUs, by index; ``[]`` when there are none or NVML is unavailable."""
    return list(probe_gpus().devices)


def probe_gpus() -> GpuInventory:
    """Like :func:`detect_gpus`, keeping the source and why the list is empty (for ``chalkd gpus``).

    Raises ValueError only for a malformed ``CHALKD_FAKE_GPUS``.
    """
    fake = os.environ.get(FAKE_GPUS_ENV, "")
    if fake:
        return _fake_inventory(fake)
    return _nvml_inventory()


def _nvml_inventory() -> GpuInventory:
    try:
        import pynvml
    except ImportError as exc:  # a dependency, but chalkd still runs CPU work without it
        log.debug("GPU detection skipped: %s", exc)
        return GpuInventory((), "nvml", f"nvidia-ml-py is not installed ({exc})")
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as exc:
        # The usual case on a machine without the NVIDIA driver: "NVML Shared Library Not Found".
        log.debug("no GPUs: NVML unavailable: %s", exc)
        return GpuInventory((), "nvml", str(exc) or type(exc).__name__)
    try:
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError:
            driver = ""
        count = pynvml.nvmlDeviceGetCount()
        devices = []
        for i in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = _text(pynvml.nvmlDeviceGetName(handle))
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                try:
                    memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
                except pynvml.NVMLError:
                    memory = 0  # some boards refuse memory queries; the GPU is still usable
            except pynvml.NVMLError as exc:
                # A lost or inaccessible GPU must not hide the healthy ones; nor can it be handed out.
                log.warning("skipping GPU %d: NVML cannot read it: %s", i, exc)
                continue
            devices.append(GpuDevice(index=i, uuid=uuid, name=name, memory_bytes=memory))
        note = f"driver {driver}" if driver else ""
        if not devices:
            note = f"NVML found no GPUs{f' ({note})' if note else ''}"
        log.debug("NVML: %d GPU(s): %s", len(devices), devices)
        return GpuInventory(tuple(devices), "nvml", note)
    except pynvml.NVMLError as exc:
        log.debug("no GPUs: NVML failed: %s", exc)
        return GpuInventory((), "nvml", str(exc) or type(exc).__name__)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)


def _text(value) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# utilization_percent and memory_used_bytes: what /metrics reports for the GPU (chalkd.metrics.gpu_usage).
_FAKE_KEYS = {"name", "uuid", "memory_bytes", "index", "utilization_percent", "memory_used_bytes"}


def _fake_inventory(value: str) -> GpuInventory:
    text, origin = value, FAKE_GPUS_ENV
    if not value.lstrip().startswith("["):
        # Not inline JSON, so a path to a JSON file.
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise ValueError(f"{FAKE_GPUS_ENV} must be a JSON list or the path of a file holding one; "
                             f"cannot read {value!r}: {exc.strerror or exc}") from None
        origin = f"{FAKE_GPUS_ENV} file {value}"
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{origin} must be a JSON list of GPUs, got {type(entries).__name__}")
    devices: list[GpuDevice] = []
    for position, entry in enumerate(entries):
        where = f"{origin} entry {position}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object like {{\"name\": \"NVIDIA L4\"}}, got {entry!r}")
        unknown = set(entry) - _FAKE_KEYS
        if unknown:  # catches typos such as "memory" that would otherwise be ignored
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(_FAKE_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where} needs a non-empty string \"name\", got {name!r}")
        index = entry.get("index", position)
        uuid = entry.get("uuid", f"GPU-fake-{index}")
        memory = entry.get("memory_bytes", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"{where}: \"index\" must be a non-negative int, got {index!r}")
        if not isinstance(uuid, str) or not uuid:
            raise ValueError(f"{where}: \"uuid\" must be a non-empty string, got {uuid!r}")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(f"{where}: \"memory_bytes\" must be a non-negative int, got {memory!r}")
        util, used = entry.get("utilization_percent", 0), entry.get("memory_used_bytes", 0)
        if isinstance(util, bool) or not isinstance(util, int | float) or not 0 <= util <= 100:
            raise ValueError(f"{where}: \"utilization_percent\" must be a number 0-100, got {util!r}")
        if isinstance(used, bool) or not isinstance(used, int) or used < 0:
            raise ValueError(f"{where}: \"memory_used_bytes\" must be a non-negative int, got {used!r}")
        devices.append(GpuDevice(index=index, uuid=uuid, name=name, memory_bytes=memory))
    for attr in ("uuid", "index"):
        seen = Counter(getattr(d, attr) for d in devices)
        dupes = sorted(str(k) for k, n in seen.items() if n > 1)
        if dupes:
            raise ValueError(f"{origin}: duplicate {attr} {', '.join(dupes)}")
    devices.sort(key=lambda d: d.index)
    log.info("using %d fake GPU(s) from %s (testing aid)", len(devices), origin)
    return GpuInventory(tuple(devices), "fake", f"fake inventory from {origin}")


def summarize(devices) -> str:
    """``"2 x NVIDIA A100-SXM4-80GB, 1 x NVIDIA L4"`` (in index order of first appearance), or ``"no GPUs"``."""
    counts = Counter(d.name for d in sorted(devices, key=lambda d: d.index))
    return ", ".join(f"{n} x {name}" for name, n in counts.items()) or "no GPUs"


def format_memory(memory_bytes: int) -> str:
    """``"22.4 GiB"``, or ``"?"`` when unknown."""
    return f"{memory_bytes / 2**30:.1f} GiB" if memory_bytes else "?"


class GpuAllocator:
    """Exclusive GPU assignment on one host: each device belongs to at most one owner (a replica id).

    Not thread-safe: chalkd calls it from its event loop only.
    """

    def __init__(self, devices) -> None:
        self.devices: tuple[GpuDevice, ...] = tuple(sorted(devices, key=lambda d: d.index))
        self._held: dict[str, tuple[GpuDevice, ...]] = {}   # owner -> its devices

    def matching(self, request: GpuRequest) -> list[GpuDevice]:
        """Every device of the requested model, in use or not."""
        return [d for d in self.devices if request.matches(d.name)]

    def allocate(self, owner: str, request: GpuRequest) -> list[GpuDevice] | None:
        """Give ``owner`` ``request.count`` free matching devices (lowest index first), or None.

        None means "not now": the devices are held by other owners. It also comes
        back when the request can never fit, which :meth:`unschedulable_reason`
        tells apart (the catalog refuses such functions before they get here).
        An owner holds one allocation at a time: release it before asking again.
        """
        if owner in self._held:
            raise ValueError(f"{owner!r} already holds GPUs {[d.uuid for d in self._held[owner]]}; release them first")
        taken = {d.uuid for held in self._held.values() for d in held}
        free = [d for d in self.matching(request) if d.uuid not in taken]
        if len(free) < request.count:
            log.debug("cannot give %s %s now: %d free of %d matching", owner, request.describe(),
                      len(free), len(self.matching(request)))
            return None
        chosen = free[:request.count]
        self._held[owner] = tuple(chosen)
        log.debug("GPUs %s -> %s", [d.uuid for d in chosen], owner)
        return list(chosen)

    def allocate_for(self, owner: str, request: GpuRequest, spec: Any = None) -> list[GpuDevice] | None:
        """:meth:`allocate` for a replica of ``spec`` (a FunctionSpec or GroupSpec). On one host there is
        nowhere else to place it (the runtimes refuse ``node=``/``node_labels=``), so the spec changes nothing
        here; a swarm's allocator (chalkd.swarm.gpus) picks among the nodes the spec allows."""
        return self.allocate(owner, request)

    def hold(self, owner: str, uuids: tuple[str, ...]) -> list[GpuDevice]:
        """Give ``owner`` exactly these devices again (a sandbox re-adopted after a restart holds what its
        container was started with); the ones this host no longer has are left out."""
        chosen = tuple(d for d in self.devices if d.uuid in uuids)
        if chosen:
            self._held[owner] = chosen
        return list(chosen)

    def release(self, owner: str) -> list[GpuDevice]:
        """Free what ``owner`` holds; returns it (``[]`` if nothing, so calling twice is harmless)."""
        devices = self._held.pop(owner, ())
        if devices:
            log.debug("GPUs %s released by %s", [d.uuid for d in devices], owner)
        return list(devices)

    def held_by(self, owner: str) -> list[GpuDevice]:
        return list(self._held.get(owner, ()))

    def in_use(self) -> dict[str, str]:
        """Device UUID -> the owner holding it, for every device in use now."""
        return {d.uuid: owner for owner, held in self._held.items() for d in held}

    def unschedulable_reason(self, request: GpuRequest) -> str | None:
        """Why ``request`` could never be placed here, or None if it fits once the devices are free."""
        if len(self.matching(request)) >= request.count:
            return None
        return f"no host has {request.describe()}; hosts have: {summarize(self.devices)}"

    def summary(self) -> str:
        return summarize(self.devices)

    def describe(self) -> list[dict[str, str]]:
        """One row per device for display: index, name, memory, uuid, owner (``""`` when free)."""
        owners = self.in_use()
        return [{"index": str(d.index), "name": d.name, "memory": format_memory(d.memory_bytes),
                 "uuid": d.uuid, "owner": owners.get(d.uuid, "")} for d in self.devices]
