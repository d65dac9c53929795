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
