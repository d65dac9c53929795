"""Protocol v2 file operations: a real agent (as a subprocess) reads, writes and lists files in its
own filesystem for the daemon's client (chalkd.sandboxes.agent_link)."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from chalkd.sandboxes.agent_link import fs_list, fs_read, fs_read_open, fs_write
from tests.unit import test_agent

# The agent-as-a-subprocess fixtures of the v1 tests.
start_agent, agent, until = test_agent.start_agent, test_agent.agent, test_agent.until

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def work(tmp_path):
    """A directory of its own (the agent's socket and log are in tmp_path)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


async def read_all(sock, path) -> bytes:
    return b"".join([chunk async for chunk in fs_read(sock, path)])


def test_round_trip_of_a_multi_mib_file_into_a_new_nested_directory(agent, work):
    data = os.urandom((5 << 20) + 12345)
    target = work / "new" / "nested" / "dir" / "blob.bin"

    async def pieces():
        for i in range(0, len(data), 700_000):  # not aligned with the 1 MiB frames
            yield data[i:i + 700_000]

    async def go():
        size = await fs_write(agent.socket, str(target), pieces())
        reader = await fs_read_open(agent.socket, str(target))
        async with reader:
            chunks = [c async for c in reader]
        return size, reader.size, chunks

    size, announced, chunks = run(go())
    assert size == announced == len(data) and target.read_bytes() == data
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 1 << 20
    assert sorted(os.listdir(target.parent)) == ["blob.bin"]  # no temporary file left


def test_write_modes_and_overwrite(agent, work):
    path = work / "script.sh"

    async def go():
        await fs_write(agent.socket, str(path), [b"#!/bin/sh\n"], mode=0o750)
        first = stat.S_IMODE(os.stat(path).st_mode)
        await fs_write(agent.socket, str(path), [b"echo again\n", b""])  # mode None: keeps 0750
        return first

    assert run(go()) == 0o750
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750 and path.read_bytes() == b"echo again\n"
    empty = work / "empty"
    assert run(fs_write(agent.socket, str(empty), [])) == 0 and empty.read_bytes() == b""


def test_list(agent, work):
    (work / "d").mkdir()
    (work / "d" / "f.txt").write_bytes(b"12345")
    (work / "d" / "sub").mkdir()
    (work / "d" / "ln").symlink_to("f.txt")
    os.mkfifo(work / "d" / "fifo")
    entries = run(fs_list(agent.socket, str(work / "d")))
    assert [(e["name"], e["type"]) for e in entries] == [
        ("f.txt", "file"), ("fifo", "other"), ("ln", "link"), ("sub", "dir")]
    assert entries[0]["size"] == 5 and entries[0]["mtime"] == os.stat(work / "d" / "f.txt").st_mtime


def test_list_pages(agent, work):
    for i in range(2500):  # three pages of at most 1000
        (work / f"f{i:05d}").touch()
    names = [e["name"] for e in run(fs_list(agent.socket, str(work)))]
    assert names == sorted(f"f{i:05d}" for i in range(2500))


def test_errors_name_the_path(agent, work):
    missing = str(work / "missing")
    (work / "file").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=f"cannot read '{missing}': no such file"):
        run(read_all(agent.socket, missing))
    with pytest.raises(IsADirectoryError, match=f"cannot read '{work}': it is a directory"):
        run(read_all(agent.socket, str(work)))
    with pytest.raises(FileNotFoundError, match="cannot list .*missing"):
        run(fs_list(agent.socket, missing))
    with pytest.raises(NotADirectoryError, match="cannot list .*file"):
        run(fs_list(agent.socket, str(work / "file")))
    with pytest.raises(NotADirectoryError, match="cannot write .*file/below.*is not a directory"):
        run(fs_write(agent.socket, str(work / "file" / "below"), [b"data"]))
    with pytest.raises(NotADirectoryError, match="not a directory"):
        run(fs_write(agent.socket, str(work / "file" / "deeper" / "below"), [os.urandom(3 << 20)]))
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        run(fs_write(agent.socket, str(work), [b"data"]))
    with pytest.raises(ValueError, match="needs 'path': a non-empty string"):
        run(read_all(agent.socket, ""))
    with pytest.raises(ValueError, match="'mode' must be an integer permission mode"):
        run(fs_write(agent.socket, str(work / "m"), [b"x"], mode=0o70000))
    os.mkfifo(work / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):  # and the agent does not hang on it
        run(read_all(agent.socket, str(work / "fifo")))
    assert sorted(os.listdir(work)) == ["fifo", "file"]


@pytest.mark.skipif(os.getuid() == 0, reason="root reads anything")
def test_permission_denied(agent, work):
    secret = work / "secret"
    secret.write_bytes(b"x")
    secret.chmod(0)
    with pytest.raises(PermissionError, match="permission denied"):
        run(read_all(agent.socket, str(secret)))


def test_a_dropped_write_leaves_nothing(agent, work):
    target = work / "partial.bin"

    async def broken():
        yield os.urandom(2 << 20)
        raise RuntimeError("the upload broke")

    with pytest.raises(RuntimeError, match="the upload broke"):
        run(fs_write(agent.socket, str(target), broken()))
    # The agent drops its temporary file when the connection goes.
    run(until(lambda: not os.listdir(work), what="the temporary file to go"))
    assert not target.exists()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_read_abandoned_midway_releases_the_file(agent, work):
    big = work / "big.bin"
    big.write_bytes(os.urandom(32 << 20))
    before = _fds(agent.proc.pid)

    async def go():
        reader = await fs_read_open(agent.socket, str(big))
        async with reader:
            async for _ in reader:
                break  # one chunk, then walk away: the agent waits on backpressure, then sees the close

    run(go())
    run(until(lambda: _fds(agent.proc.pid) <= before, what="the agent to close the file"))
