"""Volumes end to end: the SDK's VolumeClient/Volume and `chalkd volume` against a real daemon."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from chalkcompute import (
    Volume,
    VolumeClient,
    VolumeClosedError,
    VolumeError,
    VolumeFileNotFoundError,
    VolumeInvalidArgumentError,
    VolumeNotFoundError,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(daemon):
    with VolumeClient() as c:
        yield c


def test_the_reference_example(client):
    vol = client.create("models")
    vol.put("config.yaml", b"learning_rate: 0.01\n")
    assert vol.get("config.yaml") == b"learning_rate: 0.01\n"
    assert [f.path for f in vol.list()] == ["config.yaml"]
    with vol.batch_upload() as batch:
        batch.put("a.txt", b"hello")
        batch.put("b.txt", b"world")
    assert [f.path for f in vol.list()] == ["a.txt", "b.txt", "config.yaml"]
    assert vol.get("b.txt") == b"world"
    info = vol.refresh()
    assert (info.name, info.file_count, info.size_bytes) == ("models", 3, 30)
    assert info.created_at.tzinfo is not None and info.updated_at >= info.created_at
    vol.delete()


def test_batch_upload_with_an_exception_uploads_nothing(client, tmp_path):
    vol = client.create("batch-fail")
    local = tmp_path / "f.bin"
    local.write_bytes(b"local")
    with pytest.raises(KeyError):
        with vol.batch_upload() as batch:
            batch.put("a.txt", b"hello")
            batch.put_file("f.bin", local)
            raise KeyError("boom")
    assert vol.listdir() == []
    with vol.batch_upload() as batch:
        batch.put("a.txt", "text").put_file("sub/f.bin", local)
    assert vol.get("sub/f.bin") == b"local" and vol.get("a.txt") == b"text"


def test_create_returns_an_existing_volume_and_lookup_verifies(client):
    vol = client.create("twice")
    vol.put("x", b"1")
    again = client.create("twice")
    assert again.get("x") == b"1" and again.info.created_at == vol.info.created_at
    assert client.lookup("twice").info.file_count == 1
    with pytest.raises(VolumeNotFoundError, match="volume 'missing' not found") as err:
        client.lookup("missing")
    assert err.value.code == "NOT_FOUND"
    lazy = client.get("missing")  # no RPC until used
    with pytest.raises(VolumeNotFoundError):
        lazy.get("x")
    assert "twice" in [i.name for i in client.list()]


def test_missing_files_and_traversal_are_refused_naming_the_path(client):
    vol = client.create("errors")
    with pytest.raises(VolumeFileNotFoundError, match="file 'nope/x.txt' not found in volume 'errors'"):
        vol.get("nope/x.txt")
    with pytest.raises(VolumeFileNotFoundError):
        vol.remove("nope")
    for path in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\0b", ""]:
        for op in (vol.get, vol.remove, lambda p: vol.put(p, b"x")):
            with pytest.raises(VolumeInvalidArgumentError) as err:
                op(path)
            assert repr(path) in str(err.value) and err.value.code == "INVALID_ARGUMENT"
            assert isinstance(err.value, ValueError)
    assert vol.listdir() == []
    with pytest.raises(VolumeInvalidArgumentError, match="invalid volume name"):
        client.get("../etc")


def test_a_planted_symlink_is_refused_through_the_sdk(client, daemon):
    vol = client.create("planted")
    os.symlink("/etc/passwd", daemon.home / "volumes" / "planted" / "evil")
    with pytest.raises(VolumeError, match="symbolic link") as err:
        vol.get("evil")
    assert err.value.code == "FAILED_PRECONDITION"
    with pytest.raises(VolumeError, match="symbolic link"):
        vol.put("evil", b"pwned")
    assert vol.listdir() == []


def test_remove_listdir_iterdir_put_file_and_delete(client, tmp_path):
    vol = client.create("files")
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 2**20 + 17))
    assert vol.put_file("dir/big.bin", local) is vol
    vol.put("dir/small.txt", "s").put("top.txt", b"t")
    assert vol.get("dir/big.bin") == local.read_bytes()
    entries = vol.listdir("dir/")
    assert [(e.path, e.size) for e in entries] == [("dir/big.bin", 3 * 2**20 + 17), ("dir/small.txt", 1)]
    assert entries[0].mtime > time.time() - 60
    assert [e.path for e in vol.listdir(recursive=False)] == ["dir/", "top.txt"]
    it = vol.iterdir()
    assert next(it).path == "dir/big.bin"
    it.close()
    assert [e.path for e in vol.iterdir("top")] == ["top.txt"]
    out = tmp_path / "out.bin"
    assert vol.get_file("dir/big.bin", out) == local.stat().st_size and out.read_bytes() == local.read_bytes()
    assert vol.remove("top.txt") is vol
    assert [e.path for e in vol.listdir()] == ["dir/big.bin", "dir/small.txt"]
    vol.delete()
    with pytest.raises(VolumeNotFoundError):
        vol.listdir()
    assert "files" not in [i.name for i in client.list()]


def test_many_files_in_one_batch(client):
    vol = client.create("many")
    with vol.batch_upload() as batch:
        for i in range(500):
            batch.put(f"d{i % 7}/f{i:04d}", str(i))
    assert vol.refresh().file_count == 500
    assert vol.get("d3/f0003") == b"3"


def test_grpc_transport_works_too(client, monkeypatch, tmp_path):
    monkeypatch.setenv("CHALK_TRANSPORT", "grpc")
    with VolumeClient(metadata=[("x-test", "1")]) as c:
        vol = c.create("over-grpc")
        vol.put("a", b"x" * (2**20 + 5))
        assert vol.get("a") == b"x" * (2**20 + 5)
        with pytest.raises(VolumeInvalidArgumentError):
            vol.put("../a", b"x" * (3 << 20))
        assert [e.path for e in vol.iterdir()] == ["a"]


def test_a_closed_client_raises(daemon):
    c = VolumeClient()
    vol = c.create("closing")
    c.close()
    for op in (lambda: c.create("x"), lambda: c.list(), lambda: c.lookup("closing"), lambda: vol.get("a"),
               lambda: vol.put("a", b"1"), lambda: vol.listdir(), lambda: vol.delete(), lambda: c.get("x")):
        with pytest.raises(VolumeClosedError, match="closed"):
            op()
    # credentials= is TLS (an SSLContext, a CA bundle path or True); anything else is refused by name.
    with pytest.raises(TypeError, match="credentials must be an ssl.SSLContext"):
        VolumeClient(credentials=object())


def test_async_twins(client):
    async def main():
        vol = await client.create.aio("async-vol")
        await vol.put.aio("a.txt", b"hi")
        async with vol.batch_upload() as batch:
            batch.put("b.txt", b"there")
        assert await vol.get.aio("a.txt") == b"hi"
        assert [e.path async for e in vol.iterdir.aio()] == ["a.txt", "b.txt"]
        assert [e.path for e in await vol.listdir.aio()] == ["a.txt", "b.txt"]
        assert (await client.lookup.aio("async-vol")).info.file_count == 2
        assert "async-vol" in [i.name for i in await client.list.aio()]
        await vol.remove.aio("a.txt")
        await vol.delete.aio()

    asyncio.run(main())


def test_volume_by_name_uses_the_default_client(daemon):
    vol = Volume("by-name")
    with pytest.raises(VolumeNotFoundError):
        vol.refresh()
    VolumeClient().create("by-name")
    assert vol.info.file_count == 0


def cli(*args: str, stdin: bytes | None = None, target: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", "volume", *args, "--target", target],
                          input=stdin, capture_output=True, cwd=ROOT, timeout=60)


def test_cli_commands(daemon, tmp_path):
    t = daemon.target
    blob = bytes(range(256)) * 10
    assert cli("put", "cli-vol", "bin/blob", "-", stdin=blob, target=t).returncode == 0
    local = tmp_path / "local.txt"
    local.write_text("from a file\n")
    assert cli("put", "cli-vol", "notes.txt", str(local), target=t).returncode == 0
    out = cli("get", "cli-vol", "bin/blob", target=t)
    assert out.returncode == 0 and out.stdout == blob
    assert cli("get", "cli-vol", "notes.txt", "-o", str(tmp_path / "o.txt"), target=t).returncode == 0
    assert (tmp_path / "o.txt").read_text() == "from a file\n"
    ls = cli("ls", "cli-vol", target=t)
    assert ls.returncode == 0 and b"bin/blob" in ls.stdout and b"notes.txt" in ls.stdout
    assert b"cli-vol" in cli("ls", target=t).stdout
    assert b"notes.txt" not in cli("ls", "cli-vol", "bin/", target=t).stdout
    missing = cli("get", "cli-vol", "nope", target=t)
    assert missing.returncode == 1 and missing.stderr == b"chalkd: file 'nope' not found in volume 'cli-vol'\n"
    bad = cli("get", "cli-vol", "../x", target=t)
    assert bad.returncode == 1 and bad.stderr.startswith(b"chalkd: invalid path '../x'")
    assert cli("rm", "cli-vol", "notes.txt", target=t).returncode == 0
    assert b"notes.txt" not in cli("ls", "cli-vol", target=t).stdout
    assert cli("delete", "cli-vol", target=t).returncode == 0
    gone = cli("delete", "cli-vol", target=t)
    assert gone.returncode == 1 and gone.stderr == b"chalkd: volume 'cli-vol' not found\n"


@pytest.mark.timeout(300)
def test_a_1gib_round_trip_keeps_the_daemons_memory_bounded(fresh_daemon, tmp_path):
    src = tmp_path / "big.bin"
    block = os.urandom(2**20)
    with open(src, "wb") as f:
        for _ in range(1024):
            f.write(block)
    proc = psutil.Process(fresh_daemon.proc.pid)
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        vol = VolumeClient(fresh_daemon.target).create("huge")
        vol.put_file("big.bin", src)
        assert vol.listdir()[0].size == 2**30
        out = tmp_path / "back.bin"
        got = cli("get", "huge", "big.bin", "-o", str(out), target=fresh_daemon.target)
        assert got.returncode == 0, got.stderr
    finally:
        done.set()
        sampler.join()
    assert out.stat().st_size == 2**30
    with open(src, "rb") as a, open(out, "rb") as b:
        while chunk := a.read(2**24):
            assert chunk == b.read(2**24)
    assert peak[0] < 300 * 2**20, f"the daemon's RSS peaked at {peak[0] / 2**20:.0f} MiB"


def test_bytes_of_several_chunks_and_empty_files_round_trip_on_the_socket(client, tmp_path):
    # The local lane (the default here): pieces sent and read by one thread, data last in each frame.
    vol = client.create("lane-shapes")
    data = os.urandom(5 * 2**20 // 2 + 3)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with vol.batch_upload() as batch:
        batch.put("big", data).put("none", b"").put_file("empty-file", empty)
        for i in range(300):
            batch.put(f"small/{i}", str(i))
    assert vol.get("big") == data
    assert vol.get("none") == b"" and vol.get("empty-file") == b""
    assert vol.get_file("none", tmp_path / "none.out") == 0 and (tmp_path / "none.out").read_bytes() == b""
    assert vol.get("small/299") == b"299" and vol.refresh().file_count == 303


def test_frames_protobuf_writes_itself_still_work_on_the_socket(client):
    """An SDK that serializes whole messages (data before end_of_file, as protobuf orders
    fields) talks to this daemon; and protobuf reads the daemon's chunks (size, then data)."""
    from chalkcompute._bridge import run_sync
    from chalkcompute._framing import FramedStream
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    vol = client.create("older-sdk")
    data = os.urandom(2**20 + 100)
    stub = client._stub

    async def write_and_read() -> tuple[pb.WriteFilesResponse, list[pb.FileChunk]]:
        async with client._client.open_stream(b"volumes.write", stub.WriteFiles, pb.WriteFilesResponse) as s:
            assert isinstance(s, FramedStream)
            await s.send_message(pb.WriteFilesRequest(name="older-sdk", path="f", data=data[:2**20]))
            await s.send_message(pb.WriteFilesRequest(path="f", data=data[2**20:], end_of_file=True))
            await s.send_message(pb.WriteFilesRequest(commit=True))
            await s.end()
            resp = await s.recv_message()
        async with client._client.open_stream(b"volumes.read", stub.ReadFile, pb.FileChunk) as s:
            assert isinstance(s, FramedStream)
            await s.send_message(pb.ReadFileRequest(name="older-sdk", path="f"))
            await s.end()
            chunks = [c async for c in s]
        return resp, chunks

    resp, chunks = run_sync(write_and_read())
    assert list(resp.paths) == ["f"] and resp.bytes == len(data)
    assert chunks[0].size == len(data) and all(c.size == 0 for c in chunks[1:])
    assert b"".join(c.data for c in chunks) == data == vol.get("f")


@pytest.mark.parametrize("size", [2**18 - 30, 2**18, 2**18 + 1])
def test_sizes_around_the_lanes_buffer_round_trip(client, tmp_path, size):
    # Below it a put is framed on the loop and a get read there; above, both go to a thread.
    vol = client.create("lane-edges")
    data = os.urandom(size)
    vol.put("f", data)
    assert vol.get("f") == data
    assert vol.get_file("f", tmp_path / "f") == size and (tmp_path / "f").read_bytes() == data
