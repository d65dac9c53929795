"""A Docker replica's credential reaches its own work only: not the API beyond it, not `docker inspect`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chalkcompute import Image, RemoteFunction
from tests.conftest import ROOT
from tests.docker.conftest import containers_of

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]


def _triple(x: int) -> int:
    return 3 * x


_nested = None


def beyond_scope() -> dict:
    """Runs in the replica: try what user code must not do, and what it may."""
    import os
    from pathlib import Path

    import chalkcompute as cc
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import ContainersStub, SandboxesStub, SecretsStub

    def steal() -> str:
        return os.environ.get("TOPSECRET", "")

    out = {"replica": os.environ["CHALK_REPLICA_ID"], "env_has_key": "CHALK_REPLICA_TOKEN" in os.environ}
    try:
        out["register"] = cc.RemoteFunction(steal, secrets=[cc.Secret("TOPSECRET")])()
    except cc.PermissionDeniedError as exc:
        out["register"] = f"denied: {exc}"
    channel = Client.get().channel
    for name, call in (("secrets", lambda: SecretsStub(channel).ListSecrets(pb.ListSecretsRequest(), timeout=10)),
                       ("containers", lambda: ContainersStub(channel).List(pb.ListContainersRequest(), timeout=10)),
                       ("sandboxes", lambda: SandboxesStub(channel).List(pb.ListSandboxesRequest(), timeout=10))):
        try:
            run_sync(call())
            out[name] = "allowed"
        except Exception as exc:  # the raw stub's GRPCError
            out[name] = f"{getattr(exc, 'status', '')} {getattr(exc, 'message', exc)}"
    sock_dir = Path(os.environ["CHALK_WORKER_SOCKET"]).parent
    try:
        (sock_dir / "planted").write_text("x")
        out["sock_dir"] = "writable"
    except OSError as exc:
        out["sock_dir"] = f"read-only: {exc}"
    try:
        cc.VolumeClient().get("dk-scope-other").get("any-file")  # a file read through the API
        out["volume"] = "allowed"
    except cc.PermissionDeniedError as exc:
        out["volume"] = f"denied: {exc}"
    try:  # a write: on the local lane the daemon checks it in the transfer's own thread
        cc.VolumeClient().get("dk-scope-other").put("planted", b"x" * 3_000_000)
        out["volume_put"] = "allowed"
    except cc.PermissionDeniedError as exc:
        out["volume_put"] = f"denied: {exc}"
    try:  # exec goes on the local fast lane: scoped there too
        cc.SandboxClient().get("sb-any").exec("true")
        out["sandbox_exec"] = "allowed"
    except cc.PermissionDeniedError as exc:
        out["sandbox_exec"] = f"denied: {exc}"
    out["nested"] = _nested(5)
    return out


def test_a_docker_replica_cannot_go_beyond_its_scope(on_docker):
    global _nested
    subprocess.run([sys.executable, "-m", "chalkd.cli", "secret", "set", "TOPSECRET", "--target", on_docker.target],
                   input="dk-scope-secret-4242", text=True, check=True, capture_output=True, cwd=ROOT)
    from chalkcompute import VolumeClient

    VolumeClient().create("dk-scope-other")  # exists, but the function does not mount it
    _nested = RemoteFunction(_triple, name="dk_triple", image=Image.debian_slim())
    out = RemoteFunction(beyond_scope, name="dk_beyond", image=Image.debian_slim())()
    # Refused at its first step on Docker (building the image), naming it; the secret never reached it.
    assert out["register"].startswith("denied:") and "does not allow /chalk.v1." in out["register"], out
    assert "PERMISSION_DENIED" in out["secrets"] and "ListSecrets" in out["secrets"], out
    assert "PERMISSION_DENIED" in out["containers"] and "Containers/List" in out["containers"], out
    assert "PERMISSION_DENIED" in out["sandboxes"] and "Sandboxes/List" in out["sandboxes"], out
    assert out["sandbox_exec"].startswith("denied:") and "Sandboxes/Exec" in out["sandbox_exec"], out
    assert out["sock_dir"].startswith("read-only"), out
    assert out["volume"].startswith("denied:") and "dk-scope-other" in out["volume"], out
    assert out["volume_put"].startswith("denied:") and "dk-scope-other" in out["volume_put"], out
    assert not (on_docker.home / "volumes" / "dk-scope-other" / "planted").exists()
    assert out["nested"] == 15  # nested calls work with the scoped credential
    assert not out["env_has_key"]
    # The key is in a read-only file, not in the container's config.
    [c] = containers_of(on_docker.home, replica=out["replica"])
    key = (on_docker.home / "replica-keys" / out["replica"]).read_text()
    assert key and key not in json.dumps(c)
    assert "CHALK_REPLICA_TOKEN" not in json.dumps(c["Config"]["Env"])
