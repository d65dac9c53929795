"""The daemon's Prometheus metrics (``/metrics`` on ``--http-port``), on registries of our own.

Two kinds, so the call path pays next to nothing:

* **Events** (calls finished by outcome, call latency, queue wait, retries, rate-limit waits, chunks,
  image builds): module-level counters and histograms that the queue and the builders bump through the
  one-line functions below (:func:`call_started`, :func:`call_finished`, ...). Each function's labelled
  children are made once per function name and cached, so a hook is a dict lookup and a locked add.
* **State** (queue depth, calls in flight, replicas by state, sandboxes, scaling groups, GPUs, volume
  bytes): :class:`DaemonCollector` reads the daemon's own structures at scrape time; nothing is kept
  up to date on the call path.

Metrics carry names only (functions, volumes, groups, GPUs): never arguments, results or log text.
A batch call (map/starmap) is one queue unit and counts as one call.

    registry = daemon_registry(server)          # events + this daemon's state
    text = await render(registry, collector)    # Prometheus text format, for /metrics
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import chalkd
from chalkd.gpus import FAKE_GPUS_ENV, GpuDevice

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: a warm call is ~0.1-1 ms, a cold start or a long handler minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0, 900.0, 3600.0, float("inf"))
BUILD_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, float("inf"))
VOLUME_REFRESH_SECONDS = 15.0  # volume sizes walk each volume's files: at most this often, off the loop

# -- events ---------------------------------------------------------------------------------------------
# registry=None: made unregistered, then registered into each daemon's registry (a test process may run
# several daemons; none touches prometheus_client's global default registry).

CALLS = Counter("chalkd_calls", "Calls finished, by function and outcome (succeeded, failed, cancelled)",
                ["function", "outcome"], registry=None)
CALL_SECONDS = Histogram("chalkd_call_duration_seconds", "Seconds from a call's submission to its outcome",
                         ["function"], buckets=LATENCY_BUCKETS, registry=None)
QUEUE_WAIT = Histogram("chalkd_call_queue_wait_seconds",
                       "Seconds an attempt waited in the queue before it was handed to a replica",
                       ["function"], buckets=LATENCY_BUCKETS, registry=None)
RETRIES = Counter("chalkd_call_retries", "Failed attempts that were retried", ["function"], registry=None)
RATE_LIMIT_WAITS = Counter("chalkd_rate_limit_waits",
                           "Times a function's queued calls had to wait for a rate-limit token", ["function"],
                           registry=None)
CHUNKS = Counter("chalkd_chunks_streamed", "Generator chunks received from replicas", ["function"], registry=None)
BUILDS = Histogram("chalkd_image_build_duration_seconds",
                   "Seconds an image build took (cached images are not builds), by kind and outcome",
                   ["kind", "outcome"], buckets=BUILD_BUCKETS, registry=None)
EVENT_METRICS = (CALLS, CALL_SECONDS, QUEUE_WAIT, RETRIES, RATE_LIMIT_WAITS, CHUNKS, BUILDS)


class _Fn:
    """One function's labelled children, made once (``labels()`` takes a lock and builds a tuple)."""

    __slots__ = ("outcomes", "latency", "wait", "retries", "rate_waits", "chunks")

    def __init__(self, name: str) -> None:
        self.outcomes = {o: CALLS.labels(name, o) for o in ("succeeded", "failed", "cancelled")}
        self.latency = CALL_SECONDS.labels(name)
        self.wait = QUEUE_WAIT.labels(name)
        self.retries = RETRIES.labels(name)
        self.rate_waits = RATE_LIMIT_WAITS.labels(name)
        self.chunks = CHUNKS.labels(name)


_FNS: dict[str, _Fn] = {}


def _fn(name: str) -> _Fn:
    m = _FNS.get(name)
    if m is None:
        m = _FNS[name] = _Fn(name)
    return m


def call_started(call: Any) -> None:
    """An attempt was handed to a replica (``call.dispatched_at`` just set): its wait in the queue."""
    _fn(call.function.name).wait.observe(call.dispatched_at - call.queued_at)


def call_finished(call: Any) -> None:
    """A call reached its outcome (``call.state`` and ``call.finished_at`` just set): once per call."""
    fv = call.function  # None: a recovered call of a version no longer known
    m = _fn(fv.name if fv is not None else "(unknown)")
    m.outcomes[call.state.value].inc()
    m.latency.observe(max(0.0, call.finished_at - call.created_at))


def call_retried(call: Any) -> None:
    """A failed attempt of ``call`` will run again."""
    _fn(call.function.name).retries.inc()


def rate_limited(function: Any) -> None:
    """``function``'s next call waits for a rate-limit token."""
    _fn(function.name).rate_waits.inc()


def chunks_streamed(function: Any, n: int = 1) -> None:
    """``n`` chunks of a generator of ``function`` arrived from its replica."""
    _fn(function.name).chunks.inc(n)


