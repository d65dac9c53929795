"""Batch calls in chalkd.queue (one queue unit, many inputs) against a real Store, fake callers and workers.

A fake worker answers an attempt with a :class:`~chalkd.queue.batch.BatchReport`: the results of
the rows it was sent (real Arrow payloads, so results of several attempts can be merged) and the
failed rows' errors.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest

from chalkd.model import CallError, CallState, ErrorCode, Payload, Policies, ReplicaExit, Retry
from chalkd.queue import events as ev
from chalkd.queue.batch import BatchReport, BatchState
from chalkd.queue.core import Queue
from tests.unit.test_queue import Sub, make_fv, new_queue, open_store, settle


def column(values: list) -> Payload:
    schema = pa.schema([pa.field("result", pa.int64())])
    batch = pa.RecordBatch.from_arrays([pa.array(values, pa.int64())], schema=schema)
    return Payload(schema.serialize().to_pybytes(), batch.serialize().to_pybytes(), len(values))


def args(n: int) -> Payload:
    return Payload(b"args-schema", b"args-batch", n)


def values_of(payload: Payload) -> list:
    schema = pa.ipc.read_schema(pa.py_buffer(payload.schema))
    return pa.ipc.read_record_batch(pa.py_buffer(payload.batch), schema).column(0).to_pylist()


def user_error(message: str = "flaky") -> CallError:
    return CallError("builtins.ValueError", message, "", ErrorCode.USER, ("builtins.Exception",))


class Link:
    """A fake worker that records batch assignments: (call_id, attempt, rows)."""

    def __init__(self, replica_id: str, function_id: str = "fv-1") -> None:
        self.replica_id, self.function_id = replica_id, function_id
        self.batches: list[tuple[str, int, list[int]]] = []
        self.assignments: list[tuple] = []
        self.cancels: list[tuple] = []

    def send_batch_call(self, call_id, attempt, args, rows) -> None:
        self.batches.append((call_id, attempt, list(rows) or list(range(args.rows))))

    def send_assignment(self, call_id, attempt, args, chunk_window, window_bytes=0) -> None:
        self.assignments.append((call_id, attempt))

    def send_cancel(self, call_id, attempt) -> None:
        self.cancels.append((call_id, attempt))


def connect(queue: Queue, replica_id: str = "r-1", credit: int = 1) -> Link:
    link = Link(replica_id)
    queue.worker_connected(link)
    queue.worker_credit(link, credit)
    return link


def answer(queue: Queue, link: Link, fail: dict[int, CallError] | None = None, value=lambda r: r * 10) -> None:
    """The worker's report for its last batch: value(row) per row, null and an error for rows in ``fail``."""
    call_id, attempt, rows = link.batches[-1]
    fail = fail or {}
    report = BatchReport(column([None if r in fail else value(r) for r in rows]), rows, dict(fail))
    queue.worker_event(link, call_id, attempt, report)
    queue.worker_credit(link, 1)


