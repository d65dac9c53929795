"""Schema upgrades: a chalkd.db made by commit 7de325e (schema version 1) opens and keeps its data.

The fixture tests/fixtures/chalkd-7de325e.db was made by a real daemon of that
commit (tests/fixtures/make_old_db.py): functions add, count and boom, four
finished calls (a spawn of add(20, 22), a streamed count(3), a failure) and a
volume "data".
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from chalkd.catalog import Catalog
from chalkd.model import CallState, ErrorCode
from chalkd.queue.core import Queue
from chalkd.services.convert import decode_function_bytes
from chalkd.store import migrations
from chalkd.store.db import SCHEMA_VERSION, Store
from chalkd.volumes.store import VolumeStore

FIXTURE = Path(__file__).parent.parent / "fixtures" / "chalkd-7de325e.db"
SPAWNED = "fc-0661e01523caed2dff09"   # add.spawn(20, 22), printed by make_old_db.py


def old_db(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(FIXTURE, home / "chalkd.db")
    return home / "chalkd.db"


@pytest.mark.timeout(30)
def test_a_database_from_7de325e_opens_and_keeps_its_functions_calls_and_volumes(tmp_path: Path) -> None:
    path = old_db(tmp_path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
    db.close()

    async def main() -> None:
        store = Store(path)
        await store.open()
        try:
            (version,) = store.query("SELECT value FROM meta WHERE key='schema_version'")
            assert version["value"] == str(SCHEMA_VERSION) == "6"
            assert store.query("SELECT COUNT(*) AS n FROM sandboxes")[0]["n"] == 0  # version 3 added it
            assert store.query("SELECT COUNT(*) AS n FROM containers")[0]["n"] == 0  # version 4 added it
            assert store.clean_shutdown      # the old daemon stopped with SIGTERM; no marker means clean
            catalog = Catalog(store)
            catalog.load(decode_function_bytes)
            assert sorted(fv.name for fv in catalog.by_id.values()) == ["add", "boom", "count"]
            queue = Queue(store)
            queue.known_functions = lambda: catalog.by_id
            queue.load(catalog.by_id)
            assert queue.calls == {}
            spawned = queue.get(SPAWNED)
            assert spawned.state == CallState.SUCCEEDED and spawned.result is not None
            states = sorted(r["state"] for r in store.query("SELECT state FROM calls"))
            assert states == ["failed", "succeeded", "succeeded", "succeeded"]
            (failed,) = [queue.get(r["id"]) for r in store.query("SELECT id FROM calls WHERE state='failed'")]
            assert failed.error is not None and failed.error.code == ErrorCode.USER
            assert "bad 7" in failed.error.message
            assert [r["crashes"] for r in store.query("SELECT crashes FROM calls")] == [0, 0, 0, 0]
            volumes = VolumeStore(path.parent, store)
            assert [v.name for v in volumes.list()] == ["data"]
        finally:
            await store.close()

        store = Store(path)   # a second open finds nothing to do
        await store.open()
        await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_failing_migration_leaves_the_database_at_its_old_version(tmp_path: Path, monkeypatch) -> None:
    path = old_db(tmp_path)
    monkeypatch.setattr(migrations, "MIGRATIONS", [
        (2, "ALTER TABLE calls ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;"),
        (3, "CREATE TABLE later (x); INSERT INTO no_such_table VALUES (1);"),
    ])
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 3)
    db = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(RuntimeError, match=r"upgrading database .* to schema version 3 failed: no such table"):
        migrations.migrate(db, path)
    # Step 2 stays applied, step 3 is wholly undone.
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='later'").fetchone() is None
    db.close()


@pytest.mark.timeout(30)
def test_a_database_that_lost_its_version_row_is_placed_by_its_tables(tmp_path: Path) -> None:
    # Without the schema_version row, the tables tell the version: version 3's schema (sandboxes, no
    # containers) gets steps 4 and 5, and version 5's gets nothing (2's ALTER TABLE would fail if repeated).
    for last, expect in ((3, 3), (4, 4), (5, 5), (6, 6)):
        path = tmp_path / f"v{last}.db"
        db = sqlite3.connect(path, isolation_level=None)
        db.executescript(migrations.SCHEMA)
        for version, script in migrations.MIGRATIONS:
            if version <= last:
                db.executescript(script)
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is None
        assert migrations.migrate(db, path) == expect
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("6",)
        assert {r[1] for r in db.execute("PRAGMA table_info(calls)")} >= {"batch_rows", "batch_state"}
        assert db.execute("SELECT COUNT(*) FROM containers").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM scaling_groups").fetchone() == (0,)
        db.close()
