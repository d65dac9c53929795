"""Lazy-file trees: a spec can never place a file outside its mount tree, nor
give it more than permission bits; the daemon refuses such a spec where it
comes in (INVALID_ARGUMENT naming the path)."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.images.blobs import BlobStore, LazyFileError, check_lazy_files, mount_groups
from chalkd.specs import ImageSpec, ImageStep

pytestmark = pytest.mark.timeout(30)


def _store(tmp_path, data: bytes = b"payload\n") -> tuple[BlobStore, str]:
    blobs = BlobStore(tmp_path / "home" / "blobs")
    digest = hashlib.sha256(data).hexdigest()
    with blobs.writer(digest) as w:
        w.write(data)
    return blobs, digest


def _spec(*steps: ImageStep) -> ImageSpec:
    return ImageSpec(base="python:3.11-slim", steps=steps)


def _lazy(path: str, digest: str, mode: int = 0, mount_root: str = "") -> ImageStep:
    return ImageStep(kind="lazy_file", path=path, digest=digest, mode=mode, mount_root=mount_root,
                     source="/local/src.txt")


def _all_files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def test_a_good_spec_builds_a_tree_with_the_modes_asked(tmp_path):
    blobs, digest = _store(tmp_path)
    spec = _spec(_lazy("/app/data/a.txt", digest, 0o640, mount_root="/app"),
                 _lazy("/app/run.sh", digest, 0o755, mount_root="/app"),
                 _lazy("/etc/app.conf", digest))
    check_lazy_files(spec)
    mounts = dict((m, h) for h, m in blobs.mounts(spec))
    assert set(mounts) == {"/app", "/etc"}
    app = mounts["/app"]
    assert _all_files(app) == {"data/a.txt", "run.sh"}
    assert stat.S_IMODE(os.stat(os.path.join(app, "data/a.txt")).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(os.path.join(app, "run.sh")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(app, "data")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(mounts["/etc"], "app.conf")).st_mode) == 0o644  # mode 0: default
    with open(os.path.join(app, "run.sh"), "rb") as f:
        assert f.read() == b"payload\n"


@pytest.mark.parametrize("path, mount_root, why", [
    ("/app/../../../tmp/escaped", "/app", "not normalised"),
    ("/tmp/escaped", "/app", "outside its mount root '/app'"),
    ("/appx/escaped", "/app", "outside its mount root '/app'"),
    ("/app", "/app", "outside its mount root '/app'"),
    ("app/escaped", "", "must be an absolute path"),
    ("/app//escaped", "", "not normalised"),
    ("/app/./escaped", "", "not normalised"),
    ("/app/escaped", "app", "must be an absolute path"),
    ("/app/x/escaped", "/app/x/..", "not normalised"),
    ("/escaped", "", "would need a mount at '/'"),
    ("/app/a:b", "", "must not contain NUL or ':'"),
])
def test_paths_that_leave_their_mount_root_are_refused_naming_the_path(tmp_path, path, mount_root, why):
    blobs, digest = _store(tmp_path)
    spec = _spec(_lazy(path, digest, mount_root=mount_root))
    with pytest.raises(LazyFileError, match=why) as info:
        check_lazy_files(spec)
    assert repr(path) in str(info.value) or repr(mount_root) in str(info.value)
    # The layout refuses it too (a spec stored before the check existed), and writes nothing.
    with pytest.raises(LazyFileError):
        blobs.mounts(spec)
    home = tmp_path / "home"
    assert not (tmp_path / "tmp").exists() and not (home / "tmp").exists()
    assert _all_files(home / "mounts") == set()


def test_the_escape_from_the_issue_writes_nothing_outside_the_trees(tmp_path):
    # path outside mount_root: relpath() used to climb out of <home>/mounts.
    blobs, digest = _store(tmp_path)
    target = tmp_path / "home" / "owned"
    spec = _spec(_lazy(str(target), digest, mount_root="/app/sub"))
    with pytest.raises(LazyFileError, match=f"{str(target)!r} .* outside its mount root '/app/sub'"):
        blobs.mounts(spec)
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1777, 0o6777, 0o100644, 0o10000])
def test_modes_beyond_permission_bits_are_refused(tmp_path, mode):
    blobs, digest = _store(tmp_path)
    spec = _spec(_lazy("/app/tool", digest, mode))
    with pytest.raises(LazyFileError, match=rf"mode {oct(mode)} .*'/app/tool' is not allowed: .*no setuid"):
        check_lazy_files(spec)
    with pytest.raises(LazyFileError):
        blobs.mounts(spec)
    assert _all_files(tmp_path / "home" / "mounts") == set()


def test_a_path_both_file_and_directory_is_refused(tmp_path):
    _, digest = _store(tmp_path)
    spec = _spec(_lazy("/app/x", digest, mount_root="/app"), _lazy("/app/x/y", digest, mount_root="/app"))
    with pytest.raises(LazyFileError, match="'/app/x' is both a file and a directory"):
        check_lazy_files(spec)


def test_a_later_step_for_the_same_path_wins(tmp_path):
    blobs, first = _store(tmp_path, b"first")
    second = hashlib.sha256(b"second").hexdigest()
    with blobs.writer(second) as w:
        w.write(b"second")
    [(host, mount)] = blobs.mounts(_spec(_lazy("/app/f", first), _lazy("/app/f", second, 0o600)))
    assert mount == "/app"
    with open(os.path.join(host, "f"), "rb") as f:
        assert f.read() == b"second"
    assert stat.S_IMODE(os.stat(os.path.join(host, "f")).st_mode) == 0o600


def test_mount_groups_still_group_by_root(tmp_path):
    _, digest = _store(tmp_path)
    groups = mount_groups(_spec(_lazy("/a/b/c", digest, mount_root="/a"), _lazy("/d/e", digest)))
    assert sorted(groups) == ["/a", "/d"]


def test_the_daemon_refuses_a_bad_lazy_file_sent_directly(daemon):
    from chalkcompute._client import Client, run_sync
    from chalkcompute.exceptions import InvalidArgumentError

    digest = "0" * 64
    image = pb.ImageSpec(base="python:3.11-slim", steps=[pb.ImageStep(
        kind="lazy_file", path="/app/../etc/cron.d/evil", digest=digest, mode=0o4755, mount_root="/app")])
    spec = pb.FunctionSpec(name="lazy-escape", max_replicas=1, image=image,
                           code=pb.CodeBundle(module_source="def f(): pass", function_name="f"))
    with pytest.raises(InvalidArgumentError, match=r"'/app/\.\./etc/cron\.d/evil'"):
        run_sync(Client.get().rpc("RegisterFunction", pb.RegisterFunctionRequest(spec=spec)))


def test_the_sdk_refuses_the_same_before_uploading(tmp_path):
    from chalkcompute import Image

    local = tmp_path / "tool"
    local.write_bytes(b"#!/bin/sh\n")
    # (add_local_file normalises the destination itself; a hand-made spec is refused by chalkd, above.)
    with pytest.raises(ValueError, match=r"mode 0o4755; with strategy='volume' only permission bits"):
        Image.debian_slim().add_local_file(local, "/app/tool", mode=0o4755).validate_lazy_local_files()
    Image.debian_slim().add_local_file(local, "/app/tool", mode=0o755).validate_lazy_local_files()
    Image.debian_slim().add_local_file(local, "/app/tool", mode=0o4755, strategy="copy").validate_lazy_local_files()
