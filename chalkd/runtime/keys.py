"""Replica keys handed over as files, never in a process's or container's environment.

Each replica gets its own key (the secret of its scoped credential, see
chalkd.auth) in ``<home>/replica-keys/<replica_id>``; the directory is 0700, so
only the daemon's user reaches it on the host. A process replica reads the
file by path; a container gets that one file bind-mounted read-only at
:data:`CONTAINER_KEY_PATH`, so ``docker inspect`` shows a path, not the key.

    path = write_key(home, "r-1", token)   # before the replica starts
    remove_key(home, "r-1")                # once it has exited
"""

from __future__ import annotations

import os
from pathlib import Path

CONTAINER_KEY_PATH = "/run/chalkd-replica/key"
KEY_FILE_ENV = "CHALK_REPLICA_KEY_FILE"


def key_dir(home: Path) -> Path:
    path = Path(home) / "replica-keys"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_key(home: Path, replica_id: str, key: str, *, mode: int = 0o600) -> Path:
    """Write a replica's key; ``mode`` 0o444 for a container whose user is not the daemon's
    (the 0700 directory still keeps it from other host users)."""
    if "/" in replica_id or replica_id.startswith("."):
        raise ValueError(f"bad replica id {replica_id!r}")
    path = key_dir(home) / replica_id
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    os.chmod(path, mode)
    return path


def remove_key(home: Path, replica_id: str) -> None:
    (Path(home) / "replica-keys" / replica_id).unlink(missing_ok=True)
