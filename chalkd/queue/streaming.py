"""Streams: following calls, chunks and their windows, and streams nobody reads.

A caller follows a call by subscribing to it (:meth:`Streaming.attach`); a
generator's chunks go out once durable, in order, and the caller's acks widen
the worker's window, in chunks and in bytes. A stream with no reader left is
paused by that window; a spawned one's chunks are taken by the store within
its budget; any other is cancelled after ``detached_stream_timeout``. Mixed
into :class:`chalkd.queue.core.Queue`::

    queue.attach(session, ref, call_id, after_chunk=41)   # replay from chunk 42, then follow
    queue.ack(call_id, 99)                                 # the caller consumed up to chunk 99
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from chalkd import metrics
from chalkd.model import Call, CallState, Chunk, Payload
from chalkd.queue import events as ev

if TYPE_CHECKING:
    from chalkd.queue.core import Subscriber

log = logging.getLogger(__name__)


class Streaming:
    """The queue's stream half (see the module docstring); its state lives on the Queue."""

    def attach(self, sub: Subscriber, ref: int, call_id: str, *, after_chunk: int = -1) -> None:
        """Subscribe ``sub`` to a call and replay what it has not seen yet."""
        call = self.get(call_id)
        sub.send_event(ref, call.id, ev.ACCEPTED)
        chunks = call.chunks
        in_memory_from = call.chunks[0].first_index if call.chunks else call.next_index
        if after_chunk + 1 < in_memory_from:
            # Chunks every caller had acknowledged left memory: the store has them.
            stored = self._load_chunks(call)
            seen = {c.first_index for c in stored}
            chunks = stored + [c for c in call.chunks if c.first_index not in seen]
        for chunk in chunks:
            last = chunk.first_index + chunk.payload.rows - 1
            if last > after_chunk:
                sub.send_event(ref, call.id, ev.Chunk(chunk.payload, chunk.first_index))
        if call.state.finished:
            self._send_final(call, sub, ref)
        else:
            call.subscribers[sub] = ref
            call.unread_since = None

    def ack(self, call_id: str, index: int) -> None:
        """A caller consumed chunks up to ``index``: widen the worker's window."""
        call = self.calls.get(call_id)
        if call is None or index <= call.acked:
            return
        call.acked = index
        # Chunks every caller has seen need not stay in memory: the store has them.
        while call.chunks and call.chunks[0].first_index + call.chunks[0].payload.rows - 1 <= index:
            call.acked_bytes += call.chunks.pop(0).payload.size
        worker = self._worker_of(call)
        if worker is not None:
            worker.link.send_chunk_credit(call.id, call.attempt, index + 1 + self.chunk_window,
                                          call.acked_bytes + self.chunk_window_bytes)

    def unsubscribe(self, sub: Subscriber) -> None:
        for call in list(self.calls.values()):
            if call.subscribers.pop(sub, None) is not None and not call.subscribers:
                self._lost_reader(call)

    def detach(self, sub: Subscriber, call_id: str) -> None:
        """``sub`` stops following ``call_id`` (a reader that left a spawned call); the call goes on."""
        call = self.calls.get(call_id)
        if call is not None and call.subscribers.pop(sub, None) is not None and not call.subscribers:
            self._lost_reader(call)

    def _lost_reader(self, call: Call) -> None:
        """``call`` has no reader left: a spawned generator's store takes its chunks (within
        its budget); any other stream is paused by its window, and cancelled, its replica
        freed, if nobody attaches within ``detached_stream_timeout``."""
        if call.state.finished or not call.function.is_generator or call.subscribers:
            return
        if call.detached and call.bytes_in <= self.spawned_stream_budget:
            if call.stored_index > call.acked:
                self.ack(call.id, call.stored_index)
            return
        if call.unread_since is None:
            call.unread_since = time.monotonic()
            self.loop.call_later(self.detached_stream_timeout, self._check_unread, call)

    def _check_unread(self, call: Call) -> None:
        if call.unread_since is None or call.state.finished or self.calls.get(call.id) is not call:
            return
        left = call.unread_since + self.detached_stream_timeout - time.monotonic()
        if left > 0:  # read again, and left again, since the timer was set
            self.loop.call_later(left, self._check_unread, call)
            return
        log.info("cancelling %s of %s: no reader for %gs", call.id, call.function.name, self.detached_stream_timeout)
        self.cancel(call.id, reason=(
            f"nobody read its stream for {self.detached_stream_timeout:g}s (chalkd serve --detached-stream-timeout): "
            "cancelled, its replica freed"))

    def _on_chunk(self, call: Call, payload: Payload, first_index: int) -> None:
        if first_index != call.next_index:
            log.warning("call %s: chunk %d out of order (expected %d); dropped", call.id, first_index, call.next_index)
            return
        call.next_index += payload.rows
        call.bytes_in += payload.size
        metrics.chunks_streamed(call.function, payload.rows)
        chunk = Chunk(first_index, payload)
        call.chunks.append(chunk)
        call.state = CallState.STREAMING
        subs = list(call.subscribers.items())

        # Chunks go out once they are durable (the first one marks the call as
        # streamed, so a restarted daemon never re-runs a call whose chunks a
        # caller saw); later ones follow in order behind it. While the disk is
        # full they wait, unacknowledged, so the chunk window pauses the generator.
        def deliver() -> None:
            if call.stored is False:
                return
            call.stored_index = first_index + payload.rows - 1
            for sub, ref in subs:
                sub.send_event(ref, call.id, ev.Chunk(payload, first_index))
            if not call.subscribers:
                self._lost_reader(call)

        def failed(exc: BaseException) -> None:
            self._store_failed(call, exc, f"chunk {first_index}")
        self.rows.add_chunk(call, first_index, payload, on_commit=deliver, on_fail=failed)

    def _load_chunks(self, call: Call) -> list[Chunk]:
        return self.rows.chunks(call.id)
