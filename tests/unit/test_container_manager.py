"""The container manager's bookkeeping: ended containers are remembered, but not forever (nor their rows)."""

from __future__ import annotations

import asyncio

import pytest

from chalkd.containers import manager as mgr
from chalkd.containers.manager import ContainerManager, ManagedContainer
from chalkd.containers.records import ContainerTable
from chalkd.store.db import Store

pytestmark = pytest.mark.timeout(30)


def test_only_the_newest_ended_containers_are_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(mgr, "KEEP_ENDED", 3)

    async def scenario() -> tuple[list[str], list[ManagedContainer]]:
        store = Store(tmp_path / "chalkd.db")
        await store.open()
        try:
            table = ContainerTable(store)
            m = ContainerManager(None, None, None, table, home=tmp_path, run_dir=tmp_path / "run")
            running = ManagedContainer(id="ct-live", name="", engine_name="e", image_uri="i",
                                       agent_dir=tmp_path / "live", created_at=0.0, status="Running")
            m.by_id[running.id] = running
            table.save(running)
            for i in range(6):
                c = ManagedContainer(id=f"ct-{i}", name="", engine_name="e", image_uri="i",
                                     agent_dir=tmp_path / f"a{i}", created_at=float(i + 1), status="Running")
                m.by_id[c.id] = c
                table.save(c)
                await m._remove(c, "Stopped")
            await table.flush()
            assert m.get(id="ct-5").status == "Stopped"
            with pytest.raises(mgr.ContainerNotFound):
                m.get(id="ct-0")
            return sorted(m.by_id), table.load()
        finally:
            await store.close()

    remembered, rows = asyncio.run(scenario())
    # The three newest stopped ones stay for from_id/info; a running one is never forgotten.
    assert remembered == ["ct-3", "ct-4", "ct-5", "ct-live"]
    assert sorted(r.id for r in rows) == remembered
    assert {r.id: (r.status, r.stopping) for r in rows}["ct-5"] == ("Stopped", True)
    assert {r.id: (r.status, r.stopping) for r in rows}["ct-live"] == ("Running", False)


def test_a_record_round_trips_through_the_table(tmp_path):
    async def scenario() -> ManagedContainer:
        store = Store(tmp_path / "chalkd.db")
        await store.open()
        try:
            table = ContainerTable(store)
            c = ManagedContainer(id="ct-1", name="web", engine_name="chalkd-web-1", image_uri="chalkd-img:ab",
                                 agent_dir=tmp_path / "run" / "agents" / "ct-1", uid=1000, created_at=5.0)
            table.save(c)
            c.set_status("Failed", "its main process exited with code 3")
            table.save(c)
            await table.flush()
            (back,) = table.load()
            return back
        finally:
            await store.close()

    back = asyncio.run(scenario())
    assert (back.id, back.name, back.engine_name, back.image_uri, back.uid, back.created_at) == (
        "ct-1", "web", "chalkd-web-1", "chalkd-img:ab", 1000, 5.0)
    assert back.agent_dir == tmp_path / "run" / "agents" / "ct-1"
    assert (back.status, back.error, back.stopping, back.ended) == (
        "Failed", "its main process exited with code 3", False, False)
