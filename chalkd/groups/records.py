"""Scaling-group records: what the daemon remembers about each group, in memory and in the store.

    rec = GroupRecord(id="sg-1a2b3c4d5e6f", name="web", created_at=time.time(), spec=spec_bytes)
    rec.set_status("Running")             # wakes every long-poll (GetScalingGroup with wait_seconds)
    table.save(rec)                       # one upsert through the store's group-committing writer
    table.load()                          # -> [GroupRecord, ...] at start: each live group is served again

A group is desired state. Its replicas do not outlive the daemon (they are its
proxy's backends, and the proxy is the daemon); its record does: a restarted
daemon binds the group's port again and starts its replicas anew from
``spec``, the encoded ``chalk.v1.ScalingGroupSpec`` of the newest revision
(the domain never decodes it: the server passes its codec to ``load``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from chalkd.store.db import Store

__all__ = ["GroupRecord", "GroupTable", "STATUSES"]

STATUSES = ("Pending", "Running", "Failed", "ScaledToZero")


@dataclass(eq=False)
class GroupRecord:
    id: str
    name: str
    created_at: float = field(default_factory=time.time)
    spec: bytes = b""                 # the newest deployed revision's encoded spec (no local secret values)
    status: str = "Pending"           # Pending | Running | Failed | ScaledToZero
    status_message: str = ""
    revision: int = 0                 # the revision being served (0: none yet)
    target_revision: int = 0          # the newest deployed one (> revision while it rolls out)
    rollout_error: str = ""
    host_port: int = 0                # the proxy's port, kept across restarts
    auth_key: str = ""                # authenticated groups: the bearer key requests need
    image: str = ""                   # the engine's tag of the served revision
    last_decision: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def set_status(self, status: str, message: str | None = None) -> None:
        changed = status != self.status or (message is not None and message != self.status_message)
        self.status = status
        if message is not None:
            self.status_message = message
        if changed:
            self.changed.set()

    def touch(self) -> None:
        """Something a long-poll shows changed (replicas, revision)."""
        self.changed.set()

    async def wait_change(self, timeout: float) -> None:
        if timeout > 0:
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)

    def data(self) -> str:
        return json.dumps({"revision": self.revision, "target_revision": self.target_revision,
                           "rollout_error": self.rollout_error, "host_port": self.host_port,
                           "auth_key": self.auth_key, "image": self.image}, separators=(",", ":"))

    @classmethod
    def from_row(cls, row: Any) -> GroupRecord:
        data = json.loads(row["data"])
        return cls(id=row["id"], name=row["name"], created_at=row["created_at"], spec=bytes(row["spec"]),
                   status=row["status"], status_message=row["status_message"],
                   revision=int(data.get("revision", 0)), target_revision=int(data.get("target_revision", 0)),
                   rollout_error=data.get("rollout_error", ""), host_port=int(data.get("host_port", 0)),
                   auth_key=data.get("auth_key", ""), image=data.get("image", ""))


class GroupTable:
    """The ``scaling_groups`` table: upserts go through the store's writer; reads happen once, at start."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, rec: GroupRecord) -> None:
        self.store.write(
            "INSERT INTO scaling_groups(id, name, status, status_message, created_at, spec, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name, "
            "status=excluded.status, status_message=excluded.status_message, spec=excluded.spec, data=excluded.data",
            (rec.id, rec.name, rec.status, rec.status_message, rec.created_at, rec.spec, rec.data()))

    def delete(self, group_id: str) -> None:
        self.store.write("DELETE FROM scaling_groups WHERE id = ?", (group_id,))

    def load(self) -> list[GroupRecord]:
        rows = self.store.query("SELECT * FROM scaling_groups ORDER BY created_at")
        return [GroupRecord.from_row(r) for r in rows]

    async def flush(self) -> None:
        await self.store.flush()
