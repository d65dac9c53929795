"""What one call's handle receives, as small typed events (SDK side).

    Accepted            -> handled on the SDK loop (the handle learns its call id)
    Chunk(payload, first_index, skip)   a generator's rows, in order
    Result(payload)     a function's return value (final)
    Failed(error, call_id)              the remote error or refusal (final)
    Done()              a generator finished (final)
    BatchDone(outcome, call_id)         a batch call's results and per-row errors (final)
    Broken(exc)         a local failure: the connection is gone for good (final)

One set of event types per side, on purpose: the daemon's (``chalkd.queue.events``)
carry its domain payloads and never protobuf; these carry what the wire gave
the SDK (``pb.Payload``, ``pb.ErrorInfo``), decoded only when the caller takes
them. What both sides must agree on (message limits, the batcher, name rules)
is shared through ``chalkcompute._contract``. Turning an event into a value or
an exception is :meth:`chalkcompute._client.CallHandle.value_of`, next to the handle.

Later issues add events here (batch results, log lines) without touching the
consumers of the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BatchDone", "Broken", "CallEvent", "Chunk", "DONE", "Done", "Failed", "Result", "FINAL"]


class CallEvent:
    """Base of every event a call handle receives."""

    __slots__ = ()


# Plain (not frozen) slotted dataclasses: frozen ones cost an object.__setattr__ per field
# on the per-call path, and nothing mutates these after the SDK loop builds them.
@dataclass(slots=True)
class Chunk(CallEvent):
    payload: Any      # pb.Payload: schema + Arrow batch of ``rows`` values
    first_index: int  # the stream index of its first row
    skip: int = 0     # rows already seen before a reconnect


@dataclass(slots=True)
class Result(CallEvent):
    payload: Any  # pb.Payload: one row, the return value


@dataclass(slots=True)
class BatchDone(CallEvent):
    outcome: Any  # pb.BatchOutcome: a batch call's results (one per row) and per-row errors (final)
    call_id: str = ""


@dataclass(slots=True)
class Failed(CallEvent):
    error: Any    # pb.ErrorInfo
    call_id: str = ""


@dataclass(slots=True)
class Done(CallEvent):
    pass


@dataclass(slots=True)
class Broken(CallEvent):
    exc: BaseException


DONE = Done()
FINAL = (Result, Failed, Done, Broken, BatchDone)
