"""The durable store: one SQLite database in WAL mode, one writer, group commit.

Every change the daemon makes is queued here with :meth:`Store.write`; a single
writer task drains the queue into one ``BEGIN IMMEDIATE`` transaction, commits,
then runs the callbacks registered with :meth:`Store.after_commit` (how the
queue releases "accepted" and streamed events only once they are durable).
When the daemon is busy, many writes share one commit; when idle, a write is
committed on the next loop iteration.

    store = Store(path, durability="normal")
    await store.open()
    store.write("INSERT INTO meta(key, value) VALUES (?, ?)", ("a", "b"))
    store.after_commit(lambda: print("durable"))
    await store.flush()

SQLite runs on the event-loop thread: a commit in WAL mode with
``synchronous=NORMAL`` is a write() to the log, tens of microseconds, cheaper
than a hop to a thread. ``durability="full"`` fsyncs every commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS functions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    spec BLOB NOT NULL,
    created_at REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    function_id TEXT NOT NULL,
    parent_id TEXT,
    idempotency_key TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    root_seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    args_schema BLOB,
    args_batch BLOB,
    result_schema BLOB,
    result_batch BLOB,
    result_rows INTEGER,
    error BLOB,
    chunks INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
-- Every index costs pages on the hot path: open calls are found by a scan at
-- start-up, idempotency keys are held in memory (see Queue.load).
CREATE TABLE IF NOT EXISTS chunks (
    call_id TEXT NOT NULL,
    first_index INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    schema BLOB NOT NULL,
    batch BLOB NOT NULL,
    PRIMARY KEY (call_id, first_index)
) WITHOUT ROWID;
-- The result sweep finds expired calls by finish time (written once, when a call ends).
CREATE INDEX IF NOT EXISTS calls_finished ON calls(finished_at) WHERE finished_at IS NOT NULL;
-- Daemon-defined rate limits (chalkd rate-limit set), named by rate_limit_key.
CREATE TABLE IF NOT EXISTS rate_limits (
    name TEXT PRIMARY KEY,
    rate REAL NOT NULL,
    per TEXT NOT NULL,
    updated_at REAL NOT NULL
);
-- Named volumes (chalkd.volumes): their files under <home>/volumes/<name>/ are the truth for contents.
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- Secrets (chalkd.secrets): owner '' for `chalkd secret set`, else the fv-/ct- id whose deploy sent them.
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    value TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, owner)
);
CREATE TABLE IF NOT EXISTS integrations (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS integration_keys (
    integration TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (integration, key)
);
"""


class Store:
    """SQLite with a single group-committing writer (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "normal",
        checkpoint_interval: float = 30.0,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        self.path = Path(path)
        self.durability = durability
        self.checkpoint_interval = checkpoint_interval
        self.db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, Any]] = []
        self._callbacks: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.commits = 0
        self._last_checkpoint = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------

    def open_sync(self) -> sqlite3.Connection:
        """Open the database and create the schema (no writer task)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # It holds secrets: readable by the daemon's user only. SQLite gives the -wal and
        # -shm files the database file's mode; files an older chalkd left are tightened too.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for p in (self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm"))):
            if p.exists():
                os.chmod(p, 0o600)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # chalkd is the only process using the database: an exclusive lock keeps
        # the WAL index in heap memory and saves lock syscalls on every commit.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
        db.execute("PRAGMA foreign_keys=OFF")
        # The daemon checkpoints on its own schedule (see _maybe_checkpoint).
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript(SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self.path} has schema version {row[0]}, newer than this chalkd "
                f"({SCHEMA_VERSION}); upgrade chalkd"
            )
        self.db = db
        return db

    async def open(self) -> None:
        self.open_sync()
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="store-writer")

    async def close(self) -> None:
        """Commit what is queued, checkpoint, close."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self.db is not None:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.exception("final checkpoint failed")
            self.db.close()
            self.db = None

    # -- writing -------------------------------------------------------------------

    def write(self, sql: str, params: Any = ()) -> None:
        """Queue one statement for the next group commit."""
        self._pending.append((sql, params))
        if not self._wake.is_set():
            self._wake.set()

    def write_many(self, statements: Iterable[tuple[str, Any]]) -> None:
        self._pending.extend(statements)
        self._wake.set()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every write queued so far is committed."""
        self._callbacks.append(callback)
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        fut = asyncio.get_running_loop().create_future()
        self.after_commit(lambda: fut.done() or fut.set_result(None))
        await fut

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            # Let the other tasks of this loop iteration queue their writes too.
            await asyncio.sleep(0)
            self._wake.clear()
            self._commit_pending()
            if self._closing and not self._pending and not self._callbacks:
                return
            self._maybe_checkpoint()

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, []
        callbacks, self._callbacks = self._callbacks, []
        if pending:
            assert self.db is not None
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
                for sql, params in pending:
                    db.execute(sql, params)
                db.execute("COMMIT")
                self.commits += 1
            except Exception:
                # A failed statement is a bug, not an expected failure: say so loudly,
                # keep the daemon up, and still release the waiters.
                log.exception("group commit of %d statements failed", len(pending))
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("after-commit callback failed")

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if now - self._last_checkpoint < self.checkpoint_interval or self.db is None:
            return
        self._last_checkpoint = now
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            log.exception("checkpoint failed")

    # -- reading -------------------------------------------------------------------

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        assert self.db is not None
        cur = self.db.execute(sql, params)
        cur.row_factory = sqlite3.Row
        return cur.fetchall()
