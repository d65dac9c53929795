"""References to secrets injected as environment variables into functions and containers.

    from chalkcompute import Secret

    Secret("OPENAI_API_TOKEN")                         # the daemon's secret, as $OPENAI_API_TOKEN
    Secret.from_env("OPENAI_API_TOKEN")                # the same (the reference's spelling)
    Secret.from_name("OPENAI_API_TOKEN", alias="TOKEN", prefix="MY_")        # as $MY_TOKEN
    Secret.from_integration("prod_postgres", keys=["HOST", "PASSWORD"],
                            aliases={"HOST": "PG_HOST"}, prefix="")          # $PG_HOST, $PASSWORD
    Secret.from_local_env("OPENAI_API_KEY", env_var_name="API_KEY")          # read here, at deploy
    Secret.from_local_env_file(".env")                                       # every KEY=VALUE in it

    @chalkcompute.function(secrets=[Secret("OPENAI_API_TOKEN")])
    def ask(prompt: str) -> str: ...

Secrets named with :meth:`Secret.from_name` and integrations are kept by the
daemon (``chalkd secret set NAME``, ``chalkd integration set NAME KEY=VALUE...``)
and never pass through this process. Local secrets (``from_local_env*``) are
read when the function is deployed or the container created, sent with that
request (not in its spec) and stored by the daemon under that function version
or container. A :class:`Secret` never holds a value: its ``repr`` and errors
name variables and files only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chalkcompute._contract import name_too_long, quote, valid_env_name, valid_integration_name
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.exceptions import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = ["Secret", "parse_env_file"]

_PREFIX = re.compile(r"[A-Za-z0-9_]{0,127}")
_EXPORT = re.compile(r"export\s+")


def _env_name(value: Any, what: str) -> str:
    too_long = name_too_long(what, value)  # first: nothing below reads a long name
    if too_long:
        raise InvalidArgumentError(too_long)
    if not valid_env_name(value):
        raise InvalidArgumentError(f"invalid {what} {quote(value)}: use 1-128 letters, digits or '_', "
                                   "not starting with a digit")
    return value


def _prefix(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise InvalidArgumentError(f"invalid env var prefix {quote(value)}: use letters, digits or '_'")
    return value


class Secret:
    """A reference to a secret or integration to inject as env vars.

    Build one with ``Secret(name)`` or a factory (:meth:`from_name`, :meth:`from_env`,
    :meth:`from_integration`, :meth:`from_local_env`, :meth:`from_local_env_file`)."""

    __slots__ = ("_kind", "_name", "_alias", "_prefix", "_keys", "_aliases", "_env_var_name", "_path")

    def __init__(self, name: str, *, alias: str | None = None, prefix: str | None = None) -> None:
        """Same as :meth:`Secret.from_name`."""
        self._kind = "name"
        self._name = _env_name(name, "secret name")
        self._alias = _env_name(alias, "alias") if alias is not None else None
        self._prefix = _prefix(prefix)
        self._keys: tuple[str, ...] | None = None
        self._aliases: dict[str, str] = {}
        self._env_var_name: str | None = None
        self._path: Path | None = None
        _env_name(self._prefix + (self._alias or self._name), f"env var name for secret {self._name!r}")

    @classmethod
    def _blank(cls, kind: str) -> Secret:
        s = cls.__new__(cls)
        s._kind, s._name, s._alias, s._prefix = kind, "", None, ""
        s._keys, s._aliases, s._env_var_name, s._path = None, {}, None, None
        return s

    # -- factories -------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, alias: str | None = None, prefix: str | None = None) -> Secret:
        """Reference the daemon's secret ``name`` (set with ``chalkd secret set NAME``).

        Injected as env var ``name``, or ``alias`` when given, with ``prefix`` in front."""
        return cls(name, alias=alias, prefix=prefix)

    @classmethod
    def from_env(cls, name: str, alias: str | None = None, prefix: str | None = None) -> Secret:
        """The same as :meth:`from_name`: the daemon's secret ``name``, injected as env var ``name``.

        It does not read this process's environment; :meth:`from_local_env` does."""
        return cls(name, alias=alias, prefix=prefix)

    @classmethod
    def from_integration(cls, name: str, keys: Iterable[str] | None = None,
                         aliases: Mapping[str, str] | None = None, prefix: str | None = None) -> Secret:
        """Reference integration ``name`` (``chalkd integration set NAME KEY=VALUE...``).

        Every key is injected as an env var of that name; ``keys`` limits injection to
        those listed, ``aliases`` renames keys (``{"HOST": "PG_HOST"}``), ``prefix`` goes
        in front of every env var."""
        s = cls._blank("integration")
        too_long = name_too_long("integration name", name)  # first: nothing below reads a long name
        if too_long:
            raise InvalidArgumentError(too_long)
        if not valid_integration_name(name):
            raise InvalidArgumentError(f"invalid integration name {quote(name)}: use 1-63 letters, digits, '.', '_' "
                                       "or '-', starting with a letter or digit")
        s._name = name
        s._prefix = _prefix(prefix)
        if keys is not None:
            if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
                raise InvalidArgumentError(f"keys of integration {name!r} must be a list of key names, got {keys!r}")
            # Order kept, duplicates dropped: keys=["A", "A"] means A once.
            s._keys = tuple(dict.fromkeys(_env_name(k, f"key of integration {name!r}") for k in keys))
            if not s._keys:
                raise InvalidArgumentError(f"keys=[] injects nothing from integration {name!r}; "
                                           "leave keys out to inject every key")
        if aliases is not None:
            if not isinstance(aliases, Mapping):
                raise InvalidArgumentError(f"aliases of integration {name!r} must map key names to env var names")
            for key, alias in aliases.items():
                _env_name(key, f"aliased key of integration {name!r}")
                _env_name(alias, f"alias of key {key!r} of integration {name!r}")
                if s._keys is not None and key not in s._keys:
                    raise InvalidArgumentError(f"aliases of integration {name!r} rename {key!r}, which is not in "
                                               f"keys ({', '.join(s._keys)})")
            s._aliases = dict(aliases)
        seen: dict[str, str] = {}
        for key in s._keys or s._aliases:
            env_var = _env_name(s._prefix + s._aliases.get(key, key),
                                f"env var name for key {key!r} of integration {name!r}")
            if env_var in seen:
                raise InvalidArgumentError(f"keys {seen[env_var]!r} and {key!r} of integration {name!r} would "
                                           f"both be injected as {env_var!r}")
            seen[env_var] = key
        return s

    @classmethod
    def from_local_env(cls, local_env_var: str, env_var_name: str | None = None) -> Secret:
        """Inject this process's ``$local_env_var``, read at deploy (``Container.run()``,
        a function's deploy), as env var ``env_var_name`` (default: the same name)."""
        s = cls._blank("local")
        s._name = _env_name(local_env_var, "local env var name")
        s._env_var_name = _env_name(env_var_name, "env_var_name") if env_var_name is not None else s._name
        return s

    @classmethod
    def from_local_env_file(cls, path: str | os.PathLike) -> Secret:
        """Inject every ``KEY=VALUE`` of a local ``.env`` file, read at deploy.

        Blank lines and ``#`` comments are skipped; ``export KEY=VALUE`` is accepted and
        quotes around a value are removed (see :func:`parse_env_file`)."""
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise InvalidArgumentError(f"Secret.from_local_env_file needs a file path, got {path!r}")
        s = cls._blank("local")
        # Absolute now: a later chdir must not change which file is read at deploy.
        s._path = Path(os.path.abspath(os.fspath(path)))
        return s

    # -- attributes ------------------------------------------------------------------

    @property
    def requires_local_resolution(self) -> bool:
        """True when built from a local env var or env file: read in this process at deploy."""
        return self._kind == "local"

    @property
    def kind(self) -> str:
        """``"name"``, ``"integration"`` or ``"local"``."""
        return self._kind

    @property
    def name(self) -> str:
        """The secret or integration name; the local env var for :meth:`from_local_env`; '' for a file."""
        return self._name

    @property
    def alias(self) -> str | None:
        return self._alias

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def keys(self) -> tuple[str, ...] | None:
        return self._keys

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    @property
    def env_var_name(self) -> str | None:
        return self._env_var_name

    @property
    def path(self) -> Path | None:
        return self._path

    # -- wire ------------------------------------------------------------------------

    def to_ref(self) -> tuple[pb.SecretRef, dict[str, str]]:
        """The reference to send, and (local kinds only) the values read now.

        Values travel beside the spec (``local_secrets`` of the request), never in the
        reference; its ``digest`` changes when they do, so a new value deploys a new version."""
        if self._kind == "name":
            return pb.SecretRef(kind="name", name=self._name, alias=self._alias or "", prefix=self._prefix), {}
        if self._kind == "integration":
            return pb.SecretRef(kind="integration", name=self._name, prefix=self._prefix, keys=self._keys or (),
                                aliases=self._aliases), {}
        if self._path is not None:
            values = parse_env_file(self._path)
            if not values:
                raise InvalidArgumentError(f"Secret.from_local_env_file: {self._path} defines no variables")
        else:
            value = os.environ.get(self._name)
            if value is None:
                raise InvalidArgumentError(f"Secret.from_local_env: the local environment variable {self._name!r} "
                                           "is not set")
            assert self._env_var_name is not None  # set by from_local_env with the name
            values = {self._env_var_name: value}
        digest = hashlib.sha256()
        for key in sorted(values):
            # NUL cannot occur in a name or a value: an unambiguous separator.
            digest.update(f"{key}={values[key]}\0".encode("utf-8", "surrogatepass"))
        ref = pb.SecretRef(kind="local", keys=sorted(values), digest=digest.hexdigest())
        return ref, values

    # -- dunder ----------------------------------------------------------------------

    def _fields(self) -> tuple:
        return (self._kind, self._name, self._alias, self._prefix, self._keys,
                tuple(sorted(self._aliases.items())), self._env_var_name, self._path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        # Names and paths only: a Secret never holds a value.
        if self._kind == "integration":
            args = [repr(self._name)]
            if self._keys is not None:
                args.append(f"keys={list(self._keys)!r}")
            if self._aliases:
                args.append(f"aliases={self._aliases!r}")
            if self._prefix:
                args.append(f"prefix={self._prefix!r}")
            return f"Secret.from_integration({', '.join(args)})"
        if self._kind == "local":
            if self._path is not None:
                return f"Secret.from_local_env_file({str(self._path)!r})"
            extra = f", env_var_name={self._env_var_name!r}" if self._env_var_name != self._name else ""
            return f"Secret.from_local_env({self._name!r}{extra})"
        args = [repr(self._name)]
        if self._alias:
            args.append(f"alias={self._alias!r}")
        if self._prefix:
            args.append(f"prefix={self._prefix!r}")
        return f"Secret.from_name({', '.join(args)})"


def parse_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file as a dict (a later line wins).

    Blank lines and lines starting with ``#`` are skipped; ``export KEY=VALUE`` is
    accepted; a value in matching single or double quotes loses them (taken as is
    inside); an unquoted value ends at `` #`` (a comment). Any other line is an
    :class:`~chalkcompute.exceptions.InvalidArgumentError` naming the file and line
    number (never the line: it may hold a value)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidArgumentError(f"Secret.from_local_env_file: cannot read {path}: "
                                   f"{exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"Secret.from_local_env_file: {path} is not UTF-8 text") from None
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXPORT.match(line)
        if m:
            line = line[m.end():]
        key, eq, raw = line.partition("=")
        key = key.strip()
        if not eq or not valid_env_name(key):
            raise InvalidArgumentError(f"{path}, line {lineno}: expected KEY=VALUE with KEY made of letters, "
                                       "digits or '_'")
        value = _parse_value(raw.strip())
        if value is None:
            raise InvalidArgumentError(f"{path}, line {lineno}: the value of {key} has an unterminated quote "
                                       "or text after its closing quote")
        if "\0" in value:
            raise InvalidArgumentError(f"{path}, line {lineno}: the value of {key} contains a NUL character")
        values[key] = value
    return values


def _parse_value(raw: str) -> str | None:
    """The value of one line, or None when its quoting is malformed."""
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        if end == -1:
            return None
        rest = raw[end + 1:].strip()
        if rest and not rest.startswith("#"):
            return None
        return raw[1:end]
    # Unquoted: "#" starts a comment only after whitespace, so "pa#ss" stays whole.
    m = re.search(r"\s#", raw)
    return (raw[:m.start()] if m else raw).strip()
