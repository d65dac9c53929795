"""A replica's output file (``<home>/logs/replicas/<replica>.log``), capped.

Everything a replica writes goes there: the handlers' lines (which the worker
also sends per call) and what is written below Python. One file may grow to
:data:`REPLICA_LOG_MAX_BYTES`; then it becomes ``<replica>.log.1`` (replacing
an older one) and a new file starts, so a replica keeps at most twice that.
The files of replicas that are gone are removed past ``--log-max-age``, and
the oldest first when all of them pass ``--log-max-bytes``
(:func:`sweep_replica_files`, from the log store's writer thread)::

    with ReplicaLogFile(home / "logs" / "replicas" / "r-1.log") as out:
        out.write(b"a line\\n")
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ReplicaLogFile", "REPLICA_LOG_MAX_BYTES", "sweep_replica_files"]

REPLICA_LOG_MAX_BYTES = 64 << 20
IDLE_SECONDS = 60.0  # a file written within this long may belong to a running replica: never removed


class ReplicaLogFile:
    """Appends to a 0600 file, flushed per write; rotated at ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = REPLICA_LOG_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # an older daemon may have left it readable
        return fd

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.max_bytes and self.size:
            os.close(self.fd)
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.fd = self._open()
            self.size = 0
        os.write(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ReplicaLogFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def sweep_replica_files(directory: Path, *, max_bytes: int, max_age: float) -> int:
    """Remove idle replica files past ``max_age``, then the oldest idle ones while all pass ``max_bytes``.

    Returns how many were removed. Files written in the last :data:`IDLE_SECONDS` stay (their
    replica may still run; each of those is capped by :class:`ReplicaLogFile`)."""
    now = time.time()
    files = []
    for p in directory.glob("*.log*"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        files.append((st.st_mtime, st.st_size, p))
    files.sort()
    total = sum(size for _, size, _ in files)
    removed = 0
    for mtime, size, p in files:
        if mtime > now - IDLE_SECONDS:
            continue
        if mtime < now - max_age or total > max_bytes:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            total -= size
            removed += 1
    return removed
