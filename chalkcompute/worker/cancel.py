"""Cancellation of sync handlers: an exception raised in the thread that runs them.

A coroutine is cancelled with ``task.cancel()``; a sync handler has no such
hook, so the worker raises :class:`CallCancelled` inside the thread running it
(``PyThreadState_SetAsyncExc``). The exception lands at the handler's next
Python bytecode; a handler blocked in C (``time.sleep``, a socket read, a long
numpy call) sees it when that call returns, except on the main thread, where a
no-op signal (``SIGURG``, see :meth:`Canceller.install_interrupt`) cuts such
waits short. One swallowed by a garbage-collector callback is raised again
(:meth:`Canceller.catch_swallowed`). A handler that never returns to Python
code is not stopped here: the daemon kills its replica after a grace period.

``CallCancelled`` derives from ``BaseException`` on purpose: the common
``except Exception:`` in user code does not swallow it by accident. A handler
that wants to clean up catches it (or uses ``finally``) and re-raises::

    def handler(x):
        try:
            return slow(x)
        except CallCancelled:
            release_resources()
            raise

Race freedom: :meth:`Canceller.cancel` raises into a thread only while the
named attempt is registered as running there, checked under one lock; the
thread unregisters under the same lock *inside* the ``try`` that catches the
exception and drops any exception still pending, so none can escape into
whatever that thread runs next (the worker's own loop, another attempt)::

    canceller = Canceller()
    # in the thread that runs the handler:
    value = canceller.call(("call-1", 1), fn, x=1)    # raises CallCancelled when cancelled
    # from any other thread:
    canceller.cancel(("call-1", 1))                    # True if it was running
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

log = logging.getLogger(__name__)
_get_ident = threading.get_ident

Key = Hashable  # (call_id, attempt) of one attempt, or a tuple of them for a batch
DOOMED_LIMIT = 4096  # cancels remembered for attempts that have not started (or never will)
INTERRUPT_SIGNAL = signal.SIGURG  # ignored by default, so a stray one does no harm
INTERRUPT_RETRIES = (0.01, 0.05, 0.25, 1.0)  # seconds between re-sent signals
SWALLOWED_RETRY_SECONDS = 0.01  # before raising again a CallCancelled that a callback swallowed


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> int:
    """Raise ``exc`` in thread ``ident`` at its next bytecode; None drops one still pending."""
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), None if exc is None else ctypes.py_object(exc))


class CallCancelled(BaseException):
    """Raised inside a sync handler when its call is cancelled.

    A ``BaseException`` (like ``KeyboardInterrupt``), so ``except Exception``
    does not catch it; catch it by name to clean up, then re-raise. A handler
    that swallows it and returns normally has its result reported as usual
    (the daemon drops results of attempts it abandoned).
    """


class _Entry:
    __slots__ = ("ident", "signalled", "cleared")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.signalled = False  # an async exception was set for this run (at most one)
        self.cleared = False    # ... and whatever of it was still pending has been dropped


class _Group:
    __slots__ = ("key", "size", "cancelled")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.size = len(key)
        self.cancelled: set = set()


class Canceller:
    """Which attempt runs on which thread, and the one lock that makes cancelling it safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Key, _Entry] = {}
        # Cancels that came before their attempt started: it raises at once when it does.
        self._doomed: OrderedDict[Key, None] = OrderedDict()
        self._groups: dict[Key, _Group] = {}  # item key -> its batch
        self._interrupt_main = False
        self._main_ident = threading.main_thread().ident
        self.started = 0  # attempts entered so far; the blocking link's monitor watches it

    @property
    def running(self) -> int:
        """How many attempts run now."""
        return len(self._running)

    def install_interrupt(self) -> Callable[[], None]:
        """Let a cancel also cut short a blocking wait (sleep, socket read) on the main thread.

        Installs a no-op ``SIGURG`` handler; a cancel of an attempt running on
        the main thread then sends that signal (again a few times while the
        attempt runs), so the interrupted system call runs the handler, which
        raises the pending exception. Call it from the main thread
        (``signal.signal`` requires it). Returns a function that undoes it.
        """
        previous = signal.signal(INTERRUPT_SIGNAL, _ignore)
        self._interrupt_main = True

        def undo() -> None:
            self._interrupt_main = False
            signal.signal(INTERRUPT_SIGNAL, previous)
        return undo

    def catch_swallowed(self) -> Callable[[], None]:
        """Raise CallCancelled again when Python swallowed it on the way.

        An exception that lands in a weakref callback, a ``__del__`` or another
        callback the garbage collector runs is not propagated: Python reports
        it through ``sys.unraisablehook`` and the handler goes on. This hook
        notices and has the exception raised once more while the cancelled
        attempt still runs (from another thread, a moment later: raised inside
        the hook, it would be swallowed again). Returns a function that undoes it.
        """
        previous = sys.unraisablehook

        def hook(unraisable) -> None:
            if unraisable.exc_type is CallCancelled and self._swallowed(threading.get_ident()):
                return
            previous(unraisable)

        sys.unraisablehook = hook

        def undo() -> None:
            if sys.unraisablehook is hook:
                sys.unraisablehook = previous
        return undo

    def _swallowed(self, ident: int) -> bool:
        # No lock: the collector may run this in a thread that holds it. The copy
        # is atomic, and _raise_again checks again under the lock.
        found = next(((k, e) for k, e in list(self._running.items())
                      if e.ident == ident and e.signalled and not e.cleared), None)
        if found is None:
            return False
        threading.Thread(target=self._raise_again, args=found, name="chalk-cancel", daemon=True).start()
        return True

    def _raise_again(self, key: Key, entry: _Entry) -> None:
        time.sleep(SWALLOWED_RETRY_SECONDS)  # the callback that swallowed it is long over by then
        with self._lock:
            if self._running.get(key) is entry and not entry.cleared:
                _set_async_exc(entry.ident, CallCancelled)
                if self._interrupt_main and entry.ident == self._main_ident:
                    signal.pthread_kill(entry.ident, INTERRUPT_SIGNAL)

    # -- batches ---------------------------------------------------------------------------

    def group(self, keys: Sequence[Key]) -> tuple:
        """Register a batch's item keys; returns the key of the whole invocation.

        A cancel of one item stops the invocation only once every item of it has
        been cancelled: the others still want their results.
        """
        group = _Group(tuple(keys))
        with self._lock:
            for k in group.key:
                self._groups[k] = group
        return group.key

    def ungroup(self, group_key: tuple) -> None:
        with self._lock:
            for k in group_key:
                g = self._groups.get(k)
                if g is not None and g.key == group_key:
                    del self._groups[k]

    def resolve(self, key: Key) -> Key | None:
        """What a cancel of ``key`` stops: the attempt itself, its batch's invocation
        once every item of it is cancelled, or None while other items still run."""
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                return key
            group.cancelled.add(key)
            return group.key if len(group.cancelled) >= group.size else None

    # -- running and cancelling -----------------------------------------------------------

    def call(self, key: Key, fn: Callable, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on this thread as attempt ``key``.

        Raises :class:`CallCancelled` if the attempt is cancelled while it runs
        (or was cancelled before it started, in which case ``fn`` is not called).
        """
        entry = _Entry(_get_ident())
        try:
            try:
                with self._lock:  # inside the try: a cancel right after it lands there
                    if key in self._doomed:
                        del self._doomed[key]
                        raise CallCancelled
                    self._running[key] = entry
                    self.started += 1
                return fn(*args, **kwargs)
            finally:
                self._leave(key, entry)
        except CallCancelled:
            # The exception may have landed inside the first _leave: finish it
            # (idempotent). Nothing can be raised into this thread any more.
            self._leave(key, entry)
            raise

    def _leave(self, key: Key, entry: _Entry) -> None:
        with self._lock:
            if self._running.get(key) is entry:
                del self._running[key]
            if entry.signalled and not entry.cleared:
                entry.cleared = True
                # Drop the exception if it has not been delivered yet: from here on
                # this thread runs the worker's code, not the attempt's.
                _set_async_exc(entry.ident, None)

    def cancel(self, key: Key, *, remember: bool = True) -> bool:
        """Stop attempt (or batch invocation) ``key``; True if it was running.

        A running one gets :class:`CallCancelled` raised in its thread (once);
        one that has not started yet is remembered, and raises as it starts.
        """
        with self._lock:
            entry = self._running.get(key)
            if entry is None and not remember:
                return False
            if entry is None:
                self._doomed[key] = None
                if len(self._doomed) > DOOMED_LIMIT:  # cancels of attempts that already ended
                    self._doomed.popitem(last=False)
                return False
            if entry.signalled:
                return True
            entry.signalled = True
            if _set_async_exc(entry.ident, CallCancelled) != 1:  # the thread is gone
                log.warning("could not raise CallCancelled in thread %s", entry.ident)
                return False
            interrupt = self._interrupt_main and entry.ident == self._main_ident
            if interrupt:
                signal.pthread_kill(entry.ident, INTERRUPT_SIGNAL)
        if interrupt:
            # A signal that lands just before the thread enters its blocking call
            # interrupts nothing: send it again a few times while the attempt
            # still runs (cancels are rare; the thread is cheap).
            threading.Thread(target=self._interrupt_again, args=(key, entry),
                             name="chalk-cancel", daemon=True).start()
        return True

    def _interrupt_again(self, key: Key, entry: _Entry) -> None:
        for delay in INTERRUPT_RETRIES:
            time.sleep(delay)
            with self._lock:
                if self._running.get(key) is not entry:
                    return
                signal.pthread_kill(entry.ident, INTERRUPT_SIGNAL)

    def interrupt(self, key: Key) -> bool:
        """Like :meth:`cancel`, but only while ``key`` runs: nothing is remembered for a later
        start (a batch row's timeout must not cut short the row after it)."""
        return self.cancel(key, remember=False)

    def cancel_item(self, key: Key) -> bool:
        """A cancel from the daemon for one attempt: :meth:`resolve`, then :meth:`cancel`."""
        target = self.resolve(key)
        return target is not None and self.cancel(target)


def _ignore(signum, frame) -> None:
    """Runs only to let a pending CallCancelled surface out of a blocking call."""
