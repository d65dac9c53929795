"""Progress displays against a real daemon: large volume transfers, on both transports (image builds:
tests/docker/test_build_progress.py, since only the Docker runtime builds images through the SDK).

Displays are forced with CHALK_PROGRESS=1 and read from pytest's capture of sys.stderr, as a terminal
would have drawn them; with CHALK_PROGRESS=0 (and by default, stderr not being a terminal here) the
output is what it was before displays existed.
"""

from __future__ import annotations

import re

import pytest

from chalkcompute import VolumeClient
from chalkcompute._bridge import run_sync
from chalkcompute._progress import LARGE_TRANSFER

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("daemon")]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BIG = 2 * LARGE_TRANSFER  # 16 MiB: "16.8 MB" in decimal units


def plain(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "\n")


@pytest.fixture(params=["lane", "grpc"])
def vol(request, monkeypatch):
    if request.param == "grpc":
        monkeypatch.setenv("CHALK_TRANSPORT", "grpc")
    monkeypatch.setenv("COLUMNS", "200")
    with VolumeClient() as c:
        v = c.create(f"progress-{request.param}")
        yield v
        v.delete()


def test_large_puts_and_gets_show_bytes_then_done(vol, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CHALK_PROGRESS", "1")
    data = bytes(range(256)) * (BIG // 256)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    vol.put_file("big.bin", src)
    out = plain(capsys.readouterr().err)
    assert re.search(rf"put {vol.name}:big\.bin .* 16\.8/16\.8 MB · .* ETA 0:00:00", out), out

    assert vol.get_file("big.bin", tmp_path / "back.bin") == BIG
    out = plain(capsys.readouterr().err)
    assert re.search(rf"get {vol.name}:big\.bin .* 16\.8/16\.8 MB · .* ETA 0:00:00", out), out
    assert (tmp_path / "back.bin").read_bytes() == data

    assert vol.get("big.bin") == data  # into memory
    assert re.search(rf"get {vol.name}:big\.bin .* 16\.8/16\.8 MB", plain(capsys.readouterr().err))

    async def drain() -> bytes:  # what `chalkd volume get NAME PATH` (to stdout) reads
        return b"".join([piece async for piece, _ in vol._chunks("big.bin")])

    assert run_sync(drain()) == data
    assert re.search(rf"get {vol.name}:big\.bin .* 16\.8/16\.8 MB", plain(capsys.readouterr().err))

    vol.put("mem.bin", data)  # from memory
    assert re.search(rf"put {vol.name}:mem\.bin .* 16\.8/16\.8 MB", plain(capsys.readouterr().err))

    with vol.batch_upload() as batch:
        batch.put_file("a.bin", src)
        batch.put("b.bin", data)
    assert re.search(rf"put {vol.name}:a\.bin \(\+1 files\) .* 33\.6/33\.6 MB", plain(capsys.readouterr().err))


def test_small_transfers_and_displays_off_print_nothing(vol, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CHALK_PROGRESS", "1")
    small = b"x" * (LARGE_TRANSFER - 1)
    vol.put("small.bin", small)
    assert vol.get("small.bin") == small
    assert capsys.readouterr().err == ""
    data = b"y" * BIG
    for setting in ("0", None):  # off, and the default with stderr not a terminal
        if setting is None:
            monkeypatch.delenv("CHALK_PROGRESS")
        else:
            monkeypatch.setenv("CHALK_PROGRESS", setting)
        vol.put("big.bin", data)
        assert vol.get("big.bin") == data
        assert vol.get_file("big.bin", tmp_path / "b") == BIG
        assert capsys.readouterr().err == ""


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def test_map_progress_counts_inputs_done(capsys, monkeypatch):
    from chalkcompute import RemoteFunction

    monkeypatch.setenv("COLUMNS", "200")
    sq = RemoteFunction(square, name="progress_square")
    plus = RemoteFunction(add, name="progress_add")
    monkeypatch.setenv("CHALK_PROGRESS", "1")
    assert list(sq.map(range(20), progress=True)) == [x * x for x in range(20)]
    assert re.search(r"map progress_square .* 20/20", plain(capsys.readouterr().err))
    assert sorted(sq.map((x for x in range(7)), order_outputs=False, progress=True)) == [x * x for x in range(7)]
    assert re.search(r"map progress_square .* 7 done", plain(capsys.readouterr().err))  # no len(): a count
    assert list(plus.starmap([(1, 2), (3, 4)], progress=True)) == [3, 7]
    assert re.search(r"starmap progress_add .* 2/2", plain(capsys.readouterr().err))

    async def gather() -> list[int]:
        return [y async for y in sq.map.aio([1, 2, 3], progress=True)]

    import asyncio

    assert asyncio.run(gather()) == [1, 4, 9]
    assert re.search(r"map progress_square .* 3/3", plain(capsys.readouterr().err))

    assert list(sq.map(range(5))) == [0, 1, 4, 9, 16]  # progress=False (the default): nothing shows
    monkeypatch.setenv("CHALK_PROGRESS", "0")
    assert list(sq.map(range(5), progress=True)) == [0, 1, 4, 9, 16]  # displays off: nothing either
    assert capsys.readouterr().err == ""


def test_a_large_lazy_file_upload_shows_its_bytes(tmp_path, capsys, monkeypatch):
    from chalkcompute import Image
    from chalkcompute._build import upload_lazy_files
    from chalkcompute._client import Client

    monkeypatch.setenv("CHALK_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    big = tmp_path / "weights.bin"
    big.write_bytes(bytes(range(256)) * (BIG // 256 - 1) + tmp_path.name.encode().ljust(256))  # unique content
    image = Image.debian_slim().add_local_file(big, "/app/weights.bin")  # strategy="volume": uploaded lazily
    assert run_sync(upload_lazy_files(Client.get(), image)) == 1
    assert re.search(rf"upload {re.escape(str(big))} .* 16\.8/16\.8 MB", plain(capsys.readouterr().err))
    assert run_sync(upload_lazy_files(Client.get(), image)) == 0  # the daemon has it: nothing moves, nothing shows
    assert capsys.readouterr().err == ""
