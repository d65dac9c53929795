"""A scaling group's state as its manager's loop sees it: the daemon's settings, revisions, replicas.

    settings = GroupSettings(host="127.0.0.1", ports=(51000, 51999), cooldown=60.0)
    g = Group(rec=GroupRecord(id="sg-1", name="web"), pool=ReplicaPool("web"))
    g.replicas["sgr-2"] = Replica(id="sgr-2", revision=1)

Plain data: :mod:`chalkd.groups.manager` owns every change.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from chalkd.groups.pool import Backend, ReplicaPool
from chalkd.groups.records import GroupRecord
from chalkd.specs import GroupSpec

__all__ = ["GroupSettings", "Revision", "Replica", "Group"]


@dataclass(frozen=True)
class GroupSettings:
    """The daemon's scaling-group flags (``chalkd serve --group-*``)."""

    host: str = "127.0.0.1"                 # where proxies listen: the daemon's own --host
    ports: tuple[int, int] = (51000, 51999)
    cooldown: float = 60.0                  # seconds below the load's need before one replica stops
    target_in_flight: int = 8               # requests in flight per replica before another starts
    hold_timeout: float = 300.0             # a request waits this long for a replica (scale from zero)
    stop_grace: float = 10.0                # SIGTERM to SIGKILL, per replica
    drain_timeout: float = 30.0             # in-flight requests of a replica being stopped get this long
    ready_timeout: float = 120.0            # a new replica not ready in this long is a failed start


@dataclass(frozen=True)
class Revision:
    number: int
    spec: GroupSpec
    spec_bytes: bytes
    image: str
    command: list[str]


@dataclass(eq=False)
class Replica:
    id: str
    revision: int
    started_at: float = field(default_factory=time.time)
    state: str = "starting"     # waiting | starting | ready | stopping
    ever_ready: bool = False
    waiting_for: str = ""
    engine: object = None
    backend: Backend | None = None
    probe: object = None
    task: asyncio.Task | None = None


@dataclass(eq=False)
class Group:
    rec: GroupRecord
    pool: ReplicaPool
    proxy: object = None
    served: Revision | None = None         # what requests go to (None before the first rollout)
    target: Revision | None = None         # what the loop brings up (== served unless rolling out)
    replicas: dict[str, Replica] = field(default_factory=dict)
    failures: int = 0
    backoff_until: float = 0.0
    demand_until: float = 0.0
    below_since: float | None = None
    desired: int = 0
    failed: bool = False
    deleted: bool = False
    last_failure: str = ""
    seen: tuple = ()
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task] = field(default_factory=set)
    ended: deque = field(default_factory=lambda: deque(maxlen=10))   # (replica, revision, output tail)
