"""The worker link's message cut: a WorkerRequest over the shared batch limit
(chalkcompute._contract.MAX_BATCH_BYTES) leaves as several, in order, with the credit last."""

from __future__ import annotations

from chalkcompute._contract import MAX_BATCH_BYTES
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.worker.link import _split


def chunk(call_id: str, index: int, size: int) -> pb.AttemptEvent:
    return pb.AttemptEvent(call_id=call_id, attempt=1, first_index=index,
                           chunk=pb.Payload(schema=b"s", batch=b"x" * size, rows=1))


def test_a_small_request_leaves_as_it_is():
    msg = pb.WorkerRequest(events=[chunk("a", 0, 10)], credit=2)
    assert _split(msg) == [msg]


def test_a_large_request_is_cut_under_the_limit_in_order_with_the_credit_last():
    events = [chunk("a", i, MAX_BATCH_BYTES // 3) for i in range(7)]
    msg = pb.WorkerRequest(events=events, credit=3, heartbeat=True)
    parts = _split(msg)
    assert len(parts) == 4  # two events of a third of the limit (plus framing) per message
    assert all(p.ByteSize() <= MAX_BATCH_BYTES for p in parts)
    assert [e.first_index for p in parts for e in p.events] == list(range(7))
    assert [(p.credit, p.heartbeat) for p in parts] == [(0, False)] * 3 + [(3, True)]


def test_an_event_over_the_limit_travels_alone():
    events = [chunk("a", 0, 10), chunk("a", 1, MAX_BATCH_BYTES + 1), chunk("a", 2, 10)]
    parts = _split(pb.WorkerRequest(events=events, credit=1))
    assert [[e.first_index for e in p.events] for p in parts] == [[0], [1], [2]]
    assert parts[-1].credit == 1
