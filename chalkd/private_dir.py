"""Directories only the daemon's user may touch (the socket directory), checked before use.

A directory someone else made or can write into could hold a planted socket or
symlink that clients and replicas would then trust; so an existing one must be a
real directory (not a symlink), owned by us, and writable by nobody else.

    path = ensure_private_dir(Path("/tmp/chalkd-0"))   # made 0700, or checked
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["UnsafeDirectoryError", "ensure_private_dir"]

# Group traverse (0o010) is allowed: the Docker runtime gives its replicas' group exactly that on the
# socket directory (chalkd.runtime.docker.share_sockets); it lets nobody list or create anything.
_ALLOWED_EXTRA = 0o010


class UnsafeDirectoryError(RuntimeError):
    """A directory the daemon must own privately is a symlink, someone else's, or open to others."""


def ensure_private_dir(path: Path, what: str = "socket directory") -> Path:
    """Create ``path`` 0700 (its parent must exist), or check the one that is there.

    Raises :class:`UnsafeDirectoryError` naming the path, its owner or mode, and the fix."""
    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    # Checked through a descriptor opened without following a symlink: what we check is what we got.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        kind = "a symlink" if os.path.islink(path) else "not a directory"
        raise UnsafeDirectoryError(
            f"chalkd's {what} {path} is {kind} ({exc.strerror}): refusing to use it; remove it "
            "and start again") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != os.geteuid():
        raise UnsafeDirectoryError(
            f"chalkd's {what} {path} is owned by uid {st.st_uid}, not by this daemon's user "
            f"(uid {os.geteuid()}): someone else made it, so refusing to use it; remove it, or use "
            "another --home (or set XDG_RUNTIME_DIR)")
    if stat.S_IMODE(st.st_mode) & 0o077 & ~_ALLOWED_EXTRA:
        raise UnsafeDirectoryError(
            f"chalkd's {what} {path} has mode {stat.S_IMODE(st.st_mode):o}: other users can reach into it, "
            f"so refusing to use it; `chmod 700 {path}` (or remove it) and start again")
    return path
