"""Declarative, immutable container images.

An :class:`Image` is a base reference plus an ordered list of build steps.
Every builder method returns a *new* Image, so intermediate images can be
shared and extended. Local files are read when the builder is called: their
bytes (``strategy="copy"``) or digests (``strategy="volume"``) are part of the
image's :attr:`Image.content_hash`, so a changed file gives a new image.

Example::

    from chalkcompute.image import Image

    img = (
        Image.debian_slim("3.12")
        .pip_install(["pandas", "requests"])
        .add_local_file("./analyze.py", "/app/analyze.py")
        .env({"LOG_LEVEL": "DEBUG"})
        .workdir("/app")
    )
    spec = img.to_proto()          # chalk.v1.ImageSpec, content_hash filled
    assert Image.from_proto(spec) == img
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pathspec

from chalkcompute._contract import IMAGE_STEP_KINDS, image_content_hash, image_step_canonical, path_too_long, quote
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

__all__ = ["Image", "LazyLocalFile"]

Strategy = Literal["copy", "volume"]
_IGNORE_FILES = (".gitignore", ".chalkignore")  # both read; .chalkignore lines come last
_PY_VERSION_RE = re.compile(r"^3\.\d+$")
_KINDS = IMAGE_STEP_KINDS


@dataclass(frozen=True)
class LazyLocalFile:
    """A local file mounted from a volume at sandbox start instead of baked in.

    ``digest`` is the sha256 hex of the file's content when it was added.
    ``mount_root`` is set for files from :meth:`Image.add_local_dir` (the
    remote directory) so one call's files share one volume.
    """

    local_path: str
    remote_path: str
    mode: int | None = None
    mount_root: str | None = None
    digest: str = ""


@dataclass(frozen=True)
class _Step:
    kind: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted by key
    path: str = ""
    content: bytes = field(default=b"", repr=False)
    mode: int | None = None
    source: str = ""
    mount_root: str = ""
    digest: str = ""
    canonical: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # `source` (a local path) is left out: same content, same image.
        object.__setattr__(self, "canonical", image_step_canonical(
            self.kind, self.args, self.env, self.path, self.content, self.mode or 0, self.mount_root, self.digest))


# ---------------------------------------------------------------- validation helpers

def _type_error(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"{name} must be {expected}, got {type(value).__name__} {quote(value)}")


def _remote_path(value: object, name: str = "remote_path") -> str:
    if not isinstance(value, str):
        raise _type_error(name, "a str", value)
    too_long = path_too_long(name, value)  # first: nothing below reads a long path
    if too_long:
        raise ValueError(too_long)
    if not value.startswith("/"):
        raise ValueError(f"{name} must be absolute, got {quote(value)}")
    return posixpath.normpath(value) if value != "/" else "/"


def _local_path(value: object, name: str = "local_path") -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise _type_error(name, "a str or path", value)
    too_long = path_too_long(name, os.fspath(value))  # first: nothing below reads a long path
    if too_long:
        raise ValueError(too_long)
    path = os.path.abspath(os.path.expanduser(os.fspath(value)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} {quote(os.fspath(value))} does not exist (resolved to {quote(path)})")
    return path


def _str_list(value: object, name: str, *, allow_str: bool = False, nonempty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) and allow_str:
        value = [value]
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _type_error(name, "a list of str", value)
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise _type_error(f"every item of {name}", "a str", item)
        if nonempty and not item.strip():
            raise ValueError(f"{name} must not contain empty strings, got {item!r}")
    return items


def _check_mode(mode: object) -> int | None:
    if mode is None:
        return None
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise _type_error("mode", "an int such as 0o755", mode)
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be between 0 and 0o7777, got {oct(mode)}")
    return mode


def _check_strategy(strategy: object) -> Strategy:
    if strategy == "copy":
        return "copy"
    if strategy == "volume":
        return "volume"
    raise ValueError(f"strategy must be 'copy' or 'volume', got {strategy!r}")


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------- local file helpers

def _read_requirements(path: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """Requirement lines of ``path``: comments and blanks dropped, ``\\``
    continuations joined, nested ``-r``/``--requirement`` files inlined."""
    if path in seen:
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out: list[str] = []
    for line in re.sub(r"\\\r?\n", "", text).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        nested = re.match(r"^(?:-r|--requirement)(?:\s*=?\s*)(\S+)$", line)
        if nested:
            target = os.path.join(os.path.dirname(path), nested.group(1))
            out += _read_requirements(_local_path(target, "nested requirements file"), seen | {path})
        else:
            out.append(line)
    return out


def _walk_dir(root: str, exclude: Sequence[str]) -> list[tuple[str, str]]:
    """(posix path relative to ``root``, absolute path) of the files kept.

    As in go-git, every file is checked by its full path: ``.gitignore`` and
    ``.chalkignore`` apply to their own directory's subtree, the deepest file
    with a matching pattern decides, and its last matching pattern wins (so
    ``!`` can re-include). ``exclude`` (gitignore syntax, relative to
    ``root``) is checked first and overrides ignore files. ``.git`` is always
    skipped; an ignored directory is only skipped whole when no ``!`` pattern
    is in scope. Symlinked directories are not followed (symlinked files are).
    """
    extra = pathspec.GitIgnoreSpec.from_lines(exclude) if exclude else None
    extra_negates = extra is not None and any(p.include is False for p in extra.patterns)
    kept: list[tuple[str, str]] = []
    Scope = tuple[str, pathspec.GitIgnoreSpec, bool]  # (dir prefix, spec, has negations)

    def ignored(rel: str, scopes: list[Scope]) -> bool:
        if extra is not None and (hit := extra.check_file(rel).include) is not None:
            return hit
        for prefix, spec, _ in reversed(scopes):
            hit = spec.check_file(rel[len(prefix) + 1:] if prefix else rel).include
            if hit is not None:
                return hit
        return False

    def walk(rel_dir: str, scopes: list[Scope]) -> None:
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        lines: list[str] = []
        for name in _IGNORE_FILES:
            if os.path.isfile(ignore_file := os.path.join(abs_dir, name)):
                with open(ignore_file, encoding="utf-8") as f:
                    lines += f.read().splitlines()
        if lines:
            spec = pathspec.GitIgnoreSpec.from_lines(lines)
            scopes = [*scopes, (rel_dir, spec, any(p.include is False for p in spec.patterns))]
        can_prune = not extra_negates and not any(neg for _, _, neg in scopes)
        with os.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name == ".git":
                continue
            if entry.is_dir(follow_symlinks=False):
                if not (can_prune and ignored(rel + "/", scopes)):
                    walk(rel, scopes)
            elif entry.is_file() and not ignored(rel, scopes):
                kept.append((rel, entry.path))

    walk("", [])
    return kept


def _tar(files: Sequence[tuple[str, str]]) -> bytes:
    """Deterministic tar: sorted entries, mtime 0, uid/gid 0, modes kept."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, abs_path in sorted(files):
            with open(abs_path, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), os.stat(abs_path).st_mode & 0o777, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cache_archive(data: bytes) -> tuple[str, str]:
    """Write ``data`` to ``<tmp>/chalkcompute-archives/<sha256>.tar`` once; return (path, digest)."""
    digest = hashlib.sha256(data).hexdigest()
    cache_dir = os.path.join(tempfile.gettempdir(), "chalkcompute-archives")
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{digest}.tar")
    if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path, digest


