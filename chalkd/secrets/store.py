"""Secrets and integrations kept by the daemon, and their resolution into env vars.

Three kinds of stored values, all in the daemon's SQLite database (a file only
the daemon's user can read, see :meth:`chalkd.store.db.Store.open_sync`):

- user secrets (``chalkd secret set NAME``): one value per name;
- integrations (``chalkd integration set NAME KEY=VALUE...``): a named group of keys;
- owned secrets: the values of ``Secret.from_local_env`` / ``from_local_env_file``
  read by the SDK at deploy, stored under the function version (``fv-…``) or
  container (``ct-…``) that sent them and removed with it.

::

    secrets = SecretStore(store)                      # store: an opened chalkd.store.db.Store
    secrets.set("OPENAI_API_TOKEN", "sk-...")         # -> True (created)
    secrets.set_integration("prod_postgres", {"HOST": "db", "PASSWORD": "pw"})
    secrets.set_owned("fv-1a2b", {"LOCAL_KEY": "v"})
    refs = [SimpleNamespace(kind="name", name="OPENAI_API_TOKEN", alias="", prefix="MY_", keys=[], aliases={}),
            SimpleNamespace(kind="integration", name="prod_postgres", alias="", prefix="PG_",
                            keys=["HOST"], aliases={}),
            SimpleNamespace(kind="local", name="", alias="", prefix="", keys=["LOCAL_KEY"], aliases={})]
    secrets.check(refs, {"LOCAL_KEY"})                # at deploy: names only, no values read
    secrets.resolve(refs, "fv-1a2b")
    # -> {"MY_OPENAI_API_TOKEN": "sk-...", "PG_HOST": "db", "LOCAL_KEY": "v"}

``refs`` are anything with the fields of ``chalk.v1.SecretRef`` (the protobuf
message itself, in the daemon); this module does not import protobuf.

Values are held in memory as well as in the database: writes go through the
store's group commit, so a read straight after a write (``set_owned`` then
``resolve`` in one request) must not depend on the commit having happened.

Values never appear in a log line or an error message: errors name secrets,
integrations, keys and env vars, never what they hold.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets as _random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chalkcompute._contract import ENV_NAME_RE, INTEGRATION_NAME_RE, name_too_long, quote
from chalkd.store.db import Store

log = logging.getLogger(__name__)

__all__ = [
    "ENV_NAME_RE",
    "INTEGRATION_NAME_RE",
    "IntegrationMeta",
    "InvalidSecret",
    "MAX_VALUE_BYTES",
    "SecretMeta",
    "SecretNotFound",
    "SecretStore",
    "check_env_name",
    "check_integration_name",
]

# ENV_NAME_RE and INTEGRATION_NAME_RE: the rules the SDK checks too (chalkcompute._contract).
# Linux refuses a single environment string over 128 KiB (MAX_ARG_STRLEN) when a
# process is exec'd; half of that leaves room for the name and keeps the limit round.
MAX_VALUE_BYTES = 64 * 1024
KINDS = ("name", "integration", "local")
DIGEST_PREFIX = "hmac-sha256:"  # a keyed digest; anything else in a stored spec is an older, unkeyed one
_DIGEST_KEY_META = "secret_digest_key"


class SecretNotFound(LookupError):
    """A referenced secret, integration, integration key or local secret does not exist.

    The message names what is missing and how to create it, never a value."""


class InvalidSecret(ValueError):
    """A bad name, key, env var, value or reference (the message never holds a value)."""


@dataclass(frozen=True)
class SecretMeta:
    name: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class IntegrationMeta:
    name: str
    keys: tuple[str, ...]
    created_at: float
    updated_at: float


def check_env_name(name: Any, what: str = "secret name") -> str:
    """``name`` if it can be an environment variable's name, else :class:`InvalidSecret`."""
    too_long = name_too_long(what, name)  # first: nothing below reads a long name
    if too_long:
        raise InvalidSecret(too_long)
    if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
        raise InvalidSecret(f"invalid {what} {quote(name)}: use 1-128 letters, digits or '_', "
                            "not starting with a digit")
    return name


