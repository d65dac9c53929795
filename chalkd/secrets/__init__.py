"""Secrets and integrations the daemon keeps and injects as env vars (see :mod:`chalkd.secrets.store`).

    secrets = SecretStore(store)
    secrets.set("OPENAI_API_TOKEN", "sk-...")
    secrets.resolve(spec.secrets, fv.id)     # -> {"OPENAI_API_TOKEN": "sk-..."}
"""

from chalkd.secrets.store import (
    IntegrationMeta,
    InvalidSecret,
    SecretMeta,
    SecretNotFound,
    SecretStore,
    check_env_name,
    check_integration_name,
)

__all__ = [
    "IntegrationMeta",
    "InvalidSecret",
    "SecretMeta",
    "SecretNotFound",
    "SecretStore",
    "check_env_name",
    "check_integration_name",
]
