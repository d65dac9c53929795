"""SandboxManager's checks that come before the engine is asked anything."""

from __future__ import annotations

import asyncio

import pytest

from chalkd.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from chalkd.sandboxes.manager import SandboxManager, SandboxSettings, status_error
from chalkd.sandboxes.records import SandboxRecord
from chalkd.specs import SandboxSpec, VolumeMount

pytestmark = pytest.mark.timeout(30)


def _manager(tmp_path, **settings) -> SandboxManager:
    # No engine, builder or store: every case here must be refused before any of them is used.
    return SandboxManager(None, None, None, None, home=tmp_path, run_dir=tmp_path / "run",  # type: ignore[arg-type]
                          settings=SandboxSettings(**settings))


def test_new_sandboxes_are_refused_while_the_disk_is_low(tmp_path):
    manager = _manager(tmp_path, min_free_disk=1 << 62)
    with pytest.raises(ResourceExhausted, match=rf"the disk holding {tmp_path} has only \d+ MiB free"):
        asyncio.run(manager.create(SandboxSpec()))
    assert manager.by_id == {}


def test_a_live_name_is_taken_and_bad_mounts_are_refused(tmp_path):
    manager = _manager(tmp_path, min_free_disk=0)
    manager.by_id["sb-1"] = SandboxRecord(id="sb-1", name="scratch", status="ready")
    with pytest.raises(AlreadyExists, match="scratch"):
        asyncio.run(manager.create(SandboxSpec(name="scratch")))
    with pytest.raises(InvalidArgument, match="'/'"):
        asyncio.run(manager.create(SandboxSpec(volumes=(VolumeMount(volume="v", path="/"),))))


def test_lookups_and_status_messages(tmp_path):
    manager = _manager(tmp_path)
    with pytest.raises(NotFound, match="no sandbox with id 'sb-x'"):
        manager.get(id="sb-x")
    with pytest.raises(NotFound, match="no sandbox named 'n'"):
        manager.get(name="n")
    ended = SandboxRecord(id="sb-2", name="n", status="terminated", status_message="terminated by request")
    assert status_error(ended) == "sandbox sb-2 is terminated: terminated by request"
    failed = SandboxRecord(id="sb-3", name="m", status="error", status_message="image build failed: boom",
                           status_details={"failed_step": "step 2/3: RUN exit 3"})
    assert status_error(failed) == "sandbox sb-3 image build failed: boom (at step 2/3: RUN exit 3)"
