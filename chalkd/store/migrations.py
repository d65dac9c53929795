"""Schema upgrades: the base schema, then numbered migrations applied in order.

A database records the last migration applied as ``schema_version`` in ``meta``.
Opening one applies every later migration, each in its own transaction with
its version bump, so a crash mid-upgrade leaves the database at a whole
version. A later issue adds a table by appending ``(N, "CREATE TABLE ...")``.

    db = sqlite3.connect(path, isolation_level=None)
    version = migrate(db, path)     # e.g. 2: a chalkd.db from 7de325e (version 1) gained calls.crashes

Version 1 is the schema of commit 7de325e; it is created with ``IF NOT EXISTS``
so a version-1 database passes through it untouched.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

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


# (version, SQL script). Append only; never edit one that has shipped.
MIGRATIONS: list[tuple[int, str]] = [
    # How many daemon crashes in a row found the call's attempt running (poison calls, see Queue.load).
    (2, "ALTER TABLE calls ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;"),
    # Sandboxes outlive the daemon: their records let a restarted daemon re-adopt them (chalkd.sandboxes).
    (3, """CREATE TABLE IF NOT EXISTS sandboxes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        status_message TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL DEFAULT 0,
        data TEXT NOT NULL
    );"""),
    # Container API containers outlive the daemon too: re-adopted from their records (chalkd.containers).
    (4, """CREATE TABLE IF NOT EXISTS containers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        data TEXT NOT NULL
    );"""),
    # Scaling groups are desired state: a restarted daemon serves each live one again on its port,
    # with its replicas started anew (chalkd.groups). spec: the chalk.v1.ScalingGroupSpec it runs.
    (5, """CREATE TABLE IF NOT EXISTS scaling_groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        status_message TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        spec BLOB NOT NULL,
        data TEXT NOT NULL
    );"""),
    # Batch calls (one queue unit, many inputs: chalkd.queue.batch): batch_rows is the input count
    # (NULL for a plain call); batch_state the rows still pending, per-row failures and errors (JSON).
    (6, """ALTER TABLE calls ADD COLUMN batch_rows INTEGER;
    ALTER TABLE calls ADD COLUMN batch_state BLOB;"""),
]

SCHEMA_VERSION = MIGRATIONS[-1][0] if MIGRATIONS else 1


def migrate(db: sqlite3.Connection, path: str | Path = "") -> int:
    """Bring ``db`` (autocommit mode) to :data:`SCHEMA_VERSION`; returns the version it had."""
    db.executescript(SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        # A fresh database, or one whose row was lost: tell them apart by what the
        # last migration added, so no step runs twice.
        cols = {r[1] for r in db.execute("PRAGMA table_info(calls)")}
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        found = (1 if "crashes" not in cols else 2 if "sandboxes" not in tables
                 else 3 if "containers" not in tables else 4 if "scaling_groups" not in tables
                 else 5 if "batch_rows" not in cols else 6)
        db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(found),))
    else:
        found = int(row[0])
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database {path} has schema version {found}, newer than this chalkd "
            f"({SCHEMA_VERSION}); upgrade chalkd"
        )
    for version, script in MIGRATIONS:
        if version <= found:
            continue
        # executescript commits first; BEGIN inside the script makes the step and its bump one transaction.
        try:
            db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n"
                f"UPDATE meta SET value='{version}' WHERE key='schema_version';\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise RuntimeError(f"upgrading database {path} to schema version {version} failed: {exc}") from exc
        log.info("database %s upgraded to schema version %d", path, version)
    return found
