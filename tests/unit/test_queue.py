"""chalkd.queue.core.Queue against a real Store, with fake callers and workers.

The queue schedules dispatch with ``loop.call_soon`` and releases events from
the store's after-commit callbacks, so every test builds the store and the
queue inside ``asyncio.run`` and lets the loop turn (:func:`settle`) before it
looks at what the fakes received.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from chalkd.model import CallError, CallState, ErrorCode, FunctionVersion, Payload, ReplicaExit
from chalkd.queue import events as ev
from chalkd.queue.core import CallNotFound, Queue
from chalkd.specs import FunctionSpec
from chalkd.store.db import Store

ARGS = Payload(b"args-schema", b"args-batch")
RESULT = Payload(b"result-schema", b"result-batch")


def chunk(i: int, rows: int = 1) -> Payload:
    return Payload(b"chunk-schema", f"chunk-{i}".encode(), rows)


def make_fv(fid: str = "fv-1", name: str = "f", **kw) -> FunctionVersion:
    return FunctionVersion(id=fid, name=name, version=1, content_hash="h", spec=FunctionSpec(name), created_at=0.0,
                           **kw)


class Sub:
    """A fake caller session (Subscriber): records every event it is sent."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def send_event(self, ref, call_id, event) -> None:
        # Recorded flat: (ref, call_id, kind, payload, error, first_index).
        self.events.append((ref, call_id, event.kind, getattr(event, "payload", None), getattr(event, "error", None),
                            getattr(event, "first_index", 0)))

    def kinds(self, call_id: str | None = None) -> list[str]:
        return [e[2] for e in self.events if call_id is None or e[1] == call_id]

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[2] == kind]

    def error(self) -> CallError:
        (ev,) = self.of("error")
        return ev[4]


class Link:
    """A fake worker replica (WorkerLink): records what the queue sends it."""

    def __init__(self, replica_id: str, function_id: str = "fv-1") -> None:
        self.replica_id = replica_id
        self.function_id = function_id
        self.assignments: list[tuple] = []   # (call_id, attempt, args, chunk_window)
        self.credits: list[tuple] = []       # (call_id, attempt, up_to)
        self.cancels: list[tuple] = []       # (call_id, attempt)

    def send_assignment(self, call_id, attempt, args, chunk_window, window_bytes=0) -> None:
        self.assignments.append((call_id, attempt, args, chunk_window))

    def send_chunk_credit(self, call_id, attempt, up_to, bytes_up_to=0) -> None:
        self.credits.append((call_id, attempt, up_to))

    def send_cancel(self, call_id, attempt) -> None:
        self.cancels.append((call_id, attempt))

    def assigned(self) -> list[tuple[str, int]]:
        return [(a[0], a[1]) for a in self.assignments]


async def settle(store: Store, rounds: int = 3) -> None:
    """Let dispatch (call_soon / call_later(0)) and the store's commits happen."""
    for _ in range(rounds):
        await asyncio.sleep(0)
        await store.flush()


async def open_store(path: Path) -> Store:
    store = Store(path)
    await store.open()
    return store


def new_queue(store: Store, **kw) -> Queue:
    kw.setdefault("retry_backoff", lambda n: 0.0)
    return Queue(store, **kw)


def row(store: Store, call_id: str):
    (r,) = store.query("SELECT * FROM calls WHERE id=?", (call_id,))
    return r


def connect(queue: Queue, replica_id: str, credit: int = 0, function_id: str = "fv-1") -> Link:
    link = Link(replica_id, function_id)
    queue.worker_connected(link)
    if credit:
        queue.worker_credit(link, credit)
    return link


