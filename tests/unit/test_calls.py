"""The map engine of chalkcompute.calls with a fake client: ordering, the
in-flight window, batching, failures and cancellation, without a daemon."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chalkcompute import calls
from chalkcompute._events import Failed, Result
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._serialization import FunctionCodec
from chalkcompute.exceptions import FunctionSignatureError, RemoteExecutionError


class FakeClient:
    """Records each batch; completes its calls in reverse order unless told to hold them."""

    def __init__(self, fail: set[int] = frozenset(), hold: set[int] = frozenset()) -> None:
        self.batches: list[int] = []
        self.fail, self.hold = fail, hold
        self.session = SimpleNamespace(handles={}, cancel_batch=self._cancel_batch)
        self.loop = SimpleNamespace(call_soon_threadsafe=lambda fn, *a: fn(*a))
        self.cancelled: list[int] = []
        self._ref = 0

    def start_calls(self, *, function_id, payloads, decode, display_name, handle_type):
        self.batches.append(len(payloads))
        handles = []
        for p in payloads:
            self._ref += 1
            h = handle_type(self.session, pb.Submit(ref=self._ref), display_name, decode)
            self.session.handles[h.ref] = h
            handles.append((h, p))
        for h, p in reversed(handles):
            x = p[1]
            if x in self.hold:
                continue
            del self.session.handles[h.ref]
            h.finished = True
            if x in self.fail:
                h.put(Failed(pb.RemoteError(exception_type="builtins.ValueError", message=f"bad {x}"), "fc-x"))
            else:
                schema, batch = CODEC.encode_result(x * 10)
                h.put(Result(pb.Payload(schema=schema, batch=batch, rows=1)))
        return [h for h, _ in handles]

    def _cancel_batch(self, handles):
        self.cancelled.extend(h.index for h in handles)


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

    def _encode(self, args, kwargs):
        return (b"", args[0])


def run(client, inputs, **kw):
    return list(calls.map_inputs(FakeFunction(client), ((x,) for x in inputs), **kw))


def test_in_order_although_they_finish_reversed():
    client = FakeClient()
    assert run(client, range(2500)) == [x * 10 for x in range(2500)]


def test_unordered_is_arrival_order():
    client = FakeClient()
    out = run(client, range(10), order_outputs=False)
    assert out == [x * 10 for x in reversed(range(10))]


def test_inputs_go_in_batches_within_the_window(monkeypatch):
    monkeypatch.setattr(calls, "MAP_MAX_INFLIGHT", 100)
    client = FakeClient()
    assert run(client, range(1000)) == [x * 10 for x in range(1000)]
    assert client.batches[0] == 100
    assert all(25 <= b <= 100 for b in client.batches[:-1])
    assert sum(client.batches) == 1000


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
    results = calls.map_inputs(FakeFunction(client), ((x,) for x in range(100)))
    assert [next(results) for _ in range(5)] == [0, 10, 20, 30, 40]
    results.close()
    assert client.cancelled == [5]


def test_refusals():
    fn = FakeFunction(FakeClient())
    fn.is_generator = True
    with pytest.raises(FunctionSignatureError, match="generator"):
        calls.map_inputs(fn, [(1,)])
    with pytest.raises(TypeError, match="at least one iterable"):
        calls._map_method(fn)
