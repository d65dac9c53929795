"""The durable store: one SQLite database in WAL mode, one writer, group commit.

Every change the daemon makes is queued here with :meth:`Store.write`; a single
writer task drains the queue into one ``BEGIN IMMEDIATE`` transaction and
commits. Each statement may carry its own callbacks: ``on_commit`` runs once
that statement is committed, ``on_fail(exc)`` once it has failed for good (how
the queue releases "accepted", chunks and results only once they are durable).
:meth:`Store.after_commit` registers a barrier: it runs once every write queued
before it has been settled (committed or failed). Callbacks run in the order
they were queued.

    store = Store(path, durability="normal")
    await store.open()
    store.write("INSERT INTO meta(key, value) VALUES (?, ?)", ("a", "b"),
                on_commit=lambda: print("durable"), on_fail=lambda exc: print("lost:", exc))
    await store.flush()

Failures: when a group commit fails, the group is rolled back and replayed
statement by statement, each in its own savepoint, so one bad statement (a
bug, a constraint) fails only itself, loudly logged, and the rest commit. A
full disk (``SQLITE_FULL``) is different: nothing is wrong with the
statements, so they are held, in order, and retried every ``full_retry``
seconds until space returns; meanwhile :attr:`Store.full` is set, and writes
queued with ``hold=False`` (new submissions) fail at once with
:class:`DiskFull` instead of waiting. The writer task catches everything; if
it still ends, every later write raises instead of hanging.

SQLite runs on the event-loop thread: a commit in WAL mode with
``synchronous=NORMAL`` is a write() to the log, tens of microseconds, cheaper
than a hop to a thread. ``durability="full"`` fsyncs every commit.

The WAL is kept small: once no commit has come for ``idle_checkpoint`` seconds
(one timer per idle period, nothing per call), and whenever the -wal file passes
``wal_limit`` bytes (stat'ed every few dozen group commits), a
``wal_checkpoint(TRUNCATE)`` copies it into the database and cuts it to zero.
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

from chalkd.store.migrations import SCHEMA, SCHEMA_VERSION, migrate

log = logging.getLogger(__name__)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "DiskFull", "Store", "StoreStopped", "is_disk_full"]

SQLITE_FULL = 13


class DiskFull(Exception):
    """The database's disk is full; the message names the home and the space left."""


