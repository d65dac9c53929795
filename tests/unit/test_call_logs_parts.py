"""The parts of call logs without a daemon: the worker's capture (chalkcompute.worker.output), the
daemon's store (chalkd.logs.store: segments, index, caps, restart) and the caller's live printer."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time

import pytest

from chalkcompute import _logs
from chalkcompute._client import current_call_id
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.worker import output
from chalkcompute.worker.output import LOGGING, STDERR, STDOUT, CallLogHandler, CallStream, OutputCapture, batch_ids
from chalkd.logs.store import LogStore

pytestmark = pytest.mark.timeout(30)


def _texts(lines: list[pb.LogLine]) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(x.call_ids), x.text) for x in lines]


# -- the worker's capture ------------------------------------------------------------------------


def test_a_stream_routes_by_the_writer_s_call_and_tees_to_the_real_stream():
    cap, real = OutputCapture(), io.StringIO()
    out = CallStream(cap, STDOUT, real)
    out.write("before any call\n")          # the replica's own: not captured
    token = current_call_id.set("fc-1")
    try:
        print("hello", "world", file=out)   # print writes its parts and the newline separately
        out.write("two\nlines\n")
    finally:
        current_call_id.reset(token)
    assert _texts(cap.take()) == [(("fc-1",), "hello world"), (("fc-1",), "two"), (("fc-1",), "lines")]
    assert real.getvalue() == "before any call\nhello world\ntwo\nlines\n"
    assert cap.take() == []


def test_threads_running_different_calls_keep_their_lines_apart():
    cap = OutputCapture()
    out = CallStream(cap, STDOUT, io.StringIO())
    go = threading.Barrier(2)

    def run(call_id: str) -> None:
        current_call_id.set(call_id)  # a pool thread of its own: its own context
        go.wait()
        for i in range(200):
            out.write(f"{call_id} {i}\n")

    threads = [threading.Thread(target=run, args=(c,)) for c in ("fc-a", "fc-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = cap.take()
    for cid in ("fc-a", "fc-b"):
        mine = [x.text for x in lines if list(x.call_ids) == [cid]]
        assert mine == [f"{cid} {i}" for i in range(200)]


def test_a_batched_invocation_tags_every_call_of_the_batch():
    cap = OutputCapture()
    out = CallStream(cap, STDERR, io.StringIO())
    token = current_call_id.set("fc-1")
    try:
        with batch_ids(("fc-1", "fc-2", "fc-3")):
            out.write("once for three\n")
        out.write("back to one\n")
    finally:
        current_call_id.reset(token)
    assert _texts(cap.take()) == [(("fc-1", "fc-2", "fc-3"), "once for three"), (("fc-1",), "back to one")]


def test_past_the_bound_lines_are_dropped_and_counted_and_the_writer_never_waits():
    cap = OutputCapture(max_bytes=1000)
    for i in range(500):
        cap.write(("fc-1",), STDOUT, f"line {i:04d}\n")
    lines = cap.take()
    kept = [x for x in lines if x.text.startswith("line ")]
    assert kept and sum(len(x.text) for x in kept) <= 1000
    assert lines[-1].text.startswith(f"[chalkd: {500 - len(kept)} lines dropped")
    assert list(lines[-1].call_ids) == ["fc-1"]
    cap.write(("fc-1",), STDOUT, "room again\n")
    assert _texts(cap.take()) == [(("fc-1",), "room again")]


def test_a_line_without_its_newline_goes_once_old_or_when_flushed():
    cap = OutputCapture()
    cap.write(("fc-1",), STDOUT, "progress: 10%")
    assert cap.take() == [] and not cap.has_stale_partial()
    assert _texts(cap.take(flush_partial=True)) == [(("fc-1",), "progress: 10%")]
    cap.write(("fc-1",), STDOUT, "x" * (output.MAX_LINE_CHARS + 5))  # a newline-less flood is cut
    assert [len(x.text) for x in cap.take()] == [output.MAX_LINE_CHARS]


def test_a_call_s_log_record_goes_to_the_call_and_once_to_the_replica_log():
    cap, real = OutputCapture(), io.StringIO()
    handler = CallLogHandler(cap, real)
    logger = logging.getLogger("test_call_logs_parts.handler")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        token = current_call_id.set("fc-9")
        try:
            logger.warning("inside %d", 7)
        finally:
            current_call_id.reset(token)
    finally:
        logger.removeHandler(handler)
    assert [(x.stream, x.text) for x in cap.take()] == [(LOGGING, "WARNING test_call_logs_parts.handler: inside 7")]
    assert real.getvalue() == "outside\ninside 7\n"


def test_a_nested_call_s_line_is_relayed_to_the_outer_call_marked():
    cap = OutputCapture()
    cap.relay("fc-outer", pb.LogLine(call_ids=["fc-inner"], ts=1.0, text="deep", function_name="inner"))
    (line,) = cap.take()
    assert list(line.call_ids) == ["fc-outer"] and line.relayed and line.function_name == "inner"


# -- the daemon's store --------------------------------------------------------------------------


def _line(call: str, text: str, ts: float | None = None) -> pb.LogLine:
    return pb.LogLine(call_ids=[call], ts=time.time() if ts is None else ts, stream=STDOUT, text=text)


def test_store_reads_a_call_a_version_a_replica_since_and_tail(tmp_path):
    store = LogStore(tmp_path / "calls")
    try:
        now = time.time()
        store.append("fv-1", "r-1", [_line("fc-a", "a0", now - 100), _line("fc-b", "b0", now - 50)])
        store.append("fv-1", "r-2", [_line("fc-a", "a1", now - 10)])
        store.append("fv-2", "r-3", [_line("fc-c", "c0", now)])
        assert [r.text for r in store.read(call_id="fc-a")] == ["a0", "a1"]
        assert [r.text for r in store.read(version_ids=["fv-1"])] == ["a0", "b0", "a1"]
        assert [r.text for r in store.read(version_ids=["fv-1"], replica_id="r-2")] == ["a1"]
        assert [r.text for r in store.read(version_ids=["fv-1"], since=now - 60)] == ["b0", "a1"]
        assert [r.text for r in store.read(version_ids=["fv-1", "fv-2"], tail=2)] == ["a1", "c0"]
        assert store.read(call_id="fc-a")[1].replica_id == "r-2"
    finally:
        store.close()
    # The index is per segment, not per line: one small file beside each segment.
    idx = json.loads((tmp_path / "calls" / "fv-1" / "r-1" / "000001.idx").read_text())
    assert idx["calls"] == ["fc-a", "fc-b"] and idx["bytes"] > 0


def test_a_full_disk_drops_lines_with_one_error_a_minute_and_the_writer_goes_on(tmp_path, monkeypatch, caplog):
    import errno

    store = LogStore(tmp_path / "calls")
    try:
        real = store._write

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store, "_write", full)
        with caplog.at_level(logging.ERROR, logger="chalkd.logs.store"):
            for i in range(20):
                store.append("fv-1", "r-1", [_line("fc-a", f"lost {i}", time.time())])
                store.sync()
        errors = [r for r in caplog.records if "cannot write call logs" in r.getMessage()]
        assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
        monkeypatch.setattr(store, "_write", real)  # room again: lines are stored
        store.append("fv-1", "r-1", [_line("fc-a", "kept", time.time())])
        assert [r.text for r in store.read(call_id="fc-a")] == ["kept"]
    finally:
        store.close()


def test_store_rotates_and_caps_per_replica_and_in_total(tmp_path):
    store = LogStore(tmp_path / "calls", max_bytes=64 * 1024, replica_max_bytes=16 * 1024, segment_bytes=4096)
    try:
        for i in range(400):  # a chatty replica: ~100 bytes a line, far past its cap
            store.append("fv-1", "r-chatty", [_line(f"fc-{i}", f"chatty line {i:05d} " + "x" * 40)])
        store.append("fv-1", "r-quiet", [_line("fc-q", "quiet")])
        store.sync()
        chatty = sum(p.stat().st_size for p in (tmp_path / "calls" / "fv-1" / "r-chatty").glob("*.log"))
        assert chatty <= 16 * 1024 + 4096  # its cap, plus the segment being written
        assert len(list((tmp_path / "calls" / "fv-1" / "r-chatty").glob("*.log"))) > 1  # rotated
        kept = store.read(version_ids=["fv-1"], replica_id="r-chatty")
        assert kept[-1].text.startswith("chatty line 00399")  # the oldest went first
        assert store.read(call_id="fc-0") == []
        assert [r.text for r in store.read(call_id="fc-q")] == ["quiet"]  # the quiet one keeps its lines
        for r in range(10):  # many replicas: the total cap holds
            for i in range(60):
                store.append("fv-2", f"r-{r}", [_line(f"fc-{r}-{i}", "y" * 100)])
        store.sync()
        assert store.usage() <= 64 * 1024 + 11 * 4096
        on_disk = sum(p.stat().st_size for p in (tmp_path / "calls").rglob("*.log"))
        assert on_disk == store.usage()
    finally:
        store.close()


def test_store_removes_lines_past_the_age_limit(tmp_path):
    store = LogStore(tmp_path / "calls", max_age=60, segment_bytes=1024)
    try:
        old = time.time() - 3600
        for i in range(30):  # several closed segments, an hour old
            store.append("fv-1", "r-old", [_line("fc-old", f"old {i} " + "z" * 60, old)])
        store.replica_gone("fv-1", "r-old")
        store.append("fv-1", "r-new", [_line("fc-new", "new")])
        store.expire()
        store.append("fv-1", "r-new", [_line("fc-new", "newer")])
        assert store.read(call_id="fc-old") == []
        assert [r.text for r in store.read(call_id="fc-new")] == ["new", "newer"]
    finally:
        store.close()


def test_store_finds_what_an_earlier_run_left_and_rebuilds_a_missing_index(tmp_path):
    store = LogStore(tmp_path / "calls")
    store.append("fv-1", "r-1", [_line("fc-a", "kept")])
    store.close()
    (tmp_path / "calls" / "fv-1" / "r-1" / "000001.idx").unlink()  # a crash before the index was written
    again = LogStore(tmp_path / "calls")
    try:
        assert [r.text for r in again.read(call_id="fc-a")] == ["kept"]
        again.append("fv-1", "r-1", [_line("fc-a", "more")])
        assert [r.text for r in again.read(call_id="fc-a")] == ["kept", "more"]
        assert (tmp_path / "calls" / "fv-1" / "r-1" / "000002.log").exists()  # a new segment, the old one kept
    finally:
        again.close()


def test_store_caps_are_checked():
    with pytest.raises(ValueError, match="--log-max-bytes must be at least 4096"):
        LogStore("/nonexistent/never-made", max_bytes=10)


# -- the caller's live printer -------------------------------------------------------------------


def test_live_lines_are_prefixed_and_bounded_with_a_dropped_marker(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    printer = _logs._Printer()
    monkeypatch.setattr(_logs, "_printer", printer)
    monkeypatch.setattr(_logs, "MAX_SHOW_BYTES", 200)
    with printer.cond:  # hold the writer back: lines pile up past the bound
        for i in range(50):
            _logs.show(pb.CallLogs(ref=1, call_id="fc-1", lines=[pb.LogLine(text=f"line {i}")]), "fn", "",
                       several=i % 2 == 1)
    done = threading.Event()
    while not done.wait(0.01):
        if "dropped" in err.getvalue():
            done.set()
    text = err.getvalue()
    assert text.startswith("[fn] line 0\n[fn fc-1] line 1\n")
    assert "lines dropped" in text and "line 49" not in text


def test_live_output_setting(monkeypatch):
    monkeypatch.setenv("CHALK_SHOW_OUTPUT", "0")
    assert not _logs.live_wanted()
    monkeypatch.setenv("CHALK_SHOW_OUTPUT", "1")
    assert _logs.live_wanted()
    monkeypatch.delenv("CHALK_SHOW_OUTPUT")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not _logs.live_wanted()


# -- a replica's output file ---------------------------------------------------------------------


def test_a_replica_file_is_private_and_rotated_at_its_cap(tmp_path):
    from chalkd.logs.replica_file import ReplicaLogFile

    path = tmp_path / "r-1.log"
    with ReplicaLogFile(path, max_bytes=100) as out:
        for i in range(30):
            out.write(f"line {i:02d}\n".encode())  # 8 bytes a line: 240 bytes in all
    assert path.stat().st_mode & 0o777 == 0o600
    older = tmp_path / "r-1.log.1"
    assert path.stat().st_size <= 100 and older.stat().st_size <= 100
    assert path.read_text().splitlines()[-1] == "line 29"
    assert not (tmp_path / "r-1.log.2").exists()  # one older file at most


def test_idle_replica_files_are_swept_by_age_and_total(tmp_path):
    import os

    from chalkd.logs.replica_file import sweep_replica_files

    now = time.time()
    for name, age, size in (("r-old.log", 3 * 86400, 10), ("r-a.log", 600, 500), ("r-b.log", 300, 500),
                            ("r-live.log", 0, 5000)):
        p = tmp_path / name
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age, now - age))
    assert sweep_replica_files(tmp_path, max_bytes=5600, max_age=86400) == 2  # r-old by age, r-a to fit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-b.log", "r-live.log"]  # a live one stays


def test_a_read_returns_at_most_its_cap_newest_first_and_says_so(tmp_path, monkeypatch):
    from chalkd.logs import store as store_module

    monkeypatch.setattr(store_module, "MAX_READ_LINES", 50)
    store = LogStore(tmp_path / "calls", segment_bytes=1024)
    try:
        t0 = time.time() - 1000
        for i in range(300):  # many segments, two replicas interleaved
            store.append("fv-1", f"r-{i % 2}", [_line(f"fc-{i}", f"line {i:03d}", t0 + i)])
        assert [r.text for r in store.read(version_ids=["fv-1"], tail=3)] == ["line 297", "line 298", "line 299"]
        rows = store.read(version_ids=["fv-1"])
        assert rows[0].text.startswith("[chalkd: older lines not shown")
        assert [r.text for r in rows[1:]] == [f"line {i:03d}" for i in range(250, 300)]
        assert len(store.read(version_ids=["fv-1"], since=t0 + 290)) == 10  # no marker: all that matched
    finally:
        store.close()
