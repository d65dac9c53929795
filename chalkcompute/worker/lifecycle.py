"""A class method's replica: build the instance, run ``@before`` once, ``@after`` at the end.

The worker serves one method of a ``@chalkcompute.cls`` class (its bundle's function name
is ``"{Class}.{method}"``). Before it grants the daemon any credit (so before the daemon
counts it ready, and before any call reaches it)::

    replica = ClassReplica.load(bundle, dest, served="Embedder", make_remote=make_remote)
    handler = replica.start()      # Class(), then @before; a failure ends the process (exit 3)
    ... serve handler ...
    replica.stop()                 # @after, once, at most AFTER_LIMIT_SECONDS

A failing ``__init__`` or ``@before`` prints its traceback and, as the last line of the
replica's output, ``chalkcompute: @before Class.hook failed: Type: message``: the daemon
keeps that output's tail as the reason the method failed (shown by ``wait_ready``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from chalkcompute import _code

log = logging.getLogger(__name__)

AFTER_LIMIT_SECONDS = 30.0
BEFORE_FAILED_EXIT = 3


def _call_hook(bound: Callable[[], Any]) -> None:
    result = bound()
    if inspect.isawaitable(result):  # an async hook runs on a loop of its own
        asyncio.run(_await(result))


async def _await(awaitable: Any) -> None:
    await awaitable


class ClassReplica:
    """The instance one replica serves, and its hooks (see the module docstring)."""

    def __init__(self, klass: type, class_name: str, method: str) -> None:
        from chalkcompute.classes import roles  # the worker imports the SDK lazily (startup time)

        self.klass, self.class_name, self.method = klass, class_name, method
        found = roles(klass)
        self.before = found["before"][0] if found["before"] else None
        self.after = found["after"][0] if found["after"] else None
        self.instance: Any = None
        self._stopping = False

    @classmethod
    def load(cls, bundle: _code.CodeBundleData, dest: str, *, served: str,
             make_remote: Callable[[str], object]) -> ClassReplica:
        """``served``: the class's registered name (``name=`` of ``@cls``, else the class's own)."""
        from chalkcompute.classes import SERVING_ENV

        class_name, _, method = bundle.function_name.partition(".")
        os.environ[SERVING_ENV] = served  # its @cls, met again in an imported module, is a no-op
        klass = _code.load_bundle(dataclasses.replace(bundle, function_name=class_name), dest,
                                  make_remote=make_remote)
        if not isinstance(klass, type):
            raise TypeError(f"the bundle's {class_name!r} is not a class")
        return cls(klass, class_name, method)

    def start(self) -> Callable[..., Any]:
        """The zero-argument ``__init__``, then ``@before``; returns the bound method to serve."""
        where = f"{self.class_name}.__init__"
        try:
            self.instance = self.klass()
            if self.before is not None:
                where = f"@before {self.class_name}.{self.before}"
                _call_hook(getattr(self.instance, self.before))
        except BaseException as exc:  # noqa: BLE001 - any failure here fails the replica, with its reason
            traceback.print_exc()
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(f"chalkcompute: {where} failed: {last}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(BEFORE_FAILED_EXIT)
        return getattr(self.instance, self.method)

    def pool_runners(self, function_ids: list[str], *, target: str, replica_id: str, token: str,
                     canceller: Any) -> list[Any]:
        """A pooled replica (``shared_replicas=True``): a link and a runner for each other method
        of the class, on the instance ``start()`` built, so one @before serves them all."""
        from chalkcompute._serialization import FunctionCodec
        from chalkcompute.worker.batchcall import BatchSettings
        from chalkcompute.worker.link import DaemonLink
        from chalkcompute.worker.runner import Runner

        runners = []
        for function_id in function_ids:
            link = DaemonLink(target, replica_id, token, function_id=function_id)
            version = link.connect()
            method = version.spec.code.function_name.partition(".")[2]
            fn = getattr(self.instance, method)
            batched = version.spec.batching.max_batch_size > 0
            runners.append(Runner(fn, FunctionCodec.for_function(fn, batched=batched), link,
                                  capacity=max(1, version.spec.concurrency.max_concurrent), batched=batched,
                                  canceller=canceller, settings=BatchSettings.of(version)))
        return runners

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Run ``@after`` once (later calls return at once), for at most AFTER_LIMIT_SECONDS."""
        if self._stopping:
            return
        self._stopping = True
        if self.after is None or self.instance is None:
            return
        hook = getattr(self.instance, self.after)
        done = threading.Event()

        def run() -> None:
            try:
                _call_hook(hook)
            except BaseException:  # noqa: BLE001 - reported; the replica stops anyway
                log.exception("@after %s.%s failed", self.class_name, self.after)
                traceback.print_exc()
            finally:
                done.set()

        # A thread: the limit holds even if the hook blocks; the process exits after it either way.
        threading.Thread(target=run, name="chalk-after", daemon=True).start()
        if not done.wait(AFTER_LIMIT_SECONDS):
            print(f"chalkcompute: @after {self.class_name}.{self.after} did not finish within "
                  f"{AFTER_LIMIT_SECONDS:g}s; the replica stops anyway", file=sys.stderr, flush=True)

    def on_sigterm(self) -> None:
        """SIGTERM (scale-down, delete, daemon stop): run ``@after`` and exit; ignored while it runs."""
        if self._stopping:
            return
        self.stop()
        os._exit(0)
