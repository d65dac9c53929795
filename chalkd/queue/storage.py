"""Every SQL statement on the ``calls`` and ``chunks`` tables, as named methods.

The queue (and the catalog service's call listing) go through :class:`CallStore`;
no other module writes SQL against these tables. Writes keep the store's group
commit semantics: ``on_commit`` runs only after the row is durable, ``on_fail``
when its statement failed (see :meth:`chalkd.store.db.Store.write`)::

    calls = CallStore(store)
    calls.insert(call, args, on_commit=accepted, on_fail=refused)
    calls.add_chunk(call.id, 0, payload, on_commit=deliver, on_fail=failed)
    calls.finish(call, result, on_commit=deliver, on_fail=failed)
    row = calls.get("fc-...")            # a plain sqlite3.Row, or None
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from chalkd.model import Call, CallError, Chunk, ErrorCode, Payload
from chalkd.store.db import Store

OPEN_STATES = "('queued','running','streaming')"

OnCommit = Callable[[], None] | None
OnFail = Callable[[BaseException], None] | None


def encode_error(error: CallError) -> bytes:
    """A call's error as the store keeps it (JSON)."""
    return json.dumps({
        "type": error.exception_type, "message": error.message, "traceback": error.traceback,
        "code": error.code.value, "mro": list(error.exception_mro),
    }).encode()


def decode_error(data: bytes) -> CallError:
    """A call's error as the store keeps it."""
    d = json.loads(data)
    return CallError(d["type"], d["message"], d["traceback"], ErrorCode(d["code"]), tuple(d["mro"]))


