"""The store keeps its WAL small: truncated when the writer goes idle, and when it passes ``wal_limit``.

Without this the -wal file only grew while the daemon ran (127 MB after 10,000
tiny calls). Each test measures the file itself; waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from chalkd.store.db import Store

INSERT_META = "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"


def wal_size(store: Store) -> int:
    try:
        return os.stat(store.wal_path).st_size
    except FileNotFoundError:
        return 0


async def wait_for(cond, what: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.timeout(60)
def test_an_idle_writer_truncates_the_wal_and_the_data_survives(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        store = Store(path, idle_checkpoint=0.05)
        await store.open()
        blob = "x" * 20_000
        for i in range(300):  # 300 separate group commits of ~20 kB each
            store.write(INSERT_META, (f"k{i}", blob))
            await store.flush()
        grown = wal_size(store)
        assert grown > 1_000_000, grown  # the writes did go through the WAL
        await wait_for(lambda: store.truncations >= 1, "the idle checkpoint")
        assert wal_size(store) == 0
        # Writing again after a truncation works and reads back.
        store.write(INSERT_META, ("after", "1"))
        await store.flush()
        assert store.query("SELECT value FROM meta WHERE key='after'")[0]["value"] == "1"
        await store.close()

    asyncio.run(main())
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0] == 300
    finally:
        db.close()


@pytest.mark.timeout(60)
def test_a_busy_writer_truncates_the_wal_once_it_passes_the_limit(tmp_path: Path) -> None:
    async def main() -> None:
        # No idle checkpoint at all: only the size limit can keep the WAL down.
        store = Store(tmp_path / "db.sqlite", idle_checkpoint=0, wal_limit=1_000_000)
        await store.open()
        blob = "y" * 50_000
        biggest = 0
        for i in range(1_000):  # ~50 MB through the WAL without one idle moment
            store.write(INSERT_META, (f"k{i % 50}", blob))
            await store.flush()
            biggest = max(biggest, wal_size(store))
        assert store.truncations >= 1
        # The limit is checked every few dozen groups: the file stays within a few MB of it.
        assert biggest < 10_000_000, biggest
        await store.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_no_idle_checkpoint_when_nothing_was_written(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite", idle_checkpoint=0.01)
        await store.open()
        store.write(INSERT_META, ("a", "b"))
        await store.flush()
        await wait_for(lambda: store.truncations == 1, "the first idle checkpoint")
        # Idle again with nothing committed since: no further checkpoint is armed.
        assert store._idle_timer is None
        await store.close()

    asyncio.run(main())