@pytest.mark.timeout(30)
def test_a_failed_row_runs_again_alone_and_the_caller_gets_one_result_batch(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            fv = make_fv(policies=Policies(retry=Retry(max_retries=2, initial_wait=0.0)))
            q = new_queue(store)
            sub = Sub()
            call = q.submit(sub, 1, fv, args(4), batch=True)
            assert call is not None and isinstance(call.batch, BatchState)
            link = connect(q)
            await settle(store)
            assert link.batches == [(call.id, 1, [0, 1, 2, 3])]       # one dispatch, every row
            answer(q, link, fail={2: user_error()})
            await settle(store)
            # The retry carries row 2 only; the others' results are stored meanwhile.
            assert link.batches[-1] == (call.id, 2, [2])
            r = store.query("SELECT state, batch_rows, batch_state FROM calls WHERE id=?", (call.id,))[0]
            assert r["state"] == "running" and r["batch_rows"] == 4 and b'"pending": [2]' in r["batch_state"]
            assert sub.kinds() == ["accepted"]
            answer(q, link, value=lambda r: 99)
            await settle(store)
            (final,) = sub.of("batch_result")
            assert values_of(final[3]) == [0, 10, 99, 30]
            assert call.state == CallState.SUCCEEDED and call.batch.errors == {}
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_rows_fail_for_good_past_the_retry_budget_or_when_not_retryable(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            fv = make_fv(policies=Policies(retry=Retry(max_retries=1, initial_wait=0.0,
                                                       retry_on=frozenset({"builtins.ValueError"}))))
            q = new_queue(store)
            sub = Sub()
            call = q.submit(sub, 1, fv, args(3), batch=True)
            link = connect(q)
            await settle(store)
            other = CallError("builtins.KeyError", "k", "", ErrorCode.USER, ("builtins.LookupError",))
            answer(q, link, fail={0: user_error(), 1: other})
            await settle(store)
            assert link.batches[-1][2] == [0]           # KeyError is not retried; ValueError is, once
            answer(q, link, fail={0: user_error("again")})
            await settle(store)
            (final,) = sub.of("batch_result")
            assert values_of(final[3]) == [None, None, 20]
            assert {r: e.message for r, e in call.batch.errors.items()} == {0: "again", 1: "k"}
            assert len(link.batches) == 2
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_rate_limit_tokens_are_taken_per_row_and_the_rest_waits(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            fv = make_fv(policies=Policies(rate_per_second=1000.0, rate_burst=3.0))
            q = new_queue(store)
            sub = Sub()
            call = q.submit(sub, 1, fv, args(5), batch=True)
            link = connect(q)
            await settle(store)
            assert link.batches == [(call.id, 1, [0, 1, 2])]   # three tokens: three rows
            answer(q, link)
            for _ in range(200):  # the rest go in slices as their tokens come (1 ms each here)
                await asyncio.sleep(0.005)
                await settle(store)
                if sub.of("batch_result"):
                    break
                if link.batches[-1][1] == call.attempt and len(link.batches) > 1 and call.replica_id:
                    answer(q, link)
            slices = [b[2] for b in link.batches]
            assert [r for s in slices for r in s] == [0, 1, 2, 3, 4]   # each row once, in order
            assert all(len(s) <= 3 for s in slices)
            (final,) = sub.of("batch_result")
            assert values_of(final[3]) == [0, 10, 20, 30, 40]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_batch_holds_one_concurrency_slot(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            fv = make_fv(policies=Policies(concurrency_key="k", max_concurrent=1))
            q = new_queue(store)
            q.limits.register(fv)
            sub = Sub()
            batch = q.submit(sub, 1, fv, args(10), batch=True)
            single = q.submit(sub, 2, fv, Payload(b"s", b"b"))
            link = connect(q, credit=2)
            await settle(store)
            slots = q.limits.slots_for(fv)
            assert slots is not None and slots.held == 1
            assert [b[0] for b in link.batches] == [batch.id] and link.assignments == []  # the single waits
            answer(q, link)
            await settle(store)
            assert link.assignments == [(single.id, 1)]                      # the slot came back
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_lost_worker_runs_the_pending_rows_again(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            sub = Sub()
            call = q.submit(sub, 1, make_fv(), args(3), batch=True)
            link = connect(q)
            await settle(store)
            assert link.batches == [(call.id, 1, [0, 1, 2])]
            q.worker_lost("fv-1", "r-1", ReplicaExit(code=1))
            link2 = connect(q, "r-2")
            await asyncio.sleep(0.01)
            await settle(store)
            assert link2.batches == [(call.id, 2, [0, 1, 2])]
            answer(q, link2)
            await settle(store)
            assert values_of(sub.of("batch_result")[0][3]) == [0, 10, 20]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_restarted_daemon_runs_only_the_pending_rows_and_keeps_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "db.sqlite"
        fv = make_fv(policies=Policies(retry=Retry(max_retries=3, initial_wait=60.0)))
        store = await open_store(path)
        q = new_queue(store)
        sub = Sub()
        call = q.submit(sub, 1, fv, Payload(b"args-schema", b"args-batch", 3), batch=True)
        link = connect(q)
        await settle(store)
        answer(q, link, fail={1: user_error()})   # row 1 waits a minute for its retry
        await settle(store)
        await store.close()                       # the daemon goes away meanwhile

        store = await open_store(path)
        try:
            q2 = new_queue(store)
            q2.load({fv.id: fv})
            again = q2.calls[call.id]
            assert again.batch.pending == [1] and again.batch.failures == {1: 1}
            assert again.args is not None and again.args.rows == 3   # read back with its row count
            link2 = connect(q2)
            await settle(store)
            assert link2.batches == [(call.id, 2, [1])]
            answer(q2, link2, value=lambda r: 7)
            await settle(store)
            sub2 = Sub()
            q2.attach(sub2, 5, call.id)
            (final,) = sub2.of("batch_result")
            assert values_of(final[3]) == [0, 7, 20]
            # Read back from the store alone (the finished cache forgotten), as a later attach would.
            q2.finished.clear()
            sub3 = Sub()
            q2.attach(sub3, 6, call.id)
            assert values_of(sub3.of("batch_result")[0][3]) == [0, 7, 20]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_generator_cannot_be_batch_called(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            sub = Sub()
            assert q.submit(sub, 1, make_fv(is_generator=True), args(2), batch=True) is None
            assert "generator" in sub.error().message and sub.error().code == ErrorCode.INVALID_ARGUMENT
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_batch_naming_more_rows_than_it_can_hold_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            for rows, why in ((10**9, "at most 1048576 rows"), (100_000, "cannot fit in 21 bytes"),
                              (0, "at least one row")):
                sub = Sub()
                assert q.submit(sub, 1, make_fv(), args(rows), batch=True) is None
                assert why in sub.error().message and sub.error().code == ErrorCode.INVALID_ARGUMENT
            assert q.calls == {}
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_report_naming_rows_it_was_not_sent_changes_nothing_of_theirs(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            fv = make_fv(policies=Policies(rate_per_second=1000.0, rate_burst=2.0))
            q = new_queue(store)
            sub = Sub()
            call = q.submit(sub, 1, fv, args(4), batch=True)
            link = connect(q)
            await settle(store)
            assert link.batches == [(call.id, 1, [0, 1])]
            # A worker that claims rows 2 and 3 (never sent) as well: only 0 and 1 settle.
            q.worker_event(link, call.id, 1, BatchReport(column([1, 2, 3, 4]), [0, 1, 2, 3], {3: user_error()}))
            assert call.batch.pending == [2, 3] and call.batch.errors == {}
            q.worker_credit(link, 1)
            for _ in range(100):
                await asyncio.sleep(0.005)
                await settle(store)
                if len(link.batches) == 2:
                    break
            answer(q, link, fail={2: CallError.platform(ErrorCode.TOO_LARGE, "too big")})
            for _ in range(100):
                await asyncio.sleep(0.005)
                await settle(store)
                if sub.of("batch_result"):
                    break
                if call.replica_id and link.batches[-1][1] == call.attempt and len(link.batches) > 1:
                    answer(q, link, fail={2: CallError.platform(ErrorCode.TOO_LARGE, "too big")})
            # Row 2 failed for good: null, whatever the first report claimed for it.
            assert values_of(sub.of("batch_result")[0][3]) == [1, 2, None, 30]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_worker_answering_a_batch_with_one_value_fails_it_clearly(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            sub = Sub()
            call = q.submit(sub, 1, make_fv(), args(2), batch=True)
            link = connect(q)
            await settle(store)
            q.worker_event(link, call.id, 1, ev.Result(column([1])))   # a worker that predates batch calls
            await settle(store)
            assert "predates batch calls" in sub.error().message and call.state == CallState.FAILED
        finally:
            await store.close()

    asyncio.run(main())
