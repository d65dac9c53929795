"""Following the tasks of chalkd's services: when each replica runs, ends, or is lost with its node.

The manager's engine is asked for this home's tasks and the nodes twice a second while replicas exist
(Swarm's event stream exists too, but a poll also sees what happened while a call timed out, and costs
two small requests). Each tracked service gets one :class:`TaskState` per change; its end is final:

    watcher = TaskWatcher(docker, home_label)
    watcher.track(service_id, on_change)   # on_change(TaskState) on every change, last one has .ended
    await watcher.start()

A task's end, and what it means for the replica's calls (the autoscaler re-queues pre-stream calls of a
lost replica and fails its streamed ones, as for a worker lost on one machine):

* ``complete``/``failed``/``shutdown``/``rejected``/``orphaned``: its container exited or never ran; the
  exit code and Swarm's error (``No such image``, ``starting container failed: ...``) are kept;
* running on a node that Swarm reports ``down``: lost with its node (``--dispatcher-heartbeat 1s`` makes
  Swarm see that within ~3 s);
* the service is gone (removed by hand): ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

log = logging.getLogger(__name__)

__all__ = ["TaskState", "TaskWatcher", "TERMINAL", "task_state"]

TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
POLL_INTERVAL = 0.5
IDLE_INTERVAL = 5.0
CALL_TIMEOUT = 10.0
GONE_AFTER = 3      # polls in a row that do not list a tracked service's tasks: it is gone


@dataclass(frozen=True)
class TaskState:
    state: str = "new"          # Swarm's task state ("pending", "running", ...) or "lost" / "gone"
    node_id: str = ""
    node_name: str = ""
    node_addr: str = ""
    message: str = ""           # Swarm's status message and error ("no suitable node (insufficient resources ...)")
    exit_code: int | None = None
    ended: bool = False
    ports: tuple[tuple[int, int], ...] = ()   # (container port, published node port) for host-mode publishes
    generic: tuple[str, ...] = ()             # the generic resources the task was given ("gpu=GPU-…")


def task_state(task: dict, nodes: dict[str, dict]) -> TaskState:
    """One task (``GET /tasks`` item) with the nodes (``GET /nodes`` by id) as a :class:`TaskState`."""
    status = task.get("Status") or {}
    state = status.get("State", "new")
    node_id = task.get("NodeID", "")
    node = nodes.get(node_id) or {}
    node_name = (node.get("Description") or {}).get("Hostname", node_id[:12])
    node_addr = (node.get("Status") or {}).get("Addr", "")
    message = "; ".join(x for x in (status.get("Message", ""), status.get("Err", "")) if x)
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    ports = tuple((p.get("TargetPort", 0), p.get("PublishedPort", 0))
                  for p in ((status.get("PortStatus") or {}).get("Ports") or []))
    generic = []
    for res in task.get("GenericResources") or task.get("AssignedGenericResources") or []:
        named = res.get("NamedResourceSpec")
        if named:
            generic.append(f"{named.get('Kind')}={named.get('Value')}")
    ended = state in TERMINAL
    if not ended and node and (node.get("Status") or {}).get("State") == "down" and state in (
            "assigned", "accepted", "preparing", "starting", "running"):
        return TaskState("lost", node_id, node_name, node_addr, f"its node {node_name} is down", None, True,
                         ports, tuple(generic))
    return TaskState(state, node_id, node_name, node_addr, message, exit_code, ended, ports, tuple(generic))


def _index(task: dict) -> int:
    return int((task.get("Version") or {}).get("Index", 0))


class TaskWatcher:
    def __init__(self, docker: aiodocker.Docker, home_label: str, *, interval: float = POLL_INTERVAL,
                 on_nodes: Callable[[list[dict]], None] | None = None) -> None:
        self.docker = docker
        self.on_nodes = on_nodes      # every poll's GET /nodes (the GPU allocator follows what nodes advertise)
        self.home_label = home_label
        self.interval = interval
        self._tracked: dict[str, Callable[[TaskState], None]] = {}
        self._last: dict[str, TaskState] = {}
        self._missing: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.nodes: dict[str, dict] = {}
        self._failing_since: float | None = None
        self._warned_at = 0.0

    def track(self, service_id: str, on_change: Callable[[TaskState], None]) -> None:
        self._tracked[service_id] = on_change
        self._wake.set()

    def untrack(self, service_id: str) -> None:
        self._tracked.pop(service_id, None)
        self._last.pop(service_id, None)
        self._missing.pop(service_id, None)

    def last(self, service_id: str) -> TaskState | None:
        return self._last.get(service_id)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="swarm-task-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._tracked:
                # Idle: nodes are still read now and then (GPUs advertised, nodes joining or leaving).
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_INTERVAL)
            try:
                await self.poll()
                self._failing_since = None
            except (DockerError, TimeoutError, OSError, aiohttp.ClientError, RuntimeError) as exc:
                # Once, then every 30 s while it lasts: a manager that is gone must not flood the log.
                now = time.monotonic()
                if self._failing_since is None or now - self._warned_at >= 30:
                    self._warned_at = now
                    self._failing_since = self._failing_since or now
                    log.warning("cannot read the swarm's tasks from the manager (for %.0fs): %s",
                                now - self._failing_since, exc or type(exc).__name__)
            except Exception:
                log.exception("following the swarm's tasks failed")
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        """One look at the tasks and nodes; calls each changed service's callback."""
        filters = json.dumps({"label": [f"dev.chalkd.home={self.home_label}"]})
        tasks, nodes = await asyncio.wait_for(asyncio.gather(
            self.docker._query_json("tasks", params={"filters": filters}),
            self.docker._query_json("nodes")), CALL_TIMEOUT)
        self.nodes = {n["ID"]: n for n in nodes}
        if self.on_nodes is not None:
            try:
                self.on_nodes(nodes)
            except Exception:
                log.exception("reading the nodes' resources failed")
        latest: dict[str, dict] = {}
        for t in tasks:
            sid = t.get("ServiceID", "")
            if sid in self._tracked:
                have = latest.get(sid)
                if have is None or _index(t) > _index(have):
                    latest[sid] = t
        for sid, on_change in list(self._tracked.items()):
            task = latest.get(sid)
            if task is None:
                # A new service may not list a task for a moment; one that never does again is gone.
                if sid in self._last:
                    self._missing[sid] = self._missing.get(sid, 0) + 1
                    if self._missing[sid] >= GONE_AFTER:
                        state = TaskState("gone", message="its service is gone (removed outside chalkd?)", ended=True)
                        self._emit(sid, on_change, state)
                continue
            self._missing.pop(sid, None)
            self._emit(sid, on_change, task_state(task, self.nodes))

    def _emit(self, sid: str, on_change: Callable[[TaskState], None], state: TaskState) -> None:
        if self._last.get(sid) == state:
            return
        self._last[sid] = state
        if state.ended:
            self._tracked.pop(sid, None)
        try:
            on_change(state)
        except Exception:
            log.exception("a task state callback failed")
