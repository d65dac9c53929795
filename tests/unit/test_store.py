"""chalkd.store.db.Store: group commit, after-commit callbacks, errors, close and reopen.

Each test drives a real Store on a temporary SQLite file inside ``asyncio.run``.
The store holds ``PRAGMA locking_mode=EXCLUSIVE``, so a second connection can
only look at the file once the store is closed; while it is open we read
through :meth:`Store.query`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from chalkd.store.db import SCHEMA_VERSION, Store, StoreStopped

INSERT_META = "INSERT INTO meta(key, value) VALUES (?, ?)"


def read_meta(path: Path) -> dict[str, str]:
    """The meta table as a fresh connection sees it (only once the store is closed)."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()


def meta_keys(store: Store) -> set[str]:
    return {r["key"] for r in store.query("SELECT key FROM meta")}


@pytest.mark.timeout(30)
def test_writes_queued_in_one_iteration_share_one_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            assert store.commits == 0
            for i in range(100):
                store.write(INSERT_META, (f"k{i}", str(i)))
            await store.flush()
            assert store.commits == 1
            assert len(meta_keys(store) - {"schema_version", "clean_shutdown"}) == 100

            # A second batch is a second commit.
            store.write(INSERT_META, ("later", "x"))
            store.write(INSERT_META, ("later2", "y"))
            await store.flush()
            assert store.commits == 2

            # A flush with nothing queued commits nothing.
            await store.flush()
            assert store.commits == 2
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_writes_from_other_tasks_of_the_same_iteration_join_the_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            async def writer(i: int) -> None:
                store.write(INSERT_META, (f"task{i}", str(i)))

            store.write(INSERT_META, ("first", "0"))
            # These tasks run in the loop iteration in which the writer wakes up.
            tasks = [asyncio.get_running_loop().create_task(writer(i)) for i in range(5)]
            await store.flush()
            await asyncio.gather(*tasks)
            assert store.commits == 1
            assert meta_keys(store) >= {"first", *(f"task{i}" for i in range(5))}
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_write_many_is_one_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            store.write_many((INSERT_META, (f"m{i}", "v")) for i in range(10))
            await store.flush()
            assert store.commits == 1
            assert len(meta_keys(store) - {"schema_version", "clean_shutdown"}) == 10
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_nothing_is_written_before_the_commit(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            store.write(INSERT_META, ("a", "1"))
            # Queued, not executed: the writer has not run yet.
            assert "a" not in meta_keys(store)
            assert store.commits == 0
            await store.flush()
            assert "a" in meta_keys(store)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_after_commit_runs_once_the_writes_are_committed(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        seen: list[tuple] = []
        try:
            def check() -> None:
                assert store.db is not None
                seen.append((
                    "cb",
                    store.commits,
                    store.db.in_transaction,
                    [r["value"] for r in store.query("SELECT value FROM meta WHERE key='a'")],
                ))

            store.write(INSERT_META, ("a", "1"))
            store.after_commit(check)
            assert seen == []          # not synchronously
            await asyncio.sleep(0)
            assert seen == []          # not before the writer's commit either
            await store.flush()
            # Ran after COMMIT (no transaction open), with the row in place.
            assert seen == [("cb", 1, False, ["1"])]
        finally:
            await store.close()
        # ... and durable: a fresh connection sees it once the store lets go of the file.
        assert read_meta(tmp_path / "db.sqlite")["a"] == "1"

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_after_commit_callbacks_run_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        order: list[int] = []
        try:
            for i in range(5):
                store.write(INSERT_META, (f"k{i}", str(i)))
                store.after_commit(lambda i=i: order.append(i))
            # A callback may queue more work: it lands in a later commit.
            store.after_commit(lambda: (store.write(INSERT_META, ("from-cb", "x")),
                                        store.after_commit(lambda: order.append(99))))
            await store.flush()
            await store.flush()
            assert order == [0, 1, 2, 3, 4, 99]
            assert store.commits == 2
            assert "from-cb" in meta_keys(store)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_failing_callback_is_logged_and_later_callbacks_run(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        ran: list[str] = []
        try:
            def boom() -> None:
                raise RuntimeError("callback exploded")

            store.write(INSERT_META, ("a", "1"))
            store.after_commit(boom)
            store.after_commit(lambda: ran.append("after"))
            await store.flush()
            assert ran == ["after"]
            assert "a" in meta_keys(store)
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="chalkd.store.db"):
        asyncio.run(main())
    assert any("after-commit callback failed" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_a_failing_statement_fails_alone_and_the_rest_of_its_group_commits(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        events: list[str] = []
        try:
            store.write(INSERT_META, ("innocent", "1"), on_commit=lambda: events.append("innocent committed"))
            store.write("INSERT INTO no_such_table VALUES (1)", on_commit=lambda: events.append("bad committed"),
                        on_fail=lambda exc: events.append(f"bad failed: {exc}"))
            store.after_commit(lambda: events.append("barrier"))
            store.write(INSERT_META, ("after", "1"), on_commit=lambda: events.append("after committed"))
            await store.flush()
            assert events == ["innocent committed", "bad failed: no such table: no_such_table", "barrier",
                              "after committed"]
            assert {"innocent", "after"} <= meta_keys(store)
            assert store.failed_statements == 1
            assert store.db is not None and not store.db.in_transaction

            # A constraint violation (duplicate key) fails only its own statement too.
            events.clear()
            store.write(INSERT_META, ("innocent", "again"), on_fail=lambda exc: events.append(type(exc).__name__))
            store.write(INSERT_META, ("next", "1"), on_commit=lambda: events.append("next committed"))
            await store.flush()
            assert events == ["IntegrityError", "next committed"]
        finally:
            await store.close()
        meta = read_meta(tmp_path / "db.sqlite")
        assert meta["innocent"] == "1" and meta["next"] == "1"

    with caplog.at_level(logging.ERROR, logger="chalkd.store.db"):
        asyncio.run(main())
    dropped = [r for r in caplog.records if "statement failed and is dropped" in r.getMessage()]
    assert len(dropped) == 2 and all(r.exc_info is not None for r in dropped)  # with its traceback
    assert "INSERT INTO no_such_table" in dropped[0].getMessage()


@pytest.mark.timeout(30)
def test_a_full_disk_holds_writes_refuses_unheld_ones_and_recovers_by_itself(tmp_path: Path, caplog) -> None:
    """A full disk simulated with PRAGMA max_page_count (SQLite's own SQLITE_FULL)."""
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite", full_retry=0.05)
        await store.open()
        events: list[str] = []
        try:
            assert store.db is not None
            pages = store.db.execute("PRAGMA page_count").fetchone()[0]
            store.db.execute(f"PRAGMA max_page_count={pages + 2}")
            store.write(INSERT_META, ("big", "x" * 100_000), on_commit=lambda: events.append("big committed"),
                        on_fail=lambda exc: events.append("big failed"))
            refused = asyncio.get_running_loop().create_future()
            store.write(INSERT_META, ("new call", "1"), hold=False,
                        on_commit=lambda: events.append("new call committed"), on_fail=refused.set_result)
            exc = await refused
            assert store.full
            assert str(exc).startswith(f"chalkd's disk is full at {tmp_path}: ") and "MB free" in str(exc)
            assert events == []  # held, not failed, not committed
            assert "big" not in meta_keys(store)  # reads go on meanwhile

            done = asyncio.get_running_loop().create_future()
            store.after_commit(lambda: done.set_result(None))
            await asyncio.sleep(0.2)   # a few retries, still full
            assert not done.done() and events == []
            store.db.execute("PRAGMA max_page_count=1073741823")   # space returns
            await done
            assert events == ["big committed"] and not store.full
            assert "big" in meta_keys(store) and "new call" not in meta_keys(store)
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="chalkd.store.db"):
        asyncio.run(main())
    assert any("holding 2 write(s) until space returns" in r.getMessage() for r in caplog.records)
    assert any("has space again" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_a_writer_that_stops_fails_its_waiters_and_every_later_write(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        try:
            assert store._task is not None
            store._task.cancel()
            failed = asyncio.get_running_loop().create_future()
            store.write(INSERT_META, ("lost", "1"), on_fail=failed.set_result)
            assert isinstance(await failed, StoreStopped)
            with pytest.raises(StoreStopped, match="store writer stopped"):
                store.write(INSERT_META, ("later", "1"))
            with pytest.raises(StoreStopped):
                await store.flush()
        finally:
            await store.close()

    with caplog.at_level(logging.CRITICAL, logger="chalkd.store.db"):
        asyncio.run(main())
    assert any("the store writer stopped" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    ran: list[str] = []

    async def main() -> None:
        store = Store(path)
        await store.open()
        store.write(INSERT_META, ("pending", "yes"))
        store.after_commit(lambda: ran.append("cb"))
        await store.close()           # no flush
        assert store.db is None
        assert store.commits == 1

    asyncio.run(main())
    assert ran == ["cb"]
    assert read_meta(path)["pending"] == "yes"
    # The final TRUNCATE checkpoint emptied the log into the database file.
    wal = Path(str(path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


@pytest.mark.timeout(30)
def test_close_twice_is_harmless(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite")
        await store.open()
        await store.close()
        await store.close()
        assert store.db is None

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_reopen_keeps_data_and_one_schema_version_row(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "db.sqlite"   # parents are created

    async def main() -> None:
        store = Store(path)
        await store.open()
        store.write(INSERT_META, ("kept", "1"))
        store.write(
            "INSERT INTO functions (id, name, version, content_hash, spec, created_at) VALUES (?,?,?,?,?,?)",
            ("fv-1", "f", 1, "h", b"spec", 1.0),
        )
        await store.close()

        store = Store(path)
        await store.open()
        try:
            rows = store.query("SELECT value FROM meta WHERE key='schema_version'")
            assert [r["value"] for r in rows] == [str(SCHEMA_VERSION)]
            assert "kept" in meta_keys(store)
            assert [tuple(r) for r in store.query("SELECT id, name, spec FROM functions")] == [("fv-1", "f", b"spec")]
            # The schema is all there (tables the queue uses).
            tables = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
            assert {"meta", "functions", "calls", "chunks"} <= tables
            # The connection is in WAL mode with an exclusive lock.
            assert store.query("PRAGMA journal_mode")[0][0] == "wal"
            assert store.query("PRAGMA locking_mode")[0][0] == "exclusive"
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_reopen_restores_a_missing_schema_version_row(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        store = Store(path)
        await store.open()
        store.write("DELETE FROM meta WHERE key='schema_version'")
        await store.close()
        assert "schema_version" not in read_meta(path)

        store = Store(path)
        await store.open()
        await store.close()

    asyncio.run(main())
    assert read_meta(path)["schema_version"] == str(SCHEMA_VERSION)


@pytest.mark.timeout(30)
def test_reopen_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        store = Store(path)
        await store.open()
        store.write("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
        await store.close()

        newer = Store(path)
        with pytest.raises(RuntimeError, match="newer than this chalkd"):
            await newer.open()
        assert newer.db is None

    asyncio.run(main())
    import gc
    gc.collect()   # the refused connection is dropped, not leaked into a later test


@pytest.mark.timeout(30)
def test_durability_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        Store(tmp_path / "x.sqlite", durability="sometimes")

    async def main() -> None:
        store = Store(tmp_path / "full.sqlite", durability="full", checkpoint_interval=0.0)
        await store.open()
        try:
            assert store.query("PRAGMA synchronous")[0][0] == 2    # FULL
            # With a zero interval every commit also checkpoints; that must not get in the way.
            for i in range(3):
                store.write(INSERT_META, (f"k{i}", "v"))
                await store.flush()
            assert store.commits == 3
        finally:
            await store.close()

        store = Store(tmp_path / "normal.sqlite")
        await store.open()
        try:
            assert store.query("PRAGMA synchronous")[0][0] == 1    # NORMAL
        finally:
            await store.close()

    asyncio.run(main())
    assert read_meta(tmp_path / "full.sqlite")["k2"] == "v"
