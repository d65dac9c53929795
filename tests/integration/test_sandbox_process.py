"""The process runtime has no isolation to offer, so it refuses sandboxes, saying what to do instead."""

from __future__ import annotations

import pytest

from chalkcompute import SandboxClient, SandboxError, SandboxNotFoundError

pytestmark = pytest.mark.timeout(60)


def test_the_process_runtime_refuses_sandboxes(daemon):
    client = SandboxClient(target=daemon.target)
    with pytest.raises(SandboxError, match=r"--runtime docker"):
        client.create(image="ubuntu:latest", wait=False)
    assert client.list() == []
    with pytest.raises(SandboxError, match=r"--runtime docker") as info:
        client.get("sb-123").exec("true")
    assert not isinstance(info.value, SandboxNotFoundError)


def test_a_refused_upload_reports_the_refusal_not_a_reset(daemon):
    sandbox = SandboxClient(target=daemon.target).get("sb-123")
    with pytest.raises(SandboxError, match=r"--runtime docker"):
        sandbox.fs.write_bytes("/tmp/big", b"x" * (8 << 20))  # refused after its first piece
    with pytest.raises(SandboxError, match=r"--runtime docker"):
        sandbox.fs.read_bytes("/tmp/big")
