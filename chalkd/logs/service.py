"""``Logs.Read`` (what ``chalkd logs`` and ``FunctionCall.logs()`` call), and the live relay of lines to callers.

A read names one call (its lines, from the store), a function (every
version's calls, optionally one replica's) or a replica alone (its whole
output file, which also holds what was written below Python). With
``follow``, new lines stream until the caller leaves, or, for a call, until
the call has finished. Replicas' scoped credentials cannot call it (it is not
in :data:`chalkd.auth.REPLICA_METHODS`): a handler reads no one's logs::

    service = LogsService(store, queue, catalog, replica_logs=home / "logs" / "replicas")
    service.on_worker_lines(fv, replica_id, req.logs)    # WorkerService, for each worker message
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from chalkcompute._contract import quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import LogsBase
from chalkd.catalog import Catalog
from chalkd.errors import InvalidArgument, NotFound
from chalkd.logs.store import LogStore
from chalkd.queue.core import CallNotFound, Queue
from chalkd.services.errors import grpc_errors

log = logging.getLogger(__name__)

LINES_PER_MESSAGE = 1000
FOLLOW_POLL_SECONDS = 0.5    # how often a follow of a call looks whether the call has finished
REPLICA_FILE_TAIL_BYTES = 8 << 20  # a replica's output file is read from at most this far back
EXEC = 4  # LogLine.stream of a sandbox's or container's exec record
MAX_FOLLOW_QUEUE = 10_000  # lines waiting for one follower; past it they are dropped (counted)


class LogsService(LogsBase):
    def __init__(self, store: LogStore, queue: Queue, catalog: Catalog, *, replica_logs: Path,
                 containers=None, sandboxes=None) -> None:
        self.containers = containers  # chalkd.containers.manager.ContainerManager (Docker runtime), or None
        self.sandboxes = sandboxes    # chalkd.sandboxes.manager.SandboxManager (Docker runtime), or None
        self.store = store
        self.queue = queue
        self.catalog = catalog
        self.replica_logs = replica_logs

    # -- from the worker streams (event loop) ------------------------------------------------------

    def on_worker_lines(self, function_id: str, function_name: str, replica_id: str,
                        lines: Iterable[pb.LogLine]) -> None:
        """Store a worker's lines and send them on, live, to the sessions of their calls that asked.

        A line names only calls running on the replica that sent it: another call's id (a forged
        line, or one that came after its call ended) is dropped from it, and a line left with no
        call is the replica's own. Nothing here writes anything but the handler's text."""
        calls = self.queue.calls
        own: list[pb.LogLine] = []
        for line in lines:
            ids = [cid for cid in line.call_ids if (c := calls.get(cid)) is not None and c.replica_id == replica_id]
            if len(ids) != len(line.call_ids):
                del line.call_ids[:]
                line.call_ids.extend(ids)
            if not line.relayed:
                own.append(line)
            for cid in ids:
                call = calls[cid]
                if not call.subscribers:
                    continue
                for sub, ref in list(call.subscribers.items()):
                    send = getattr(sub, "send_logs", None)
                    if send is not None and getattr(sub, "live_logs", False):
                        out = pb.LogLine(ts=line.ts, stream=line.stream, text=line.text,
                                         function_name=line.function_name or function_name)
                        send(ref, cid, out)
        if own:
            self.store.append(function_id, replica_id, own)

    def record_exec(self, kind: str, object_id: str, text: str) -> None:
        """Keep one line about an exec in a sandbox or container (``kind``: "sandboxes", "containers")."""
        self.store.append(kind, object_id, [pb.LogLine(ts=time.time(), stream=EXEC, text=text)])

    # -- Logs.Read ------------------------------------------------------------------------------------

    @grpc_errors
    async def Read(self, stream) -> None:
        req: pb.ReadLogsRequest = await stream.recv_message()
        if req.tail < 0:
            raise InvalidArgument(f"tail must be 0 (all) or more, got {req.tail}")
        if req.object_id:
            await self._read_object(stream, req)
        elif req.call_id:
            await self._read_call(stream, req)
        elif req.function_name:
            versions = [fv for fv in self.catalog.by_id.values() if fv.name == req.function_name]
            if not versions:
                raise NotFound(f"no function named {quote(req.function_name)}: deploy it first (is the name right?)")
            if req.build:
                await self._read_build(stream, req, max(versions, key=lambda fv: fv.version))
                return
            await self._read_store(stream, req, [fv.id for fv in versions])
        elif req.build:
            raise InvalidArgument("build logs are a function's: name the function")
        elif req.replica_id:
            await self._read_replica_file(stream, req)
        else:
            raise InvalidArgument("name a call id, a function or a replica")

    async def _read_call(self, stream, req: pb.ReadLogsRequest) -> None:
        try:
            self.queue.get(req.call_id)
        except CallNotFound:
            raise NotFound(f"no call {quote(req.call_id)} (unknown, or its record has expired)") from None
        await self._read_store(stream, req, None)

    async def _read_store(self, stream, req: pb.ReadLogsRequest, versions: list[str] | None) -> None:
        versions_set = set(versions) if versions is not None else None
        live: asyncio.Queue[pb.LogLine] = asyncio.Queue()
        dropped = [0]  # lines a slow follower missed (the queue is bounded; the store has them)

        def follow(version_id: str, replica_id: str, lines: list[pb.LogLine]) -> None:
            if versions_set is not None and version_id not in versions_set:
                return
            if req.replica_id and replica_id != req.replica_id:
                return
            for line in lines:
                if line.relayed or (req.call_id and req.call_id not in line.call_ids):
                    continue
                if live.qsize() >= MAX_FOLLOW_QUEUE:
                    dropped[0] += 1
                    continue
                out = pb.LogLine()
                out.CopyFrom(line)
                out.replica_id = replica_id
                live.put_nowait(out)

        if req.follow:  # before the read: a line written meanwhile is in one or the other (or both: skipped)
            self.store.followers.append(follow)
        try:
            rows = await asyncio.to_thread(self.store.read, call_id=req.call_id, version_ids=versions,
                                           replica_id=req.replica_id, since=req.since, tail=req.tail)
            seen = {(r.ts, r.text) for r in rows if rows and r.ts == rows[-1].ts}
            last = rows[-1].ts if rows else 0.0
            for i in range(0, len(rows), LINES_PER_MESSAGE):
                await stream.send_message(pb.ReadLogsResponse(lines=[r.to_pb() for r in rows[i:i + LINES_PER_MESSAGE]]))
            if not req.follow:
                return
            await stream.send_message(pb.ReadLogsResponse())  # history sent: a follower knows it is live now
            while True:
                try:
                    line = await asyncio.wait_for(live.get(), FOLLOW_POLL_SECONDS)
                except TimeoutError:
                    if req.call_id and req.call_id not in self.queue.calls:
                        return  # the call has finished: nothing more comes
                    continue
                batch = [line]
                while not live.empty():
                    batch.append(live.get_nowait())
                batch = [x for x in batch if x.ts > last or (x.ts == last and (x.ts, x.text) not in seen)]
                if dropped[0]:
                    batch.append(pb.LogLine(ts=batch[-1].ts if batch else last, stream=2,
                                            text=f"[chalkd: {dropped[0]} lines dropped: this reader fell behind; "
                                                 "read them again without -f]"))
                    dropped[0] = 0
                if batch:
                    await stream.send_message(pb.ReadLogsResponse(lines=batch))
        finally:
            if req.follow:
                self.store.followers.remove(follow)

    async def _read_object(self, stream, req: pb.ReadLogsRequest) -> None:
        """A sandbox's or container's entrypoint output (the engine's log) and its exec records, by time."""
        oid = req.object_id
        if req.follow:
            raise InvalidArgument(f"following {quote(oid)} is not supported yet: read it again instead")
        if oid.startswith("sb-"):
            kind, manager = "sandboxes", self.sandboxes
        elif oid.startswith("ct-"):
            kind, manager = "containers", self.containers
        else:
            raise InvalidArgument(f"not a sandbox (sb-...) or container (ct-...) id: {quote(oid)}")
        if manager is None:
            raise NotFound(f"no {kind} here: this daemon runs the process runtime")
        try:
            rec = manager.get(id=oid)
        except Exception as exc:  # noqa: BLE001 - the manager's own not-found, whatever its type
            raise NotFound(f"no {kind[:-1]} {quote(oid)} ({exc})") from None
        lines = await _engine_log(manager.docker, rec.engine_name, req.since)
        lines += [r.to_pb() for r in await asyncio.to_thread(self.store.read, version_ids=[kind], replica_id=oid,
                                                              since=req.since)]
        lines.sort(key=lambda x: x.ts)
        if req.tail > 0:
            lines = lines[-req.tail:]
        for i in range(0, len(lines), LINES_PER_MESSAGE):
            await stream.send_message(pb.ReadLogsResponse(lines=lines[i:i + LINES_PER_MESSAGE]))

    async def _read_build(self, stream, req: pb.ReadLogsRequest, fv) -> None:
        """The build log of a function version's image (``<home>/logs/builds/<image hash>.log``: every build
        of that image, appended; the Docker builder keys it by the image's identity, the process runtime's
        environment builder by its content hash)."""
        from chalkd.specs import image_identity

        builds = self.replica_logs.parent / "builds"
        names = []
        with contextlib.suppress(ValueError):
            names.append(image_identity(fv.spec.image))
        names.append(fv.spec.image.content_hash or "default")
        path = next((builds / f"{n}.log" for n in names if n and (builds / f"{n}.log").exists()), None)
        if path is None:
            raise NotFound(f"no build log for {fv.name} v{fv.version}: its image was never built by this daemon "
                           "(or its log was removed)")
        _, lines = await asyncio.to_thread(_tail_file, path, req.tail)
        for i in range(0, len(lines), LINES_PER_MESSAGE):
            await stream.send_message(pb.ReadLogsResponse(
                lines=[pb.LogLine(text=t) for t in lines[i:i + LINES_PER_MESSAGE]]))

    async def _read_replica_file(self, stream, req: pb.ReadLogsRequest) -> None:
        """A replica's whole output (its runtime's file): the handler's lines and all written below Python."""
        rid = req.replica_id
        if "/" in rid or rid.startswith(".") or not rid:
            raise InvalidArgument(f"not a replica id: {quote(rid)}")
        path = self.replica_logs / f"{rid}.log"
        if not path.exists():
            raise NotFound(f"no output of replica {quote(rid)} (unknown, or never wrote anything)")
        offset, lines = await asyncio.to_thread(_tail_file, path, req.tail)
        for i in range(0, len(lines), LINES_PER_MESSAGE):
            await stream.send_message(pb.ReadLogsResponse(
                lines=[pb.LogLine(text=t, replica_id=rid) for t in lines[i:i + LINES_PER_MESSAGE]]))
        if not req.follow:
            return
        await stream.send_message(pb.ReadLogsResponse())
        partial = b""
        while True:  # no end of its own: the caller leaves (the file stays after the replica ends)
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
            data, offset = await asyncio.to_thread(_read_from, path, offset)
            if not data:
                continue
            data, _, partial = (partial + data).rpartition(b"\n")
            if data:
                text = data.decode(errors="replace").split("\n")
                await stream.send_message(pb.ReadLogsResponse(lines=[pb.LogLine(text=t, replica_id=rid)
                                                                     for t in text]))


async def _engine_log(docker, engine_name: str, since: float) -> list[pb.LogLine]:
    """The entrypoint's output as the engine kept it (its own log), timestamped; [] once the container is gone."""
    from aiodocker.exceptions import DockerError

    try:
        container = await docker.containers.get(engine_name)
        raw = await container.log(stdout=True, stderr=True, timestamps=True, since=int(since))
    except DockerError:
        return []
    out = []
    for entry in "".join(raw).splitlines():
        stamp, _, text = entry.partition(" ")
        out.append(pb.LogLine(ts=_rfc3339(stamp), stream=1, text=text))
    return out


def _rfc3339(stamp: str) -> float:
    """Docker's ``2026-12-05T20:36:00.123456789Z`` as unix seconds (0.0 if it is not one)."""
    try:
        whole, _, frac = stamp.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
    except ValueError:
        return 0.0


def _tail_file(path: Path, tail: int) -> tuple[int, list[str]]:
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - REPLICA_FILE_TAIL_BYTES))
        data = f.read()
    text = data.decode(errors="replace")
    if size > REPLICA_FILE_TAIL_BYTES:
        text = text.partition("\n")[2]  # a line cut by the start of the window
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return size, lines[-tail:] if tail > 0 else lines


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(4 << 20)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
