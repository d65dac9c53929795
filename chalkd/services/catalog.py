"""FunctionCatalog: register, look up, list, delete and wait for function versions."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogBase
from chalkd.catalog import Catalog, InvalidFunction, NotFound
from chalkd.queue.core import Queue, decode_error
from chalkd.runtime.base import ReplicaStartError, Runtime, RuntimeUnsupported
from chalkd.scaling.autoscaler import Autoscaler
from chalkd.services.convert import content_hash, spec_settings, version_to_pb

log = logging.getLogger(__name__)


class CatalogService(FunctionCatalogBase):
    def __init__(self, catalog: Catalog, queue: Queue, scaler: Autoscaler, runtime: Runtime, info: dict) -> None:
        self.catalog = catalog
        self.queue = queue
        self.scaler = scaler
        self.runtime = runtime
        self.info = info

    def _pb(self, fv, with_spec: bool = True) -> pb.FunctionVersion:
        ready, total = self.scaler.counts(fv)
        return version_to_pb(fv, ready=ready, replicas=total, with_spec=with_spec)

    def _get(self, name: str = "", id: str = ""):
        try:
            return self.catalog.get(name=name, id=id)
        except NotFound as exc:
            raise GRPCError(Status.NOT_FOUND, str(exc)) from None
        except InvalidFunction as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None

    async def RegisterFunction(self, stream) -> None:
        req: pb.RegisterFunctionRequest = await stream.recv_message()
        spec = req.spec
        self._validate(spec)
        try:
            self.runtime.check(spec.SerializeToString())
        except RuntimeUnsupported as exc:
            raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
        try:
            fv, created = self.catalog.register(
                spec_settings(spec), content_hash=content_hash(spec), spec=spec.SerializeToString(),
            )
        except InvalidFunction as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        await self.catalog.store.flush()
        if created:
            log.info("registered %s version %d (%s)", fv.name, fv.version, fv.id)
        self.scaler.notify()
        await stream.send_message(pb.RegisterFunctionResponse(function=self._pb(fv), created=created))

    def _validate(self, spec: pb.FunctionSpec) -> None:
        def bad(msg: str) -> None:
            raise GRPCError(Status.INVALID_ARGUMENT, msg)

        if spec.serialization_format not in ("", "pyarrow"):
            bad(f"serialization_format {spec.serialization_format!r} is not supported: only 'pyarrow' is")
        if spec.min_replicas < 0:
            bad(f"min_replicas must be >= 0, got {spec.min_replicas}")
        if spec.max_replicas < 1:
            bad(f"max_replicas must be >= 1, got {spec.max_replicas}")
        if spec.min_replicas > spec.max_replicas:
            bad(f"min_replicas ({spec.min_replicas}) is greater than max_replicas ({spec.max_replicas})")
        if spec.suspend_cooldown_seconds < 0:
            bad(f"suspend_cooldown_period must be >= 0, got {spec.suspend_cooldown_seconds:g}")
        host = self.scaler.host
        if spec.resources.cpu_millis > host.cpu_millis:
            bad(f"cpu request {spec.resources.cpu_millis}m exceeds this host's {host.cpu_millis}m "
                f"({host.cpu_millis // 1000} cores)")
        if spec.resources.memory_bytes > host.memory_bytes:
            bad(f"memory request {spec.resources.memory_bytes} bytes exceeds this host's "
                f"{host.memory_bytes} bytes ({host.memory_bytes / 2**30:.1f} GiB)")
        if not spec.code.module_source or not spec.code.function_name:
            bad("the function spec carries no code")

    async def GetFunction(self, stream) -> None:
        req: pb.GetFunctionRequest = await stream.recv_message()
        fv = self._get(req.name, req.id)
        await stream.send_message(pb.GetFunctionResponse(function=self._pb(fv)))

    async def ListFunctions(self, stream) -> None:
        req: pb.ListFunctionsRequest = await stream.recv_message()
        fns = [self._pb(fv, with_spec=False) for fv in self.catalog.list(include_old=req.include_old_versions)]
        await stream.send_message(pb.ListFunctionsResponse(functions=fns))

    async def DeleteFunction(self, stream) -> None:
        req: pb.DeleteFunctionRequest = await stream.recv_message()
        fv = self._get(id=req.id)
        self.catalog.delete(fv.id)
        self.scaler.function_deleted(fv)
        await self.catalog.store.flush()
        await stream.send_message(pb.DeleteFunctionResponse())

    async def WaitReady(self, stream) -> None:
        req: pb.WaitReadyRequest = await stream.recv_message()
        fv = self._get(id=req.id)
        timeout = req.timeout if req.timeout > 0 else 120.0
        try:
            await self.scaler.wait_ready(fv, timeout)
        except ReplicaStartError:
            pass  # the response carries state "failed" and the reason
        except asyncio.TimeoutError as exc:
            raise GRPCError(Status.DEADLINE_EXCEEDED, str(exc)) from None
        await stream.send_message(pb.WaitReadyResponse(function=self._pb(fv)))

    async def ListCalls(self, stream) -> None:
        req: pb.ListCallsRequest = await stream.recv_message()
        limit = req.limit or 50
        sql = "SELECT c.*, f.name AS fname FROM calls c LEFT JOIN functions f ON f.id = c.function_id"
        params: tuple = ()
        if req.function_name:
            sql += " WHERE f.name = ?"
            params = (req.function_name,)
        sql += " ORDER BY c.seq DESC LIMIT ?"
        await self.catalog.store.flush()
        rows = self.catalog.store.query(sql, params + (limit,))
        calls = []
        for r in rows:
            live = self.queue.calls.get(r["id"])
            state = live.state.value if live else r["state"]
            calls.append(pb.CallInfo(
                id=r["id"], function_id=r["function_id"], function_name=r["fname"] or "", state=state,
                attempt=live.attempt if live else r["attempt"], chunks=live.next_index if live else r["chunks"],
                created_at=r["created_at"], finished_at=r["finished_at"] or 0.0, parent_id=r["parent_id"] or "",
                error=(live.error.message if live and live.error else "") or _error_text(r["error"]),
            ))
        await stream.send_message(pb.ListCallsResponse(calls=calls))

    async def Status(self, stream) -> None:
        await stream.recv_message()
        queued, running = self.queue.counts()
        await stream.send_message(pb.StatusResponse(
            version=self.info["version"], home=self.info["home"], runtime=self.runtime.name,
            functions=len(self.catalog.latest), replicas=len(self.scaler.replicas),
            calls_queued=queued, calls_running=running, calls_total=self.queue.total_submitted,
            uptime_seconds=time.monotonic() - self.info["started"], durability=self.info["durability"],
            pid=os.getpid(), fast_socket=self.info["fast_socket"], instance_id=self.info["instance_id"],
        ))



def _error_text(blob: bytes | None) -> str:
    if not blob:
        return ""
    err = decode_error(blob)
    return f"{err.exception_type.rsplit('.', 1)[-1]}: {err.message}"
