"""What the dashboard shows, read from the running daemon's in-process objects into plain dataclasses.

The pages (:mod:`chalkd.web.pages`) know these rows and nothing of the daemon's internals; this module
is the one place that reads the catalog, queue, autoscaler, volume/secret stores and the sandbox and
scaling-group managers for the dashboard (the way the gRPC services read them). Nothing here returns
an argument's, result's or secret's value: arguments appear as their shapes (column, Arrow type, rows,
bytes), secrets by name only.

    model = ReadModel(server)                       # server: the running chalkd.server.Server
    model.functions()                               # [FunctionRow(name="add", version=1, ...)]
    await model.recent_calls(limit=20)              # [CallRow(id="fc-...", state="succeeded", ...)]
    await model.call("fc-0640a1...")                # CallDetail, or None when unknown
    model.replica_log_tail("r-3f9a...", lines=200)  # the replica's log (its whole output), last lines
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Ids as the daemon makes them (chalkd.model.new_id / new_time_id): anything else is not looked up.
REPLICA_ID_RE = re.compile(r"^r-[0-9a-f]{6,40}$")
CALL_ID_RE = re.compile(r"^fc-[0-9a-f]{6,40}$")
SANDBOX_ID_RE = re.compile(r"^sb-[0-9A-Za-z]{3,40}$")
# A log tail reads at most this many bytes from the end of the file (a chatty replica's log is large).
TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class ReplicaRow:
    id: str
    state: str               # starting | ready | stopping | stopped
    age_s: float
    gpus: tuple[str, ...]
    has_log: bool
    node: str = ""           # the swarm node it runs on ("" on one machine)


@dataclass(frozen=True)
class FunctionRow:
    id: str
    name: str
    version: int
    latest: bool
    ready: int
    replicas: int
    desired: int
    min_replicas: int
    max_replicas: int
    queued: int
    running: int
    resources: str            # "500m CPU, 512 MiB, gpu 1:nvidia-a100"
    decision: str
    waiting: str
    failed: str
    replica_rows: tuple[ReplicaRow, ...] = ()


@dataclass(frozen=True)
class CallRow:
    id: str
    function: str
    state: str
    attempt: int
    created_at: float
    finished_at: float
    error: str
    parent_id: str

    @property
    def open(self) -> bool:
        return self.state in ("queued", "running", "streaming")


@dataclass(frozen=True)
class ArgShape:
    """One argument's shape: its name, Arrow type, rows, the bytes it takes and, for sized values
    (lists, strings, bytes, maps), the length of each row's value. Never the value."""

    name: str
    type: str
    rows: int
    nbytes: int
    lengths: tuple[int, ...] = ()


@dataclass(frozen=True)
class CallDetail:
    row: CallRow
    function_id: str
    function_version: int
    failures: int
    chunks: int
    batch_rows: int                     # 0: one input
    args: tuple[ArgShape, ...]
    args_note: str                      # why the shapes are missing, when they are
    args_bytes: int
    error_type: str
    error_code: str
    error_message: str
    traceback: str
    running_for_s: float | None         # the current attempt, while it runs
    replica_id: str                     # the replica running it (or that returned its result); "" unknown
    log_replicas: tuple[str, ...]       # whose logs the page shows (see CallDetail.log_note)
    log_note: str


@dataclass(frozen=True)
class VolumeRow:
    name: str
    size_bytes: int
    file_count: int
    updated_at: float


@dataclass(frozen=True)
class SecretRow:
    name: str
    updated_at: float


@dataclass(frozen=True)
class SandboxRow:
    id: str
    name: str
    status: str
    message: str
    created_at: float
    expires_at: float
    resources: str
    live: bool


@dataclass(frozen=True)
class GroupRow:
    id: str
    name: str
    status: str
    message: str
    url: str
    revision: int
    desired: int
    replicas: tuple[tuple[str, str], ...]   # (replica id, state)


@dataclass(frozen=True)
class GpuRow:
    index: str
    name: str
    memory: str
    uuid: str
    owner: str


@dataclass(frozen=True)
class Overview:
    version: str
    runtime: str
    uptime_s: float
    functions: int
    replicas: int
    queued: int
    running: int
    submitted: int
    sandboxes_available: bool
    groups_available: bool
    notes: list[str] = field(default_factory=list)


