"""The Docker runtime's pure parts: container settings and lazy-file mount trees."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from chalkcompute import Image
from chalkd.images.blobs import BlobError, BlobStore, mount_groups
from chalkd.runtime.docker import host_config
from chalkd.services.convert import decode_image


def test_host_config_limits_and_gpus():
    hc = host_config(binds=["/a:/a"], cpu_millis=1500, memory_bytes=2**30, pids_limit=100,
                     gpu_uuids=("GPU-1", "GPU-2"))
    assert hc["NanoCpus"] == 1_500_000_000
    assert hc["Memory"] == hc["MemorySwap"] == 2**30
    assert hc["PidsLimit"] == 100
    assert hc["Privileged"] is False and hc["Init"] is True
    assert hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-1", "GPU-2"], "Capabilities": [["gpu"]]}]


def test_host_config_without_requests_sets_no_limits():
    hc = host_config(binds=[])
    assert "NanoCpus" not in hc and "Memory" not in hc and "DeviceRequests" not in hc


def _upload(store: BlobStore, path) -> str:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with store.writer(digest) as w:
        w.write(data)
    return digest


def test_mount_trees_group_files_and_keep_modes(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("a")
    (tmp_path / "src" / "sub" / "b.sh").write_text("b")
    os.chmod(tmp_path / "src" / "sub" / "b.sh", 0o755)
    (tmp_path / "conf.yaml").write_text("c")
    img = (Image.debian_slim().add_local_dir(tmp_path / "src", "/app/src")
           .add_local_file(tmp_path / "conf.yaml", "/etc/app/conf.yaml", mode=0o600))
    spec = decode_image(img.to_proto())
    assert sorted(mount_groups(spec)) == ["/app/src", "/etc/app"]
    store = BlobStore(tmp_path / "home" / "blobs")
    with pytest.raises(BlobError, match="never uploaded"):
        store.mounts(spec)
    for p in (tmp_path / "src" / "a.py", tmp_path / "src" / "sub" / "b.sh", tmp_path / "conf.yaml"):
        _upload(store, p)
    assert store.missing([f.digest for f in img.lazy_local_files]) == []
    mounts = dict((mount, host) for host, mount in store.mounts(spec))
    assert Path(mounts["/app/src"], "sub", "b.sh").read_text() == "b"
    assert stat.S_IMODE(os.stat(os.path.join(mounts["/app/src"], "sub", "b.sh")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(mounts["/etc/app"], "conf.yaml")).st_mode) == 0o600
    assert store.mounts(spec) == store.mounts(spec)  # the same tree, built once


def test_blob_digest_is_checked(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError, match="not the"):
        with store.writer("0" * 64) as w:
            w.write(b"something else")
    assert store.missing(["0" * 64]) == ["0" * 64]
    with pytest.raises(BlobError, match="64 lower-case hex"):
        store.missing(["../../etc/passwd"])
