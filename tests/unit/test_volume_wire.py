"""The volume lane's frames (chalkcompute/_volume_wire.py) over a real socket pair: what a sender
writes is what protobuf reads, data comes through in pieces of one reused buffer, and what is
malformed, too large, cut short or stopped fails with a clear error."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest
from grpclib import GRPCError
from grpclib.const import Status

from chalkcompute._framing import _HEADER, ERROR, MESSAGE, FrameTooLarge, frame
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._volume_wire import (
    DATA_FIELD,
    LaneClosed,
    LaneSocket,
    MalformedFrame,
    file_chunk_head,
    messages,
    run_in_thread,
    write_files_head,
)

pytestmark = pytest.mark.timeout(30)

WRITE = DATA_FIELD["WriteFilesRequest"]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    lanes = [LaneSocket(a.fileno(), buffer=4096), LaneSocket(b.fileno(), buffer=4096)]
    a.close()  # the lanes hold duplicates
    b.close()
    yield lanes
    for lane in lanes:
        lane.close()


def _send_in_thread(lane: LaneSocket, *buffers: bytes) -> threading.Thread:
    """Write from another thread (more than a socket buffer would block a single thread)."""
    t = threading.Thread(target=lambda: (lane.send(*buffers), lane.shutdown_write()))
    t.start()
    return t


def test_a_head_with_its_data_is_the_message_protobuf_reads():
    data = os.urandom(1000)
    wire = write_files_head(name="v", path="a/b.bin", end_of_file=True, data_len=len(data)) + data
    length, kind = _HEADER.unpack_from(wire)
    assert (length, kind) == (len(wire) - _HEADER.size, MESSAGE)
    msg = pb.WriteFilesRequest.FromString(wire[_HEADER.size:])
    assert (msg.name, msg.path, msg.data, msg.end_of_file, msg.commit) == ("v", "a/b.bin", data, True, False)
    chunk = file_chunk_head(3, size=10) + b"xyz"
    assert pb.FileChunk.FromString(chunk[_HEADER.size:]) == pb.FileChunk(data=b"xyz", size=10)
    assert file_chunk_head(0, size=0) == _HEADER.pack(0, MESSAGE)  # an empty file's one chunk


def test_data_last_is_streamed_through_the_reused_buffer_in_pieces(pair):
    sender, receiver = pair
    big = os.urandom(50_000)  # > the 4 KiB buffer: many pieces
    t = _send_in_thread(sender, write_files_head(name="v", path="big", data_len=len(big)), big,
                        write_files_head(path="big", end_of_file=True), write_files_head(commit=True))
    got = []
    for msg, n in messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20):
        got.append((msg.name, msg.path, msg.end_of_file, msg.commit, n,
                    b"".join(bytes(p) for p in receiver.pieces(n))))
    t.join()
    assert got == [("v", "big", False, False, len(big), big), ("", "big", True, False, 0, b""),
                   ("", "", False, True, 0, b"")]


def test_a_message_whose_data_is_not_last_is_parsed_whole(pair):
    # What protobuf itself writes (data=3 before end_of_file=4), e.g. from an older SDK.
    sender, receiver = pair
    msg = pb.WriteFilesRequest(name="v", path="p", data=os.urandom(9000), end_of_file=True)
    t = _send_in_thread(sender, frame(MESSAGE, msg.SerializeToString()))
    [(got, n)] = list(messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20))
    t.join()
    assert n == 0 and got == msg


def test_the_last_data_field_wins_as_in_protobuf(pair):
    sender, receiver = pair
    head = pb.WriteFilesRequest(path="p", data=b"first").SerializeToString()
    body = head + bytes([WRITE << 3 | 2, 6]) + b"second"
    t = _send_in_thread(sender, _HEADER.pack(len(body), MESSAGE) + body)
    it = messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20)
    msg, n = next(it)
    streamed = b"".join(bytes(p) for p in receiver.pieces(n))
    assert next(it, None) is None
    t.join()
    assert pb.WriteFilesRequest.FromString(body).data == b"second"  # protobuf's own reading
    assert (msg.path, msg.data, streamed) == ("p", b"", b"second")


def test_data_not_taken_is_skipped_before_the_next_message(pair):
    sender, receiver = pair
    t = _send_in_thread(sender, write_files_head(path="a", data_len=10_000), b"z" * 10_000,
                        write_files_head(path="b", data_len=3), b"abc")
    it = messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20)
    first, n = next(it)
    assert (first.path, n) == ("a", 10_000)
    next(receiver.pieces(n))  # one piece taken, the rest left
    second, n = next(it)
    assert (second.path, b"".join(bytes(p) for p in receiver.pieces(n))) == ("b", b"abc")
    assert next(it, None) is None
    t.join()


def test_readinto_takes_the_buffered_bytes_then_reads_the_socket(pair):
    sender, receiver = pair
    data = os.urandom(30_000)
    t = _send_in_thread(sender, file_chunk_head(len(data), size=len(data)), data)
    [(chunk, n)] = [(m, n) for m, n in _read_into_each(receiver)]
    t.join()
    assert chunk.size == len(data) and n == data


def _read_into_each(lane: LaneSocket):
    for msg, n in messages(lane, pb.FileChunk, DATA_FIELD["FileChunk"], limit=2**20):
        out = bytearray(n)
        lane.readinto(memoryview(out))
        yield msg, bytes(out)


def test_an_error_frame_raises_the_status_it_carries(pair):
    sender, receiver = pair
    t = _send_in_thread(sender, frame(ERROR, f"{Status.NOT_FOUND.value}:no file 'x' in volume 'v'".encode()))
    with pytest.raises(GRPCError) as info:
        list(messages(receiver, pb.FileChunk, 1, limit=2**20))
    t.join()
    assert info.value.status is Status.NOT_FOUND and info.value.message == "no file 'x' in volume 'v'"


def test_a_frame_over_the_limit_is_refused_naming_both_sizes(pair):
    sender, receiver = pair
    t = _send_in_thread(sender, _HEADER.pack(5000, MESSAGE))
    with pytest.raises(FrameTooLarge, match="message of 5000 bytes exceeds the limit of 4000 bytes"):
        list(messages(receiver, pb.WriteFilesRequest, WRITE, limit=4000))
    t.join()


@pytest.mark.parametrize(("body", "why"), [
    (bytes([WRITE << 3 | 3]), "wire type 3"),                  # a group: never in these messages
    (bytes([0x12, 50]) + b"x", "longer than its frame"),       # path claims 50 bytes, 1 in the frame
    (bytes([0x08]) + b"\xff" * 11, "varint longer than 10 bytes"),
    (bytes([0x12, 2]) + b"\xff\xfe", "malformed message"),      # a path that is not UTF-8
])
def test_malformed_frames_raise_malformed_frame(pair, body, why):
    sender, receiver = pair
    t = _send_in_thread(sender, _HEADER.pack(len(body), MESSAGE) + body)
    with pytest.raises(MalformedFrame, match=why):
        list(messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20))
    t.join()


def test_a_frame_cut_short_raises_lane_closed(pair):
    sender, receiver = pair
    t = _send_in_thread(sender, write_files_head(path="p", data_len=100), b"only part")
    it = messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20)
    _, n = next(it)
    with pytest.raises(LaneClosed, match="closed in the middle of a frame"):
        list(receiver.pieces(n))
    t.join()


@pytest.mark.parametrize("sendfile", [True, False])
def test_send_file_sends_a_range_and_says_when_the_file_ended_first(pair, tmp_path, sendfile):
    sender, receiver = pair
    sender._sendfile = sendfile  # False: the read-and-send way, for systems without sendfile
    src = tmp_path / "src.bin"
    data = os.urandom(20_000)
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert sender.send_file(fd, 100, 5000) == 5000
        assert sender.send_file(fd, 19_000, 5000) == 1000  # the file ends first
    finally:
        os.close(fd)
    sender.shutdown_write()
    received = bytearray()
    while True:
        try:
            more = receiver.exact(1)
        except LaneClosed:
            break
        received += more
    assert bytes(received) == data[100:5100] + data[19_000:]


def test_wake_stops_a_thread_waiting_on_the_socket(pair):
    _, receiver = pair
    errors: list[BaseException] = []
    started = threading.Event()

    def read() -> None:
        started.set()
        try:
            list(messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    started.wait(5)
    receiver.wake()
    t.join(5)
    assert not t.is_alive() and isinstance(errors[0], LaneClosed)


def test_cancelling_run_in_thread_wakes_the_thread_and_waits_for_it(pair):
    _, receiver = pair
    finished = threading.Event()

    def blocked() -> None:
        try:
            list(messages(receiver, pb.WriteFilesRequest, WRITE, limit=2**20))
        finally:
            finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(run_in_thread(blocked, receiver))
        await asyncio.sleep(0)  # the thread starts and waits on the socket
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()  # the thread ended before the cancellation was reported

    asyncio.run(main())


def test_run_in_thread_returns_and_raises_what_the_function_does(pair):
    _, lane = pair

    async def main() -> None:
        assert await run_in_thread(lambda: 42, lane) == 42
        with pytest.raises(KeyError, match="x"):
            await run_in_thread(lambda: {}["x"], lane)

    asyncio.run(main())


def test_fill_nowait_never_waits_and_says_nothing_data_end_or_full(pair):
    sender, receiver = pair  # the receiver's buffer is 4 KiB
    assert receiver.fill_nowait() is None and not receiver.full()
    sender.send(b"x" * 100)
    assert receiver.fill_nowait() == 100
    sender.send(b"y" * 5000)
    while not receiver.full():
        assert receiver.fill_nowait()
    assert receiver.fill_nowait() is None  # no room: nothing read
    assert receiver.exact(4096) == b"x" * 100 + b"y" * 3996
    sender.shutdown_write()
    assert receiver.fill_nowait() == 1004 and receiver.fill_nowait() == 0
