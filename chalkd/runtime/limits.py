"""Memory limits for process replicas through cgroups, where the daemon may make them.

    limiter = MemoryLimiter.detect()           # None-safe: .available tells
    limiter.apply(pid, "r-123", 2 * 2**30)     # put pid in a cgroup capped at 2 GiB
    limiter.release("r-123")

cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``) are both handled.
When neither is writable the daemon warns once that memory is not enforced.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")


class MemoryLimiter:
    def __init__(self, base: Path | None, limit_file: str) -> None:
        self.base = base
        self.limit_file = limit_file
        self._warned = False

    @property
    def available(self) -> bool:
        return self.base is not None

    @classmethod
    def detect(cls, name: str = "chalkd") -> MemoryLimiter:
        candidates = []
        if (_ROOT / "cgroup.controllers").exists():
            candidates.append((_ROOT / name, "memory.max"))
        if (_ROOT / "memory" / "memory.limit_in_bytes").exists():
            candidates.append((_ROOT / "memory" / name, "memory.limit_in_bytes"))
        for base, limit_file in candidates:
            try:
                base.mkdir(exist_ok=True)
                if limit_file == "memory.max":
                    # Child cgroups only get the memory controller when the parent delegates it.
                    (base / "cgroup.subtree_control").write_text("+memory")
                probe = base / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                ok = (probe / limit_file).exists()
                probe.rmdir()
                if ok:
                    return cls(base, limit_file)
            except OSError:
                continue
        return cls(None, "")

    def apply(self, pid: int, replica_id: str, limit_bytes: int) -> bool:
        if not limit_bytes:
            return True
        if self.base is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "memory= requests are accounted for placement but not enforced: "
                    "this host gives chalkd no writable cgroup (run as root, or use --runtime docker)"
                )
            return False
        group = self.base / replica_id
        try:
            group.mkdir(exist_ok=True)
            (group / self.limit_file).write_text(str(limit_bytes))
            (group / "cgroup.procs").write_text(str(pid))
            return True
        except OSError as exc:
            log.warning("could not cap replica %s at %d bytes: %s", replica_id, limit_bytes, exc)
            return False

    def oom_killed(self, replica_id: str) -> bool:
        """Whether the kernel's OOM killer killed a process in the replica's group (read before release)."""
        if self.base is None:
            return False
        events = "memory.events" if self.limit_file == "memory.max" else "memory.oom_control"
        try:
            text = (self.base / replica_id / events).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def release(self, replica_id: str) -> None:
        if self.base is None:
            return
        try:
            (self.base / replica_id).rmdir()
        except OSError:
            pass
