"""Volume names, paths and the low-level file access that never follows a symlink.

    check_name("model-cache")                          # -> "model-cache"
    split_path("run/weights.txt")                      # -> ["run", "weights.txt"]
    split_path("../etc/passwd")                        # InvalidVolumePath naming the path
    fd = open_dirs(root_fd, ["run"], name="model-cache", path="run/weights.txt", create=True)

Every directory is opened one component at a time from the volume's root with
``O_NOFOLLOW | O_DIRECTORY``, so a symlink planted by a container is refused
instead of followed. :mod:`chalkd.volumes.store` builds on these.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from chalkcompute._contract import MAX_PATH_BYTES, VOLUME_NAME_RE, name_too_long, path_too_long, quote

__all__ = [
    "NAME_RE", "DIR_FLAGS", "MAX_DEPTH", "SYNCFS_FROM", "WRITEBACK_EVERY",
    "VolumeStoreError", "VolumeNotFound", "VolumeFileNotFound", "InvalidVolumeName", "InvalidVolumePath",
    "VolumePathConflict", "VolumeInfo", "FileEntry", "check_name", "split_path", "open_dirs", "syncfs",
    "start_writeback",
]

NAME_RE = VOLUME_NAME_RE  # the rule the SDK checks too (chalkcompute._contract)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_PATH = MAX_PATH_BYTES
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_MAX_SEGMENT = 255  # NAME_MAX, in bytes
MAX_DEPTH = 128    # a container can nest directories without end; listings stop here
# Fewer staged files than this are fsync'd one by one; more share one syncfs().
SYNCFS_FROM = 8


class VolumeStoreError(Exception):
    """Base of the volume store's expected failures."""


class VolumeNotFound(VolumeStoreError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"volume {name!r} not found")
        self.name = name


class VolumeFileNotFound(VolumeStoreError, LookupError):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(f"file {quote(path)} not found in volume {name!r}")
        self.name, self.path = name, path


class InvalidVolumeName(VolumeStoreError, ValueError):
    """A volume name that is not 1-63 letters, digits, '.', '_' or '-' (first a letter or digit)."""


class InvalidVolumePath(VolumeStoreError, ValueError):
    """A file path that is not a plain relative path inside the volume."""


class VolumePathConflict(VolumeStoreError):
    """The tree at a path is not what the operation needs: a symlink (never
    followed), a directory where a file is meant, a file where a directory is."""


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    created_at: float
    updated_at: float
    size_bytes: int
    file_count: int


@dataclass(frozen=True)
class FileEntry:
    """A regular file (``path`` relative, '/'-separated), or with ``recursive=False``
    a directory, whose path then ends with '/' and whose size is 0."""

    path: str
    size: int
    mtime: float


def check_name(name: Any) -> str:
    too_long = name_too_long("volume name", name)  # first: nothing below reads a long name
    if too_long:
        raise InvalidVolumeName(too_long)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidVolumeName(f"invalid volume name {quote(name)}: use 1-63 letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit")
    return name


def split_path(path: Any, *, name: str = "") -> list[str]:
    """``"a/b.txt"`` -> ``["a", "b.txt"]``; anything that could leave the volume or
    mean two things is refused, naming the path."""
    where = f" in volume {quote(name)}" if name else ""
    too_long = path_too_long("path", path, _MAX_PATH)  # first: nothing below reads a long path
    if too_long:
        raise InvalidVolumePath(too_long + where)

    def bad(why: str) -> InvalidVolumePath:
        return InvalidVolumePath(f"invalid path {quote(path)}{where}: {why}")

    if not isinstance(path, str):
        raise InvalidVolumePath(f"a volume path must be a str, got {quote(path)}")
    if not path:
        raise bad("the path is empty")
    if "\0" in path:
        raise bad("NUL characters are not allowed")
    if _CONTROL.search(path):  # a newline in a file name breaks every listing and log that shows it
        raise bad("control characters (below 0x20, and 0x7f) are not allowed in file names")
    # Legal on Linux, but a Windows client means a separator by it: refuse rather than guess.
    if "\\" in path:
        raise bad("backslashes are not allowed; separate directories with '/'")
    if path.startswith("/"):
        raise bad("absolute paths are not allowed; use a path relative to the volume's root")
    if len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH:
        raise bad(f"longer than {_MAX_PATH} bytes")
    parts = path.split("/")
    for seg in parts:
        if seg == "":
            raise bad("empty path segments ('a//b' or a trailing '/') are not allowed")
        if seg in (".", ".."):
            raise bad(f"{seg!r} segments are not allowed")
        if len(seg.encode("utf-8", "surrogatepass")) > _MAX_SEGMENT:
            raise bad(f"a segment is longer than {_MAX_SEGMENT} bytes")
    return parts


def _conflict(parent_fd: int, seg: str, name: str, path: str, sofar: str) -> VolumePathConflict:
    """Why ``seg`` could not be opened as a directory, in words."""
    try:
        st = os.stat(seg, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return VolumePathConflict(f"cannot use {quote(path)} in volume {name!r}: {sofar!r} is a symbolic link, "
                                  "which the volume API never follows")
    return VolumePathConflict(f"cannot use {quote(path)} in volume {name!r}: {sofar!r} is not a directory")


def open_dirs(root_fd: int, parts: list[str], *, name: str, path: str, create: bool) -> int:
    """Walk ``parts`` below ``root_fd`` without following symlinks; a new fd for the last.

    Raises FileNotFoundError for a missing directory (unless ``create``)."""
    fd = os.dup(root_fd)
    try:
        for i, seg in enumerate(parts):
            try:
                nfd = os.open(seg, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(seg, 0o755, dir_fd=fd)
                except FileExistsError:  # made meanwhile: opened (and checked) below
                    pass
                try:
                    nfd = os.open(seg, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise _conflict(fd, seg, name, path, "/".join(parts[:i + 1])) from None
                    raise
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise _conflict(fd, seg, name, path, "/".join(parts[:i + 1])) from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if hasattr(libc, "sync_file_range"):
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return libc


_LIBC = _libc()
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_EVERY = 8 << 20


def syncfs(fd: int) -> bool:
    """One syncfs(2) for many staged files (fsync each costs ~0.5 ms); False where unavailable."""
    return _LIBC is not None and hasattr(_LIBC, "syncfs") and _LIBC.syncfs(fd) == 0


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range to disk now, without waiting (Linux): the fsync at the end
    of a large file then waits for its tail only, not for the whole file."""
    if _LIBC is not None and hasattr(_LIBC, "sync_file_range"):
        _LIBC.sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)
