"""One call's events inside the daemon, as small typed objects.

The queue tells a caller's session (a :class:`~chalkd.queue.core.Subscriber`)::

    sub.send_event(ref, call_id, Accepted())        # after the call's row commits
    sub.send_event(ref, call_id, Chunk(payload, 0)) # a generator's rows, in order
    sub.send_event(ref, call_id, Result(payload))   # final
    sub.send_event(ref, call_id, Failed(error))     # final (also a refused submit, call_id "")
    sub.send_event(ref, call_id, DONE)              # final: a generator finished

and a worker reports an attempt with the same types (all but ``Accepted``)::

    queue.worker_event(link, call_id, attempt, Result(payload))

They carry the daemon's domain values (:class:`chalkd.model.Payload`,
:class:`chalkd.model.CallError`), never protobuf: the services translate at the
edge, in one place each way (``chalkd/services/streams.py``). The SDK has its own
set (``chalkcompute._events``), which carries what the wire gave it; what both
sides must agree on (message limits, the batcher, name rules) is shared through
``chalkcompute._contract``. Later issues add events here (batch results, log lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from chalkd.model import CallError, Payload

__all__ = ["Accepted", "CallEvent", "Chunk", "DONE", "Done", "Failed", "Result", "ACCEPTED"]


class CallEvent:
    """Base of a call's events; ``kind`` names it in logs."""

    __slots__ = ()
    kind: ClassVar[str] = ""


# Plain slotted dataclasses (not frozen: a frozen one costs an object.__setattr__ per
# field on the per-call path); nothing mutates them once made.
@dataclass(slots=True)
class Accepted(CallEvent):
    kind: ClassVar[str] = "accepted"


@dataclass(slots=True)
class Chunk(CallEvent):
    payload: Payload
    first_index: int
    kind: ClassVar[str] = "chunk"


@dataclass(slots=True)
class Result(CallEvent):
    payload: Payload
    kind: ClassVar[str] = "result"


@dataclass(slots=True)
class Failed(CallEvent):
    error: CallError
    kind: ClassVar[str] = "error"


@dataclass(slots=True)
class Done(CallEvent):
    kind: ClassVar[str] = "done"


ACCEPTED = Accepted()
DONE = Done()
