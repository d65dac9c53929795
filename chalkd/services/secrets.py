"""The ``Secrets`` service: set, list and delete secrets and integrations.

    chalkd secret set OPENAI_API_TOKEN          # value from stdin
    chalkd secret list
    chalkd integration set prod_postgres HOST=db.internal PASSWORD=...
    chalkd integration list

Values come in and never go out: listings carry names, keys and times only.
Values reach a replica through the worker's channel, not through this service.
"""

from __future__ import annotations

import logging

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import SecretsBase
from chalkd.secrets.store import IntegrationMeta, SecretMeta, SecretStore
from chalkd.services.errors import grpc_errors

log = logging.getLogger(__name__)

__all__ = ["SecretsService"]


def _secret_pb(m: SecretMeta) -> pb.SecretInfo:
    return pb.SecretInfo(name=m.name, created_at=m.created_at, updated_at=m.updated_at)


def _integration_pb(m: IntegrationMeta) -> pb.IntegrationInfo:
    return pb.IntegrationInfo(name=m.name, keys=list(m.keys), created_at=m.created_at, updated_at=m.updated_at)


class SecretsService(SecretsBase):
    # The store's InvalidSecret and SecretNotFound are answered by the error table (chalkd.services.errors).
    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets

    @grpc_errors
    async def SetSecret(self, stream) -> None:
        req: pb.SetSecretRequest = await stream.recv_message()
        created = self.secrets.set(req.name, req.value)
        # Answer once it is durable: a deploy right after `secret set` must find it after a crash too.
        await self.secrets.store.flush()
        await stream.send_message(pb.SetSecretResponse(info=_secret_pb(self.secrets.get_meta(req.name)),
                                                       created=created))

    @grpc_errors
    async def ListSecrets(self, stream) -> None:
        await stream.recv_message()
        await stream.send_message(pb.ListSecretsResponse(secrets=[_secret_pb(m) for m in self.secrets.list()]))

    @grpc_errors
    async def DeleteSecret(self, stream) -> None:
        req: pb.DeleteSecretRequest = await stream.recv_message()
        self.secrets.delete(req.name)
        await self.secrets.store.flush()
        await stream.send_message(pb.DeleteSecretResponse())

    @grpc_errors
    async def SetIntegration(self, stream) -> None:
        req: pb.SetIntegrationRequest = await stream.recv_message()
        created = self.secrets.set_integration(req.name, dict(req.values))
        await self.secrets.store.flush()
        await stream.send_message(pb.SetIntegrationResponse(
            info=_integration_pb(self.secrets.get_integration_meta(req.name)), created=created))

    @grpc_errors
    async def ListIntegrations(self, stream) -> None:
        await stream.recv_message()
        await stream.send_message(pb.ListIntegrationsResponse(
            integrations=[_integration_pb(m) for m in self.secrets.list_integrations()]))

    @grpc_errors
    async def DeleteIntegration(self, stream) -> None:
        req: pb.DeleteIntegrationRequest = await stream.recv_message()
        self.secrets.delete_integration(req.name)
        await self.secrets.store.flush()
        await stream.send_message(pb.DeleteIntegrationResponse())