# ---------------------------------------------------------------- Image

class Image:
    """Declarative, composable container image builder.

    Each builder method returns a new Image; the receiver never changes::

        base = Image.debian_slim("3.12").pip_install(["requests"])
        web = base.pip_install(["fastapi"])     # base is unchanged
    """

    __slots__ = ("_base", "_python_version", "_steps", "_hash")
    # Set once by _init (through object.__setattr__: instances are immutable).
    _base: str
    _python_version: str | None
    _steps: tuple[_Step, ...]
    _hash: str

    def __init__(self, base: str = "", python_version: str | None = None) -> None:
        """An image with no steps; prefer :meth:`base` / :meth:`debian_slim`."""
        self._init(base, python_version, ())

    def _init(self, base: str, python_version: str | None, steps: tuple[_Step, ...]) -> None:
        # The daemon recomputes the same hash from a spec (chalkd.specs.image_identity): one formula.
        digest = image_content_hash(base, python_version or "", [s.canonical for s in steps])
        for name, value in (("_base", base), ("_python_version", python_version or None),
                            ("_steps", steps), ("_hash", digest)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Image is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Image is immutable; cannot delete {name!r}")

    @classmethod
    def _make(cls, base: str, python_version: str | None, steps: tuple[_Step, ...]) -> Image:
        new = object.__new__(cls)
        new._init(base, python_version, steps)
        return new

    def _extend(self, *steps: _Step) -> Image:
        return self._make(self._base, self._python_version, self._steps + steps)

    def __reduce__(self) -> tuple[object, ...]:  # pickle / copy despite the immutability guard
        return (Image._make, (self._base, self._python_version, self._steps))

    # ------------------------------------------------------------ constructors

    @classmethod
    def base(cls, ref: str) -> Image:
        """Start from any image reference: ``Image.base("ubuntu:22.04")``."""
        if not isinstance(ref, str):
            raise _type_error("ref", "a str", ref)
        if not ref.strip() or any(c.isspace() for c in ref):
            raise ValueError(f"ref must be a non-empty image reference without spaces, got {ref!r}")
        return cls(ref)

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        """Start from ``python:<version>-slim-bookworm`` (default: this Python's
        major.minor): ``Image.debian_slim("3.11")``."""
        if python_version is None:
            python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
        if not isinstance(python_version, str):
            raise _type_error("python_version", "a str such as '3.12'", python_version)
        if not _PY_VERSION_RE.match(python_version):
            raise ValueError(f"python_version must look like '3.12', got {python_version!r}")
        return cls(f"python:{python_version}-slim-bookworm", python_version)

    @classmethod
    def from_dockerfile(cls, path: str | os.PathLike[str]) -> Image:
        """Start from a Dockerfile, read now; its lines become one
        ``dockerfile_commands`` step and the base stays empty (the
        Dockerfile's own ``FROM`` applies). ``COPY``/``ADD`` of local paths
        are not supported: add files with the builder methods instead::

            Image.from_dockerfile("./Dockerfile").pip_install(["rich"])
        """
        local = _local_path(path, "path")
        with open(local, encoding="utf-8") as f:
            lines = tuple(f.read().splitlines())
        return cls()._extend(_Step("dockerfile_commands", args=lines))

    @classmethod
    def from_proto(cls, spec: pb.ImageSpec) -> Image:
        """Rebuild an Image from :meth:`to_proto`'s output (``content_hash``
        is recomputed, not trusted)."""
        steps = []
        for s in spec.steps:
            if s.kind not in _KINDS:
                raise ValueError(f"unknown image step kind {s.kind!r}")
            steps.append(_Step(s.kind, tuple(s.args), tuple(sorted(s.env.items())), s.path,
                               s.content, s.mode or None, s.source, s.mount_root, s.digest))
        return cls._make(spec.base, spec.python_version or None, tuple(steps))

    # ------------------------------------------------------------ builders

    def run_commands(self, *commands: str | Sequence[str]) -> Image:
        """One ``RUN`` per command: ``img.run_commands("apt-get update", "apt-get install -y git")``.
        Lists are flattened."""
        flat = [c for cmd in commands for c in ([cmd] if isinstance(cmd, str) else _str_list(cmd, "commands"))]
        args = _str_list(flat, "commands", nonempty=True)
        return self._extend(_Step("run_commands", args=args)) if args else self

    def pip_install(self, packages: str | Sequence[str]) -> Image:
        """``pip install`` requirement specifiers: ``img.pip_install(["requests>=2.28", "pandas"])``.
        An empty list adds nothing."""
        args = _str_list(packages, "packages", allow_str=True, nonempty=True)
        return self._extend(_Step("pip_install", args=args)) if args else self

    def uv_pip_install(self, packages: str | Sequence[str]) -> Image:
        """Like :meth:`pip_install` with ``uv pip install`` (the base image must have uv)."""
        args = _str_list(packages, "packages", allow_str=True, nonempty=True)
        return self._extend(_Step("uv_pip_install", args=args)) if args else self

    def pip_install_from_requirements(self, path: str | os.PathLike[str]) -> Image:
        """Read a requirements file now and inline its lines (comments and
        blank lines dropped, nested ``-r`` files inlined):
        ``img.pip_install_from_requirements("./requirements.txt")``."""
        local = _local_path(path, "path")
        lines = tuple(_read_requirements(local))
        if not lines:
            return self
        return self._extend(_Step("pip_install_from_requirements", args=lines, source=local))

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str,
                       mode: int | None = None, strategy: Strategy = "volume") -> Image:
        """Add one local file at ``remote_path`` (absolute; a trailing ``/``
        keeps the file's name). ``"copy"`` inlines the bytes, ``"volume"``
        mounts it at start::

            img.add_local_file("./entrypoint.sh", "/app/entrypoint.sh", mode=0o755)
        """
        local = _local_path(local_path)
        if os.path.isdir(local):
            raise IsADirectoryError(f"local_path {os.fspath(local_path)!r} is a directory; use add_local_dir")
        dest = _remote_path(remote_path)
        if remote_path.endswith("/"):
            dest = posixpath.join(dest, os.path.basename(local))
        mode, strategy = _check_mode(mode), _check_strategy(strategy)
        if strategy == "copy":
            with open(local, "rb") as f:
                content = f.read()
            return self._extend(_Step("copy_file", path=dest, content=content, mode=mode, source=local))
        return self._extend(_Step("lazy_file", path=dest, mode=mode, source=local, digest=_sha256_file(local)))

    def add_local_dir(self, local_path: str | os.PathLike[str], remote_path: str,
                      strategy: Strategy = "volume", exclude: Sequence[str] | None = None,
                      archive: bool = False) -> Image:
        """Add a local directory at ``remote_path``, honouring ``.gitignore`` /
        ``.chalkignore`` at every level (each scoped to its subtree, ``!``
        supported), always skipping ``.git``, plus ``exclude`` (gitignore-style
        globs relative to ``local_path``, which win over ignore files)::

            img.add_local_dir("./src", "/app/src", exclude=["*.pyc", "__pycache__"])

        ``"copy"`` inlines a deterministic tar (one ``copy_dir`` step);
        ``"volume"`` adds one lazy file per kept file, all with
        ``mount_root=remote_path``. ``archive=True`` (volume only) instead
        tars the directory into ``<tmp>/chalkcompute-archives/<sha256>.tar``
        and adds that single lazy file at ``<remote_path>.tar`` (no
        mount_root, so it mounts at the parent directory); the caller
        extracts it.
        """
        local = _local_path(local_path)
        if not os.path.isdir(local):
            raise NotADirectoryError(f"local_path {os.fspath(local_path)!r} is not a directory")
        dest = _remote_path(remote_path)
        strategy = _check_strategy(strategy)
        if not isinstance(archive, bool):
            raise _type_error("archive", "a bool", archive)
        if archive and strategy != "volume":
            raise ValueError(f"archive=True requires strategy='volume', got strategy={strategy!r}")
        patterns = _str_list(exclude, "exclude", allow_str=True) if exclude is not None else ()
        files = _walk_dir(local, patterns)
        if strategy == "copy":
            return self._extend(_Step("copy_dir", path=dest, content=_tar(files), source=local))
        if archive:
            if dest == "/":
                raise ValueError("remote_path must not be '/' with archive=True "
                                 "(the archive goes to '<remote_path>.tar')")
            tar_path, digest = _cache_archive(_tar(files))
            return self._extend(_Step("lazy_file", path=dest + ".tar", source=tar_path, digest=digest))
        return self._extend(*(
            _Step("lazy_file", path=posixpath.join(dest, rel), mode=os.stat(abs_path).st_mode & 0o777,
                  source=abs_path, mount_root=dest, digest=_sha256_file(abs_path))
            for rel, abs_path in files
        ))

    def dockerfile_commands(self, commands: Sequence[str]) -> Image:
        """Raw Dockerfile instructions, injected verbatim:
        ``img.dockerfile_commands(["USER root", "EXPOSE 8080"])``."""
        args = _str_list(commands, "commands", allow_str=True)
        return self._extend(_Step("dockerfile_commands", args=args)) if args else self

    def env(self, vars: Mapping[str, str]) -> Image:
        """Set environment variables: ``img.env({"LOG_LEVEL": "DEBUG", "PORT": "8080"})``."""
        if not isinstance(vars, Mapping):
            raise _type_error("vars", "a dict of str to str", vars)
        for key, value in vars.items():
            if not isinstance(key, str):
                raise _type_error("env key", "a str", key)
            if not key or "=" in key or any(c.isspace() for c in key):
                raise ValueError(f"env key must be a non-empty name without '=' or spaces, got {key!r}")
            if not isinstance(value, str):
                raise _type_error(f"env value for {key!r}", "a str", value)
        return self._extend(_Step("env", env=tuple(sorted(vars.items())))) if vars else self

    def workdir(self, path: str) -> Image:
        """Set the working directory (absolute): ``img.workdir("/home/user/app")``."""
        return self._extend(_Step("workdir", path=_remote_path(path, "workdir path")))

    def entrypoint(self, entrypoint: Sequence[str]) -> Image:
        """Set the exec-form entrypoint: ``img.entrypoint(["python", "-m", "my_app"])``."""
        return self._extend(_Step("entrypoint", args=_str_list(entrypoint, "entrypoint")))

    def cmd(self, cmd: Sequence[str]) -> Image:
        """Set the default CMD (arguments to the entrypoint, or the command
        itself when there is none): ``img.entrypoint(["python"]).cmd(["-m", "my_app"])``."""
        return self._extend(_Step("cmd", args=_str_list(cmd, "cmd")))

    # ------------------------------------------------------------ lazy local files

    @property
    def lazy_local_files(self) -> set[LazyLocalFile]:
        """A copy of the set of files deferred for volume mounting."""
        return {LazyLocalFile(s.source, s.path, s.mode, s.mount_root or None, s.digest)
                for s in self._steps if s.kind == "lazy_file"}

    def lazy_local_files_by_mount_dir(self) -> dict[str, list[LazyLocalFile]]:
        """Lazy files grouped by the directory their volume mounts at:
        ``mount_root`` when set (``add_local_dir``), else the parent directory."""
        groups: dict[str, list[LazyLocalFile]] = {}
        for f in sorted(self.lazy_local_files, key=lambda f: (f.remote_path, f.local_path)):
            groups.setdefault(f.mount_root or posixpath.dirname(f.remote_path), []).append(f)
        return dict(sorted(groups.items()))

    def validate_lazy_local_files(self) -> None:
        """Raise ValueError if a lazy file would need a volume mounted at ``/``
        (e.g. ``add_local_file("x.py", "/x.py")``), has a path that is not
        absolute and normalised, or a mode beyond 0o777 (a mounted file carries
        permission bits only: no setuid, setgid or sticky bit). chalkd checks
        the same and refuses such an image with INVALID_ARGUMENT."""
        for f in self.lazy_local_files:
            if not f.remote_path.startswith("/") or posixpath.normpath(f.remote_path) != f.remote_path \
                    or f.remote_path.startswith("//"):
                raise ValueError(f"lazy local file {f.local_path!r} -> {f.remote_path!r}: the destination must be "
                                 f"an absolute, normalised path (e.g. {posixpath.normpath('/' + f.remote_path)!r})")
            if f.mode and f.mode & ~0o777:
                raise ValueError(f"lazy local file {f.local_path!r} -> {f.remote_path!r} has mode {oct(f.mode)}; "
                                 "with strategy='volume' only permission bits (at most 0o777) are allowed: no "
                                 "setuid, setgid or sticky bit (strategy='copy' bakes any mode into the image)")
        for mount_dir, files in self.lazy_local_files_by_mount_dir().items():
            if mount_dir == "/":
                f = files[0]
                raise ValueError(
                    f"lazy local file {f.local_path!r} -> {f.remote_path!r} would need a volume "
                    "mounted at '/'; choose a destination inside a directory (e.g. '/app/...') "
                    "or use strategy='copy'")

    # ------------------------------------------------------------ wire form, identity

    @property
    def content_hash(self) -> str:
        """sha256 hex of the canonical content (base, python_version, steps
        with file contents / digests; local source paths excluded)."""
        return self._hash

    def to_proto(self) -> pb.ImageSpec:
        """This image as a ``chalk.v1.ImageSpec`` with ``content_hash`` filled."""
        spec = pb.ImageSpec(base=self._base, python_version=self._python_version or "",
                            content_hash=self._hash)
        for s in self._steps:
            spec.steps.add(kind=s.kind, args=s.args, env=dict(s.env), path=s.path, content=s.content,
                           mode=s.mode or 0, source=s.source, mount_root=s.mount_root, digest=s.digest)
        return spec

    def __eq__(self, other: object) -> bool:
        return self._hash == other._hash if isinstance(other, Image) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._hash)

    def __repr__(self) -> str:
        steps = [f"{s.kind}({', '.join(k for k, _ in s.env)})" if s.kind == "env" else
                 f"{s.kind}({s.path!r})" if s.path else
                 f"{s.kind}({', '.join(map(repr, s.args[:3]))}{', ...' if len(s.args) > 3 else ''})"
                 for s in self._steps]
        if len(steps) > 8:
            steps = [*steps[:4], f"... {len(steps) - 6} more ...", *steps[-2:]]
        py = f", python_version={self._python_version!r}" if self._python_version else ""
        return f"Image(base={self._base!r}{py}, steps=[{', '.join(steps)}], hash={self._hash[:12]})"