def build_finished(kind: str, seconds: float, outcome: str) -> None:
    """An image build (``kind``: ``"docker"`` or ``"process"``) ended after ``seconds`` with ``outcome``
    (``succeeded``, ``failed`` or ``cancelled``)."""
    BUILDS.labels(kind, outcome).observe(seconds)


async def timed_build(kind: str, build: Awaitable[T]) -> T:
    """Await ``build`` (an image build of ``kind``) and record its duration and outcome:
    ``return await metrics.timed_build("docker", self._build(...))``."""
    started, outcome = time.monotonic(), "failed"
    try:
        result = await build
        outcome = "succeeded"
        return result
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        build_finished(kind, time.monotonic() - started, outcome)


# -- GPU usage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuUsage:
    """One GPU's utilisation (0-100 %) and memory used, or None where the board does not say."""

    utilization_percent: float | None
    memory_used_bytes: int | None


def gpu_usage(devices: tuple[GpuDevice, ...]) -> dict[str, GpuUsage]:
    """Usage by UUID: from ``CHALKD_FAKE_GPUS`` (its entries' ``utilization_percent`` and
    ``memory_used_bytes``, read again each time so a test can change them) or NVML. Blocking (NVML, a
    file): call it off the event loop. An unreadable source gives ``{}`` (logged), not an error."""
    if not devices:
        return {}
    fake = os.environ.get(FAKE_GPUS_ENV, "")
    if fake:
        return _fake_usage(fake)
    return _nvml_usage(devices)


def _fake_usage(value: str) -> dict[str, GpuUsage]:
    try:
        text = value if value.lstrip().startswith("[") else Path(value).read_text()
        entries = json.loads(text)
    except (OSError, ValueError) as exc:  # the inventory was read at start; a file changed since
        log.warning("metrics: cannot read %s for GPU usage: %s", FAKE_GPUS_ENV, exc)
        return {}
    out = {}
    for i, e in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(e, dict):
            util, used = e.get("utilization_percent"), e.get("memory_used_bytes")
            out[str(e.get("uuid", f"GPU-fake-{e.get('index', i)}"))] = GpuUsage(
                float(util) if isinstance(util, int | float) else None, int(used) if isinstance(used, int) else None)
    return out


def _nvml_usage(devices: tuple[GpuDevice, ...]) -> dict[str, GpuUsage]:
    try:
        import pynvml  # type: ignore[import-untyped]

        pynvml.nvmlInit()
    except Exception as exc:  # no driver here: the inventory said so at start
        log.debug("metrics: NVML unavailable: %s", exc)
        return {}
    out = {}
    try:
        for d in devices:
            util: float | None = None
            used: int | None = None
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(d.uuid)
            except pynvml.NVMLError as exc:
                log.debug("metrics: GPU %s: %s", d.uuid, exc)
                continue
            try:
                util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                pass  # some boards (MIG instances) refuse utilisation queries
            try:
                used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            except pynvml.NVMLError:
                pass
            out[d.uuid] = GpuUsage(util, used)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return out


# -- state at scrape time ------------------------------------------------------------------------------


