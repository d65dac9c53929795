"""Policies: the daemon-defined rate limits functions name with ``rate_limit_key``.

    chalkd rate-limit set provider-api-limit --rate 100 --per minute
    chalkd rate-limit list
    chalkd rate-limit delete provider-api-limit
"""

from __future__ import annotations

from chalkcompute._contract import name_too_long, quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import PoliciesBase
from chalkcompute.policies import KEY_RE
from chalkd.catalog import Catalog
from chalkd.errors import FailedPrecondition, InvalidArgument, NotFound
from chalkd.queue.limits import LimitError, Limits
from chalkd.services.errors import grpc_errors


class PoliciesService(PoliciesBase):
    def __init__(self, limits: Limits, catalog: Catalog, queue) -> None:
        self.limits = limits
        self.catalog = catalog
        self.queue = queue

    def _used_by(self, name: str) -> list[str]:
        return sorted({fv.name for fv in self.catalog.by_id.values()
                       if not fv.deleted and fv.policies.rate_limit_key == name})

    @grpc_errors
    async def SetRateLimit(self, stream) -> None:
        req: pb.SetRateLimitRequest = await stream.recv_message()
        lim = req.limit
        too_long = name_too_long("rate limit name", lim.name)  # first: nothing below reads a long name
        if too_long:
            raise InvalidArgument(too_long)
        if not KEY_RE.match(lim.name):
            raise InvalidArgument(
                f"invalid rate limit name {quote(lim.name)}: use 1-128 letters, digits, '_', '-', '.' or ':'")
        try:
            limit, created = self.limits.set_named(lim.name, lim.rate, lim.per or "second")
        except LimitError as exc:  # a bad definition here; a limit still in use on delete
            raise InvalidArgument(str(exc)) from None
        self.queue.limits_changed()
        await self.limits.store.flush()
        await stream.send_message(pb.SetRateLimitResponse(
            limit=pb.RateLimit(name=limit.name, rate=limit.rate, per=limit.per, used_by=self._used_by(limit.name)),
            created=created))

    @grpc_errors
    async def ListRateLimits(self, stream) -> None:
        await stream.recv_message()
        limits = [pb.RateLimit(name=n.name, rate=n.rate, per=n.per, used_by=self._used_by(n.name))
                  for n in sorted(self.limits.named.values(), key=lambda n: n.name)]
        await stream.send_message(pb.ListRateLimitsResponse(limits=limits))

    @grpc_errors
    async def DeleteRateLimit(self, stream) -> None:
        req: pb.DeleteRateLimitRequest = await stream.recv_message()
        try:
            self.limits.delete_named(req.name, self._used_by(req.name))
        except KeyError:
            raise NotFound(f"no rate limit named {quote(req.name)}") from None
        except LimitError as exc:
            raise FailedPrecondition(str(exc)) from None
        await self.limits.store.flush()
        await stream.send_message(pb.DeleteRateLimitResponse())
