"""FunctionCatalog: register, look up, list, delete and wait for function versions."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

from chalkcompute._contract import quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogBase
from chalkcompute.gpu import GpuRequest
from chalkd.auth import current_scope
from chalkd.catalog import Catalog, InvalidFunction, validate_name
from chalkd.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from chalkd.images.blobs import check_lazy_files
from chalkd.queue.core import CallNotFound, Queue
from chalkd.queue.limits import PERIOD_SECONDS
from chalkd.queue.storage import decode_error
from chalkd.runtime.base import ReplicaStartError, Runtime
from chalkd.scaling.autoscaler import Autoscaler
from chalkd.scaling.capacity import gpu_floor_refusal, methods_with_own_replicas
from chalkd.services.convert import (
    content_hash,
    decode_function,
    decode_secrets,
    key_local_digests,
    version_to_pb,
)
from chalkd.services.errors import grpc_errors

log = logging.getLogger(__name__)


class CatalogService(FunctionCatalogBase):
    def __init__(self, catalog: Catalog, queue: Queue, scaler: Autoscaler, runtime: Runtime, info: dict,
                 secrets=None,
                 replica_owns: Callable[[str, str], bool] = lambda replica_id, call_id: False) -> None:
        self.secrets = secrets  # chalkd.secrets.store.SecretStore
        # (replica id, call id) -> did that replica start the call (the server passes QueueService.owns).
        self.replica_owns = replica_owns
        self.catalog = catalog
        self.queue = queue
        self.scaler = scaler
        self.runtime = runtime
        self.info = info

    def _pb(self, fv, with_spec: bool = True) -> pb.FunctionVersion:
        ready, total = self.scaler.counts(fv)
        msg = version_to_pb(fv, ready=ready, replicas=total, with_spec=with_spec)
        scaling = self.scaler.status(fv)
        msg.desired_replicas = scaling.desired
        msg.scaling_decision = scaling.decision
        msg.scaling_decision_at = scaling.decision_at
        # A version that failed or went waits for nothing.
        msg.waiting = "" if fv.failed or fv.deleted else scaling.waiting
        return msg

    def _get(self, name: str = "", id: str = ""):
        return self.catalog.get(name=name, id=id)  # NotFound, InvalidFunction: rows of the error table

    @grpc_errors
    async def RegisterFunction(self, stream) -> None:
        req: pb.RegisterFunctionRequest = await stream.recv_message()
        spec = req.spec
        self._validate(spec)
        fs = decode_function(spec)  # what the domain reads from here on
        check_lazy_files(fs.image)  # before anything is stored or built from it (LazyFileError: INVALID_ARGUMENT)
        self.runtime.check(fs)  # RuntimeUnsupported: FAILED_PRECONDITION
        if spec.secrets:
            try:
                self.secrets.check(fs.secrets, set(req.local_secrets))
            except LookupError as exc:  # a secret not defined (yet): the daemon's state, not the request
                raise FailedPrecondition(str(exc)) from None
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            key_local_digests(spec, req.local_secrets, self.secrets.digest)  # clients read specs back
            fs = replace(fs, secrets=decode_secrets(spec.secrets))  # with the keyed digests, as stored
        try:
            fv, created = self.catalog.register(fs, content_hash=content_hash(spec), wire=spec.SerializeToString())
        except InvalidFunction as exc:
            raise InvalidArgument(str(exc)) from None
        if req.local_secrets:
            # Stored under the version, apart from its spec (which clients can read back).
            self.secrets.set_owned(fv.id, dict(req.local_secrets))
        self.queue.limits.register(fv)
        self.queue.limits_changed()  # a raised cap or rate may let waiting calls through
        await self.catalog.store.flush()
        if created:
            log.info("registered %s version %d (%s)", fv.name, fv.version, fv.id)
        self.scaler.notify()
        await stream.send_message(pb.RegisterFunctionResponse(function=self._pb(fv), created=created))

    def _validate(self, spec: pb.FunctionSpec) -> None:
        def bad(msg: str) -> None:
            raise InvalidArgument(msg)

        validate_name(spec.name)  # first (length, then the rule): the messages below quote the name
        if spec.serialization_format not in ("", "pyarrow"):
            bad(f"serialization_format {quote(spec.serialization_format)} is not supported: only 'pyarrow' is")
        if spec.min_replicas < 0:
            bad(f"min_replicas must be >= 0, got {spec.min_replicas}")
        if spec.max_replicas < 1:
            bad(f"max_replicas must be >= 1, got {spec.max_replicas}")
        if spec.min_replicas > spec.max_replicas:
            bad(f"min_replicas ({spec.min_replicas}) is greater than max_replicas ({spec.max_replicas})")
        if spec.suspend_cooldown_seconds < 0:
            bad(f"suspend_cooldown_period must be >= 0, got {spec.suspend_cooldown_seconds:g}")
        host = self.scaler.host
        # On a swarm the nodes' sizes count, not this host's: Swarm says when no node has room (wait_ready).
        on_one_host = not getattr(self.runtime, "places_replicas", False)
        if on_one_host and spec.resources.cpu_millis > host.cpu_millis:
            bad(f"cpu request {spec.resources.cpu_millis}m exceeds this host's {host.cpu_millis}m "
                f"({host.cpu_millis // 1000} cores)")
        if on_one_host and spec.resources.memory_bytes > host.memory_bytes:
            bad(f"memory request {spec.resources.memory_bytes} bytes exceeds this host's "
                f"{host.memory_bytes} bytes ({host.memory_bytes / 2**30:.1f} GiB)")
        # The process runtime refuses gpu= (its check says so) unless a fake inventory was given.
        if spec.resources.gpu and (self.runtime.name in ("docker", "swarm") or self.scaler.gpus.devices):
            try:
                want = GpuRequest.parse(spec.resources.gpu)
            except (TypeError, ValueError) as exc:
                bad(str(exc))
            reason = self.scaler.gpus.unschedulable_reason(want) or gpu_floor_refusal(
                want, min_replicas=spec.min_replicas, gpus=self.scaler.gpus,
                methods=methods_with_own_replicas(spec.replica_pool, spec.replica_pool_size))
            if reason:
                raise FailedPrecondition(f"function {spec.name!r} is unschedulable: {reason}")
        if not spec.code.module_source or not spec.code.function_name:
            bad("the function spec carries no code")
        self._validate_policies(spec, bad)

    def _validate_policies(self, spec: pb.FunctionSpec, bad) -> None:
        if spec.HasField("retries"):
            r = spec.retries
            if r.max_retries < 0 or r.initial_wait_seconds < 0 or r.max_wait_seconds < 0 or r.backoff_multiplier < 1:
                bad(f"invalid retry policy for {spec.name!r}: attempts and waits must be >= 0, multiplier >= 1")
        if spec.HasField("rate_limit"):
            if not spec.rate_limit.rate > 0:
                bad(f"rate_limit rate must be positive, got {spec.rate_limit.rate:g}")
            if spec.rate_limit.per not in PERIOD_SECONDS:
                bad(f"rate_limit per must be second, minute or hour, got {spec.rate_limit.per!r}")
        if spec.rate_limit_key and spec.rate_limit_key not in self.queue.limits.named:
            raise FailedPrecondition(
                f"rate_limit_key {spec.rate_limit_key!r} names no rate limit defined in this daemon; define it "
                f"with `chalkd rate-limit set {spec.rate_limit_key} --rate N --per minute`")
        if spec.concurrency.max_concurrent < 0:
            bad(f"concurrency max_concurrent must be >= 1, got {spec.concurrency.max_concurrent}")
        qp = spec.queue_policy
        if spec.HasField("queue_policy") and (qp.max_items < 0 or qp.result_ttl_seconds < 0):
            bad("queue_policy max_items and result_ttl_seconds must be positive")
        if spec.batching.max_batch_size < 0 or spec.batching.max_buffer_seconds < 0:
            bad("max_batching_size and max_buffer_duration must be >= 0")
        if spec.batching.max_batch_size and spec.is_generator:
            bad(f"{spec.name!r} is a generator: a generator function cannot be batched")
        if spec.timeout_seconds < 0:
            bad(f"timeout must be positive, got {spec.timeout_seconds:g}")

    @grpc_errors
    async def GetFunction(self, stream) -> None:
        req: pb.GetFunctionRequest = await stream.recv_message()
        fv = self._get(req.name, req.id)
        await stream.send_message(pb.GetFunctionResponse(function=self._pb(fv)))

    @grpc_errors
    async def ListFunctions(self, stream) -> None:
        req: pb.ListFunctionsRequest = await stream.recv_message()
        fns = [self._pb(fv, with_spec=False) for fv in self.catalog.list(include_old=req.include_old_versions)]
        await stream.send_message(pb.ListFunctionsResponse(functions=fns))

    @grpc_errors
    async def DeleteFunction(self, stream) -> None:
        req: pb.DeleteFunctionRequest = await stream.recv_message()
        fv = self._get(id=req.id)
        self.catalog.delete(fv.id)
        self.scaler.function_deleted(fv)
        if self.secrets is not None:
            self.secrets.delete_owned(fv.id)
        await self.catalog.store.flush()
        await stream.send_message(pb.DeleteFunctionResponse())

    @grpc_errors
    async def WaitReady(self, stream) -> None:
        req: pb.WaitReadyRequest = await stream.recv_message()
        fv = self._get(id=req.id)
        timeout = req.timeout if req.timeout > 0 else 120.0
        try:
            await self.scaler.wait_ready(fv, timeout)
        except ReplicaStartError:
            pass  # the response carries state "failed" and the reason
        except TimeoutError as exc:
            raise DeadlineExceeded(str(exc)) from None
        await stream.send_message(pb.WaitReadyResponse(function=self._pb(fv)))

    @grpc_errors
    async def ListCalls(self, stream) -> None:
        req: pb.ListCallsRequest = await stream.recv_message()
        limit = req.limit or 50
        rows = await self.queue.rows.list_recent(req.function_name, limit)
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

    @grpc_errors
    async def GetCall(self, stream) -> None:
        req: pb.GetCallRequest = await stream.recv_message()
        scope = current_scope.get()
        if scope is not None and scope.replica_id and not self.replica_owns(scope.replica_id, req.call_id):
            raise PermissionDenied(f"replica {scope.replica_id}'s credential cannot read call "
                                   f"{req.call_id!r}: function code may only follow the calls it started")
        try:
            call = self.queue.get(req.call_id)
        except CallNotFound:
            raise NotFound(f"call {req.call_id!r} not found (unknown, or its result expired)") from None
        await stream.send_message(pb.GetCallResponse(call=pb.CallInfo(
            id=call.id, function_id=call.function.id, function_name=call.function.name, state=call.state.value,
            attempt=call.attempt, chunks=call.next_index, created_at=call.created_at,
            finished_at=call.finished_at or 0.0, parent_id=call.parent_id or "",
            error=f"{call.error.exception_type.rsplit('.', 1)[-1]}: {call.error.message}" if call.error else "",
        )))

    @grpc_errors
    async def Status(self, stream) -> None:
        await stream.recv_message()
        queued, running = self.queue.counts()
        await stream.send_message(pb.StatusResponse(
            version=self.info["version"], home=self.info["home"], runtime=self.runtime.name,
            functions=len(self.catalog.latest), replicas=len(self.scaler.replicas),
            calls_queued=queued, calls_running=running, calls_total=self.queue.total_submitted,
            uptime_seconds=time.monotonic() - self.info["started"], durability=self.info["durability"],
            pid=os.getpid(), fast_socket=self.info["fast_socket"], instance_id=self.info["instance_id"],
            http_port=self.info.get("http_port") or 0,
        ))



def _error_text(blob: bytes | None) -> str:
    if not blob:
        return ""
    err = decode_error(blob)
    return f"{err.exception_type.rsplit('.', 1)[-1]}: {err.message}"
