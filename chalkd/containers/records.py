"""Container records: what the daemon remembers about each Container API container, in memory and in the store.

    c = ManagedContainer(id="ct-1a2b3c4d5e6f", name="web", engine_name="chalkd-web-1a2b3c4d5e6f",
                         image_uri="chalkd-img:ab12", agent_dir=run_dir / "agents" / "ct-1a2b3c4d5e6f", uid=1000)
    c.set_status("Running")              # wakes every long-poll (GetContainer with wait_seconds)
    table.save(c)                        # one upsert through the store's group-committing writer
    table.load()                         # -> [ManagedContainer, ...] at start, for re-adoption

A record outlives the daemon: a container keeps running across a daemon
restart and is re-adopted from its record (see :mod:`chalkd.containers.manager`).
What the re-adoption needs that is not a column rides in ``data`` (JSON): the
engine's container name, the image tag, the uid its agent runs as and the
agent directory bind-mounted into it (the container holds that exact path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalkd.containers.agent_client import AgentSocket
from chalkd.store.db import Store

__all__ = ["ManagedContainer", "ContainerTable", "LIVE", "ENDED"]

LIVE = ("Pending", "Running")
ENDED = ("Stopped", "Failed")


@dataclass(eq=False)
class ManagedContainer:
    id: str
    name: str
    engine_name: str
    image_uri: str
    agent_dir: Path
    uid: int = 0                     # the image's USER, which the agent runs as
    created_at: float = field(default_factory=time.time)
    status: str = "Pending"          # Pending | Running | Stopped | Failed
    error: str = ""
    engine: object = None            # aiodocker DockerContainer
    watcher: asyncio.Task | None = None
    # True once its engine container is removed (or being removed): a Failed one that is not
    # removed yet still has its exited engine container, which stop() removes.
    stopping: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def set_status(self, status: str, error: str = "") -> None:
        self.status, self.error = status, error or self.error
        self.changed.set()

    async def wait_change(self, timeout: float) -> None:
        """Wait up to ``timeout`` while the container is Pending."""
        if self.status == "Pending" and timeout > 0:
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)

    @property
    def socket(self) -> AgentSocket:
        return AgentSocket(self.agent_dir / "agent.sock", self.uid)

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def ended(self) -> bool:
        """Stopped, or Failed with its engine container removed: nothing of it is left but the record."""
        return self.stopping and self.status in ENDED

    def data(self) -> str:
        return json.dumps({"engine_name": self.engine_name, "image_uri": self.image_uri, "uid": self.uid,
                           "agent_dir": str(self.agent_dir), "removed": self.stopping},
                          separators=(",", ":"))

    @classmethod
    def from_row(cls, row: Any) -> ManagedContainer:
        data = json.loads(row["data"])
        return cls(id=row["id"], name=row["name"], status=row["status"], error=row["error"],
                   created_at=row["created_at"], engine_name=data.get("engine_name", ""),
                   image_uri=data.get("image_uri", ""), uid=int(data.get("uid", 0)),
                   agent_dir=Path(data.get("agent_dir", "")), stopping=bool(data.get("removed", False)))


class ContainerTable:
    """The ``containers`` table: upserts go through the store's writer; reads happen once, at start."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, c: ManagedContainer) -> None:
        self.store.write(
            "INSERT INTO containers(id, name, status, error, created_at, data) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, status=excluded.status, error=excluded.error, "
            "data=excluded.data",
            (c.id, c.name, c.status, c.error, c.created_at, c.data()))

    def delete(self, container_id: str) -> None:
        self.store.write("DELETE FROM containers WHERE id = ?", (container_id,))

    def load(self) -> list[ManagedContainer]:
        rows = self.store.query("SELECT * FROM containers ORDER BY created_at")
        return [ManagedContainer.from_row(r) for r in rows]

    async def flush(self) -> None:
        await self.store.flush()