def _resources(cpu_millis: int, memory_bytes: int, gpu: str) -> str:
    parts = []
    if cpu_millis:
        parts.append(f"{cpu_millis}m CPU")
    if memory_bytes:
        parts.append(f"{memory_bytes / 2**20:.0f} MiB")
    if gpu:
        parts.append(f"gpu {gpu}")
    return ", ".join(parts) or "default"


def arg_shapes(schema: bytes, batch: bytes) -> tuple[ArgShape, ...]:
    """The shapes of an Arrow IPC argument payload (one column per parameter), values left unread.

    >>> import pyarrow as pa
    >>> b = pa.record_batch([pa.array([[1, 2, 3]]), pa.array(["secret"])], names=["xs", "s"])
    >>> [(a.name, a.type, a.rows, a.lengths) for a in arg_shapes(b.schema.serialize().to_pybytes(),
    ...                                                           b.serialize().to_pybytes())]
    [('xs', 'list<item: int64>', 1, (3,)), ('s', 'string', 1, (6,))]
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    sch = pa.ipc.read_schema(pa.py_buffer(schema))
    rb = pa.ipc.read_record_batch(pa.py_buffer(batch), sch)
    shapes = []
    for name, col in zip(rb.schema.names, rb.columns, strict=True):
        lengths: tuple[int, ...] = ()
        t = col.type
        sized = (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_string(t)
                 or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
                 or pa.types.is_map(t) or pa.types.is_fixed_size_list(t))
        if sized and len(col) <= 16:  # a batch call's many rows: only their count
            if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t) \
                    or pa.types.is_fixed_size_list(t):
                lens = pc.list_value_length(col)
            else:
                lens = pc.binary_length(col)
            lengths = tuple(int(v) if v is not None else 0 for v in lens.to_pylist())
        shapes.append(ArgShape(name, str(t), len(col), col.nbytes, lengths))
    return tuple(shapes)


class ReadModel:
    """See the module docstring. ``server`` is the running :class:`chalkd.server.Server`; every method
    reads it at call time (on the event loop, like the gRPC services)."""

    def __init__(self, server: Any) -> None:
        self.server = server

    # -- the daemon ---------------------------------------------------------------------

    @property
    def runtime_name(self) -> str:
        runtime = getattr(self.server, "runtime", None)
        return getattr(runtime, "name", "?")

    def overview(self) -> Overview:
        import chalkd

        s = self.server
        queued, running = s.queue.counts()
        return Overview(
            version=chalkd.__version__, runtime=self.runtime_name, uptime_s=time.monotonic() - s.started,
            functions=len(s.catalog.latest), replicas=len(s.scaler.replicas), queued=queued, running=running,
            submitted=s.queue.total_submitted, sandboxes_available=s.sandboxes is not None,
            groups_available=s.groups is not None,
        )

    # -- functions and replicas ----------------------------------------------------------

    def _replicas_of(self, function_id: str) -> list[Any]:
        out = []
        for r in list(self.server.scaler.replicas.values()):
            serves = getattr(r, "serves", None) or (r.function,)
            if any(fv.id == function_id for fv in serves):
                out.append(r)
        return sorted(out, key=lambda r: r.created_at)

    def _replica_row(self, r: Any, now: float) -> ReplicaRow:
        gpus = tuple(r.gpu_uuids)
        task = getattr(r.handle, "state", None)  # a swarm replica: its node and the GPUs Swarm gave it
        node = getattr(task, "node_name", "") or ""
        if task is not None and not gpus:
            gpus = tuple(g.split("=", 1)[1] for g in getattr(task, "generic", ()) if g.startswith("gpu="))
        return ReplicaRow(id=r.id, state=r.state, age_s=now - r.created_at, gpus=gpus,
                          has_log=self.replica_log_path(r.id) is not None, node=node)

    def functions(self, *, include_old: bool = True, with_replicas: bool = True) -> list[FunctionRow]:
        """Every live version; ``with_replicas=False`` leaves out the replica rows (no file system look)."""
        s = self.server
        now = time.monotonic()
        rows = []
        for fv in s.catalog.list(include_old=include_old):
            ready, total = s.scaler.counts(fv)
            status = s.scaler.status(fv)
            rows.append(FunctionRow(
                id=fv.id, name=fv.name, version=fv.version, latest=fv.latest, ready=ready, replicas=total,
                desired=status.desired, min_replicas=fv.min_replicas, max_replicas=fv.max_replicas,
                queued=s.queue.waiting(fv.id), running=s.queue.inflight(fv.id),
                resources=_resources(fv.cpu_millis, fv.memory_bytes, fv.gpu), decision=status.decision,
                waiting="" if fv.failed else status.waiting, failed=fv.failed,
                replica_rows=tuple(self._replica_row(r, now) for r in self._replicas_of(fv.id)) if with_replicas
                else (),
            ))
        return rows

    def function(self, name: str) -> list[FunctionRow]:
        """Every live version of ``name``, newest first ([] when there is none)."""
        return sorted((f for f in self.functions() if f.name == name), key=lambda f: -f.version)

    # -- calls ---------------------------------------------------------------------------

    async def recent_calls(self, function_name: str = "", limit: int = 30) -> list[CallRow]:
        """The newest calls (the store's rows, their live state laid over), as ``chalkd calls`` lists them."""
        from chalkd.services.catalog import _error_text

        q = self.server.queue
        out = []
        for r in await q.rows.list_recent(function_name, limit):
            live = q.calls.get(r["id"])
            error = (live.error.message if live is not None and live.error else "") or _error_text(r["error"])
            out.append(CallRow(
                id=r["id"], function=r["fname"] or "", state=live.state.value if live else r["state"],
                attempt=live.attempt if live else r["attempt"], created_at=r["created_at"],
                finished_at=r["finished_at"] or 0.0, error=error, parent_id=r["parent_id"] or ""))
        return out

    async def call(self, call_id: str) -> CallDetail | None:
        """A call's detail, or None when the id is malformed or unknown (expired)."""
        from chalkd.queue.core import CallNotFound

        if not CALL_ID_RE.match(call_id):
            return None
        q = self.server.queue
        await self.server.store.flush()  # a call submitted a moment ago has its row
        try:
            call = q.get(call_id)
        except CallNotFound:
            return None
        fv = call.function
        err = call.error
        row = CallRow(id=call.id, function=fv.name, state=call.state.value, attempt=call.attempt,
                      created_at=call.created_at, finished_at=call.finished_at or 0.0,
                      error=f"{err.exception_type.rsplit('.', 1)[-1]}: {err.message}" if err else "",
                      parent_id=call.parent_id or "")
        args, note, nbytes = self._args_of(call)
        running_for = None
        if call.state.value in ("running", "streaming") and call.dispatched_at:
            running_for = max(0.0, time.monotonic() - call.dispatched_at)
        replica_id = call.replica_id or call.ran_on or ""
        if replica_id:
            log_replicas: tuple[str, ...] = (replica_id,)
            log_note = f"the log of replica {replica_id}, which ran this call's latest attempt"
        else:
            # A call read back from the store (finished a while ago, or before a restart) has no replica
            # recorded, and nothing records per-call output yet: the version's replicas' logs are the best there is.
            log_replicas = tuple(r.id for r in self._replicas_of(fv.id))
            if log_replicas:
                log_note = ("which replica ran this call is not recorded (it finished a while ago, or before a "
                            "restart): these are the logs of this function version's current replicas")
            else:
                log_note = ("which replica ran this call is not recorded, and this function version has no "
                            "replica now")
        batch_rows = getattr(call.batch, "rows", 0) if call.batch is not None else 0
        return CallDetail(
            row=row, function_id=fv.id, function_version=fv.version, failures=call.failures,
            chunks=call.next_index, batch_rows=batch_rows, args=args, args_note=note, args_bytes=nbytes,
            error_type=err.exception_type if err else "", error_code=err.code.value if err else "",
            error_message=err.message if err else "", traceback=err.traceback if err else "",
            running_for_s=running_for, replica_id=replica_id, log_replicas=log_replicas, log_note=log_note)

    def _args_of(self, call: Any) -> tuple[tuple[ArgShape, ...], str, int]:
        payload = call.args
        if payload is None:
            try:
                payload = self.server.queue.rows.args(call.id)
            except Exception as exc:  # noqa: BLE001 - the page still shows the rest
                log.warning("dashboard: reading call %s's arguments failed: %r", call.id, exc)
                return (), "the arguments could not be read from the store", 0
        if payload is None or payload.schema is None or payload.batch is None:
            return (), "the arguments are no longer kept (the call finished and its row was trimmed)", 0
        try:
            return arg_shapes(payload.schema, payload.batch), "", payload.size
        except Exception as exc:  # noqa: BLE001 - not Arrow the dashboard can read: say so, show no bytes
            return (), f"the arguments' shapes could not be read ({type(exc).__name__})", payload.size

    def cancel_call(self, call_id: str) -> str:
        """Cancel an open call; the text says what happened (it was not open, or it is cancelled)."""
        q = self.server.queue
        call = q.calls.get(call_id) if CALL_ID_RE.match(call_id) else None
        if call is None:
            return f"call {call_id} is not running or queued: nothing to cancel"
        q.cancel(call_id, reason="cancelled from the dashboard")
        log.info("dashboard: cancelled call %s of %s", call_id, call.function.name)
        return f"call {call_id} cancelled"

    # -- replica logs --------------------------------------------------------------------

    def call_lines(self, call_id: str, lines: int = 200) -> list[str]:
        """The last ``lines`` lines the call itself wrote (print, stderr, logging), from the log store
        (call it off the loop: it reads segment files)."""
        store = getattr(self.server, "log_store", None)
        if store is None or not CALL_ID_RE.match(call_id):
            return []
        return [r.text for r in store.read(call_id=call_id, tail=lines)]

    def replica_log_path(self, replica_id: str) -> Path | None:
        """``<home>/logs/replicas/<id>.log`` (both runtimes write a replica's output there), if it exists."""
        if not REPLICA_ID_RE.match(replica_id):
            return None
        path = Path(self.server.home) / "logs" / "replicas" / f"{replica_id}.log"
        return path if path.is_file() else None

    def replica_log_tail(self, replica_id: str, lines: int = 200) -> tuple[list[str], int] | None:
        """The last ``lines`` lines of a replica's log and the file's size (where a live tail starts),
        or None when there is no such log. Reads at most :data:`TAIL_BYTES` (call it off the loop)."""
        path = self.replica_log_path(replica_id)
        if path is None:
            return None
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - TAIL_BYTES)
            f.seek(start)
            data = f.read(size - start)
        text = data.decode("utf-8", "replace").splitlines()
        if start > 0 and text:
            text = text[1:]  # the first line is cut
        return text[-lines:], size

    # -- volumes, secrets, sandboxes, groups, GPUs -------------------------------------------

    def volumes(self) -> list[VolumeRow]:
        return [VolumeRow(v.name, v.size_bytes, v.file_count, v.updated_at) for v in self.server.volumes.list()]

    def secrets(self) -> list[SecretRow]:
        """Names and times only: the store's metadata rows, never a value."""
        return [SecretRow(m.name, m.updated_at) for m in self.server.secrets.list()]

    def integrations(self) -> list[tuple[str, tuple[str, ...], float]]:
        """Integrations: (name, key names, updated); never a value."""
        return [(m.name, tuple(m.keys), m.updated_at) for m in self.server.secrets.list_integrations()]

    def sandboxes(self) -> list[SandboxRow] | None:
        """None on the process runtime (it has no sandboxes)."""
        mgr = self.server.sandboxes
        if mgr is None:
            return None
        return [SandboxRow(id=r.id, name=r.name, status=r.status, message=r.status_message,
                           created_at=r.created_at, expires_at=r.expires_at,
                           resources=_resources(r.cpu_millis, r.memory_bytes, r.gpu), live=r.live)
                for r in mgr.list()]

    async def terminate_sandbox(self, sandbox_id: str) -> str:
        mgr = self.server.sandboxes
        if mgr is None:
            return "this daemon runs the process runtime: it has no sandboxes"
        if not SANDBOX_ID_RE.match(sandbox_id):
            return f"no sandbox {sandbox_id}"
        try:
            rec = await mgr.terminate(sandbox_id, reason="terminated from the dashboard")
        except Exception as exc:  # noqa: BLE001 - NotFound and friends: their message is the answer
            return f"sandbox {sandbox_id}: {exc}"
        log.info("dashboard: terminated sandbox %s", sandbox_id)
        return f"sandbox {rec.id} terminated"

    def groups(self) -> list[GroupRow] | None:
        mgr = self.server.groups
        if mgr is None:
            return None
        out = []
        for g in mgr.list():
            out.append(GroupRow(
                id=g.rec.id, name=g.rec.name, status=g.rec.status, message=g.rec.status_message,
                url=mgr.web_url(g), revision=g.rec.revision, desired=g.desired,
                replicas=tuple((r.id, r.state) for r in list(g.replicas.values()))))
        return out

    def gpus(self) -> list[GpuRow]:
        return [GpuRow(**d) for d in self.server.scaler.gpus.describe()]
