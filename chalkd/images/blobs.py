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
from contextlib import contextmanager
from pathlib import Path

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

__all__ = ["BlobStore", "BlobError", "mount_groups"]

_DIGEST = re.compile(r"[0-9a-f]{64}")


class BlobError(ValueError):
    """A blob is missing or does not match its digest (the message says which)."""


def mount_groups(spec: pb.ImageSpec) -> dict[str, list[pb.ImageStep]]:
    """The image's lazy files by the directory their tree mounts at: the
    ``mount_root`` of an ``add_local_dir`` call, else the file's parent."""
    groups: dict[str, list[pb.ImageStep]] = {}
    for step in spec.steps:
        if step.kind == "lazy_file":
            root = step.mount_root or posixpath.dirname(step.path)
            if root == "/":
                raise BlobError(f"lazy local file {step.source!r} -> {step.path!r} would need a mount at '/'; "
                                "put it inside a directory or use strategy='copy'")
            groups.setdefault(root, []).append(step)
    return groups


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.trees = self.root.parent / "mounts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trees.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise BlobError(f"blob digest must be 64 lower-case hex characters (sha256), got {digest!r}")
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

    def mounts(self, spec: pb.ImageSpec) -> list[tuple[str, str]]:
        """(host directory, mount directory) for each lazy-file group of ``spec``;
        builds the trees that do not exist yet. Raises BlobError naming a file
        whose blob was never uploaded."""
        out = []
        for mount_dir, steps in sorted(mount_groups(spec).items()):
            entries = sorted((posixpath.relpath(s.path, mount_dir), s.digest, s.mode or 0o644) for s in steps)
            key = hashlib.sha256(json.dumps([mount_dir, entries]).encode()).hexdigest()[:32]
            tree = self.trees / key
            if not tree.is_dir():
                self._build_tree(tree, entries, steps)
            out.append((str(tree), mount_dir))
        return out

    def _build_tree(self, tree: Path, entries: list[tuple[str, str, int]], steps: list[pb.ImageStep]) -> None:
        sources = {s.digest: s.source for s in steps}
        tmp = Path(tempfile.mkdtemp(dir=self.trees, prefix=".build-"))
        try:
            for rel, digest, mode in entries:
                blob = self.path(digest)
                if not blob.is_file():
                    raise BlobError(f"the file {sources.get(digest)!r} (sha256 {digest[:12]}…) was never uploaded")
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                # A copy, not a hard link: modes differ per use, and a container
                # must never be able to change the shared blob.
                shutil.copyfile(blob, dest)
                os.chmod(dest, mode)
            for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                os.chmod(d, 0o755)
            try:
                os.rename(tmp, tree)
            except OSError:
                if not tree.is_dir():  # not a concurrent builder winning the race
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


class _BlobWriter:
    def __init__(self, file) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        self.file.write(data)
