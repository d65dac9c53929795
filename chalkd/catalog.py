"""The function catalog: versions by name and id, persisted in the store.

Registering the same content again returns the existing version; changed
content under the same name becomes the next version number::

    fv, created = catalog.register(spec, content_hash="ab12...", wire=b"...")  # spec: chalkd.specs.FunctionSpec
    catalog.get(name="add")        # the latest version of "add"
    catalog.get(id=fv.id)          # that exact version

Specs are stored as the protobuf bytes the client sent (``wire``); the catalog
never parses them itself: :meth:`Catalog.load` is given the services' decoder.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from chalkcompute._contract import name_too_long, quote
from chalkd.model import FunctionVersion, new_id
from chalkd.specs import FunctionSpec
from chalkd.store.db import Store

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


class CatalogError(Exception):
    """Base for expected catalog failures (the services map them to statuses)."""


class NotFound(CatalogError):
    pass


class InvalidFunction(CatalogError):
    pass


def validate_name(name: str) -> None:
    too_long = name_too_long("function name", name)  # first: nothing below reads a long name
    if too_long:
        raise InvalidFunction(too_long)
    if not NAME_RE.match(name or ""):
        raise InvalidFunction(
            f"invalid function name {quote(name)}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or '_'"
        )


def _version(id: str, name: str, version: int, spec: FunctionSpec, *, content_hash: str, wire: bytes,
             created_at: float, deleted: bool = False) -> FunctionVersion:
    """A FunctionVersion with the settings the queue and autoscaler read copied out of ``spec``."""
    return FunctionVersion(
        id=id, name=name, version=version, content_hash=content_hash, spec=spec, wire=wire,
        created_at=created_at, deleted=deleted, min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
        cooldown=spec.cooldown, cpu_millis=spec.resources.cpu_millis, memory_bytes=spec.resources.memory_bytes,
        gpu=spec.resources.gpu, image_hash=spec.image.content_hash, is_generator=spec.is_generator,
        policies=spec.policies,
    )


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.by_id: dict[str, FunctionVersion] = {}
        self.latest: dict[str, FunctionVersion] = {}
        self._max_version: dict[str, int] = {}

    def load(self, decode: Callable[[bytes], FunctionSpec]) -> None:
        """Rebuild memory from the database; ``decode(spec_bytes)`` is the services' codec
        (:func:`chalkd.services.convert.decode_function_bytes`), the one every spec goes through."""
        for row in self.store.query("SELECT * FROM functions ORDER BY name, version"):
            fv = _version(row["id"], row["name"], row["version"], decode(row["spec"]), content_hash=row["content_hash"],
                          wire=row["spec"], created_at=row["created_at"], deleted=bool(row["deleted"]))
            self.by_id[fv.id] = fv
            self._max_version[fv.name] = max(self._max_version.get(fv.name, 0), fv.version)
            if not fv.deleted:
                prev = self.latest.get(fv.name)
                if prev is not None:
                    prev.latest = False
                self.latest[fv.name] = fv
        for fv in self.by_id.values():
            fv.latest = self.latest.get(fv.name) is fv

    def register(self, spec: FunctionSpec, *, content_hash: str, wire: bytes) -> tuple[FunctionVersion, bool]:
        """The version for ``spec`` (``wire``: its protobuf bytes, stored), and whether it is new."""
        name = spec.name
        validate_name(name)
        current = self.latest.get(name)
        if current is not None and current.content_hash == content_hash and not current.deleted:
            if current.failed:
                # Same content as a version that failed to start: try it again.
                current.failed = ""
            return current, False
        version = self._max_version.get(name, 0) + 1
        fv = _version(new_id("fv"), name, version, spec, content_hash=content_hash, wire=wire, created_at=time.time())
        self._max_version[name] = version
        if current is not None:
            current.latest = False
        fv.latest = True
        self.latest[name] = fv
        self.by_id[fv.id] = fv
        self.store.write(
            "INSERT INTO functions (id, name, version, content_hash, spec, created_at) VALUES (?,?,?,?,?,?)",
            (fv.id, fv.name, fv.version, fv.content_hash, fv.wire, fv.created_at),
        )
        return fv, True

    def get(self, *, name: str = "", id: str = "") -> FunctionVersion:
        if id:
            fv = self.by_id.get(id)
            if fv is None or fv.deleted:
                raise NotFound(f"function version {quote(id)} not found")
            return fv
        if not name:
            raise InvalidFunction("give a function name or a version id")
        too_long = name_too_long("function name", name)
        if too_long:
            raise InvalidFunction(too_long)
        fv = self.latest.get(name)
        if fv is None:
            raise NotFound(f"function {quote(name)} not found: deploy it first (is the name right?)")
        return fv

    def list(self, *, include_old: bool = False) -> list[FunctionVersion]:
        if include_old:
            return sorted((f for f in self.by_id.values() if not f.deleted), key=lambda f: (f.name, f.version))
        return sorted(self.latest.values(), key=lambda f: f.name)

    def delete(self, id: str) -> FunctionVersion:
        fv = self.get(id=id)
        fv.deleted = True
        fv.latest = False
        self.store.write("UPDATE functions SET deleted=1 WHERE id=?", (fv.id,))
        if self.latest.get(fv.name) is fv:
            # The newest remaining version of the name becomes the latest again.
            rest = [f for f in self.by_id.values() if f.name == fv.name and not f.deleted]
            if rest:
                newest = max(rest, key=lambda f: f.version)
                newest.latest = True
                self.latest[fv.name] = newest
            else:
                del self.latest[fv.name]
        return fv
