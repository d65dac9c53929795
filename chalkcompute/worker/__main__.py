"""Entry point of a replica: ``python -m chalkcompute.worker``.

Reads ``CHALK_WORKER_TARGET``, ``CHALK_REPLICA_ID`` and ``CHALK_REPLICA_KEY_FILE``
from the environment (the runtime sets them). The function version then says
the rest: its capacity
(``spec.concurrency.max_concurrent``, at least 1) and whether it is batched
(``spec.batching.max_batch_size`` > 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile

from chalkcompute import _code
from chalkcompute._serialization import FunctionCodec
from chalkcompute.worker.batchcall import BatchSettings
from chalkcompute.worker.blocking import BlockingLink, serve_blocking
from chalkcompute.worker.cancel import Canceller
from chalkcompute.worker.link import DaemonLink, exit_after_grace
from chalkcompute.worker.output import OutputCapture
from chalkcompute.worker.runner import Runner

log = logging.getLogger("chalkcompute.worker")


def main() -> int:
    logging.basicConfig(level=os.environ.get("CHALK_WORKER_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s worker: %(message)s")
    try:
        target = os.environ["CHALK_WORKER_TARGET"]
        replica_id = os.environ["CHALK_REPLICA_ID"]
        key_file = os.environ["CHALK_REPLICA_KEY_FILE"]  # a read-only file, never the key in the env
    except KeyError as exc:
        print(f"chalkcompute.worker: {exc.args[0]} is not set; the worker is started by chalkd", file=sys.stderr)
        return 2
    try:
        with open(key_file) as f:
            token = f.read().strip()
    except OSError as exc:
        print(f"chalkcompute.worker: cannot read the replica key {key_file}: {exc}", file=sys.stderr)
        return 2
    sock, instance = os.environ.get("CHALK_WORKER_SOCKET"), os.environ.get("CHALK_DAEMON_INSTANCE", "")
    canceller = Canceller()
    # A cancel of a handler on the main thread also cuts its sleeps and blocking reads short,
    # and a CallCancelled swallowed by a garbage-collector callback is raised again.
    canceller.install_interrupt()
    canceller.catch_swallowed()
    blocking = None
    if sock and os.environ.get("CHALK_FUNCTION_KIND") == "sync" and os.environ.get("CHALK_TRANSPORT") != "grpc":
        # A plain sync handler on this machine: no event loop on the hot path.
        blocking = BlockingLink(sock, instance, replica_id, token, canceller)
        try:
            version = blocking.connect()
        except (OSError, ConnectionError) as exc:
            log.warning("cannot use chalkd's socket %s (%s); using the event-loop link", sock, exc)
            blocking = None
    if blocking is None:
        link = DaemonLink(target, replica_id, token)
        version = link.connect()
    # What handlers print and log goes to their call too (and on to the replica's log, as before);
    # installed before the function's module is imported, so its loggers and prints are seen.
    capture = OutputCapture()
    if blocking is not None:
        blocking.capture, capture.poke = capture, blocking.wake
    else:
        link.capture, capture.poke = capture, link.poke_logs
    capture.install()
    code = version.spec.code
    bundle = _code.CodeBundleData(
        module_source=code.module_source, function_name=code.function_name,
        files=dict(code.files), remote_refs=dict(code.remote_refs), module=code.module,
    )
    from chalkcompute.functions import RemoteFunction

    # The runtime names a directory it removes when the replica ends (the worker leaves through
    # os._exit, and may be killed: it cannot clean up after itself); else a temp dir.
    dest = os.environ.get("CHALK_WORKER_CODE_DIR") or tempfile.mkdtemp(prefix=f"chalk-{version.function_name}-")
    replica = None
    if "." in code.function_name:  # "{Class}.{method}": a @chalkcompute.cls method, with its hooks
        from chalkcompute.classes import make_remote
        from chalkcompute.worker.lifecycle import ClassReplica

        replica = ClassReplica.load(bundle, dest, served=version.function_name.rpartition(".")[0],
                                    make_remote=make_remote)
        fn = replica.start()  # __init__ and @before, before any credit: the daemon counts it ready after
    elif any(ref.startswith("class:") for ref in bundle.remote_refs.values()):  # it uses a class
        from chalkcompute.classes import make_remote

        fn = _code.load_bundle(bundle, dest, make_remote=make_remote)
    else:
        fn = _code.load_bundle(bundle, dest, make_remote=RemoteFunction._lazy)
    capacity = max(1, version.spec.concurrency.max_concurrent)
    batched = version.spec.batching.max_batch_size > 0
    # The same per-item codec the SDK built for its callers.
    codec = FunctionCodec.for_function(fn, batched=batched)
    if blocking is not None:
        signal.signal(signal.SIGTERM, lambda *_: replica.on_sigterm() if replica else os._exit(0))
        reason = serve_blocking(blocking, fn, codec, capacity=capacity, settings=BatchSettings.of(version))
        if replica is not None:
            replica.stop()  # @after, whichever way serving ended
        if reason.startswith("lost the daemon"):
            exit_after_grace(reason)
        blocking.close()
        os._exit(0)
    runner = Runner(fn, codec, link, capacity=capacity, batched=batched, canceller=canceller,
                    settings=BatchSettings.of(version))
    # A class with shared_replicas: this replica serves its other methods too, a stream each.
    others = replica.pool_runners(link.pool_function_ids, target=target, replica_id=replica_id, token=token,
                                  canceller=canceller) if replica is not None and link.pool_function_ids else []

    loop_factory = None
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass

    async def serve() -> str:
        loop = asyncio.get_running_loop()
        everyone = [runner, *others]
        # A runner not started yet has nothing to stop (it has no stop event before run()).
        loop.add_signal_handler(signal.SIGTERM, lambda: [r._stop("SIGTERM") for r in everyone
                                                         if hasattr(r, "stopped")])
        if not others:
            return await runner.run()
        # Pooled: when one stream ends (drain, SIGTERM, the daemon lost), the replica stops serving all.
        tasks = [loop.create_task(r.run()) for r in everyone]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        reason = next(iter(done)).result()
        for r in everyone:
            if hasattr(r, "stopped"):
                r._stop(reason)
        await asyncio.gather(*tasks, return_exceptions=True)
        return reason

    if runner.plain_sync and not others:
        signal.signal(signal.SIGTERM, lambda *_: link.on_lost("SIGTERM"))
        reason = runner.run_sync_handlers()
    else:
        with asyncio.Runner(loop_factory=loop_factory) as r:
            reason = r.run(serve())
    if replica is not None:
        replica.stop()
    if reason.startswith("lost the daemon"):
        exit_after_grace(reason)
    for other in others:
        other.link.close()
    link.close()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
