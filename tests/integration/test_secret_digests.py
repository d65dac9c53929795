"""Local secrets' digests are keyed by the daemon: a changed value still makes a new version,
the same value the same version (across restarts), and what clients read back is no plain hash."""

from __future__ import annotations

import hashlib

import pytest

from chalkcompute import RemoteFunction, Secret
from chalkcompute._client import Client, run_sync
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from tests.conftest import Daemon

pytestmark = pytest.mark.timeout(120)

VALUE = "digest-test-value-1"


def uses_secret() -> str:
    import os

    return os.environ["LOCAL_DIGEST_KEY"]


def _deploy(target: str) -> RemoteFunction:
    fn = RemoteFunction(uses_secret, name="digest_fn", min_replicas=0,
                        secrets=[Secret.from_local_env("LOCAL_DIGEST_KEY")], target=target)
    fn.deploy()
    return fn


def _ref(target: str) -> pb.SecretRef:
    resp = run_sync(Client.get(target).rpc("GetFunction", pb.GetFunctionRequest(name="digest_fn")))
    (ref,) = resp.function.spec.secrets
    return ref


def test_local_secret_digests_are_keyed_and_still_version_functions(tmp_path, monkeypatch):
    d = Daemon(tmp_path / "home").start()
    try:
        monkeypatch.setenv("LOCAL_DIGEST_KEY", VALUE)
        first = _deploy(d.target).info.version
        ref = _ref(d.target)
        plain = hashlib.sha256(f"LOCAL_DIGEST_KEY={VALUE}\0".encode()).hexdigest()
        assert ref.digest.startswith("hmac-sha256:") and plain not in ref.digest
        assert _deploy(d.target).info.version == first  # same value: same version
        monkeypatch.setenv("LOCAL_DIGEST_KEY", VALUE + "-changed")
        assert _deploy(d.target).info.version == first + 1  # changed value: a new version
        assert _ref(d.target).digest != ref.digest
        d.stop()
        d.start()  # the key is kept: the same value after a restart is still the same version
        assert _deploy(d.target).info.version == first + 1
    finally:
        d.stop()