def check_integration_name(name: Any) -> str:
    too_long = name_too_long("integration name", name)  # first: nothing below reads a long name
    if too_long:
        raise InvalidSecret(too_long)
    if not isinstance(name, str) or not INTEGRATION_NAME_RE.fullmatch(name):
        raise InvalidSecret(f"invalid integration name {quote(name)}: use 1-63 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
    return name


def _check_value(value: Any, what: str) -> str:
    # `what` names the secret or key; the value itself is never formatted into the message.
    if not isinstance(value, str):
        raise InvalidSecret(f"the value of {what} must be a string, got {type(value).__name__}")
    if "\0" in value:
        raise InvalidSecret(f"the value of {what} contains a NUL character, which an environment variable cannot hold")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise InvalidSecret(f"the value of {what} is over {MAX_VALUE_BYTES // 1024} KiB")
    return value


def _check_values(values: Mapping[str, str], what: str) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise InvalidSecret(f"{what}: values must be a mapping of KEY to value")
    out: dict[str, str] = {}
    for key, value in values.items():
        check_env_name(key, f"key of {what}")
        out[key] = _check_value(value, f"{key!r} of {what}")
    return out


class SecretStore:
    """User secrets, integrations and owned (local) secrets (see the module docstring).

    Needs an opened :class:`~chalkd.store.db.Store`; everything is loaded at construction.
    Blocking and cheap: call it from the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._secrets: dict[str, tuple[str, float, float]] = {}    # name -> (value, created, updated)
        self._owned: dict[str, dict[str, str]] = {}                 # owner -> {env var: value}
        self._integrations: dict[str, tuple[dict[str, str], float, float]] = {}
        self._digest_key = self._load_digest_key()
        self._load()

    def _load_digest_key(self) -> bytes:
        """This daemon's key for :meth:`digest`, made once and kept in the database's meta table
        (the same 0600 file as the values it protects, so it moves with them)."""
        rows = self.store.query("SELECT value FROM meta WHERE key=?", (_DIGEST_KEY_META,))
        if rows:
            return bytes.fromhex(rows[0]["value"])
        key = _random.token_bytes(32)
        self.store.write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_DIGEST_KEY_META, key.hex()))
        return key

    def digest(self, values: Mapping[str, str]) -> str:
        """A keyed digest of ``values`` (HMAC-SHA256 with this daemon's key): equal values give the
        same digest, so a changed local secret makes a new function version, while a client that
        reads the digest back cannot test guesses of the values against it.

        >>> store.digest({"API_KEY": "sk-1"})          # doctest: +SKIP
        'hmac-sha256:5f0c...'
        """
        mac = hmac.new(self._digest_key, digestmod=hashlib.sha256)
        for key in sorted(values):
            mac.update(f"{key}={values[key]}\0".encode("utf-8", "surrogatepass"))
        return DIGEST_PREFIX + mac.hexdigest()

    def _load(self) -> None:
        for r in self.store.query("SELECT name, owner, value, created_at, updated_at FROM secrets"):
            if r["owner"]:
                self._owned.setdefault(r["owner"], {})[r["name"]] = r["value"]
            else:
                self._secrets[r["name"]] = (r["value"], r["created_at"], r["updated_at"])
        for r in self.store.query("SELECT name, created_at, updated_at FROM integrations"):
            self._integrations[r["name"]] = ({}, r["created_at"], r["updated_at"])
        for r in self.store.query("SELECT integration, key, value FROM integration_keys"):
            if r["integration"] in self._integrations:
                self._integrations[r["integration"]][0][r["key"]] = r["value"]
        log.debug("loaded %d secrets, %d integrations, local secrets of %d owners",
                  len(self._secrets), len(self._integrations), len(self._owned))

    # -- user secrets ----------------------------------------------------------------

    def set(self, name: str, value: str) -> bool:
        """Create or replace secret ``name``; True when it is new."""
        check_env_name(name)
        _check_value(value, f"secret {name!r}")
        now = time.time()
        old = self._secrets.get(name)
        created_at = old[1] if old else now
        self._secrets[name] = (value, created_at, now)
        self.store.write("INSERT OR REPLACE INTO secrets (name, owner, value, created_at, updated_at) "
                         "VALUES (?, '', ?, ?, ?)", (name, value, created_at, now))
        log.info("secret %s %s", name, "created" if old is None else "updated")
        return old is None

    def get_meta(self, name: str) -> SecretMeta:
        check_env_name(name)
        try:
            _, created, updated = self._secrets[name]
        except KeyError:
            raise SecretNotFound(_missing_secret(name)) from None
        return SecretMeta(name, created, updated)

    def list(self) -> list[SecretMeta]:
        """User secrets by name (owned secrets are not listed: they belong to a deploy)."""
        return [SecretMeta(n, c, u) for n, (_, c, u) in sorted(self._secrets.items())]

    def delete(self, name: str) -> None:
        """Remove secret ``name``; :class:`SecretNotFound` when there is none."""
        check_env_name(name)  # a long name is refused as such, not echoed as "not found"
        if name not in self._secrets:
            raise SecretNotFound(f"secret {quote(name)} does not exist")
        del self._secrets[name]
        self.store.write("DELETE FROM secrets WHERE name=? AND owner=''", (name,))
        log.info("secret %s deleted", name)

    # -- integrations ----------------------------------------------------------------

    def set_integration(self, name: str, values: Mapping[str, str]) -> bool:
        """Create integration ``name`` or replace its whole key set; True when it is new."""
        check_integration_name(name)
        values = _check_values(values, f"integration {name!r}")
        if not values:
            raise InvalidSecret(f"integration {name!r} needs at least one KEY=VALUE")
        now = time.time()
        old = self._integrations.get(name)
        created_at = old[1] if old else now
        self._integrations[name] = (values, created_at, now)
        self.store.write_many([
            ("INSERT OR REPLACE INTO integrations (name, created_at, updated_at) VALUES (?, ?, ?)",
             (name, created_at, now)),
            ("DELETE FROM integration_keys WHERE integration=?", (name,)),
            *(("INSERT INTO integration_keys (integration, key, value) VALUES (?, ?, ?)", (name, k, v))
              for k, v in values.items()),
        ])
        log.info("integration %s %s with keys %s", name, "created" if old is None else "updated",
                 ", ".join(sorted(values)))
        return old is None

    def get_integration_meta(self, name: str) -> IntegrationMeta:
        check_integration_name(name)
        try:
            values, created, updated = self._integrations[name]
        except KeyError:
            raise SecretNotFound(_missing_integration(name)) from None
        return IntegrationMeta(name, tuple(sorted(values)), created, updated)

    def list_integrations(self) -> list[IntegrationMeta]:
        """Integrations by name, with their keys (never their values)."""
        return [self.get_integration_meta(n) for n in sorted(self._integrations)]

    def delete_integration(self, name: str) -> None:
        check_integration_name(name)
        if name not in self._integrations:
            raise SecretNotFound(f"integration {quote(name)} does not exist")
        del self._integrations[name]
        self.store.write_many([("DELETE FROM integration_keys WHERE integration=?", (name,)),
                               ("DELETE FROM integrations WHERE name=?", (name,))])
        log.info("integration %s deleted", name)

    # -- owned (local) secrets -------------------------------------------------------

    def set_owned(self, owner: str, values: Mapping[str, str]) -> None:
        """Store the local secrets sent with ``owner`` (a function version or container id),
        replacing any it had. Empty ``values`` stores nothing."""
        if not isinstance(owner, str) or not owner:
            raise InvalidSecret("local secrets need an owner (a function version or container id)")
        values = _check_values(values, f"the local secrets of {owner}")
        had = owner in self._owned
        if values:
            self._owned[owner] = values
        else:
            self._owned.pop(owner, None)
        statements: list[tuple[str, Any]] = []
        if had:
            statements.append(("DELETE FROM secrets WHERE owner=?", (owner,)))
        now = time.time()
        statements.extend(("INSERT OR REPLACE INTO secrets (name, owner, value, created_at, updated_at) "
                           "VALUES (?, ?, ?, ?, ?)", (k, owner, v, now, now)) for k, v in values.items())
        if statements:
            self.store.write_many(statements)
        if values:
            log.info("stored local secrets %s of %s", ", ".join(sorted(values)), owner)

    def owned_names(self, owner: str) -> list[str]:
        return sorted(self._owned.get(owner, {}))

    def delete_owned(self, owner: str) -> None:
        """Remove the local secrets of ``owner`` (none is fine: callers do this on every removal)."""
        if self._owned.pop(owner, None) is not None:
            self.store.write("DELETE FROM secrets WHERE owner=?", (owner,))
            log.info("removed the local secrets of %s", owner)

    # -- resolution ------------------------------------------------------------------

    def check(self, refs: Iterable[Any], local_names: Iterable[str]) -> None:
        """Raise what :meth:`resolve` would (:class:`SecretNotFound`, :class:`InvalidSecret`)
        without reading a value: at deploy, before anything is stored.

        ``local_names`` are the env var names whose values came with the deploy."""
        self._plan(refs, set(local_names), owner=None)

    def resolve(self, refs: Iterable[Any], owner: str) -> dict[str, str]:
        """The env vars ``refs`` give a replica of ``owner`` (function version or container id).

        kind "name": ``prefix + (alias or name)`` = secret ``name``; kind "integration":
        ``prefix + aliases.get(key, key)`` for every key (or only ``keys``); kind "local":
        each of ``keys`` from ``owner``'s stored local secrets. A later ref wins when two
        give the same env var."""
        env: dict[str, str] = {}
        for env_var, getter in self._plan(refs, set(self._owned.get(owner, {})), owner=owner):
            env[env_var] = getter()
        return env

    def _plan(self, refs: Iterable[Any], local_names: set[str], owner: str | None) -> list[tuple[str, Any]]:
        """(env var, value getter) for every ref, after every check: so check() shares resolve()'s errors."""
        plan: list[tuple[str, Any]] = []
        for ref in refs:
            kind = ref.kind
            prefix = ref.prefix or ""
            if prefix:
                # A prefix alone need not be a valid name (it may end in a digit: "V2_" is fine,
                # "2_" is not), but the env vars it makes must be; that is checked below.
                if not re.fullmatch(r"[A-Za-z0-9_]*", prefix):
                    raise InvalidSecret(f"invalid env var prefix {quote(prefix)}: use letters, digits or '_'")
            if kind == "name":
                name = check_env_name(ref.name)
                if name not in self._secrets:
                    raise SecretNotFound(_missing_secret(name))
                env_var = check_env_name(prefix + (ref.alias or name), f"env var name for secret {name!r}")
                plan.append((env_var, lambda name=name: self._secrets[name][0]))
            elif kind == "integration":
                name = check_integration_name(ref.name)
                if name not in self._integrations:
                    raise SecretNotFound(_missing_integration(name))
                values = self._integrations[name][0]
                keys = list(ref.keys) or sorted(values)
                aliases = dict(ref.aliases)
                for key in [*keys, *aliases]:
                    if key not in values:
                        raise SecretNotFound(
                            f"integration {name!r} has no key {quote(key)} (it has {', '.join(sorted(values))}); "
                            f"set it with `chalkd integration set {name} KEY=...`")
                for key in keys:
                    env_var = check_env_name(prefix + aliases.get(key, key),
                                             f"env var name for key {quote(key)} of integration {name!r}")
                    plan.append((env_var, lambda values=values, key=key: values[key]))
            elif kind == "local":
                if not ref.keys:
                    raise InvalidSecret("a local secret reference names no env vars")
                for key in ref.keys:
                    check_env_name(key, "local secret name")
                    if key not in local_names:
                        where = f" of {owner}" if owner else " in this request"
                        raise SecretNotFound(f"no value for local secret {quote(key)}{where}: the SDK reads it "
                                             "at deploy; deploy again")
                    env_var = check_env_name(prefix + key, "env var name for a local secret")
                    plan.append((env_var, lambda key=key: self._owned[owner][key]))
            else:
                raise InvalidSecret(f"unknown secret reference kind {quote(kind)}: expected one of {', '.join(KINDS)}")
        return plan


def _missing_secret(name: str) -> str:
    return f"secret {quote(name)} does not exist; set it with `chalkd secret set {name}`"


def _missing_integration(name: str) -> str:
    return f"integration {quote(name)} does not exist; set it with `chalkd integration set {name} KEY=VALUE...`"
