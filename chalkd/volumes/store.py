"""Named volumes on the daemon's disk: records in SQLite, contents in plain files.

A volume ``models`` is the directory ``<home>/volumes/models/``. Containers get
it bind-mounted and write to it directly, so the files on disk are the truth
for contents; the ``volumes`` table only records which volumes exist and when
they were created and last written through the API::

    volumes = VolumeStore(home, store)
    info, created = volumes.create("models")
    batch = volumes.begin_batch("models")
    batch.write("config.yaml", b"learning_rate: 0.01\\n")
    batch.end_file()
    batch.commit()                                  # now visible, atomically
    with volumes.open_read("models", "config.yaml") as f:
        f.read()                                    # b'learning_rate: 0.01\\n'
    [e.path for e in volumes.list_files("models")]  # ['config.yaml']

Safety. A container may plant anything in a volume: symlinks to ``/etc``, a
directory symlink to ``/``, FIFOs, files of any mode. Every API operation
walks a path one component at a time with ``openat(O_NOFOLLOW | O_DIRECTORY)``
from the volume's root and opens files with ``O_NOFOLLOW``, so no symlink is
ever followed: one met on the way is refused with :class:`VolumePathConflict`,
and listings skip symlinks and other non-regular files. Paths are validated
first (:func:`split_path`): relative, '/'-separated, no empty, ``.`` or ``..``
segments, no NUL or backslash.

Writes. A batch stages each file in ``<home>/volumes/.staging/<batch>/`` (the
same filesystem as the volumes), and only :meth:`Batch.commit` makes them
visible: it syncs the staged data (with ``--durability full``; see
:class:`VolumeStore`), checks every destination (parents created
without following symlinks, no destination a directory or a symlink), then
renames every file into place. Each file appears whole or not at all; the
batch appears as a whole unless the tree changes under it between the check
and the renames (a container swapping a directory for a symlink) or the disk
fails, in which case the files renamed before the failure stay and the rest
are dropped. :meth:`Batch.abort` (or no commit) leaves nothing.

Every method is thread-safe and blocking: the service runs file I/O in worker
threads. Database writes are handed to the event loop the store was made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chalkcompute._contract import quote
from chalkd.volumes.paths import (
    DIR_FLAGS,
    MAX_DEPTH,
    NAME_RE,
    SYNCFS_FROM,
    WRITEBACK_EVERY,
    FileEntry,
    InvalidVolumeName,
    InvalidVolumePath,
    VolumeFileNotFound,
    VolumeInfo,
    VolumeNotFound,
    VolumePathConflict,
    VolumeStoreError,
    check_name,
    open_dirs,
    split_path,
    start_writeback,
    syncfs,
)

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "FileEntry",
    "InvalidVolumeName",
    "InvalidVolumePath",
    "VolumeFileNotFound",
    "VolumeInfo",
    "VolumeNotFound",
    "VolumePathConflict",
    "VolumeStore",
    "VolumeStoreError",
    "check_name",
    "split_path",
]



class VolumeStore:
    """Volume records and files (see the module docstring).

    ``fsync`` (default: the store's durability is ``"full"``): staged files and
    the directories they land in are fsync'd before a commit returns, so a
    committed batch survives power loss. Without it a commit survives the
    daemon being killed (the kernel still has the data; each rename is atomic)
    and a put runs at network speed instead of the disk's sync speed."""

    def __init__(self, home: Path, store, *, fsync: bool | None = None) -> None:
        self.home = Path(home)
        self.store = store
        # Like the database: durability "normal" survives kill -9 (the page cache
        # outlives the daemon, and rename is atomic), "full" survives power loss.
        self.fsync = getattr(store, "durability", "normal") == "full" if fsync is None else fsync
        self.dir = self.home / "volumes"
        self.staging = self.dir / ".staging"
        self._lock = threading.Lock()
        self._records: dict[str, list[float]] = {}  # name -> [created_at, updated_at]
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.dir.mkdir(parents=True, exist_ok=True)
        # Batches a crash interrupted: never committed, so never visible.
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(mode=0o700)
        self._load()

    def _load(self) -> None:
        for row in self.store.query("SELECT name, created_at, updated_at FROM volumes"):
            self._records[row["name"]] = [row["created_at"], row["updated_at"]]
        # A directory without a record (a database restored from backup, a copied
        # home) is still a volume: its files are the truth.
        for entry in os.scandir(self.dir):
            if entry.name not in self._records and NAME_RE.fullmatch(entry.name) and \
                    entry.is_dir(follow_symlinks=False):
                log.info("adopting volume %r found on disk without a record", entry.name)
                now = time.time()
                self._records[entry.name] = [now, now]
                self._persist("INSERT OR REPLACE INTO volumes (name, created_at, updated_at) VALUES (?,?,?)",
                              (entry.name, now, now))

    def _persist(self, sql: str, params: tuple) -> None:
        """Queue a write for the store, from the loop's thread or any other."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.store.write(sql, params)
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.store.write(sql, params)
        else:
            loop.call_soon_threadsafe(self.store.write, sql, params)

    # -- volumes ---------------------------------------------------------------------

    def root(self, name: str) -> Path:
        """The volume's directory (what a mount binds); the name is validated."""
        return self.dir / check_name(name)

    def exists(self, name: str) -> bool:
        with self._lock:
            return check_name(name) in self._records

    def create(self, name: str) -> tuple[VolumeInfo, bool]:
        """The volume, made if missing; ``created`` says whether it was."""
        created = self._create(name)
        return self.get(name), created

    def ensure(self, name: str) -> Path:
        """The volume's root, the volume made if missing (for mounts: no size walk)."""
        self._create(name)
        return self.root(name)

    def _create(self, name: str) -> bool:
        root = self.root(name)
        with self._lock:
            created = name not in self._records
            if created:
                now = time.time()
                self._records[name] = [now, now]
                self._persist("INSERT OR REPLACE INTO volumes (name, created_at, updated_at) VALUES (?,?,?)",
                              (name, now, now))
                log.info("volume %r created", name)
            # Also when the record exists: someone may have removed the directory.
            root.mkdir(mode=0o755, exist_ok=True)
        return created

    def hand_to(self, name: str, uid: int, gid: int) -> bool:
        """Make ``uid:gid`` own the volume's whole tree (before a mount into a
        container that runs as that uid, e.g. an image with ``USER 1000``); False
        if it already owned the root, so nothing was walked.

            volumes.hand_to("model-cache", 1000, 1000)

        Ownership rather than wider modes: the files stay 0644/0755, writable by
        exactly the uid the container runs as. The daemon (root) reads and writes
        them either way. A volume shared by images with different users belongs
        to the last one mounted. Never follows a symlink (a container may plant
        them); stops at MAX_DEPTH like the listings."""
        root = self.ensure(name)
        fd = os.open(root, DIR_FLAGS)
        try:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) == (uid, gid):
                return False
            self._chown_tree(fd, uid, gid, 0)
        finally:
            os.close(fd)
        log.info("volume %r handed to uid %d gid %d for a mount", name, uid, gid)
        return True

    def _chown_tree(self, dir_fd: int, uid: int, gid: int, depth: int) -> None:
        os.fchown(dir_fd, uid, gid)
        if depth >= MAX_DEPTH:
            return
        for entry in os.scandir(dir_fd):
            if entry.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError:  # replaced meanwhile (a symlink now): not followed
                    continue
                try:
                    self._chown_tree(sub, uid, gid, depth + 1)
                finally:
                    os.close(sub)
            else:
                # Files and symlinks themselves (lchown), never what a symlink points to.
                with contextlib.suppress(FileNotFoundError):
                    os.chown(entry.name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def get(self, name: str) -> VolumeInfo:
        check_name(name)
        with self._lock:
            rec = self._records.get(name)
            if rec is None:
                raise VolumeNotFound(name)
            created_at, updated_at = rec
        size = count = 0
        for entry in self.list_files(name):
            size += entry.size
            count += 1
        return VolumeInfo(name, created_at, updated_at, size, count)

    def list(self) -> list[VolumeInfo]:
        with self._lock:
            names = sorted(self._records)
        out = []
        for name in names:
            try:
                out.append(self.get(name))
            except VolumeNotFound:  # deleted meanwhile
                pass
        return out

    def delete(self, name: str) -> None:
        """Forget the volume and remove its files (the name is free at once)."""
        root = self.root(name)
        with self._lock:
            if self._records.pop(name, None) is None:
                raise VolumeNotFound(name)
            self._persist("DELETE FROM volumes WHERE name=?", (name,))
            # Out of the way first, so a create of the same name starts empty.
            trash = self.staging / f"deleted-{name}-{secrets.token_hex(4)}"
            try:
                os.rename(root, trash)
            except FileNotFoundError:
                return
            except OSError as exc:  # e.g. EBUSY: remove it in place
                log.warning("volume %r: cannot move %s aside (%s); removing in place", name, root, exc)
                trash = root
        # rmtree walks by file descriptor on Linux: it never follows a planted symlink.
        shutil.rmtree(trash, onerror=lambda fn, p, exc: log.warning("removing %s: %s", p, exc[1]))
        log.info("volume %r deleted", name)

    def touch(self, name: str) -> None:
        """Record a write through the API."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None:
                return
            rec[1] = time.time()
            self._persist("UPDATE volumes SET updated_at=? WHERE name=?", (rec[1], name))

    def _open_root(self, name: str) -> int:
        root = self.root(name)
        with self._lock:
            if name not in self._records:
                raise VolumeNotFound(name)
        try:
            return os.open(root, DIR_FLAGS)
        except FileNotFoundError:
            root.mkdir(mode=0o755, exist_ok=True)
            return os.open(root, DIR_FLAGS)

    def _open_parent(self, name: str, parts: list[str], path: str, *, create: bool = False) -> int:
        root = self._open_root(name)
        try:
            return open_dirs(root, parts[:-1], name=name, path=path, create=create)
        except FileNotFoundError:
            raise VolumeFileNotFound(name, path) from None
        finally:
            os.close(root)

    # -- files -----------------------------------------------------------------------

    def list_files(self, name: str, prefix: str = "", recursive: bool = True) -> Iterator[FileEntry]:
        """Regular files whose paths start with ``prefix``, in path order, lazily.

        Symlinks and other non-regular files are skipped, never followed. With
        ``recursive=False`` only the prefix's directory is listed, its
        subdirectories as entries ending with '/'."""
        if not isinstance(prefix, str) or "\0" in prefix or "\\" in prefix or prefix.startswith("/"):
            raise InvalidVolumePath(f"invalid prefix {quote(prefix)} in volume {name!r}: use a relative "
                                    "'/'-separated path prefix")
        head, _, leaf = prefix.rpartition("/")
        dir_parts = split_path(head, name=name) if head else []
        root = self._open_root(name)
        try:
            try:
                fd = open_dirs(root, dir_parts, name=name, path=prefix, create=False)
            except (FileNotFoundError, VolumePathConflict):
                return  # nothing (safely) under that prefix
        finally:
            os.close(root)
        try:
            base = head + "/" if head else ""
            yield from _walk(fd, base, leaf, recursive, 0)
        finally:
            os.close(fd)

    def open_read(self, name: str, path: str) -> BinaryIO:
        """The file, opened for reading without following symlinks (unbuffered)."""
        parts = split_path(path, name=name)
        dfd = self._open_parent(name, parts, path)
        try:
            leaf = parts[-1]
            try:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise VolumeFileNotFound(name, path) from None
            self._check_file(st, name, path)
            # O_NONBLOCK: a FIFO swapped in after the check must not hang the open.
            fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise VolumePathConflict(f"cannot read {quote(path)} in volume {name!r}: it is a symbolic link, "
                                         "which the volume API never follows") from None
            raise
        finally:
            os.close(dfd)
        try:
            self._check_file(os.fstat(fd), name, path)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _check_file(st: os.stat_result, name: str, path: str) -> None:
        if stat.S_ISREG(st.st_mode):
            return
        if stat.S_ISLNK(st.st_mode):
            why = "it is a symbolic link, which the volume API never follows"
        elif stat.S_ISDIR(st.st_mode):
            why = "it is a directory"
        else:
            why = "it is not a regular file"
        raise VolumePathConflict(f"cannot read {quote(path)} in volume {name!r}: {why}")

    def remove(self, name: str, path: str) -> None:
        """Remove one file. A symlink there is removed itself (unlink never follows
        it), so what a container planted can be cleaned up; directories are refused."""
        parts = split_path(path, name=name)
        dfd = self._open_parent(name, parts, path)
        try:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise VolumePathConflict(f"cannot remove {quote(path)} in volume {name!r}: it is a directory; "
                                             "remove the files in it")
                os.unlink(parts[-1], dir_fd=dfd)
            except FileNotFoundError:
                raise VolumeFileNotFound(name, path) from None
        finally:
            os.close(dfd)
        self.touch(name)

    def begin_batch(self, name: str) -> Batch:
        with self._lock:
            if check_name(name) not in self._records:
                raise VolumeNotFound(name)
        return Batch(self, name)


def _walk(fd: int, base: str, leaf_prefix: str, recursive: bool, depth: int) -> Iterator[FileEntry]:
    """Entries below the directory ``fd`` in path order; nothing is followed."""
    entries = []
    with os.scandir(fd) as it:
        for e in it:
            if not e.name.startswith(leaf_prefix):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:  # removed meanwhile
                continue
            if stat.S_ISDIR(st.st_mode):
                # '/' sorts a directory's files right after names that end where it does.
                entries.append((e.name + "/", e.name, st, True))
            elif stat.S_ISREG(st.st_mode):
                entries.append((e.name, e.name, st, False))
    entries.sort()
    for _, entry_name, st, is_dir in entries:
        if not is_dir:
            yield FileEntry(base + entry_name, st.st_size, st.st_mtime)
        elif not recursive:
            yield FileEntry(base + entry_name + "/", 0, st.st_mtime)
        elif depth >= MAX_DEPTH:
            log.warning("not listing below %s%s: deeper than %d directories", base, entry_name, MAX_DEPTH)
        else:
            try:
                sub = os.open(entry_name, DIR_FLAGS, dir_fd=fd)
            except OSError:  # removed, or swapped for a symlink, meanwhile
                continue
            try:
                yield from _walk(sub, base + entry_name + "/", "", True, depth + 1)
            finally:
                os.close(sub)


@dataclass
class _Staged:
    path: str
    parts: list[str]
    tmp: str
    fd: int = -1
    synced: bool = False
    size: int = 0
    written_back: int = 0  # bytes whose writeback was started


class Batch:
    """Files written to the staging area, made visible together by :meth:`commit`.

    ``write(path, piece)`` appends to the file being written (a new path ends the
    previous file); ``end_file()`` closes it. A path written twice keeps the last."""

    def __init__(self, volumes: VolumeStore, name: str) -> None:
        self.volumes, self.name = volumes, name
        self.dir = volumes.staging / f"batch-{secrets.token_hex(8)}"
        self.dir.mkdir(mode=0o700)
        self._dir_fd = os.open(self.dir, DIR_FLAGS)
        self._files: dict[str, _Staged] = {}
        self._cur: _Staged | None = None
        self._n = 0
        self.bytes = 0
        self.done = False

    def write(self, path: str, data: bytes | memoryview = b"") -> None:
        if self.done:
            raise RuntimeError("the batch is already committed or aborted")
        cur = self._cur
        if cur is None or cur.path != path:
            if cur is not None:
                self.end_file()
            parts = split_path(path, name=self.name)
            tmp = f"{self._n:08d}"
            self._n += 1
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self._dir_fd)
            cur = self._cur = _Staged(path, parts, tmp, fd)
        if data:
            view = memoryview(data)
            while view:
                n = os.write(cur.fd, view)
                view = view[n:]
            self.bytes += len(data)
            cur.size += len(data)
            if self.volumes.fsync and cur.size - cur.written_back >= WRITEBACK_EVERY:
                start_writeback(cur.fd, cur.written_back, cur.size - cur.written_back)
                cur.written_back = cur.size

    def end_file(self) -> None:
        cur, self._cur = self._cur, None
        if cur is None:
            return
        try:
            # Big files are synced now, in the writer's thread, while small ones
            # wait for one shared sync at commit.
            if self.volumes.fsync and cur.size >= 2**20:
                os.fsync(cur.fd)
                cur.synced = True
        finally:
            os.close(cur.fd)
            cur.fd = -1
        old = self._files.pop(cur.path, None)
        if old is not None:
            os.unlink(old.tmp, dir_fd=self._dir_fd)
        self._files[cur.path] = cur

    def _sync(self) -> None:
        if not self.volumes.fsync:
            return
        pending = [f for f in self._files.values() if not f.synced]
        if len(pending) >= SYNCFS_FROM and syncfs(self._dir_fd):
            return
        for f in pending:
            fd = os.open(f.tmp, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _check(self) -> dict[tuple[str, ...], list[_Staged]]:
        """Every destination, grouped by directory; refuses a file that another
        file of the batch needs as its directory."""
        paths = set(self._files)
        groups: dict[tuple[str, ...], list[_Staged]] = {}
        for f in self._files.values():
            for i in range(1, len(f.parts)):
                if "/".join(f.parts[:i]) in paths:
                    raise VolumePathConflict(f"the batch for volume {self.name!r} writes both a file "
                                             f"{'/'.join(f.parts[:i])!r} and {quote(f.path)} below it")
            groups.setdefault(tuple(f.parts[:-1]), []).append(f)
        return groups

    def commit(self) -> tuple[list[str], int]:
        """Make every file visible; returns (paths, bytes). See the module docstring."""
        if self.done:
            raise RuntimeError("the batch is already committed or aborted")
        try:
            self.end_file()
            groups = self._check()
            self._sync()
            name = self.name
            root = self.volumes._open_root(name)
            try:
                # Phase 1: every directory made and every destination able to take a file.
                for dirs, files in groups.items():
                    fd = open_dirs(root, list(dirs), name=name, path=files[0].path, create=True)
                    try:
                        for f in files:
                            try:
                                st = os.stat(f.parts[-1], dir_fd=fd, follow_symlinks=False)
                            except FileNotFoundError:
                                continue
                            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                                what = "a directory" if stat.S_ISDIR(st.st_mode) else \
                                    "a symbolic link, which the volume API never replaces"
                                raise VolumePathConflict(f"cannot write {quote(f.path)} in volume {name!r}: "
                                                         f"it is {what}")
                    finally:
                        os.close(fd)
                # Phase 2: the renames, each atomic; then the directories' entries made durable.
                for dirs, files in groups.items():
                    fd = open_dirs(root, list(dirs), name=name, path=files[0].path, create=False)
                    try:
                        for f in files:
                            os.rename(f.tmp, f.parts[-1], src_dir_fd=self._dir_fd, dst_dir_fd=fd)
                        if self.volumes.fsync:
                            os.fsync(fd)
                    finally:
                        os.close(fd)
            finally:
                os.close(root)
        except FileNotFoundError as exc:  # the tree changed between the phases
            raise VolumePathConflict(f"volume {self.name!r} changed while the batch was written: {exc}") from None
        finally:
            self.abort()
        self.volumes.touch(self.name)
        return list(self._files), self.bytes

    def abort(self) -> None:
        """Drop whatever is staged (idempotent)."""
        if self.done:
            return
        self.done = True
        if self._cur is not None and self._cur.fd >= 0:
            os.close(self._cur.fd)
            self._cur = None
        os.close(self._dir_fd)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()