class StoreStopped(RuntimeError):
    """The writer task is gone: nothing can be stored any more."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database or disk is full" (or the OS's ENOSPC)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) is not None:
        return exc.sqlite_errorcode & 0xFF == SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == 28


class _Entry:
    """One queued statement (``sql`` set) or barrier callback (``sql`` None)."""

    __slots__ = ("sql", "params", "on_commit", "on_fail", "hold")

    def __init__(self, sql, params, on_commit, on_fail, hold) -> None:
        self.sql = sql
        self.params = params
        self.on_commit = on_commit
        self.on_fail = on_fail
        self.hold = hold


class Store:
    """SQLite with a single group-committing writer (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "normal",
        checkpoint_interval: float = 30.0,
        full_retry: float = 1.0,
        idle_checkpoint: float = 0.5,
        wal_limit: int = 32 * 1024 * 1024,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        self.path = Path(path)
        self.durability = durability
        self.checkpoint_interval = checkpoint_interval
        self.full_retry = full_retry
        # The WAL is truncated to nothing once the writer has had no commit for
        # ``idle_checkpoint`` seconds, and whenever it passes ``wal_limit`` bytes:
        # without it the -wal file only ever grows while the daemon runs.
        self.idle_checkpoint = idle_checkpoint
        self.wal_limit = wal_limit
        self.wal_path = self.path.with_name(self.path.name + "-wal")
        self.truncations = 0
        self._last_commit = 0.0
        self._dirty = False  # commits since the last truncating checkpoint
        self._idle_timer: asyncio.TimerHandle | None = None
        self._wal_check_every = 64  # group commits between two stat() of the WAL
        self._groups_since_check = 0
        self.db: sqlite3.Connection | None = None
        self._pending: list[_Entry] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._stopped: BaseException | None = None
        self.commits = 0
        self.failed_statements = 0
        # Set while commits fail for lack of space; what is queued waits for it to clear.
        self.full = False
        # Whether the previous daemon stopped cleanly (close() ran); read by the queue's recovery.
        self.clean_shutdown = True
        self._last_checkpoint = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------

    def open_sync(self) -> sqlite3.Connection:
        """Open the database and bring its schema up to date (no writer task)."""
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
        # When a checkpoint lets the WAL restart, SQLite cuts the file back to this size.
        db.execute(f"PRAGMA journal_size_limit={min(self.wal_limit, 4 * 1024 * 1024)}")
        migrate(db, self.path)
        # A database a daemon has open reads "clean_shutdown=0" until close() says otherwise:
        # the next start tells a crash from a drain by it (a fresh database counts as clean).
        row = db.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
        self.clean_shutdown = row is None or row[0] == "1"
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', '0')")
        self.db = db
        return db

    async def open(self) -> None:
        self.open_sync()
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="store-writer")
        self._task.add_done_callback(self._writer_ended)

    async def close(self) -> None:
        """Commit what is queued, record a clean shutdown, checkpoint, close.

        While the disk is full, what cannot be committed is dropped here (logged):
        those calls run again after the restart.
        """
        self._closing = True
        self._wake.set()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._task is not None and not self._task.done():
            await self._task
        if self.db is not None:
            try:
                self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_shutdown', '1')")
            except sqlite3.Error:
                log.exception("recording the clean shutdown failed (the next start counts this as a crash)")
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.exception("final checkpoint failed")
            self.db.close()
            self.db = None

    # -- writing -------------------------------------------------------------------

    def write(
        self, sql: str, params: Any = (), *,
        on_commit: Callable[[], None] | None = None,
        on_fail: Callable[[BaseException], None] | None = None,
        hold: bool = True,
    ) -> None:
        """Queue one statement for the next group commit.

        ``on_commit`` runs once it is committed; ``on_fail(exc)`` once it failed for
        good (an error in the statement, or :class:`DiskFull` when ``hold`` is false
        and the disk is full; with ``hold`` true a full disk only delays it).
        """
        if self._stopped is not None:
            raise StoreStopped(f"chalkd's store writer stopped ({self._stopped!r}): {sql.split('(')[0]} not stored")
        self._pending.append(_Entry(sql, params, on_commit, on_fail, hold))
        if not self._wake.is_set():
            self._wake.set()

    def write_many(self, statements: Iterable[tuple[str, Any]]) -> None:
        """Queue several statements (no callbacks); they commit in the same group."""
        for sql, params in statements:
            self.write(sql, params)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every write queued so far is settled (committed or failed)."""
        if self._stopped is not None:
            raise StoreStopped(f"chalkd's store writer stopped ({self._stopped!r})")
        self._pending.append(_Entry(None, None, callback, None, True))
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is settled."""
        fut = asyncio.get_running_loop().create_future()
        self.after_commit(lambda: fut.done() or fut.set_result(None))
        await fut

    def disk_full_error(self) -> DiskFull:
        """The error new submissions get while the disk is full, with the space left."""
        home = self.path.parent
        try:
            st = os.statvfs(home)
            free = f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
        except OSError as exc:
            free = f"free space unknown ({exc.strerror})"
        return DiskFull(f"chalkd's disk is full at {home}: {free}")

    def _writer_ended(self, task: asyncio.Task) -> None:
        if self._closing and not task.cancelled() and task.exception() is None:
            return
        exc: BaseException = asyncio.CancelledError() if task.cancelled() else (
            task.exception() or StoreStopped("the writer returned"))
        self._stopped = exc
        log.critical("the store writer stopped (%r): every later write fails", exc)
        # Nothing will commit what is queued: fail it loudly rather than leave its waiters hanging.
        pending, self._pending = self._pending, []
        err = StoreStopped(f"chalkd's store writer stopped ({exc!r})")
        for entry in pending:
            self._settle(entry, err)

    async def _writer(self) -> None:
        while True:
            if self.full:
                # Nothing commits until space returns: retry on a timer, not on every new write.
                deadline = time.monotonic() + self.full_retry
                while not self._closing and (left := deadline - time.monotonic()) > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
                if self._closing:
                    # One last try, then what still cannot be stored is dropped.
                    self._wake.clear()
                    self._commit_pending()
                    if self.full:
                        self._drop_when_closing()
                    return
            else:
                await self._wake.wait()
            # Let the other tasks of this loop iteration queue their writes too.
            await asyncio.sleep(0)
            self._wake.clear()
            try:
                self._commit_pending()
                if self._closing and not self._pending:
                    return
                self._maybe_checkpoint()
            except Exception:
                # Never die over one bad group: say so loudly and keep committing.
                log.exception("the store writer hit an unexpected error; it goes on")

    def _drop_when_closing(self) -> None:
        pending, self._pending = self._pending, []
        statements = sum(1 for e in pending if e.sql is not None)
        if statements:
            log.error("closing with the disk still full: %d statement(s) not stored "
                      "(their calls run again after the restart)", statements)
        err = self.disk_full_error()
        for entry in pending:
            self._settle(entry, err)

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        assert self.db is not None
        statements = [e for e in pending if e.sql is not None]
        if statements:
            try:
                self._run_group(statements)
            except Exception as exc:
                self._rollback()
                if is_disk_full(exc):
                    self._hold(pending, exc)
                    return
                log.error("group commit of %d statements failed (%r): replaying them one by one",
                          len(statements), exc)
                try:
                    failures = self._replay(statements)
                except Exception as exc2:
                    self._rollback()
                    if is_disk_full(exc2):
                        self._hold(pending, exc2)
                        return
                    # Not one statement's fault (an I/O error at COMMIT...): the whole group
                    # fails, its waiters told, never left hanging.
                    log.exception("replaying the group of %d statements failed too: they all fail", len(statements))
                    for entry in pending:
                        self._settle(entry, exc2)
                    return
                for entry in pending:
                    self._settle(entry, failures.get(id(entry)))
                self._space_back()
                return
        self._space_back()
        for entry in pending:
            self._settle(entry, None)

    def _run_group(self, statements: list[_Entry]) -> None:
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        for e in statements:
            db.execute(e.sql, e.params)
        db.execute("COMMIT")
        self.commits += 1
        self._committed()

    def _replay(self, statements: list[_Entry]) -> dict[int, BaseException]:
        """One transaction, one savepoint per statement: a bad one fails alone."""
        db = self.db
        assert db is not None
        failures: dict[int, BaseException] = {}
        db.execute("BEGIN IMMEDIATE")
        for e in statements:
            db.execute("SAVEPOINT one")
            try:
                db.execute(e.sql, e.params)
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    raise
                db.execute("ROLLBACK TO one")
                failures[id(e)] = exc
                self.failed_statements += 1
                log.error("statement failed and is dropped: %s with %d parameter(s)",
                          e.sql[:200], len(e.params) if hasattr(e.params, "__len__") else 0,
                          exc_info=exc)
            db.execute("RELEASE one")
        db.execute("COMMIT")
        self.commits += 1
        self._committed()
        return failures

    def _rollback(self) -> None:
        assert self.db is not None
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")

    def _hold(self, pending: list[_Entry], exc: BaseException) -> None:
        """The disk is full: fail what must not wait, keep the rest (in order) for the next try."""
        if not self.full:
            self.full = True
            log.error("%s; holding %d write(s) until space returns (retried every %gs)",
                      self.disk_full_error(), sum(1 for e in pending if e.sql is not None), self.full_retry)
        kept: list[_Entry] = []
        refused: list[_Entry] = []
        for e in pending:
            (kept if e.hold or e.sql is None else refused).append(e)
        self._pending = kept + self._pending
        if refused:
            err = self.disk_full_error()
            for e in refused:
                self._settle(e, err)

    def _space_back(self) -> None:
        if self.full:
            self.full = False
            log.warning("chalkd's disk at %s has space again: writes commit again", self.path.parent)

    def _settle(self, entry: _Entry, exc: BaseException | None) -> None:
        # A barrier runs either way: it waits for the settling, not for success.
        cb = entry.on_commit if exc is None or entry.sql is None else entry.on_fail
        if cb is None:
            return
        try:
            cb() if cb is entry.on_commit else cb(exc)
        except Exception:
            log.exception("after-commit callback failed")

    def _committed(self) -> None:
        """Bookkeeping after a group commit: O(1), a stat() of the WAL every few dozen groups."""
        self._last_commit = time.monotonic()
        self._dirty = True
        if self._idle_timer is None and self.idle_checkpoint > 0 and not self._closing:
            # One timer per idle period, not one per commit: when it fires it re-arms itself
            # for what is left if a commit came since.
            self._idle_timer = asyncio.get_running_loop().call_later(self.idle_checkpoint, self._on_idle)
        self._groups_since_check += 1
        if self._groups_since_check >= self._wal_check_every:
            self._groups_since_check = 0
            try:
                size = os.stat(self.wal_path).st_size
            except OSError:
                return
            if size > self.wal_limit:
                log.info("WAL at %.1f MB (limit %.1f MB): truncating checkpoint", size / 1e6, self.wal_limit / 1e6)
                self.truncate_wal()

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._closing or self.db is None:
            return
        left = self._last_commit + self.idle_checkpoint - time.monotonic()
        if left > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(left, self._on_idle)
            return
        if self._dirty and not self._pending:
            self.truncate_wal()

    def truncate_wal(self) -> bool:
        """Copy the WAL into the database and cut the -wal file to zero bytes.

        Runs between group commits (never inside one); with the database opened
        in exclusive mode nothing else can hold it back, so it completes unless
        the disk fails. Returns whether it did.

            store.truncate_wal()   # the -wal file is now 0 bytes
        """
        if self.db is None or self.full or self.db.in_transaction:
            return False
        try:
            busy, _log, _done = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            log.exception("truncating checkpoint failed")
            return False
        if busy:
            return False
        self._dirty = False
        self._last_checkpoint = time.monotonic()
        self.truncations += 1
        return True

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if now - self._last_checkpoint < self.checkpoint_interval or self.db is None or self.full:
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
