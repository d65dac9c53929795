"""The container manager's bookkeeping: ended containers are remembered, but not forever."""

from __future__ import annotations

import asyncio

import pytest

from chalkd.containers import manager as mgr
from chalkd.containers.manager import ContainerManager, ManagedContainer

pytestmark = pytest.mark.timeout(30)


def test_only_the_newest_ended_containers_are_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(mgr, "KEEP_ENDED", 3)
    m = ContainerManager(None, None, None, home=tmp_path, run_dir=tmp_path / "run")

    async def scenario() -> None:
        running = ManagedContainer(id="ct-live", name="", engine_name="e", image_uri="i",
                                   agent_dir=tmp_path / "live", created_at=0.0, status="Running")
        m.by_id[running.id] = running
        for i in range(6):
            c = ManagedContainer(id=f"ct-{i}", name="", engine_name="e", image_uri="i",
                                 agent_dir=tmp_path / f"a{i}", created_at=float(i + 1), status="Running")
            m.by_id[c.id] = c
            await m._remove(c, "Stopped")

    asyncio.run(scenario())
    # The three newest stopped ones stay for from_id/info; a running one is never forgotten.
    assert sorted(m.by_id) == ["ct-3", "ct-4", "ct-5", "ct-live"]
    assert m.get(id="ct-5").status == "Stopped"
    with pytest.raises(mgr.ContainerNotFound):
        m.get(id="ct-0")