class DaemonCollector(Collector):
    """Reads a running :class:`chalkd.server.Server`'s structures when scraped (on the event loop).

    The slow parts (volume sizes walk files, NVML) are read by :meth:`refresh` off the loop before each
    render, and only their last values are read here.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.volume_bytes: dict[str, int] = {}
        self.volume_files: dict[str, int] = {}
        self._volumes_at = float("-inf")
        self.gpus: dict[str, GpuUsage] = {}

    def _gpu_devices(self) -> tuple[GpuDevice, ...]:
        scaler = getattr(self.server, "scaler", None)
        return scaler.gpus.devices if scaler is not None else ()

    async def refresh(self) -> None:
        """Read GPU usage (every scrape) and volume sizes (at most every VOLUME_REFRESH_SECONDS), in threads."""
        try:
            self.gpus = await asyncio.to_thread(gpu_usage, self._gpu_devices())
        except Exception:  # the last values stay; the scrape goes on
            log.exception("metrics: reading GPU usage failed")
        if time.monotonic() - self._volumes_at >= VOLUME_REFRESH_SECONDS:
            self._volumes_at = time.monotonic()
            try:
                infos = await asyncio.to_thread(self.server.volumes.list)
            except Exception:
                log.exception("metrics: reading volume sizes failed")
            else:
                self.volume_bytes = {v.name: v.size_bytes for v in infos}
                self.volume_files = {v.name: v.file_count for v in infos}

    def collect(self) -> Iterator[Metric]:
        s = self.server
        info = GaugeMetricFamily("chalkd_info", "This daemon: its version and runtime (always 1)",
                                 labels=["version", "runtime"])
        info.add_metric([chalkd.__version__, s.runtime.name], 1)
        yield info
        yield GaugeMetricFamily("chalkd_uptime_seconds", "Seconds since the daemon started",
                                value=time.monotonic() - s.started)
        yield CounterMetricFamily("chalkd_calls_submitted", "Calls submitted since the daemon started",
                                  value=s.queue.total_submitted)
        for part in (self._functions, self._sandboxes, self._groups, self._volumes, self._gpus):
            try:
                families = list(part())
            except Exception:  # one subsystem's surprise must not cost the scrape every other metric
                log.exception("metrics: reading %s failed", part.__name__.lstrip("_"))
                continue
            yield from families

    def _functions(self) -> Iterator[Metric]:
        s = self.server
        depth = GaugeMetricFamily("chalkd_queue_depth", "Calls waiting in the queue for a replica", labels=["function"])
        inflight = GaugeMetricFamily("chalkd_calls_in_flight", "Calls handed to replicas and not finished",
                                     labels=["function"])
        waiting: dict[str, int] = {}
        running: dict[str, int] = {}
        for fv in s.catalog.by_id.values():
            if fv.deleted:
                continue
            waiting[fv.name] = waiting.get(fv.name, 0) + s.queue.waiting(fv.id)
            running[fv.name] = running.get(fv.name, 0) + s.queue.inflight(fv.id)
        for name in sorted(waiting):
            depth.add_metric([name], waiting[name])
            inflight.add_metric([name], running[name])
        yield depth
        yield inflight
        replicas = GaugeMetricFamily("chalkd_replicas", "Function replicas by state (starting, ready, stopping)",
                                     labels=["function", "state"])
        counts: dict[tuple[str, str], int] = {}
        for r in s.scaler.replicas.values():
            if r.state != "stopped":
                key = (r.function.name, r.state)
                counts[key] = counts.get(key, 0) + 1
        for (name, state), n in sorted(counts.items()):
            replicas.add_metric([name, state], n)
        yield replicas

    def _sandboxes(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("chalkd_sandboxes", "Sandboxes by status (building, ready, error, terminated)",
                                   labels=["status"])
        manager = self.server.sandboxes
        if manager is not None:  # the process runtime has none
            counts: dict[str, int] = {}
            for rec in manager.list():
                counts[rec.status] = counts.get(rec.status, 0) + 1
            for status, n in sorted(counts.items()):
                family.add_metric([status], n)
        yield family

    def _groups(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("chalkd_group_replicas_ready", "A scaling group's replicas ready for requests",
                                  labels=["group"])
        inflight = GaugeMetricFamily("chalkd_group_requests_in_flight", "Requests a scaling group is serving",
                                     labels=["group"])
        manager = self.server.groups
        if manager is not None:
            for g in manager.list():
                ready.add_metric([g.rec.name], g.pool.ready_count)
                inflight.add_metric([g.rec.name], g.pool.in_flight)
        yield ready
        yield inflight

    def _volumes(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("chalkd_volume_bytes", "Bytes of a volume's files (measured at most every "
                                 f"{VOLUME_REFRESH_SECONDS:g}s)", labels=["volume"])
        files = GaugeMetricFamily("chalkd_volume_files", "Files in a volume", labels=["volume"])
        for name in sorted(self.volume_bytes):
            size.add_metric([name], self.volume_bytes[name])
            files.add_metric([name], self.volume_files.get(name, 0))
        yield size
        yield files

    def _gpus(self) -> Iterator[Metric]:
        labels = ["gpu", "uuid", "name"]
        util = GaugeMetricFamily("chalkd_gpu_utilization_ratio", "GPU utilisation (0-1), NVML's last sample",
                                 labels=labels)
        used = GaugeMetricFamily("chalkd_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("chalkd_gpu_memory_total_bytes", "GPU memory", labels=labels)
        held = GaugeMetricFamily("chalkd_gpu_allocated", "1 when chalkd has handed the GPU to a replica",
                                 labels=labels)
        scaler = self.server.scaler
        in_use = scaler.gpus.in_use()
        for d in self._gpu_devices():
            key = [str(d.index), d.uuid, d.name]
            u = self.gpus.get(d.uuid)
            if u is not None and u.utilization_percent is not None:
                util.add_metric(key, u.utilization_percent / 100.0)
            if u is not None and u.memory_used_bytes is not None:
                used.add_metric(key, u.memory_used_bytes)
            if d.memory_bytes:
                total.add_metric(key, d.memory_bytes)
            held.add_metric(key, 1 if d.uuid in in_use else 0)
        yield from (util, used, total, held)


def daemon_registry(server: Any) -> tuple[CollectorRegistry, DaemonCollector]:
    """A registry of this daemon's own (not prometheus_client's global one): the event metrics and a
    :class:`DaemonCollector` over ``server``."""
    registry = CollectorRegistry(auto_describe=False)
    for metric in EVENT_METRICS:
        registry.register(metric)
    collector = DaemonCollector(server)
    registry.register(collector)
    return registry, collector


async def render(registry: CollectorRegistry, collector: DaemonCollector) -> bytes:
    """The Prometheus text exposition of ``registry`` (collectors read on the event loop, their
    slow parts refreshed off it first)."""
    await collector.refresh()
    return generate_latest(registry)