# -- submit and dispatch -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_accepted_only_after_the_call_is_committed(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            call = q.submit(sub, 1, fv, ARGS)
            assert call.state == CallState.QUEUED and call.seq == 1 and call.root_seq == 1
            assert sub.events == []
            assert store.query("SELECT id FROM calls") == []
            await asyncio.sleep(0)
            assert sub.events == []            # the writer has not committed yet
            await store.flush()
            assert sub.events == [(1, call.id, "accepted", None, None, 0)]
            r = row(store, call.id)
            assert (r["state"], r["function_id"], r["args_schema"], r["args_batch"]) == \
                ("queued", fv.id, ARGS.schema, ARGS.batch)
            assert q.total_submitted == 1
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_dispatch_only_to_a_worker_that_granted_credit(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store, chunk_window=16)
            demand: list[str] = []
            q.on_demand = demand.append
            fv, sub = make_fv(is_generator=True), Sub()  # (a generator: its assignment carries the chunk window)
            idle = connect(q, "r-idle")
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            assert idle.assignments == []
            assert q.waiting(fv.id) == 1 and q.inflight(fv.id) == 0
            assert demand and set(demand) == {fv.id}   # the autoscaler hears of the waiting call

            # Credit from a link the queue never saw connect is ignored.
            q.worker_credit(Link("r-unknown"), 5)
            # A worker of another function does not take it.
            connect(q, "r-other", credit=3, function_id="fv-other")
            await settle(store)
            assert call.state == CallState.QUEUED

            busy = connect(q, "r-busy", credit=1)
            await settle(store)
            assert busy.assignments == [(call.id, 1, ARGS, 16)]
            assert idle.assignments == []
            assert call.state == CallState.RUNNING and call.replica_id == "r-busy" and call.attempt == 1
            assert q.waiting(fv.id) == 0 and q.inflight(fv.id) == 1
            assert q.inflight_count(fv.id, "r-busy") == 1

            # Its one credit is spent: the next call waits.
            second = q.submit(sub, 2, fv, ARGS)
            await settle(store)
            assert busy.assigned() == [(call.id, 1)] and second.state == CallState.QUEUED
            q.worker_credit(busy, 1)
            await settle(store)
            assert busy.assigned() == [(call.id, 1), (second.id, 1)]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_draining_worker_gets_no_new_work(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=2)
            q.worker_draining("r-1", fv.id)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            assert link.assignments == [] and call.state == CallState.QUEUED
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["result", "done", "error"])
def test_final_event_of_the_current_attempt_reaches_the_subscriber(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 7, fv, ARGS)
            await settle(store)
            assert link.assigned() == [(call.id, 1)]
            user_error = CallError("ValueError", "bad input", "Traceback...", ErrorCode.USER,
                                   ("ValueError", "Exception"))
            if kind == "result":
                q.worker_event(link, call.id, 1, ev.Result(RESULT))
            elif kind == "done":
                q.worker_event(link, call.id, 1, ev.DONE)
            else:
                q.worker_event(link, call.id, 1, ev.Failed(user_error))
            await settle(store)
            assert sub.kinds() == ["accepted", kind]
            final = sub.events[-1]
            assert final[0] == 7 and final[1] == call.id
            expected_state = {"result": CallState.SUCCEEDED, "done": CallState.SUCCEEDED,
                              "error": CallState.FAILED}[kind]
            assert q.get(call.id).state == expected_state
            assert call.id not in q.calls and q.inflight(fv.id) == 0
            r = row(store, call.id)
            assert r["state"] == expected_state.value and r["attempt"] == 1 and r["finished_at"] is not None
            if kind == "result":
                assert final[3] == RESULT
                assert (r["result_schema"], r["result_batch"], r["result_rows"]) == (RESULT.schema, RESULT.batch, 1)
            elif kind == "error":
                assert final[4] == user_error
                assert json.loads(r["error"])["message"] == "bad input"
            # A late duplicate of the final event changes nothing.
            q.worker_event(link, call.id, 1, ev.Result(RESULT))
            await settle(store)
            assert len(sub.events) == 2
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_stale_events_are_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            a = connect(q, "r-a", credit=1)
            b = connect(q, "r-b")
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            assert a.assigned() == [(call.id, 1)]

            # Wrong attempt number, from the right replica.
            q.worker_event(a, call.id, 2, ev.Result(RESULT))
            q.worker_event(a, call.id, 0, ev.Chunk(chunk(0), 0))
            # Right attempt number, from another replica.
            q.worker_event(b, call.id, 1, ev.Result(RESULT))
            q.worker_event(b, call.id, 1, ev.Chunk(chunk(0), 0))
            # An unknown call.
            q.worker_event(a, "fc-nope", 1, ev.Result(RESULT))
            await settle(store)
            assert sub.kinds() == ["accepted"]
            assert call.state == CallState.RUNNING and call.next_index == 0
            assert store.query("SELECT * FROM chunks") == []

            q.worker_event(a, call.id, 1, ev.Result(RESULT))
            await settle(store)
            assert sub.kinds() == ["accepted", "result"]
        finally:
            await store.close()

    asyncio.run(main())


