"""The map engine of chalkcompute.calls with a fake client: ordering, the
in-flight window, batching, failures and cancellation, without a daemon."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chalkcompute import _map, calls
from chalkcompute._events import BatchDone
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.exceptions import FunctionSignatureError, RemoteExecutionError


class FakeClient:
    """Records each message's batch calls (their row counts); completes them in reverse order
    unless told to hold them, each with a result per row (an error for rows in ``fail``)."""

    def __init__(self, fail: set[int] = frozenset(), hold: set[int] = frozenset(), seconds: float = 1e-5) -> None:
        self.batches: list[list[int]] = []   # per start_calls: rows of each batch call
        self.fail, self.hold, self.seconds = fail, hold, seconds
        self.session = SimpleNamespace(handles={}, cancel_batch=self._cancel_batch)
        self.loop = SimpleNamespace(call_soon_threadsafe=lambda fn, *a: fn(*a))
        self.cancelled: list[int] = []
        self.max_inflight = 0
        self._ref = 0

    def start_calls(self, *, function_id, payloads, decode, display_name, handle_type, batch_rows):
        self.batches.append(list(batch_rows))
        handles = []
        for p, rows in zip(payloads, batch_rows, strict=True):
            self._ref += 1
            h = handle_type(self.session, pb.Submit(ref=self._ref), display_name, decode)
            self.session.handles[h.ref] = h
            _, (xs,) = CODEC._in.decode(*p)
            assert len(xs) == rows == h.rows
            handles.append((h, xs))
        self.max_inflight = max(self.max_inflight, sum(h.rows for h in self.session.handles.values()))
        for h, xs in reversed(handles):
            if self.hold & set(xs):
                continue
            del self.session.handles[h.ref]
            h.finished = True
            out = pb.BatchOutcome(seconds=self.seconds * len(xs))
            values = [None if x in self.fail else x * 10 for x in xs]
            out.results.schema, out.results.batch = CODEC.encode_chunks(values)
            for row, x in enumerate(xs):
                if x in self.fail:
                    out.errors.append(pb.RowError(row=row, error=pb.RemoteError(
                        exception_type="builtins.ValueError", message=f"bad {x}")))
            h.put(BatchDone(out, "fc-x"))
        return [h for h, _ in handles]

    def _cancel_batch(self, handles):
        self.cancelled.extend(x for h in handles for x in range(h.first, h.first + h.rows))


def _tenfold(x: int) -> int:
    return x * 10


CODEC = FunctionCodec.for_function(_tenfold)


class FakeFunction:
    name = "fake"
    is_generator = False

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.codec = CODEC

    def _ensure_registered(self):
        return SimpleNamespace(id="fv-fake")

    def _arguments(self, args, kwargs):
        return {"x": args[0]}


def run(client, inputs, **kw):
    return list(_map.map_inputs(FakeFunction(client), ((x,) for x in inputs), **kw))


def test_in_order_although_they_finish_reversed():
    client = FakeClient()
    assert run(client, range(2500)) == [x * 10 for x in range(2500)]


def test_unordered_is_arrival_order():
    client = FakeClient()
    out = run(client, range(10), order_outputs=False)
    assert out == [x * 10 for x in reversed(range(10))]


def test_inputs_go_in_batch_calls_within_the_window(monkeypatch):
    monkeypatch.setattr(calls, "MAP_MAX_INFLIGHT", 100)
    client = FakeClient()
    assert run(client, range(1000)) == [x * 10 for x in range(1000)]
    # One input per batch until the handler's time is known, then batches of a quarter window at most.
    assert client.batches[0] == [1] * calls.MAP_PROBE_INPUTS
    sizes = [n for b in client.batches[1:] for n in b]
    assert max(sizes) == 25 and sum(sizes) == 1000 - calls.MAP_PROBE_INPUTS
    assert client.max_inflight <= 100


def test_batches_are_sized_to_the_handlers_time(monkeypatch):
    # 5 ms per input: four inputs make ~20 ms of work.
    client = FakeClient(seconds=0.005)
    assert run(client, range(300)) == [x * 10 for x in range(300)]
    sizes = [n for b in client.batches[1:] for n in b]
    assert max(sizes) == 4 and sizes.count(4) >= len(sizes) - 1


def test_return_exceptions():
    out = run(FakeClient(fail={3, 5}), range(7), return_exceptions=True)
    assert [o if isinstance(o, int) else str(o) for o in out] == [0, 10, 20, "ValueError: bad 3", 40,
                                                                   "ValueError: bad 5", 60]


def test_first_failure_raises_and_cancels_the_rest(monkeypatch):
    monkeypatch.setattr(calls, "MAP_MAX_INFLIGHT", 10)
    client = FakeClient(fail={7}, hold={0, 1, 2})
    with pytest.raises(RemoteExecutionError, match="ValueError: bad 7"):
        run(client, range(100))
    assert sorted(client.cancelled) == [0, 1, 2]


def test_abandoned_map_cancels_what_is_in_flight(monkeypatch):
    monkeypatch.setattr(calls, "MAP_MAX_INFLIGHT", 10)
    client = FakeClient(hold={5})
    results = _map.map_inputs(FakeFunction(client), ((x,) for x in range(100)))
    assert [next(results) for _ in range(5)] == [0, 10, 20, 30, 40]
    results.close()
    assert client.cancelled == [5]


def test_refusals():
    fn = FakeFunction(FakeClient())
    fn.is_generator = True
    with pytest.raises(FunctionSignatureError, match="generator"):
        _map.map_inputs(fn, [(1,)])
    with pytest.raises(TypeError, match="at least one iterable"):
        _map._map_method(fn)



def test_large_results_or_arguments_make_smaller_batches(monkeypatch):
    monkeypatch.setattr(calls, "MAP_BATCH_BYTES", 2000)
    client = FakeClient()
    assert run(client, range(500)) == [x * 10 for x in range(500)]
    sizes = [n for b in client.batches[1:] for n in b]
    assert sum(sizes) == 500 - calls.MAP_PROBE_INPUTS and max(sizes) < 25   # 250 without the byte bound


def test_a_batched_functions_batches_hold_at_least_one_invocation():
    client = FakeClient(seconds=0.05)   # slow per input: alone it would make batches of one
    fn = FakeFunction(client)
    fn._opts = SimpleNamespace(batched=True, policy_spec={"batching": SimpleNamespace(max_batch_size=8)})
    assert list(_map.map_inputs(fn, ((x,) for x in range(100)))) == [x * 10 for x in range(100)]
    sizes = [n for b in client.batches for n in b]
    assert sizes[:4] == [8] * 4 and min(sizes[:-1]) == 8
