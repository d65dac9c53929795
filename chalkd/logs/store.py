"""The daemon's store of what handlers print: per function version, per replica, per call.

Lines come from the workers' streams (``WorkerRequest.logs``) on the event loop;
:meth:`LogStore.append` only queues them, and one writer thread writes them to
files under ``<home>/logs/calls``::

    <home>/logs/calls/<version id>/<replica id>/<seq>.log   one JSON object per line
    <home>/logs/calls/<version id>/<replica id>/<seq>.idx   the segment's index

A segment is rotated at ``segment_bytes``. Its index (one small JSON file per
segment, never one entry per line) says which calls wrote into it and the
times of its first and last lines, so a call's lines are read from the few
segments that hold them. Files are capped: per replica (its oldest segments
go first), in total (the oldest segments of all go first) and by age; the
replica that is over is the one that loses lines, so one chatty handler
cannot fill the disk. Reads wait for what was queued before them::

    store = LogStore(home / "logs" / "calls", max_bytes=1 << 30, max_age=7 * 86400)
    store.append("fv-1", "r-2", lines)            # on the event loop: never blocks
    rows = store.read(call_id="fc-3", tail=100)   # in a thread: LogRecord list, oldest first
    store.close()

The store holds what the handler wrote and nothing of ours: no arguments, no
environment, no secret values.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.logs.replica_file import sweep_replica_files

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30          # all call logs together
DEFAULT_MAX_AGE = 7 * 86400.0        # seconds
MAX_QUEUED_BYTES = 64 << 20          # waiting for the writer; past it lines are dropped (counted, marked)
MAX_READ_LINES = 200_000             # one read returns at most this many lines (the newest)
SWEEP_SECONDS = 30.0                 # how often the writer looks for segments past the age limit
COALESCE_SECONDS = 0.02              # the writer's pause after a write: a burst of small batches is one write
INDEX_SECONDS = 1.0                  # an open segment's index on disk lags its file by at most this (reads
                                     # use the index in memory; the file is for the next start)


@dataclass
class LogRecord:
    """One stored line."""

    ts: float
    call_ids: list[str]
    stream: int
    text: str
    version_id: str
    replica_id: str

    def to_pb(self) -> pb.LogLine:
        return pb.LogLine(call_ids=self.call_ids, ts=self.ts, stream=self.stream, text=self.text,
                          replica_id=self.replica_id)


@dataclass(eq=False)  # hashed by identity: sets of segments
class _Segment:
    path: Path               # the .log file
    version_id: str
    replica_id: str
    seq: int
    size: int = 0
    first: float = 0.0
    last: float = 0.0
    calls: set[str] = field(default_factory=set)
    dirty: bool = False      # its index on disk is behind

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(".idx")

    def write_index(self) -> None:
        tmp = self.path.with_suffix(".idx.tmp")
        tmp.write_text(json.dumps({"first": self.first, "last": self.last, "bytes": self.size,
                                   "calls": sorted(self.calls)}))
        os.replace(tmp, self.index_path)
        self.dirty = False


class LogStore:
    """See the module docstring. Thread-safe; ``append`` is for the event loop, the rest for threads."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_age: float = DEFAULT_MAX_AGE,
                 replica_max_bytes: int = 0, segment_bytes: int = 0, replica_files: Path | None = None) -> None:
        if max_bytes < 4096:
            raise ValueError(f"--log-max-bytes must be at least 4096, got {max_bytes}")
        if max_age <= 0:
            raise ValueError(f"--log-max-age must be positive, got {max_age}")
        self.root = Path(root)
        for d in (self.root.parent, self.root):  # handlers' output is user data: only our user reads it
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age = max_age
        # The replicas' own output files (chalkd.logs.replica_file): swept here too, by the same caps.
        self.replica_files = replica_files if replica_files is not None else self.root.parent / "replicas"
        # A replica may hold a quarter of the total (at least two segments), so others keep theirs.
        self.replica_max_bytes = replica_max_bytes or max(max_bytes // 4, 2 * 4096)
        self.segment_bytes = segment_bytes or max(1024, min(8 << 20, self.replica_max_bytes // 4))
        self.lock = threading.Lock()           # segments, totals
        self.segments: list[_Segment] = []     # every segment on disk, oldest first
        self.open: dict[tuple[str, str], tuple[_Segment, object]] = {}  # (version, replica) -> current, file
        self.total = 0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.queued_bytes = 0
        self.dropped: dict[tuple[str, str], int] = {}
        self.followers: list[Callable[[str, str, list[pb.LogLine]], None]] = []
        self._load()
        self._last_sweep = 0.0
        self._last_index = 0.0
        self._last_write_error = -60.0  # monotonic time of the last "cannot write" error logged
        self.writer = threading.Thread(target=self._write_loop, name="chalkd-logs", daemon=True)
        self.writer.start()

    # -- the event loop -----------------------------------------------------------------------------

    def append(self, version_id: str, replica_id: str, lines: Iterable[pb.LogLine]) -> None:
        """Queue a worker's lines (never blocks; past :data:`MAX_QUEUED_BYTES` waiting they are dropped)."""
        lines = list(lines)
        for follow in list(self.followers):
            follow(version_id, replica_id, lines)
        batch = [(line.ts, list(line.call_ids), line.stream, line.text) for line in lines]
        if not batch:
            return
        size = sum(len(t) + 64 for _, _, _, t in batch)
        if self.queued_bytes + size > MAX_QUEUED_BYTES:
            key = (version_id, replica_id)
            self.dropped[key] = self.dropped.get(key, 0) + len(batch)
            return
        self.queued_bytes += size
        self.queue.put((version_id, replica_id, batch, size))

    # -- any thread ---------------------------------------------------------------------------------

    def replica_gone(self, version_id: str, replica_id: str) -> None:
        """Close the replica's open segment (after what it sent is written)."""
        self.queue.put(("close", (version_id, replica_id)))

    def expire(self) -> None:
        """Remove what is past the age limit now (the writer does so every :data:`SWEEP_SECONDS` anyway)."""
        self.queue.put(("sweep", None))

    def sync(self, timeout: float = 10.0) -> None:
        """Return once what was queued before this call is on disk."""
        done = threading.Event()
        self.queue.put(done)
        done.wait(timeout)

    def read(self, *, call_id: str = "", version_ids: Iterable[str] | None = None, replica_id: str = "",
             since: float = 0.0, tail: int = 0) -> list[LogRecord]:
        """Stored lines, oldest first: one call's, or those of some versions and/or one replica.

        At most the newest ``tail`` lines (0: all, up to :data:`MAX_READ_LINES`; when more matched, a
        first line says how many older ones were left out). Segments are read newest first and
        only as far back as the lines wanted reach, so a short tail of a big log reads little."""
        self.sync()
        want = min(tail, MAX_READ_LINES) if tail > 0 else MAX_READ_LINES
        versions = set(version_ids) if version_ids is not None else None
        with self.lock:
            segs = [s for s in self.segments
                    if (versions is None or s.version_id in versions)
                    and (not replica_id or s.replica_id == replica_id)
                    and (not call_id or call_id in s.calls)
                    and (not since or s.last >= since)]
        segs.sort(key=lambda s: s.last, reverse=True)
        out: list[LogRecord] = []
        truncated = False
        for seg in segs:
            if len(out) >= want:
                out.sort(key=lambda r: r.ts)
                truncated = truncated or len(out) > want
                out = out[-want:]
                if seg.last < out[0].ts:  # this segment, and the rest, hold only older lines
                    truncated = True
                    break
            try:
                with open(seg.path, encoding="utf-8", errors="replace") as f:
                    for raw in f:
                        try:
                            row = json.loads(raw)
                        except ValueError:
                            continue  # a line cut by a crash
                        if (call_id and call_id not in row["c"]) or row["t"] < since:
                            continue
                        out.append(LogRecord(row["t"], row["c"], row["s"], row["x"], seg.version_id,
                                             seg.replica_id))
            except FileNotFoundError:
                continue  # removed by a cap meanwhile
        out.sort(key=lambda r: r.ts)
        if len(out) > want:
            truncated = True
            out = out[-want:]
        if truncated and tail <= 0:  # all was asked for: say that this is not all
            first = out[0]
            out.insert(0, LogRecord(first.ts, [], 2, f"[chalkd: older lines not shown: a read returns at most "
                                    f"the newest {MAX_READ_LINES}; use --since or --tail]",
                                    first.version_id, first.replica_id))
        return out

    def usage(self) -> int:
        """Bytes of call logs on disk."""
        with self.lock:
            return self.total

    def close(self) -> None:
        self.queue.put(None)
        self.writer.join(10)

    # -- the writer thread --------------------------------------------------------------------------

    def _load(self) -> None:
        """What earlier runs left: every segment with its index (rebuilt from the file when missing)."""
        for idx_or_log in sorted(self.root.glob("*/*/*.log")):
            version_id, replica_id = idx_or_log.parent.parent.name, idx_or_log.parent.name
            try:
                seq = int(idx_or_log.stem)
            except ValueError:
                continue
            seg = _Segment(idx_or_log, version_id, replica_id, seq, size=idx_or_log.stat().st_size)
            try:
                meta = json.loads(seg.index_path.read_text())
                seg.first, seg.last, seg.calls = meta["first"], meta["last"], set(meta["calls"])
            except (OSError, ValueError, KeyError):
                self._reindex(seg)
            if seg.size != meta_size(seg):
                self._reindex(seg)  # the daemon stopped before the index caught up with the file
            self.segments.append(seg)
            self.total += seg.size
        self.segments.sort(key=lambda s: (s.first, s.seq))

    @staticmethod
    def _reindex(seg: _Segment) -> None:
        seg.calls, seg.first, seg.last = set(), 0.0, 0.0
        with open(seg.path, encoding="utf-8", errors="replace") as f:
            for raw in f:
                try:
                    row = json.loads(raw)
                except ValueError:
                    continue
                seg.calls.update(row["c"])
                seg.first = seg.first or row["t"]
                seg.last = max(seg.last, row["t"])
        seg.write_index()

    def _write_loop(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=INDEX_SECONDS)
            except queue.Empty:
                self._flush()
                if time.time() - self._last_sweep >= SWEEP_SECONDS:
                    self._enforce(None)  # the age limit holds while nothing is written too
                continue
            items = [item]
            while True:  # everything that piled up: one write per file
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            waiters = []
            for it in items:
                if it is None:
                    stop = True
                elif isinstance(it, threading.Event):
                    waiters.append(it)
                elif it[0] == "close":
                    if it[1] in self.open:
                        self._rotate(it[1])
                elif it[0] == "sweep":
                    self._last_sweep = 0.0
                    self._enforce(None)
                else:
                    try:
                        self._write(*it)
                    except OSError as exc:
                        # A full disk fails every batch: say so once a minute, not 50 times a second.
                        now = time.monotonic()
                        if now - self._last_write_error >= 60.0:
                            self._last_write_error = now
                            log.error("cannot write call logs under %s (lines are dropped until it can): %s",
                                      self.root, exc)
                    except Exception:  # a bug of ours must not stop the writer (reads would wait on it)
                        log.exception("writing call logs failed")
            if waiters or time.monotonic() - self._last_index >= INDEX_SECONDS:
                self._flush()
            for w in waiters:
                w.set()
            if stop:
                self._close_all()
                return
            if not waiters:
                time.sleep(COALESCE_SECONDS)  # a reader waiting in sync() is never made to wait for this

    def _write(self, version_id: str, replica_id: str, batch: list, size: int) -> None:
        self.queued_bytes -= size
        key = (version_id, replica_id)
        dropped = self.dropped.pop(key, 0)
        if dropped:
            batch = [*batch, (time.time(), [], 2, f"[chalkd: {dropped} lines dropped: the log writer fell behind]")]
        rows = [(ts, ids, (json.dumps({"t": ts, "c": ids, "s": stream, "x": text}, ensure_ascii=False) + "\n")
                 .encode()) for ts, ids, stream, text in batch]
        start = 0
        while start < len(rows):
            seg, f = self._current(version_id, replica_id)
            # As many lines as fit the segment (at least one): a segment outgrows its size by a line at most.
            room, end = self.segment_bytes - seg.size, start
            while end < len(rows) and (end == start or room >= len(rows[end][2])):
                room -= len(rows[end][2])
                end += 1
            part = rows[start:end]
            data = b"".join(r[2] for r in part)
            f.write(data)  # type: ignore[attr-defined]
            with self.lock:
                seg.size += len(data)
                self.total += len(data)
                seg.first = seg.first or part[0][0]
                seg.last = max(seg.last, part[-1][0])
                for _, ids, _ in part:
                    seg.calls.update(ids)
                seg.dirty = True
            if seg.size >= self.segment_bytes or end < len(rows):
                self._rotate(key)
            self._enforce(key)
            start = end

    def _current(self, version_id: str, replica_id: str) -> tuple[_Segment, object]:
        key = (version_id, replica_id)
        cur = self.open.get(key)
        if cur is not None:
            return cur
        d = self.root / version_id / replica_id
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.lock:
            seq = 1 + max((s.seq for s in self.segments if (s.version_id, s.replica_id) == key), default=0)
            seg = _Segment(d / f"{seq:06d}.log", version_id, replica_id, seq)
            self.segments.append(seg)
        fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        cur = self.open[key] = (seg, os.fdopen(fd, "ab", buffering=0))
        return cur

    def _rotate(self, key: tuple[str, str]) -> None:
        seg, f = self.open.pop(key)
        f.close()  # type: ignore[attr-defined]
        seg.write_index()

    def _enforce(self, key: tuple[str, str] | None) -> None:
        """Per replica, in total and by age: remove the oldest segments (never the one being written)."""
        now = time.time()
        victims: list[_Segment] = []
        with self.lock:
            current = {s for s, _ in self.open.values()}
            mine = [s for s in self.segments if (s.version_id, s.replica_id) == key]
            over = sum(s.size for s in mine) - self.replica_max_bytes
            for s in mine:
                if over <= 0:
                    break
                if s not in current:
                    victims.append(s)
                    over -= s.size
            over = self.total - sum(s.size for s in victims) - self.max_bytes
            for s in self.segments:
                if over <= 0:
                    break
                if s not in current and s not in victims:
                    victims.append(s)
                    over -= s.size
            sweep = now - self._last_sweep >= SWEEP_SECONDS
            if sweep:
                self._last_sweep = now
                victims += [s for s in self.segments
                            if s not in current and s not in victims and s.last and s.last < now - self.max_age]
            for s in victims:
                self.segments.remove(s)
                self.total -= s.size
        for s in victims:
            for p in (s.path, s.index_path):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        if sweep and self.replica_files.is_dir():
            gone = sweep_replica_files(self.replica_files, max_bytes=self.max_bytes, max_age=self.max_age)
            if gone:
                log.info("removed %d replica output file(s) past --log-max-age/--log-max-bytes", gone)
        if victims:
            log.info("removed %d call-log segment(s) over the caps (--log-max-bytes %d, --log-max-age %gs)",
                     len(victims), self.max_bytes, self.max_age)

    def _flush(self) -> None:
        self._last_index = time.monotonic()
        with self.lock:
            dirty = [s for s, _ in self.open.values() if s.dirty]
        for s in dirty:
            try:
                s.write_index()
            except OSError as exc:
                log.error("cannot write the log index %s: %s", s.index_path, exc)

    def _close_all(self) -> None:
        for key in list(self.open):
            self._rotate(key)


def meta_size(seg: _Segment) -> int:
    """The size the segment's index recorded (-1 when it has none)."""
    try:
        return int(json.loads(seg.index_path.read_text()).get("bytes", -1))
    except (OSError, ValueError):
        return -1