# -- lost workers ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_worker_lost_before_any_chunk_requeues_to_another_worker(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            a = connect(q, "r-a", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            assert a.assigned() == [(call.id, 1)]
            b = connect(q, "r-b", credit=1)

            q.worker_lost(fv.id, "r-a", ReplicaExit(code=1))
            assert call.state == CallState.QUEUED and call.failures == 1 and call.replica_id is None
            await settle(store)
            assert b.assigned() == [(call.id, 2)]
            assert b.assignments[0][2] == ARGS           # the same arguments again
            assert call.attempt == 2 and call.replica_id == "r-b"
            assert row(store, call.id)["failures"] == 1

            # The old attempt is fenced off, even if the old replica's stream still talks.
            q.worker_event(a, call.id, 1, ev.Result(Payload(b"s", b"stale")))
            q.worker_event(b, call.id, 1, ev.Result(Payload(b"s", b"stale")))
            await settle(store)
            assert sub.kinds() == ["accepted"]
            q.worker_event(b, call.id, 2, ev.Result(RESULT))
            await settle(store)
            assert sub.kinds() == ["accepted", "result"] and sub.events[-1][3] == RESULT
            r = row(store, call.id)
            assert (r["state"], r["attempt"], r["failures"]) == ("succeeded", 2, 1)

            # Losing a replica the queue does not know (again) is a no-op.
            q.worker_lost(fv.id, "r-a", ReplicaExit(code=1))
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_worker_lost_waits_for_the_retry_backoff(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            delays: list[int] = []

            def backoff(n: int) -> float:
                delays.append(n)
                return 0.2

            q = new_queue(store, retry_backoff=backoff)
            fv, sub = make_fv(), Sub()
            a = connect(q, "r-a", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            b = connect(q, "r-b", credit=1)
            loop = asyncio.get_running_loop()
            lost_at = loop.time()
            q.worker_lost(fv.id, "r-a", ReplicaExit(code=1))
            await settle(store)
            assert delays == [1]
            if loop.time() - lost_at < 0.15:           # (a stalled machine could overshoot)
                assert b.assignments == []             # still backing off
            deadline = lost_at + 10
            while not b.assignments and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert loop.time() - lost_at >= 0.19
            assert b.assigned() == [(call.id, 2)]
            assert a.assigned() == [(call.id, 1)]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_worker_lost_max_attempts_times_fails_with_worker_lost(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store, max_attempts=3)
            fv, sub = make_fv(name="crashy"), Sub()
            call = q.submit(sub, 1, fv, ARGS)
            exit = ReplicaExit(signal=9, reason="out of memory")
            for attempt in (1, 2, 3):
                link = connect(q, f"r-{attempt}", credit=1)
                await settle(store)
                assert link.assigned() == [(call.id, attempt)]
                q.worker_lost(fv.id, link.replica_id, exit)
                if attempt < 3:
                    assert call.state == CallState.QUEUED
            await settle(store)
            assert sub.kinds() == ["accepted", "error"]
            err = sub.error()
            assert err.code == ErrorCode.WORKER_LOST
            assert exit.describe() == "killed by SIGKILL: out of memory"
            assert exit.describe() in err.message
            assert "'crashy'" in err.message and "3 attempt(s)" in err.message
            assert call.state == CallState.FAILED and call.failures == 3
            r = row(store, call.id)
            assert (r["state"], r["attempt"], r["failures"]) == ("failed", 3, 3)
            assert json.loads(r["error"])["code"] == "WORKER_LOST"

            # Not re-queued: a fresh worker gets nothing.
            late = connect(q, "r-late", credit=1)
            await settle(store)
            assert late.assignments == []
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_worker_lost_after_a_chunk_fails_as_interrupted(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(is_generator=True), Sub()
            a = connect(q, "r-a", credit=1)
            other = connect(q, "r-other", credit=0)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            assert a.assigned() == [(call.id, 1)]
            q.worker_credit(other, 1)
            q.worker_event(a, call.id, 1, ev.Chunk(chunk(0), 0))
            await settle(store)
            assert sub.kinds() == ["accepted", "chunk"]

            exit = ReplicaExit(code=137)
            q.worker_lost(fv.id, "r-a", exit)
            await settle(store)
            assert sub.kinds() == ["accepted", "chunk", "error"]
            err = sub.error()
            assert err.code == ErrorCode.INTERRUPTED
            assert "after 1 chunk(s)" in err.message and exit.describe() in err.message
            assert other.assignments == []               # never run twice once it streamed
            r = row(store, call.id)
            assert (r["state"], r["chunks"], r["failures"]) == ("failed", 1, 1)
        finally:
            await store.close()

    asyncio.run(main())


# -- streaming ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_chunks_in_order_and_acks_widen_the_window(tmp_path: Path, caplog) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store, chunk_window=4)
            fv, sub = make_fv(is_generator=True), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 3, fv, ARGS)
            await settle(store)
            assert link.assignments == [(call.id, 1, ARGS, 4)]

            q.worker_event(link, call.id, 1, ev.Chunk(chunk(0), 0))
            # Chunks go out only once committed.
            assert sub.kinds() == ["accepted"]
            assert call.state == CallState.STREAMING
            q.worker_event(link, call.id, 1, ev.Chunk(chunk(1, rows=2), 1))
            q.worker_event(link, call.id, 1, ev.Chunk(chunk(9), 9))   # a gap: dropped
            q.worker_event(link, call.id, 1, ev.Chunk(chunk(0), 0))   # a repeat: dropped
            q.worker_event(link, call.id, 1, ev.Chunk(chunk(3), 3))
            await settle(store)
            got = [(e[0], e[2], e[3], e[5]) for e in sub.of("chunk")]
            assert got == [(3, "chunk", chunk(0), 0), (3, "chunk", chunk(1, rows=2), 1), (3, "chunk", chunk(3), 3)]
            assert call.next_index == 4
            stored = store.query("SELECT first_index, rows, batch FROM chunks WHERE call_id=? ORDER BY first_index",
                                 (call.id,))
            assert [tuple(r) for r in stored] == [(0, 1, b"chunk-0"), (1, 2, b"chunk-1"), (3, 1, b"chunk-3")]
            assert (row(store, call.id)["state"], row(store, call.id)["chunks"]) == ("streaming", 4)

            # Acks raise the worker's chunk credit to index + 1 + window.
            q.ack(call.id, 0)
            assert link.credits == [(call.id, 1, 0 + 1 + 4)]
            q.ack(call.id, 2)
            assert link.credits[-1] == (call.id, 1, 2 + 1 + 4)
            q.ack(call.id, 1)                  # not news: nothing sent
            q.ack(call.id, 2)
            q.ack("fc-unknown", 10)
            assert len(link.credits) == 2
            assert call.acked == 2

            # The end of the stream comes after its chunks.
            q.worker_event(link, call.id, 1, ev.DONE)
            assert sub.kinds() == ["accepted", "chunk", "chunk", "chunk"]   # waits for the commit
            await settle(store)
            assert sub.kinds() == ["accepted", "chunk", "chunk", "chunk", "done"]
            assert (row(store, call.id)["state"], row(store, call.id)["chunks"]) == ("succeeded", 4)
            q.ack(call.id, 3)                  # after the end: ignored
            assert len(link.credits) == 2
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="chalkd.queue.core"):
        asyncio.run(main())
    assert sum("out of order" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.timeout(30)
def test_attach_replays_chunks_after_the_given_index(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(is_generator=True), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            for i in range(3):
                q.worker_event(link, call.id, 1, ev.Chunk(chunk(i), i))
            await settle(store)

            late = Sub()
            q.attach(late, 9, call.id, after_chunk=0)
            assert [(e[2], e[5]) for e in late.events] == [("accepted", 0), ("chunk", 1), ("chunk", 2)]
            q.worker_event(link, call.id, 1, ev.Chunk(chunk(3), 3))
            q.worker_event(link, call.id, 1, ev.DONE)
            await settle(store)
            assert [(e[0], e[2], e[5]) for e in late.events[3:]] == [(9, "chunk", 3), (9, "done", 0)]
            assert sub.kinds() == ["accepted"] + ["chunk"] * 4 + ["done"]

            # A finished call replays from the store.
            again = Sub()
            q.attach(again, 1, call.id, after_chunk=-1)
            assert [(e[2], e[5]) for e in again.events] == \
                [("accepted", 0), ("chunk", 0), ("chunk", 1), ("chunk", 2), ("chunk", 3), ("done", 0)]

            with pytest.raises(CallNotFound):
                q.attach(Sub(), 1, "fc-does-not-exist")
        finally:
            await store.close()

    asyncio.run(main())


# -- priority ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("nested_before_first_dispatch", [True, False])
def test_nested_call_runs_before_a_newer_top_level_call(tmp_path: Path, nested_before_first_dispatch: bool) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(max_replicas=2), Sub()  # (one replica: its own nested call would deadlock)
            link = connect(q, "r-1")
            a = q.submit(sub, 1, fv, ARGS)
            b = q.submit(sub, 2, fv, ARGS)
            if nested_before_first_dispatch:
                c = q.submit(sub, 3, fv, ARGS, parent_id=a.id)
            else:
                q.worker_credit(link, 1)
                await settle(store)
                assert link.assigned() == [(a.id, 1)]
                # A is running (still open): its nested call joins its place in line.
                c = q.submit(sub, 3, fv, ARGS, parent_id=a.id)
            # sort_key = (root_seq, seq): A (1,1) < C (1,3) < B (2,2).
            assert (a.seq, b.seq, c.seq) == (1, 2, 3)
            assert (a.root_seq, b.root_seq, c.root_seq) == (1, 2, 1)
            assert a.sort_key < c.sort_key < b.sort_key
            if nested_before_first_dispatch:
                q.worker_credit(link, 1)
                await settle(store)
            # One credit at a time: each call finishes before the next credit.
            order: list[str] = []
            for n in (1, 2, 3):
                assert len(link.assignments) == n
                call_id = link.assignments[-1][0]
                order.append(call_id)
                q.worker_event(link, call_id, 1, ev.Result(RESULT))
                if n < 3:
                    q.worker_credit(link, 1)
                    await settle(store)
            names = {a.id: "A", b.id: "B", c.id: "C"}
            assert [names[i] for i in order] == ["A", "C", "B"]
            r = row(store, c.id)
            assert (r["parent_id"], r["root_seq"]) == (a.id, 1)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_nested_call_of_an_unknown_parent_is_its_own_root(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            a = q.submit(sub, 1, fv, ARGS)
            c = q.submit(sub, 2, fv, ARGS, parent_id="fc-gone")
            assert (a.root_seq, c.root_seq, c.parent_id) == (1, 2, "fc-gone")
            await settle(store)
        finally:
            await store.close()

    asyncio.run(main())


# -- idempotency ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_idempotency_key_resubmit_attaches_to_the_same_call(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, other_fv = make_fv(), make_fv("fv-2", "g")
            first, second = Sub(), Sub()
            call = q.submit(first, 1, fv, ARGS, idempotency_key="key-1")
            await settle(store)
            again = q.submit(second, 5, fv, ARGS, idempotency_key="key-1")
            assert again is call
            assert second.events == [(5, call.id, "accepted", None, None, 0)]
            assert q.total_submitted == 1
            assert len(store.query("SELECT id FROM calls")) == 1
            # The same key for another function is another call.
            distinct = q.submit(first, 2, other_fv, ARGS, idempotency_key="key-1")
            assert distinct.id != call.id

            link = connect(q, "r-1", credit=5)
            await settle(store)
            assert link.assigned() == [(call.id, 1)]       # runs once
            q.worker_event(link, call.id, 1, ev.Result(RESULT))
            await settle(store)
            assert first.of("result")[0][:3] == (1, call.id, "result")
            assert second.of("result")[0][:3] == (5, call.id, "result")

            # After it finished, a resubmit gets its outcome straight away.
            third = Sub()
            assert q.submit(third, 8, fv, ARGS, idempotency_key="key-1").id == call.id
            assert third.kinds() == ["accepted", "result"] and third.events[-1][3] == RESULT
            await settle(store)
            assert link.assigned() == [(call.id, 1)]
            assert len(store.query("SELECT id FROM calls WHERE function_id=?", (fv.id,))) == 1
        finally:
            await store.close()

    asyncio.run(main())


# -- cancel ------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_cancel_a_queued_call(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            q.cancel(call.id, "no longer needed")
            assert sub.kinds() == ["accepted"]   # the error goes out once it is stored
            await settle(store)
            assert sub.kinds() == ["accepted", "error"]
            err = sub.error()
            assert err.code == ErrorCode.CANCELLED and err.message == "no longer needed"
            assert call.state == CallState.CANCELLED
            link = connect(q, "r-1", credit=1)
            await settle(store)
            assert link.assignments == []                    # never dispatched
            assert row(store, call.id)["state"] == "cancelled"
            q.cancel(call.id)                                # twice, or unknown: no-op
            q.cancel("fc-unknown")
            assert len(sub.events) == 2
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_cancel_a_running_call_tells_its_worker(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            q.cancel(call.id)
            assert link.cancels == [(call.id, 1)]
            await settle(store)
            assert sub.error().code == ErrorCode.CANCELLED
            assert q.inflight(fv.id) == 1   # its slot is held until the worker says it stopped
            q.worker_event(link, call.id, 1, ev.Result(RESULT))   # too late
            await settle(store)
            assert q.inflight(fv.id) == 0
            assert sub.kinds() == ["accepted", "error"]
        finally:
            await store.close()

    asyncio.run(main())


# -- functions that cannot run -----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_submit_to_a_failed_function_and_fail_waiting(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            waiting = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            q.fail_waiting(fv.id, CallError.platform(ErrorCode.BUILD_FAILED, "pip install failed"))
            await settle(store)
            assert sub.error().code == ErrorCode.BUILD_FAILED
            assert waiting.state == CallState.FAILED and q.waiting(fv.id) == 0

            fv.failed = "cannot schedule"
            late_sub = Sub()
            later = q.submit(late_sub, 2, fv, ARGS)
            assert later.state == CallState.FAILED
            await settle(store)
            assert late_sub.kinds() == ["accepted", "error"]
            assert late_sub.error().code == ErrorCode.UNSCHEDULABLE and late_sub.error().message == "cannot schedule"
            await settle(store)
            assert row(store, later.id)["state"] == "failed"
            rejected = Sub()
            q.reject(rejected, 4, CallError.platform(ErrorCode.NOT_FOUND, "no such function"))
            assert rejected.events[0][:3] == (4, "", "error")
        finally:
            await store.close()

    asyncio.run(main())


# -- prefetch ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_prefetch_only_for_short_calls_and_when_allowed(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            q.prefetch = lambda fid: 1
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=1)
            calls = [q.submit(sub, i, fv, ARGS) for i in range(4)]
            await settle(store)
            # How long calls take is not known yet: no input is handed ahead.
            assert link.assigned() == [(calls[0].id, 1)]

            q._durations[fv.id] = 0.001    # calls of this function are short (set, not timed: no flakes)
            q.worker_credit(link, 1)
            await settle(store)
            # One for the free slot, one more ahead (prefetch 1).
            assert link.assigned() == [(calls[0].id, 1), (calls[1].id, 1), (calls[2].id, 1)]
            assert q.waiting(fv.id) == 1

            # A replica that is connected but not serving yet stops prefetching.
            connect(q, "r-loading")
            q.prefetch = lambda fid: 5
            q.worker_credit(link, 0)             # (a no-op credit: just a dispatch pass)
            await settle(store)
            assert len(link.assignments) == 3

            q._durations[fv.id] = 1.0      # long calls: no prefetch
            q.worker_event(link, calls[0].id, 1, ev.Result(RESULT))
            q._durations[fv.id] = 1.0      # (the result just fed the average)
            q.worker_lost(fv.id, "r-loading", ReplicaExit(code=0))
            q.worker_credit(link, 0)             # (a no-op credit: just a dispatch pass)
            await settle(store)
            assert len(link.assignments) == 3
        finally:
            await store.close()

    asyncio.run(main())


# -- recovery ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_recovery_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        fv = make_fv(is_generator=True, max_replicas=2)  # (one replica could not run its own nested call)
        sub = Sub()
        store = await open_store(path)
        q = new_queue(store)
        link = connect(q, "r-1", credit=2)
        streamed = q.submit(sub, 1, fv, ARGS)
        finished = q.submit(sub, 2, fv, ARGS, idempotency_key="done-key")
        await settle(store)
        assert link.assigned() == [(streamed.id, 1), (finished.id, 1)]
        q.worker_event(link, streamed.id, 1, ev.Chunk(chunk(0), 0))
        q.worker_event(link, streamed.id, 1, ev.Chunk(chunk(1), 1))
        q.worker_event(link, finished.id, 1, ev.Result(RESULT))
        queued = q.submit(sub, 3, fv, Payload(b"q-schema", b"q-batch"), idempotency_key="queued-key")
        nested = q.submit(sub, 4, fv, ARGS, parent_id=streamed.id)
        await settle(store)
        assert sub.kinds(streamed.id) == ["accepted", "chunk", "chunk"]
        await store.close()           # the daemon goes away with the stream open

        store = await open_store(path)
        try:
            q = new_queue(store)
            q.load({fv.id: fv})
            # Queued calls come back queued, in their place in line.
            assert set(q.calls) == {queued.id, nested.id}
            back = q.calls[queued.id]
            assert back.state == CallState.QUEUED and back.args == Payload(b"q-schema", b"q-batch")
            assert (q.calls[nested.id].root_seq, q.calls[nested.id].parent_id) == (1, streamed.id)
            assert q.waiting(fv.id) == 2

            # The streamed call failed as interrupted.
            s = q.get(streamed.id)
            assert s.state == CallState.FAILED and s.error.code == ErrorCode.INTERRUPTED
            assert "after 2 chunk(s)" in s.error.message
            await settle(store)
            assert row(store, streamed.id)["state"] == "failed"

            # A caller re-attaching gets its persisted chunks, then the error.
            again = Sub()
            q.attach(again, 11, streamed.id, after_chunk=-1)
            assert [(e[0], e[2], e[3], e[5]) for e in again.events[:3]] == \
                [(11, "accepted", None, 0), (11, "chunk", chunk(0), 0), (11, "chunk", chunk(1), 1)]
            assert again.kinds() == ["accepted", "chunk", "chunk", "error"]
            assert again.error().code == ErrorCode.INTERRUPTED
            resumed = Sub()
            q.attach(resumed, 12, streamed.id, after_chunk=0)
            assert [(e[2], e[5]) for e in resumed.events] == [("accepted", 0), ("chunk", 1), ("error", 0)]

            # A finished call's outcome is read back from the database.
            done = Sub()
            q.attach(done, 13, finished.id)
            assert done.kinds() == ["accepted", "result"] and done.events[-1][3] == RESULT

            # Idempotency keys survive: a resubmit gets the same calls back.
            resub = Sub()
            assert q.submit(resub, 20, fv, ARGS, idempotency_key="queued-key").id == queued.id
            assert q.submit(resub, 21, fv, ARGS, idempotency_key="done-key").id == finished.id
            assert resub.kinds() == ["accepted", "accepted", "result"]

            # New calls number on after the old ones.
            fresh = q.submit(Sub(), 30, fv, ARGS)
            assert fresh.seq == nested.seq + 1

            # A worker of the restarted daemon runs the queued calls, oldest root first.
            worker = connect(q, "r-new", credit=3)
            await settle(store)
            assert worker.assigned() == [(nested.id, 1), (queued.id, 1), (fresh.id, 1)]
            q.worker_event(worker, queued.id, 1, ev.Result(RESULT))
            await settle(store)
            assert resub.of("result")[-1][:2] == (20, queued.id)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_recovery_fails_calls_of_a_deleted_function(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        fv = make_fv()
        store = await open_store(path)
        call = new_queue(store).submit(Sub(), 1, fv, ARGS)
        await store.close()

        store = await open_store(path)
        try:
            q = new_queue(store)
            q.load({})                                     # the version is gone
            assert q.calls == {}
            sub = Sub()
            q.attach(sub, 1, call.id)
            assert sub.kinds() == ["accepted", "error"] and sub.error().code == ErrorCode.NOT_FOUND
            await settle(store)
            assert row(store, call.id)["state"] == "failed"
        finally:
            await store.close()

    asyncio.run(main())


# -- regressions: bugs found and fixed -------------------------------------------------------


@pytest.mark.timeout(30)
def test_attach_after_acks_replays_every_chunk(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(is_generator=True), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            for i in range(3):
                q.worker_event(link, call.id, 1, ev.Chunk(chunk(i), i))
            await settle(store)
            q.ack(call.id, 1)                       # the first caller consumed chunks 0 and 1
            second = Sub()
            q.attach(second, 2, call.id, after_chunk=-1)
            assert [e[5] for e in second.of("chunk")] == [0, 1, 2]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_cancelled_queued_call_is_no_longer_waiting(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv = make_fv()
            call = q.submit(Sub(), 1, fv, ARGS)
            q.cancel(call.id)
            await settle(store)
            assert q.counts() == (0, 0)
            assert q.waiting(fv.id) == 0
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_fail_waiting_also_fails_calls_in_retry_backoff(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            connect(q, "r-a", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            q.worker_lost(fv.id, "r-a", ReplicaExit(code=1))     # re-queued after a backoff
            fv.failed = "replicas exit before they are ready"
            q.fail_waiting(fv.id, CallError.platform(ErrorCode.UNSCHEDULABLE, fv.failed))
            await settle(store)
            assert call.state == CallState.FAILED
            assert sub.kinds() == ["accepted", "error"]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_lost_worker_budget_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        fv = make_fv()
        store = await open_store(path)
        q = new_queue(store, max_attempts=3)
        call = q.submit(Sub(), 1, fv, ARGS)
        for attempt in (1, 2):
            link = connect(q, f"r-{attempt}", credit=1)
            await settle(store)
            assert link.assigned() == [(call.id, attempt)]
            q.worker_lost(fv.id, link.replica_id, ReplicaExit(code=1))
        await settle(store)
        assert row(store, call.id)["failures"] == 2
        await store.close()

        store = await open_store(path)
        try:
            q = new_queue(store, max_attempts=3)
            q.load({fv.id: fv})
            link = connect(q, "r-3", credit=1)
            await settle(store)
            assert [a[0] for a in link.assignments] == [call.id]
            q.worker_lost(fv.id, "r-3", ReplicaExit(code=1))    # the third loss in all
            await settle(store)
            assert q.get(call.id).state == CallState.FAILED
        finally:
            await store.close()

    asyncio.run(main())


# -- review fixes: lazy unqueue, retries of a deleted function, rate limits of a new version -------------


@pytest.mark.timeout(30)
def test_cancelled_queued_calls_leave_line_without_a_rebuild(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            calls = [q.submit(sub, n, fv, ARGS) for n in range(5)]
            for call in calls[:3]:
                q.cancel(call.id)
            assert q.waiting(fv.id) == 2 and q.counts()[0] == 2
            assert len(q._heaps[fv.id]) == 5            # stale entries stay until popped
            link = connect(q, "r-1", credit=5)
            await settle(store)
            assert link.assigned() == [(calls[3].id, 1), (calls[4].id, 1)]
            assert q.waiting(fv.id) == 0
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_retry_due_after_its_function_was_deleted_fails(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        try:
            q = new_queue(store)
            fv, sub = make_fv(), Sub()
            link = connect(q, "r-1", credit=1)
            call = q.submit(sub, 1, fv, ARGS)
            await settle(store)
            fv.deleted = True
            q.worker_lost(fv.id, "r-1", ReplicaExit(code=1))   # re-queued after a 0 s backoff...
            await settle(store)
            assert sub.error().code == ErrorCode.NOT_FOUND    # ... and failed: nothing would run it
            assert link.assigned() == [(call.id, 1)]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_new_version_sets_its_functions_rate(tmp_path: Path) -> None:
    from chalkd.model import Policies
    from chalkd.queue.limits import Limits

    clock = [0.0]
    limits = Limits(store=None, clock=lambda: clock[0])  # type: ignore[arg-type]
    v1 = make_fv("fv-1", policies=Policies(rate_per_second=1.0, rate_burst=1.0))
    limits.register(v1)
    v2 = make_fv("fv-2", policies=Policies(rate_per_second=100.0, rate_burst=100.0))
    limits.register(v2)
    (bucket,) = limits.buckets_for(v1)
    assert bucket is limits.buckets_for(v2)[0] and bucket.rate == 100.0


# -- retention ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_expire_results_drops_finished_calls_past_their_ttl(tmp_path: Path) -> None:
    from chalkd.model import Policies

    async def main() -> None:
        store = await open_store(tmp_path / "db.sqlite")
        now = [1000.0]
        try:
            short, long = make_fv("fv-1", policies=Policies(result_ttl=10.0)), make_fv(
                "fv-2", name="g", policies=Policies(result_ttl=1000.0))
            q = new_queue(store, clock=lambda: now[0], known_functions=lambda: {"fv-1": short, "fv-2": long})
            sub = Sub()
            link1, link2 = connect(q, "r-1", credit=1), connect(q, "r-2", credit=1, function_id="fv-2")
            a = q.submit(sub, 1, short, ARGS, idempotency_key="k-a")
            b = q.submit(sub, 2, long, ARGS)
            await settle(store)
            q.worker_event(link1, a.id, 1, ev.Result(RESULT))
            q.worker_event(link2, b.id, 1, ev.Result(RESULT))
            await settle(store)
            assert q.expire_results(now[0] + 5) == 0  # within both TTLs
            await settle(store)
            now[0] += 500  # past the short TTL and the idempotency window; within the long one
            assert q.expire_results(now[0]) == 1
            await settle(store)
            with pytest.raises(CallNotFound):
                q.get(a.id)
            assert store.query("SELECT id FROM calls WHERE id=?", (a.id,)) == []
            assert q.get(b.id).state == CallState.SUCCEEDED
            # The key is gone with it: the same key now makes a new call.
            again = q.submit(sub, 3, short, ARGS, idempotency_key="k-a")
            assert again.id != a.id
        finally:
            await store.close()

    asyncio.run(main())
