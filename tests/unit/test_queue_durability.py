"""The queue's durability invariant and memory bounds, against a real Store.

Nothing observable (accepted, chunk, result, error) goes out before its row
commits; a statement that fails fails only its own call; a full disk (SQLite's
``PRAGMA max_page_count``, which raises the same SQLITE_FULL as a full
filesystem) refuses new calls and holds running ones; poison calls; buffers
bounded by the memory budget. Failures are forced with SQLite triggers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from chalkd.model import CallState, ErrorCode, Payload
from chalkd.queue import events as ev
from chalkd.queue.core import POISON_CRASHES, Queue
from chalkd.store.db import Store
from tests.unit.test_queue import ARGS, RESULT, Sub, connect, make_fv, new_queue, open_store, row, settle


def fail_inserts_of(store: Store, key: str) -> None:
    """Any INSERT of a call with idempotency key ``key`` fails (a stand-in for a bug or a constraint)."""
    assert store.db is not None
    store.db.execute(
        f"CREATE TEMP TRIGGER fail_{key} BEFORE INSERT ON calls WHEN NEW.idempotency_key = '{key}' "
        "BEGIN SELECT RAISE(ABORT, 'forced failure'); END")


@pytest.mark.timeout(30)
def test_a_result_goes_out_only_once_its_row_commits(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            q.worker_event(link, call.id, 1, ev.Result(RESULT))
            assert sub.kinds() == ["accepted"]       # not before the commit
            await store.flush()
            assert sub.kinds() == ["accepted", "result"]
            assert row(store, call.id)["state"] == "succeeded"
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_call_whose_insert_fails_is_cancelled_and_fails_alone(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            fail_inserts_of(store, "bad")
            link = connect(q, "r-1", credit=2)
            bad = q.submit(sub, 1, fv, ARGS, idempotency_key="bad")
            good = q.submit(sub, 2, fv, ARGS, idempotency_key="good")
            # Dispatch does not wait for the INSERT: both run before the commit.
            await asyncio.sleep(0)
            assert link.assigned() == [(bad.id, 1), (good.id, 1)]
            await settle(store)
            assert link.cancels == [(bad.id, 1)]          # its attempt is cancelled
            assert [(e[0], e[2]) for e in sub.events] == [(1, "error"), (2, "accepted")]
            err = sub.error()
            assert err.code == ErrorCode.INTERNAL and "could not store the call" in err.message
            assert "forced failure" in err.message
            assert store.query("SELECT id FROM calls WHERE id=?", (bad.id,)) == []
            assert bad.id not in q.calls
            # Its late result counts for nothing; the other call is untouched.
            q.worker_event(link, bad.id, 1, ev.Result(RESULT))
            q.worker_event(link, good.id, 1, ev.Result(RESULT))
            await settle(store)
            assert sub.kinds() == ["error", "accepted", "result"]
            assert row(store, good.id)["state"] == "succeeded"
            # The key is free again: a retry of the same submit is a new call.
            store.db.execute("DROP TRIGGER fail_bad")
            again = q.submit(sub, 3, fv, ARGS, idempotency_key="bad")
            assert again.id != bad.id
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert any("could not be stored" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_a_failing_result_update_fails_only_its_call(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=2)
            a = q.submit(sub, 1, fv, ARGS)
            b = q.submit(sub, 2, fv, ARGS)
            await settle(store)
            assert store.db is not None
            store.db.execute(
                f"CREATE TEMP TRIGGER fail_result BEFORE UPDATE OF result_batch ON calls WHEN NEW.id = '{a.id}' "
                "BEGIN SELECT RAISE(ABORT, 'forced failure'); END")
            q.worker_event(link, a.id, 1, ev.Result(RESULT))
            q.worker_event(link, b.id, 1, ev.Result(RESULT))   # same group
            await settle(store)
            (err_a,) = [e[4] for e in sub.events if e[1] == a.id and e[2] == "error"]
            assert err_a.code == ErrorCode.INTERNAL and "could not store the outcome" in err_a.message
            assert sub.kinds(b.id) == ["accepted", "result"]
            assert row(store, b.id)["state"] == "succeeded"
            assert row(store, a.id)["state"] == "running"   # a restart runs it again
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_full_disk_refuses_new_calls_and_holds_running_ones(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "db.sqlite", full_retry=0.05)
        await store.open()
        try:
            q = new_queue(store)
            fv, sub = make_fv(is_generator=True), Sub()
            link = connect(q, "r-1", credit=2)
            running = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            assert store.db is not None
            pages = store.db.execute("PRAGMA page_count").fetchone()[0]
            store.db.execute(f"PRAGMA max_page_count={pages + 1}")
            big = Payload(b"s", b"x" * 50_000)
            q.worker_event(link, running.id, 1, ev.Chunk(big, 0))
            # A submit racing the first failure fails once the disk is found full.
            racing = q.submit(sub, 2, fv, ARGS)
            await asyncio.sleep(0)
            while not store.full:
                await asyncio.sleep(0.01)
            assert store.full
            # New calls are refused at once, never accepted.
            late = Sub()
            assert q.submit(late, 3, fv, ARGS) is None
            (refused,) = late.events
            assert refused[2] == "error" and refused[4].code == ErrorCode.RESOURCE_EXHAUSTED
            message = refused[4].message
            assert message.startswith(f"chalkd's disk is full at {tmp_path}: ") and "MB free" in message
            while racing.stored is None:
                await asyncio.sleep(0.01)
            assert [e[2] for e in sub.events if e[0] == 2] == ["error"]
            assert [e[4].code for e in sub.events if e[0] == 2] == [ErrorCode.RESOURCE_EXHAUSTED]
            # The running call's chunk and result wait; reads go on.
            q.worker_event(link, running.id, 1, ev.DONE)
            await asyncio.sleep(0.2)
            assert sub.kinds(running.id) == ["accepted"]
            assert q.get(running.id).state == CallState.SUCCEEDED
            store.db.execute("PRAGMA max_page_count=1073741823")   # space returns
            while sub.kinds(running.id) != ["accepted", "chunk", "done"]:
                await asyncio.sleep(0.01)
            assert not store.full
            assert (row(store, running.id)["state"], row(store, running.id)["chunks"]) == ("succeeded", 1)
            assert q.submit(Sub(), 4, fv, ARGS) is not None    # accepted again
        finally:
            await store.close()

    asyncio.run(main())


def crash(store: Store) -> None:
    """The daemon dies: no clean-shutdown mark, nothing more committed."""
    assert store._task is not None and store.db is not None
    store._task.cancel()
    store.db.close()
    store.db = None


@pytest.mark.timeout(30)
def test_a_call_running_at_three_crashes_in_a_row_is_not_run_again(tmp_path: Path, caplog) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        fv = make_fv()
        store = await open_store(path)
        q = new_queue(store)
        connect(q, "r-1", credit=1)
        poison = q.submit(Sub(), 1, fv, ARGS)
        bystander = q.submit(Sub(), 2, fv, ARGS)     # queued, never running
        await settle(store)
        for n in range(1, POISON_CRASHES + 1):
            crash(store)
            store = await open_store(path)
            assert not store.clean_shutdown
            q = new_queue(store)
            q.load({fv.id: fv})
            await settle(store)
            if n < POISON_CRASHES:
                assert set(q.calls) == {poison.id, bystander.id}
                assert row(store, poison.id)["crashes"] == n and row(store, bystander.id)["crashes"] == 0
                connect(q, "r-1", credit=1)            # it runs again (and crashes the daemon again)
                await settle(store)
                assert row(store, poison.id)["state"] == "running"
        assert set(q.calls) == {bystander.id}
        err = q.get(poison.id).error
        assert err.message == (f"call {poison.id} of 'f' was running each of the last 3 times chalkd died; "
                               "not running it again")
        await settle(store)
        assert row(store, poison.id)["state"] == "failed"
        # A clean stop is not a crash: nothing counts it.
        link = connect(q, "r-1", credit=1)
        await settle(store)
        assert link.assigned() == [(bystander.id, 1)]
        await store.close()
        store = await open_store(path)
        try:
            assert store.clean_shutdown
            q = new_queue(store)
            q.load({fv.id: fv})
            assert set(q.calls) == {bystander.id} and row(store, bystander.id)["crashes"] == 0
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert any("running each of the last 3 times" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_queued_arguments_past_the_budget_are_read_back_at_dispatch(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store, memory_budget=1 << 20)    # 256 KiB for queued arguments
            fv, sub = make_fv(), Sub()
            args = [Payload(b"s", bytes([i]) * 100_000) for i in range(4)]
            calls = [q.submit(sub, i, fv, a) for i, a in enumerate(args)]
            await settle(store)
            assert [c.args is not None for c in calls] == [True, True, False, False]
            assert q._args_bytes == 2 * 100_001
            link = connect(q, "r-1", credit=4)
            await settle(store)
            assert [a[2] for a in link.assignments] == args   # the spilled ones read from the store
            assert q._args_bytes == 0
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_the_finished_cache_and_idempotency_keys_are_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            now = [1000.0]
            q: Queue = new_queue(store, memory_budget=1 << 20, clock=lambda: now[0])
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=1)
            big = Payload(b"s", b"r" * 100_000)
            ids = []
            for i in range(400):
                c = q.submit(sub, i, fv, ARGS, idempotency_key=f"k{i}")
                await settle(store)
                q.worker_event(link, c.id, 1, ev.Result(big if i < 5 else RESULT))
                q.worker_credit(link, 1)
                ids.append(c.id)
            await settle(store)
            # By bytes: at most 256 KiB of results in the cache; the older ones are read back.
            assert q._finished_bytes <= q.budget.finished
            assert ids[0] not in q.finished
            again = Sub()
            q.attach(again, 1, ids[0])
            assert again.kinds() == ["accepted", "result"] and again.events[-1][3] == big
            # Keys: bounded by count...
            assert len(q._idem) <= q.budget.idempotency_keys < 400
            # ... and by time: past the reconnect window they go.
            now[0] += q.idempotency_window + 1
            c = q.submit(sub, 1000, fv, ARGS, idempotency_key="late")
            await settle(store)
            q.worker_event(link, c.id, 1, ev.Result(RESULT))
            await settle(store)
            assert set(q._idem) == {(fv.id, "late")}
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_resubmit_before_the_first_commit_is_answered_once_the_row_is_stored(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            first = q.submit(sub, 1, fv, ARGS, idempotency_key="k")
            again = q.submit(sub, 2, fv, ARGS, idempotency_key="k")
            assert again is first and sub.events == []     # nothing before the commit
            await settle(store)
            assert [(e[0], e[1], e[2]) for e in sub.events] == [(1, first.id, "accepted"), (2, first.id, "accepted")]

            fail_inserts_of(store, "lost")
            lost = q.submit(sub, 3, fv, ARGS, idempotency_key="lost")
            q.submit(sub, 4, fv, ARGS, idempotency_key="lost")
            await settle(store)
            errors = {e[0]: e[4] for e in sub.events if e[2] == "error"}
            assert errors[3].code == ErrorCode.INTERNAL
            assert errors[4].code == ErrorCode.UNAVAILABLE and lost.id in errors[4].message
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_result_held_by_a_full_disk_runs_again_if_the_daemon_dies_first(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        fv, sub = make_fv(), Sub()
        store = Store(path, full_retry=0.05)
        await store.open()
        q = new_queue(store)
        link = connect(q, "r-1", credit=1)
        call = q.submit(sub, 1, fv, ARGS)
        await settle(store)
        assert store.db is not None
        store.db.execute(f"PRAGMA max_page_count={store.db.execute('PRAGMA page_count').fetchone()[0]}")
        q.worker_event(link, call.id, 1, ev.Result(Payload(b"s", b"r" * 50_000)))
        while not store.full:
            await asyncio.sleep(0.01)
        assert sub.kinds() == ["accepted"]       # the caller never saw it
        crash(store)

        store = await open_store(path)
        try:
            q = new_queue(store)
            q.load({fv.id: fv})
            assert list(q.calls) == [call.id] and q.calls[call.id].state == CallState.QUEUED   # at least once
            link = connect(q, "r-2", credit=1)
            await settle(store)
            assert link.assigned() == [(call.id, 2)]
        finally:
            await store.close()

    asyncio.run(main())
