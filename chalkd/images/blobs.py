"""Lazy local files: content-addressed blobs, laid out as read-only mount trees.

An Image's ``add_local_file`` / ``add_local_dir`` files with the ``volume``
strategy are not baked into the image. The SDK uploads each distinct file once
(``Images.MissingBlobs`` then ``Images.PutBlob``), and at start every mount
directory of the image (see ``Image.lazy_local_files_by_mount_dir``) becomes a
directory tree of hard links into the blob store, bind-mounted read-only::

    blobs = BlobStore(home / "blobs")
    blobs.missing(["ab12..."])                       # -> ["ab12..."]
    with blobs.writer("ab12...") as w: w.write(data)  # checked against the digest
    for host_dir, mount_dir in blobs.mounts(image_spec):
        ...  # bind host_dir at mount_dir, read-only

Trees are keyed by the hash of their contents, so two replicas of one image
share one tree, and a tree is complete once its directory exists (built
aside, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from chalkcompute._contract import quote
from chalkd.specs import ImageSpec, ImageStep
from chalkd.volumes.paths import DIR_FLAGS

__all__ = ["BlobStore", "BlobError", "LazyFileError", "check_lazy_files", "mount_groups", "DEFAULT_MODE",
           "MAX_MODE"]

_DIGEST = re.compile(r"[0-9a-f]{64}")
DEFAULT_MODE = 0o644
# Permission bits only: a lazy file is data, so setuid/setgid/sticky are refused
# (a setuid-root copy made by a root daemon would be a gift to any local user).
MAX_MODE = 0o777
_MAX_PATH = 4096


class BlobError(ValueError):
    """A blob is missing or does not match its digest (the message says which)."""


class LazyFileError(BlobError):
    """A lazy-file step of an image spec that could never be laid out safely:
    a path outside its mount root, not absolute or not normalised, or a mode
    beyond 0o777 (the message names the path)."""


def _check_abs(what: str, path: str, where: str) -> None:
    if len(path) > _MAX_PATH or len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH:  # first: cheap
        raise LazyFileError(f"{what} {quote(path)} of {where} is longer than {_MAX_PATH} bytes")
    if not path.startswith("/"):
        raise LazyFileError(f"{what} {quote(path)} of {where} must be an absolute path")
    if "\0" in path or ":" in path:
        # ':' separates a bind's source, target and options: refuse it rather than escape it.
        raise LazyFileError(f"{what} {quote(path)} of {where} must not contain NUL or ':'")
    if path != "/" and (posixpath.normpath(path) != path or path.startswith("//")):
        raise LazyFileError(f"{what} {quote(path)} of {where} is not normalised (no '.', '..', '//' or trailing "
                            f"'/'); did you mean {quote(posixpath.normpath(path))}?")


def _lazy_root(step: ImageStep) -> str:
    return step.mount_root or posixpath.dirname(step.path)


def check_lazy_files(spec: ImageSpec) -> None:
    """Refuse lazy-file steps that could write outside their mount tree or carry
    more than permission bits; called wherever a spec comes in (register, build,
    container create) and again before a tree is built.

        check_lazy_files(spec)   # LazyFileError: lazy local file path '/app/../../etc/cron.d/x' of ...

    Each ``path`` must be absolute, normalised and strictly inside its mount root
    (the ``mount_root`` of an ``add_local_dir`` call, else the file's parent),
    which must not be '/'; ``mode`` must be 0 (meaning 0o644) or within 0o777; and
    no path may be a file in one step and a directory in another.
    """
    files: dict[str, set[str]] = {}
    for step in spec.steps:
        if step.kind != "lazy_file":
            continue
        where = f"lazy local file {step.source!r}" if step.source else "a lazy local file"
        _check_abs("path", step.path, where)
        root = _lazy_root(step)
        if step.mount_root:
            _check_abs("mount_root", step.mount_root, where)
        if root == "/":
            raise LazyFileError(f"{where} -> {step.path!r} would need a mount at '/'; "
                                "put it inside a directory or use strategy='copy'")
        if not step.path.startswith(root + "/"):
            raise LazyFileError(f"path {step.path!r} of {where} is outside its mount root {root!r}")
        if step.mode & ~MAX_MODE:
            raise LazyFileError(f"mode {oct(step.mode)} of {where} -> {step.path!r} is not allowed: only "
                                "permission bits (at most 0o777), no setuid, setgid or sticky bit")
        rel = step.path[len(root) + 1:]
        parts = rel.split("/")
        for i in range(1, len(parts)):
            files.setdefault(root, set()).add("/" + "/".join(parts[:i]) + "/")
        files.setdefault(root, set()).add("/" + rel)
    for root, names in files.items():
        for name in names:
            if not name.endswith("/") and name + "/" in names:
                raise LazyFileError(f"lazy local file path {root + name!r} is both a file and a directory "
                                    "in this image")


def mount_groups(spec: ImageSpec) -> dict[str, list[ImageStep]]:
    """The image's lazy files by the directory their tree mounts at: the
    ``mount_root`` of an ``add_local_dir`` call, else the file's parent.
    Raises LazyFileError for a spec :func:`check_lazy_files` refuses."""
    check_lazy_files(spec)
    groups: dict[str, list[ImageStep]] = {}
    for step in spec.steps:
        if step.kind == "lazy_file":
            groups.setdefault(_lazy_root(step), []).append(step)
    return groups


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.trees = self.root.parent / "mounts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trees.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise BlobError(f"blob digest must be 64 lower-case hex characters (sha256), got {quote(digest)}")
        return self.root / digest[:2] / digest

    def missing(self, digests: list[str]) -> list[str]:
        return sorted({d for d in digests if not self.path(d).is_file()})

    @contextmanager
    def writer(self, digest: str) -> Iterator[_BlobWriter]:
        """Write a blob; it appears only when complete and its sha256 matches."""
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, suffix=".partial")
        writer = _BlobWriter(os.fdopen(fd, "wb"))
        try:
            yield writer
            writer.file.close()
            got = writer.hash.hexdigest()
            if got != digest:
                raise BlobError(f"uploaded blob has sha256 {got}, not the {digest} it was sent as")
            os.replace(tmp, final)
        finally:
            writer.file.close()
            if os.path.exists(tmp):
                os.unlink(tmp)

    def mounts(self, spec: ImageSpec) -> list[tuple[str, str]]:
        """(host directory, mount directory) for each lazy-file group of ``spec``;
        builds the trees that do not exist yet. Raises BlobError naming a file
        whose blob was never uploaded."""
        out = []
        for mount_dir, steps in sorted(mount_groups(spec).items()):
            # A later step for the same path wins, as a later COPY would.
            latest = {s.path[len(mount_dir) + 1:]: (s.digest, s.mode or DEFAULT_MODE) for s in steps}
            entries = sorted((rel, digest, mode) for rel, (digest, mode) in latest.items())
            key = hashlib.sha256(json.dumps([mount_dir, entries]).encode()).hexdigest()[:32]
            tree = self.trees / key
            if not tree.is_dir():
                self._build_tree(tree, entries, steps)
            out.append((str(tree), mount_dir))
        return out

    def _build_tree(self, tree: Path, entries: list[tuple[str, str, int]], steps: list[ImageStep]) -> None:
        sources = {s.digest: s.source for s in steps}
        tmp = Path(tempfile.mkdtemp(dir=self.trees, prefix=".build-"))
        try:
            root_fd = os.open(tmp, DIR_FLAGS)
            try:
                os.fchmod(root_fd, 0o755)
                for rel, digest, mode in entries:
                    blob = self.path(digest)
                    if not blob.is_file():
                        raise BlobError(f"the file {sources.get(digest)!r} (sha256 {digest[:12]}…) "
                                        "was never uploaded")
                    _place(root_fd, rel.split("/"), blob, mode)
            finally:
                os.close(root_fd)
            try:
                os.rename(tmp, tree)
            except OSError:
                if not tree.is_dir():  # not a concurrent builder winning the race
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _place(root_fd: int, parts: list[str], blob: Path, mode: int) -> None:
    """Copy ``blob`` to ``parts`` below ``root_fd`` with ``mode``, one component at a
    time with O_NOFOLLOW: nothing in the walk can lead outside the tree, even
    if the names were not checked (they are, by :func:`check_lazy_files`)."""
    if mode & ~MAX_MODE:  # the last line of defence: never chmod beyond permission bits
        raise LazyFileError(f"mode {oct(mode)} of lazy local file {'/'.join(parts)!r} is beyond 0o777")
    fd = os.dup(root_fd)
    try:
        for seg in parts[:-1]:
            if seg in ("", ".", ".."):
                raise LazyFileError(f"lazy local file path {'/'.join(parts)!r} has a {seg!r} segment")
            with suppress(FileExistsError):
                os.mkdir(seg, 0o700, dir_fd=fd)
            nfd = os.open(seg, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
            os.fchmod(fd, 0o755)  # directories are listable: the files' own modes decide who reads them
        name = parts[-1]
        if name in ("", ".", ".."):
            raise LazyFileError(f"lazy local file path {'/'.join(parts)!r} has a {name!r} segment")
        # A copy, not a hard link: modes differ per use, and a container must
        # never be able to change the shared blob. 0o600 until the copy is done.
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            with open(blob, "rb") as src:
                while chunk := src.read(1 << 20):
                    _write_all(out, chunk)
            os.fchmod(out, mode)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _BlobWriter:
    def __init__(self, file) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        self.file.write(data)