class CallStore:
    """The calls and their chunks, in the daemon's SQLite store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reads -------------------------------------------------------------------------

    def max_seq(self) -> int:
        return int(self.store.query("SELECT COALESCE(MAX(seq), 0) AS s FROM calls")[0]["s"])

    def open_calls(self) -> list[sqlite3.Row]:
        """Calls not finished, in submission order, without their arguments (``args_size`` says how big)."""
        return self.store.query(
            "SELECT seq, id, function_id, parent_id, idempotency_key, root_seq, state, attempt, failures,"
            " chunks, created_at, crashes, length(args_batch) + length(args_schema) AS args_size,"
            " batch_rows, batch_state, result_schema, result_batch, result_rows"
            f" FROM calls WHERE state IN {OPEN_STATES} ORDER BY seq"
        )

    def recent_idempotency_keys(self, since: float, limit: int) -> list[sqlite3.Row]:
        """Keys of calls finished after ``since``, newest ``limit`` of them, oldest first."""
        return self.store.query(
            "SELECT id, function_id, idempotency_key, finished_at FROM calls WHERE idempotency_key IS NOT NULL "
            f"AND state NOT IN {OPEN_STATES} AND finished_at > ? ORDER BY finished_at DESC LIMIT ?",
            (since, limit),
        )[::-1]

    def get(self, call_id: str) -> sqlite3.Row | None:
        rows = self.store.query("SELECT * FROM calls WHERE id=?", (call_id,))
        return rows[0] if rows else None

    def args(self, call_id: str) -> Payload | None:
        rows = self.store.query("SELECT args_schema, args_batch, batch_rows FROM calls WHERE id=?", (call_id,))
        # A batch call's arguments hold a row per input; a plain call's, one.
        return Payload(rows[0]["args_schema"], rows[0]["args_batch"], rows[0]["batch_rows"] or 1) if rows else None

    def chunks(self, call_id: str) -> list[Chunk]:
        rows = self.store.query(
            "SELECT first_index, rows, schema, batch FROM chunks WHERE call_id=? ORDER BY first_index", (call_id,))
        return [Chunk(r["first_index"], Payload(r["schema"], r["batch"], r["rows"])) for r in rows]

    async def list_recent(self, function_name: str = "", limit: int = 50) -> list[sqlite3.Row]:
        """The newest calls (with their function's name as ``fname``), all pending writes flushed first."""
        sql = "SELECT c.*, f.name AS fname FROM calls c LEFT JOIN functions f ON f.id = c.function_id"
        params: tuple = ()
        if function_name:
            sql += " WHERE f.name = ?"
            params = (function_name,)
        sql += " ORDER BY c.seq DESC LIMIT ?"
        await self.store.flush()
        return self.store.query(sql, (*params, limit))

    # -- writes ------------------------------------------------------------------------

    def insert(self, call: Call, args: Payload, *, on_commit: OnCommit = None, on_fail: OnFail = None,
               hold: bool = True) -> None:
        self.store.write(
            "INSERT OR IGNORE INTO calls (id, seq, function_id, parent_id, idempotency_key, root_seq,"
            " state, args_schema, args_batch, created_at, batch_rows) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (call.id, call.seq, call.function.id, call.parent_id, call.idempotency_key, call.root_seq,
             "queued", args.schema, args.batch, call.created_at, call.batch.rows if call.batch else None),
            on_commit=on_commit, on_fail=on_fail, hold=hold,
        )

    def requeue_after_crash(self, call_id: str, crashes: int) -> None:
        self.store.write("UPDATE calls SET crashes=?, state='queued' WHERE id=?", (crashes, call_id))

    def requeue(self, call_id: str, failures: int) -> None:
        self.store.write("UPDATE calls SET state='queued', failures=? WHERE id=?", (failures, call_id))

    def save_batch(self, call: Call, partial: Payload | None, *, on_commit: OnCommit = None,
                   on_fail: OnFail = None) -> None:
        """A batch call whose rows wait for another attempt: its settled rows' results and its state
        (chalkd.queue.batch), so a restarted daemon runs only the pending rows again."""
        self.store.write(
            "UPDATE calls SET state='queued', failures=?, result_schema=?, result_batch=?, result_rows=?,"
            " batch_state=? WHERE id=?",
            (call.failures, partial.schema if partial else None, partial.batch if partial else None,
             partial.rows if partial else None, call.batch.to_json(), call.id), on_commit=on_commit, on_fail=on_fail)

    def mark_running(self, call_id: str, attempt: int) -> None:
        """The durable "attempt started" mark (batched with the group commit, never awaited)."""
        self.store.write("UPDATE calls SET state='running', attempt=? WHERE id=?", (attempt, call_id))

    def add_chunk(self, call: Call, first_index: int, payload: Payload, *, on_commit: OnCommit = None,
                  on_fail: OnFail = None) -> None:
        """A chunk and the call's streaming state, in the same group commit."""
        self.store.write(
            "INSERT OR REPLACE INTO chunks (call_id, first_index, rows, schema, batch) VALUES (?,?,?,?,?)",
            (call.id, first_index, payload.rows, payload.schema, payload.batch),
            on_commit=on_commit, on_fail=on_fail,
        )
        self.store.write("UPDATE calls SET state='streaming', chunks=?, attempt=? WHERE id=?",
                         (call.next_index, call.attempt, call.id), on_fail=on_fail)

    def finish(self, call: Call, result: Payload | None, error: CallError | None, *, on_commit: OnCommit = None,
               on_fail: OnFail = None) -> None:
        err = encode_error(error) if error is not None else None
        self.store.write(
            "UPDATE calls SET state=?, attempt=?, failures=?, result_schema=?, result_batch=?, result_rows=?,"
            " error=?, chunks=?, finished_at=?, batch_state=? WHERE id=?",
            (call.state.value, call.attempt, call.failures, result.schema if result else None,
             result.batch if result else None, result.rows if result else None, err,
             call.next_index, call.finished_at, call.batch.to_json() if call.batch is not None else None,
             call.id),
            on_commit=on_commit, on_fail=on_fail,
        )

    def expire(self, function_ids: Sequence[str], finished_before: float) -> None:
        """Drop the finished calls of these functions (and their chunks) finished before the time given."""
        marks = ",".join("?" * len(function_ids))
        where = f"finished_at IS NOT NULL AND finished_at < ? AND function_id IN ({marks})"
        params = (finished_before, *function_ids)
        self.store.write(f"DELETE FROM chunks WHERE call_id IN (SELECT id FROM calls WHERE {where})", params)
        self.store.write(f"DELETE FROM calls WHERE {where}", params)
