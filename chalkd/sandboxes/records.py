"""Sandbox records: what the daemon remembers about each sandbox, in memory and in the store.

    rec = SandboxRecord(id="sb-1a2b3c", name="scratch", status="building", created_at=time.time())
    rec.set_status("ready")                 # wakes every long-poll (GetSandbox with wait_seconds)
    table.save(rec)                         # one upsert through the group-committing writer
    table.load()                            # -> [SandboxRecord, ...] at start, for re-adoption

A record outlives the daemon: a sandbox keeps running across a daemon restart
and is re-adopted from its record (see :mod:`chalkd.sandboxes.manager`).
Everything the re-adoption needs that is not a column rides in ``data``
(JSON): the engine's container name, the image's uid, the resources reserved,
the isolation in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from chalkd.store.db import Store

__all__ = ["SandboxRecord", "SandboxTable", "LIVE", "ENDED"]

LIVE = ("building", "ready")
ENDED = ("error", "terminated")


@dataclass(eq=False)
class SandboxRecord:
    id: str
    name: str
    status: str = "building"          # building | ready | error | terminated
    status_message: str = ""
    status_details: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    expires_at: float = 0.0           # 0: no lifetime
    image: str = ""                   # the engine's tag once built
    engine_name: str = ""
    uid: int = 0                      # the image's USER: the agent runs as it
    cpu_millis: int = 0               # reserved (0: nothing reserved)
    memory_bytes: int = 0
    gpu: str = ""
    gpu_uuids: tuple[str, ...] = ()
    isolation: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def set_status(self, status: str, message: str = "", **details: str) -> None:
        self.status = status
        if message or status in ENDED:
            self.status_message = message or self.status_message
        for k, v in details.items():
            if v:
                self.status_details[k] = v
            else:
                self.status_details.pop(k, None)
        self.changed.set()

    async def wait_change(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds while the sandbox is building (GetSandbox's long-poll)."""
        if self.status == "building" and timeout > 0:
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)

    def data(self) -> str:
        return json.dumps({
            "status_details": self.status_details, "image": self.image, "engine_name": self.engine_name,
            "uid": self.uid, "cpu_millis": self.cpu_millis, "memory_bytes": self.memory_bytes, "gpu": self.gpu,
            "gpu_uuids": list(self.gpu_uuids), "isolation": self.isolation,
        }, separators=(",", ":"))

    @classmethod
    def from_row(cls, row: Any) -> SandboxRecord:
        data = json.loads(row["data"])
        return cls(id=row["id"], name=row["name"], status=row["status"], status_message=row["status_message"],
                   created_at=row["created_at"], expires_at=row["expires_at"],
                   status_details=dict(data.get("status_details") or {}), image=data.get("image", ""),
                   engine_name=data.get("engine_name", ""), uid=int(data.get("uid", 0)),
                   cpu_millis=int(data.get("cpu_millis", 0)), memory_bytes=int(data.get("memory_bytes", 0)),
                   gpu=data.get("gpu", ""), gpu_uuids=tuple(data.get("gpu_uuids") or ()),
                   isolation=dict(data.get("isolation") or {}))


class SandboxTable:
    """The ``sandboxes`` table: upserts go through the store's writer; reads happen once, at start."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, rec: SandboxRecord) -> None:
        self.store.write(
            "INSERT INTO sandboxes(id, name, status, status_message, created_at, expires_at, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name, "
            "status=excluded.status, status_message=excluded.status_message, expires_at=excluded.expires_at, "
            "data=excluded.data",
            (rec.id, rec.name, rec.status, rec.status_message, rec.created_at, rec.expires_at, rec.data()))

    def delete(self, sandbox_id: str) -> None:
        self.store.write("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def load(self) -> list[SandboxRecord]:
        rows = self.store.query("SELECT * FROM sandboxes ORDER BY created_at")
        return [SandboxRecord.from_row(r) for r in rows]

    async def flush(self) -> None:
        await self.store.flush()
