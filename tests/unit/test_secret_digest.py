"""Keyed digests of local secrets: stable per daemon, different between daemons, and an older
daemon's unkeyed hash never sent back to clients."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.model import FunctionVersion
from chalkd.secrets import SecretStore
from chalkd.services.convert import decode_function, key_local_digests, version_to_pb
from chalkd.store.db import Store

pytestmark = pytest.mark.timeout(30)


def digests(db: Path, values: dict) -> tuple[str, str]:
    """(digest, digest again after a restart) of ``values`` with the daemon key in ``db``."""
    async def once() -> str:
        store = Store(db)
        await store.open()
        try:
            out = SecretStore(store).digest(values)
            await store.flush()
            return out
        finally:
            await store.close()
    return asyncio.run(once()), asyncio.run(once())


def test_digest_is_keyed_per_daemon_and_kept(tmp_path):
    values = {"API_KEY": "sk-1"}
    a1, a2 = digests(tmp_path / "a.db", values)
    b1, _ = digests(tmp_path / "b.db", values)
    assert a1 == a2 and a1.startswith("hmac-sha256:")
    assert a1 != b1  # another daemon, another key: no precomputed table fits both
    assert hashlib.sha256(b"API_KEY=sk-1\0").hexdigest() not in a1
    assert digests(tmp_path / "a.db", {"API_KEY": "sk-2"})[0] != a1


def test_key_local_digests_replaces_only_local_refs():
    spec = pb.FunctionSpec(name="f", secrets=[pb.SecretRef(kind="local", keys=["A"], digest="plain"),
                                              pb.SecretRef(kind="name", name="S")])
    key_local_digests(spec, {"A": "1", "B": "2"}, lambda values: f"hmac-sha256:{sorted(values.items())}")
    assert spec.secrets[0].digest == "hmac-sha256:[('A', '1')]" and spec.secrets[1].digest == ""


def test_an_older_unkeyed_digest_is_not_sent_to_clients():
    spec = pb.FunctionSpec(name="f", secrets=[pb.SecretRef(kind="local", keys=["A"], digest="ab" * 32),
                                              pb.SecretRef(kind="local", keys=["B"], digest="hmac-sha256:cd")])
    fv = FunctionVersion(id="fv-1", name="f", version=1, content_hash="h", spec=decode_function(spec),
                         created_at=0.0, wire=spec.SerializeToString())
    out = version_to_pb(fv)
    assert [r.digest for r in out.spec.secrets] == ["", "hmac-sha256:cd"]
