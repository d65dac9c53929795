"""chalkd.volumes.store.VolumeStore: path validation, planted symlinks, batches, files a container made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chalkd.store.db import Store
from chalkd.volumes.store import (
    InvalidVolumeName,
    InvalidVolumePath,
    VolumeFileNotFound,
    VolumeNotFound,
    VolumePathConflict,
    VolumeStore,
    split_path,
)

pytestmark = pytest.mark.timeout(60)

TRAVERSALS = ["../x", "a/../../x", "..", "/etc/passwd", "a//b", "./a", "a/./b", "a/", "a\0b", "", "a\\..\\b"]


@pytest.fixture
def db(tmp_path):
    store = Store(tmp_path / "chalkd.db")
    store.open_sync()  # no writer task: writes queue up, _commit_pending() commits them
    yield store
    store.db.close()


@pytest.fixture(params=[False, True], ids=["nosync", "fsync"])
def vs(tmp_path, db, request) -> VolumeStore:
    return VolumeStore(tmp_path, db, fsync=request.param)


def put(vs: VolumeStore, name: str, files: dict[str, bytes]) -> None:
    batch = vs.begin_batch(name)
    for path, data in files.items():
        batch.write(path, data)
        batch.end_file()
    batch.commit()


def read(vs: VolumeStore, name: str, path: str) -> bytes:
    with vs.open_read(name, path) as f:
        return f.read()


@pytest.mark.parametrize("path", TRAVERSALS)
def test_every_traversal_form_is_refused_naming_the_path(vs, path):
    vs.create("v")
    with pytest.raises(InvalidVolumePath) as err:
        split_path(path)
    assert repr(path) in str(err.value)
    for op in (lambda: vs.open_read("v", path), lambda: vs.remove("v", path),
               lambda: vs.begin_batch("v").write(path, b"x")):
        with pytest.raises(InvalidVolumePath, match="invalid path"):
            op()
    assert list(vs.list_files("v")) == []


def test_bad_names_and_missing_volumes(vs):
    for name in ["", "../x", ".staging", "a/b", "x" * 64, "-a"]:
        with pytest.raises(InvalidVolumeName, match="invalid volume name"):
            vs.create(name)
    with pytest.raises(VolumeNotFound, match="volume 'nope' not found"):
        vs.get("nope")
    with pytest.raises(VolumeNotFound):
        vs.begin_batch("nope")
    with pytest.raises(VolumeNotFound):
        list(vs.list_files("nope"))


def test_create_get_list_delete_and_records_survive_a_restart(tmp_path, db, vs):
    info, created = vs.create("models")
    assert created and info.file_count == 0
    again, created = vs.create("models")
    assert not created and again.created_at == info.created_at
    put(vs, "models", {"a.txt": b"hello", "d/b.txt": b"world!"})
    got = vs.get("models")
    assert (got.size_bytes, got.file_count) == (11, 2) and got.updated_at >= info.updated_at
    assert vs.ensure("scratch") == tmp_path / "volumes" / "scratch"
    assert [i.name for i in vs.list()] == ["models", "scratch"]
    db._commit_pending()
    reopened = VolumeStore(tmp_path, db)
    assert reopened.get("models").created_at == info.created_at
    reopened.delete("scratch")
    assert not (tmp_path / "volumes" / "scratch").exists()
    with pytest.raises(VolumeNotFound):
        reopened.delete("scratch")
    db._commit_pending()
    assert [r["name"] for r in db.query("SELECT name FROM volumes")] == ["models"]


def test_a_directory_without_a_record_is_adopted(tmp_path, db):
    (tmp_path / "volumes" / "copied").mkdir(parents=True)
    (tmp_path / "volumes" / "copied" / "f").write_bytes(b"1")
    vs = VolumeStore(tmp_path, db)
    assert vs.get("copied").file_count == 1


def test_batch_commit_makes_all_visible_and_abort_leaves_nothing(vs):
    vs.create("v")
    batch = vs.begin_batch("v")
    batch.write("a.txt", b"hel")
    batch.write("a.txt", b"lo")     # pieces of one file, in order
    batch.write("deep/er/b.bin", b"x" * (3 << 20))  # a new path ends the previous file
    batch.end_file()
    batch.write("empty", b"")
    batch.end_file()
    assert list(vs.list_files("v")) == []  # nothing visible before commit
    paths, nbytes = batch.commit()
    assert sorted(paths) == ["a.txt", "deep/er/b.bin", "empty"] and nbytes == 5 + (3 << 20)
    assert read(vs, "v", "a.txt") == b"hello" and read(vs, "v", "empty") == b""
    assert [e.path for e in vs.list_files("v")] == ["a.txt", "deep/er/b.bin", "empty"]

    batch = vs.begin_batch("v")
    batch.write("new.txt", b"never")
    batch.end_file()
    batch.write("a.txt", b"overwritten?")
    batch.abort()
    assert [e.path for e in vs.list_files("v")] == ["a.txt", "deep/er/b.bin", "empty"]
    assert read(vs, "v", "a.txt") == b"hello"
    assert os.listdir(vs.staging) == []


def test_a_batch_that_needs_a_file_as_a_directory_writes_nothing(vs):
    vs.create("v")
    batch = vs.begin_batch("v")
    batch.write("a", b"file")
    batch.write("a/b", b"below it")
    with pytest.raises(VolumePathConflict, match="writes both a file 'a'"):
        batch.commit()
    assert list(vs.list_files("v")) == []
    put(vs, "v", {"d/x": b"1"})
    batch = vs.begin_batch("v")
    batch.write("ok", b"1")
    batch.write("d", b"a directory is there")
    with pytest.raises(VolumePathConflict, match="'d' in volume 'v': it is a directory"):
        batch.commit()
    assert [e.path for e in vs.list_files("v")] == ["d/x"]  # 'ok' was not written either


def test_listing_prefixes_and_one_level(vs):
    vs.create("v")
    put(vs, "v", {"a.txt": b"1", "a/b.txt": b"22", "a/c/d.txt": b"333", "b.txt": b"4"})
    assert [e.path for e in vs.list_files("v")] == ["a.txt", "a/b.txt", "a/c/d.txt", "b.txt"]
    assert [e.path for e in vs.list_files("v", "a/")] == ["a/b.txt", "a/c/d.txt"]
    assert [e.path for e in vs.list_files("v", "a")] == ["a.txt", "a/b.txt", "a/c/d.txt"]
    assert [e.path for e in vs.list_files("v", "a/c/d")] == ["a/c/d.txt"]
    assert [e.path for e in vs.list_files("v", "zzz/")] == []
    assert [(e.path, e.size) for e in vs.list_files("v", "", recursive=False)] == \
        [("a.txt", 1), ("a/", 0), ("b.txt", 1)]
    with pytest.raises(InvalidVolumePath):
        list(vs.list_files("v", "../"))
    with pytest.raises(InvalidVolumePath):
        list(vs.list_files("v", "/etc"))


@pytest.fixture
def planted(vs, tmp_path) -> tuple[VolumeStore, Path]:
    """A volume in which a container planted symlinks out of it."""
    vs.create("v")
    root = vs.root("v")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"outside")
    os.symlink("/etc/passwd", root / "evil")
    os.symlink("/", root / "rootlink")
    os.symlink(outside, root / "out")
    os.mkdir(root / "real")
    os.symlink("../../outside/secret.txt", root / "real" / "rel")
    (root / "real" / "ok.txt").write_bytes(b"fine")
    return vs, outside


def test_planted_symlinks_are_never_followed_for_reads(planted):
    vs, _ = planted
    for path in ["evil", "rootlink/etc/passwd", "out/secret.txt", "real/rel"]:
        with pytest.raises(VolumePathConflict, match="symbolic link") as err:
            read(vs, "v", path)
        assert repr(path) in str(err.value)
    assert read(vs, "v", "real/ok.txt") == b"fine"


def test_planted_symlinks_are_not_listed_or_followed(planted):
    vs, _ = planted
    assert [e.path for e in vs.list_files("v")] == ["real/ok.txt"]
    assert list(vs.list_files("v", "out/")) == []
    assert list(vs.list_files("v", "rootlink/etc/")) == []
    assert vs.get("v").file_count == 1


def test_planted_symlinks_are_never_written_through(planted):
    vs, outside = planted
    passwd = Path("/etc/passwd").read_bytes()
    for path in ["evil", "out/secret.txt", "out/new.txt", "rootlink/tmp/chalk-volume-escape", "real/rel"]:
        batch = vs.begin_batch("v")
        batch.write(path, b"pwned")
        with pytest.raises(VolumePathConflict, match="symbolic link") as err:
            batch.commit()
        assert repr(path) in str(err.value)
    assert Path("/etc/passwd").read_bytes() == passwd
    assert (outside / "secret.txt").read_bytes() == b"outside"
    assert not (outside / "new.txt").exists() and not Path("/tmp/chalk-volume-escape").exists()


def test_planted_symlinks_are_never_removed_through(planted):
    vs, outside = planted
    for path in ["out/secret.txt", "rootlink/etc/passwd"]:
        with pytest.raises(VolumePathConflict, match="symbolic link"):
            vs.remove("v", path)
    assert (outside / "secret.txt").exists() and Path("/etc/passwd").exists()
    # A symlink itself can be removed: unlink never follows it, and its target stays.
    vs.remove("v", "evil")
    assert not os.path.lexists(vs.root("v") / "evil") and Path("/etc/passwd").exists()
    with pytest.raises(VolumePathConflict, match="is a directory"):
        vs.remove("v", "real")


def test_a_fifo_is_refused_without_blocking(vs):
    vs.create("v")
    os.mkfifo(vs.root("v") / "pipe")
    with pytest.raises(VolumePathConflict, match="not a regular file"):
        vs.open_read("v", "pipe")
    assert list(vs.list_files("v")) == []


def test_files_a_container_made_can_be_listed_read_and_removed(vs):
    vs.create("v")
    root = vs.root("v")
    os.makedirs(root / "run" / "deep", mode=0o700)
    fd = os.open(root / "run" / "deep" / "weights.bin", os.O_WRONLY | os.O_CREAT, 0o000)
    os.write(fd, b"w" * 100)
    os.close(fd)
    (root / "run" / "log.txt").write_bytes(b"log")
    os.chmod(root / "run" / "log.txt", 0o600)
    assert [(e.path, e.size) for e in vs.list_files("v")] == [("run/deep/weights.bin", 100), ("run/log.txt", 3)]
    if os.geteuid() == 0:  # a mode-000 file is readable by root only
        assert read(vs, "v", "run/deep/weights.bin") == b"w" * 100
    assert read(vs, "v", "run/log.txt") == b"log"
    vs.remove("v", "run/deep/weights.bin")
    vs.remove("v", "run/log.txt")
    assert list(vs.list_files("v")) == []
    with pytest.raises(VolumeFileNotFound, match="file 'run/log.txt' not found in volume 'v'"):
        vs.remove("v", "run/log.txt")
    with pytest.raises(VolumeFileNotFound):
        vs.open_read("v", "missing/dir/file")
