"""Image specs on the *process runtime*: a virtualenv per image instead of a container.

The process runtime runs each replica as ``<python> -m chalkcompute.worker`` on
this host, so it honours only what means something without a container:

* the base must be a ``debian_slim`` Python base (``python:3.12-slim-bookworm``)
  whose Python is installed on this host (:func:`available_pythons`);
* pip steps go into a virtualenv built once per image content hash, at
  ``<home>/envs/<hash>/venv``; ``env`` steps become the replica's env vars;
* **image paths are mapped under the image root** ``<home>/envs/<hash>/root``:
  ``workdir("/app")`` makes the replica's cwd ``<root>/app``, and files added
  with the copy strategy (``copy_file``/``copy_dir``) land at ``<root>/<dest>``;
  nothing is written at the absolute path on the host. Replicas get
  ``CHALK_IMAGE_ROOT=<root>`` so user code can find those files.

Anything else (``run_commands``, ``dockerfile_commands``, ``entrypoint``,
``cmd``, other bases) raises :class:`ImageNotSupportedError` pointing at
``--runtime docker``; :func:`check_image` does that check at registration.

Our runtime is never installed from PyPI (PyPI's "chalkcompute" is another
project): with the daemon's Python version a ``.pth`` file appends the daemon's
import paths after the venv's site-packages; with another version chalkd's
dependencies are pip-installed by name and the ``chalkcompute`` package copied.
Builds happen in ``envs/.build-<hash>-*`` and are renamed into place, so an
existing ``envs/<hash>`` is complete; a lock file per hash makes concurrent
builders (tasks or processes) wait for one build.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl  # the process runtime is POSIX-only
import importlib.metadata
import io
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import site
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalkd import metrics
from chalkd.images.commands import run_streamed
from chalkd.specs import ImageSpec, ImageStep

__all__ = [
    "ProcessEnvironment", "ImageNotSupportedError", "ImageBuildError",
    "ProcessEnvBuilder", "available_pythons", "check_image",
]

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]

_PIP_KINDS = frozenset({"pip_install", "uv_pip_install", "pip_install_from_requirements"})
_FILE_KINDS = frozenset({"workdir", "copy_file", "copy_dir"})
_DOCKER_ONLY = frozenset({"run_commands", "dockerfile_commands", "entrypoint", "cmd"})
_SLIM_BASE = re.compile(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)(?:\.\d+)?-slim(?:-[a-z]+)?")
_OWN = f"{sys.version_info[0]}.{sys.version_info[1]}"
_KEY = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
_TAIL_LINES = 40
_DOCKER_HINT = "use --runtime docker for this image"


@dataclass(frozen=True)
class ProcessEnvironment:
    python: str  # interpreter to run `python -m chalkcompute.worker`
    env: dict[str, str]  # extra env vars for the replica
    cwd: str | None
    root: str | None  # image root dir for copied files
    content_hash: str


class ImageNotSupportedError(ValueError):
    """The image needs something the process runtime cannot provide."""


class ImageBuildError(RuntimeError):
    """Building the image's environment failed; the message ends with the build output's tail."""


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def available_pythons() -> dict[str, str]:
    """Python 3 interpreters on this host, ``"3.12" -> path``, oldest version first."""
    found: dict[str, str] = {}

    def add(version: str, path: str) -> None:
        if version.startswith("3.") and version not in found and os.path.isfile(path) and os.access(path, os.X_OK):
            found[version] = path

    def scan(directory: str) -> None:
        for entry in sorted(Path(directory).glob("python3.*")):
            if m := re.fullmatch(r"python(3\.\d+)", entry.name):
                add(m[1], str(entry))

    add(_OWN, sys.executable)  # the daemon's own interpreter wins for its version
    for d in os.environ.get("PATH", "").split(os.pathsep):
        # pyenv shims only dispatch to pyenv's *selected* version; use pyenv's dirs below instead
        if d and "/.pyenv/shims" not in d.replace(os.sep, "/"):
            scan(d)
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    releases = [p for p in pyenv.glob("3.*") if re.fullmatch(r"3\.\d+\.\d+", p.name)]
    for p in sorted(releases, key=lambda p: _vkey(p.name), reverse=True):  # newest patch first
        minor = p.name.rsplit(".", 1)[0]
        add(minor, str(p / "bin" / f"python{minor}"))
    for d in ("/usr/bin", "/usr/local/bin"):
        scan(d)
    return dict(sorted(found.items(), key=lambda kv: _vkey(kv[0])))


@dataclass(frozen=True)
class _Plan:
    version: str  # "3.12"
    python: str  # host interpreter of that version
    own: bool  # same major.minor as the daemon: reuse its packages via .pth
    needs_venv: bool
    needs_dir: bool


def _min_python() -> tuple[str, tuple[int, ...]] | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        requires = importlib.metadata.metadata("chalkd").get("Requires-Python") or ""
        m = re.search(r">=\s*(\d+(?:\.\d+)*)", requires)
        return (requires, _vkey(m[1])) if m else None
    return None


def _check_step(step: ImageStep) -> None:
    kind = step.kind
    if kind in _DOCKER_ONLY:
        first = (repr(step.args[0]) if step.args else "") + (", ..." if len(step.args) > 1 else "")
        raise ImageNotSupportedError(
            f"image step {kind}({first}) cannot run on the process runtime, which runs "
            f"functions on this host without a container; {_DOCKER_HINT}"
        )
    if kind == "lazy_file":
        raise ImageNotSupportedError(
            f'local file {step.source or step.path!r} was added with strategy="volume", which the '
            'process runtime does not support yet; add it with strategy="copy" instead'
        )
    if kind not in _PIP_KINDS and kind not in _FILE_KINDS and kind != "env":
        raise ImageNotSupportedError(f"unknown image step kind {kind!r} (is the SDK newer than chalkd?)")


def _plan(spec: ImageSpec) -> _Plan:
    base = spec.base.strip()
    version = spec.python_version.strip()
    if version:
        if not re.fullmatch(r"3\.\d+(?:\.\d+)?", version):
            raise ImageNotSupportedError(f"invalid python_version {version!r} (expected e.g. '3.12')")
        version = ".".join(version.split(".")[:2])  # a patch release is matched by its minor version
    if base:
        m = _SLIM_BASE.fullmatch(base)
        if m is None:
            raise ImageNotSupportedError(
                f"image base {base!r} is not a debian_slim Python base; the process runtime runs "
                f"functions on this host's Python and only honours Image.debian_slim(...); {_DOCKER_HINT}"
            )
        version = version or m[1]
    elif not version and len(spec.steps):
        raise ImageNotSupportedError(
            f"image has no base (e.g. Image.from_dockerfile(...)); the process runtime only "
            f"honours Image.debian_slim(...) images; {_DOCKER_HINT}"
        )
    for step in spec.steps:
        _check_step(step)
    version = version or _OWN  # an empty spec is the default image: the daemon's Python
    if (minimum := _min_python()) and _vkey(version) < minimum[1]:
        raise ImageNotSupportedError(
            f"Image.debian_slim({version!r}): the chalkcompute worker needs Python {minimum[0]}"
        )
    own = version == _OWN
    python = sys.executable if own else available_pythons().get(version)
    if python is None:
        have = ", ".join(available_pythons()) or "none"
        raise ImageNotSupportedError(
            f"Image.debian_slim({version!r}) needs Python {version} on this host for the process "
            f"runtime; this host has {have}; install it or use --runtime docker"
        )
    kinds = {s.kind for s in spec.steps}
    needs_venv = bool(kinds & _PIP_KINDS) or not own
    return _Plan(version, python, own, needs_venv, needs_venv or bool(kinds & _FILE_KINDS))


def check_image(spec: ImageSpec) -> None:
    """Raise :class:`ImageNotSupportedError` unless the process runtime can run ``spec``."""
    _plan(spec)


def _env_key(spec: ImageSpec) -> str:
    if _KEY.fullmatch(spec.content_hash):
        return spec.content_hash
    # No (or an unsafe-as-a-dir-name) hash from the SDK: the one the codec derived from the spec itself
    # (its wire form without content_hash, as this key has always been: existing envs stay valid).
    if not _KEY.fullmatch(spec.wire_digest):
        raise ValueError("an ImageSpec without a content_hash must come from the codec "
                         "(chalkd.services.convert.decode_image), which sets its wire_digest")
    return spec.wire_digest


def _image_path(path: str, cwd: str) -> str:
    """An image path as an absolute POSIX path; relative ones resolve against WORKDIR, like Docker."""
    # normpath of an absolute path cannot climb above "/", so the result stays under the root
    return "/" + posixpath.normpath(posixpath.join(cwd, path)).lstrip("/")


def _on_host(root: Path, image_path: str) -> Path:
    return root.joinpath(*[p for p in image_path.split("/") if p])


def _image_env(spec: ImageSpec) -> tuple[dict[str, str], str | None]:
    env: dict[str, str] = {}
    workdir: str | None = None
    for step in spec.steps:
        if step.kind == "env":
            env.update(step.env)
        elif step.kind == "workdir":
            workdir = _image_path(step.path, workdir or "/")
    return env, workdir


def _extract(content: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:*") as tar:
        members = tar.getmembers()
        for m in members:
            for name in [m.name] + ([m.linkname] if m.issym() or m.islnk() else []):
                if name.startswith("/") or ".." in name.split("/") or m.isdev():
                    raise ImageBuildError(f"copy_dir archive member {m.name!r} would escape its destination")
        if hasattr(tarfile, "data_filter"):  # belt and braces where the stdlib has it
            tar.extractall(dest, members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest, members)


def _apply_files(spec: ImageSpec, root: Path) -> None:
    cwd = "/"
    for step in spec.steps:
        if step.kind == "workdir":
            cwd = _image_path(step.path, cwd)
            _on_host(root, cwd).mkdir(parents=True, exist_ok=True)
        elif step.kind == "copy_file":
            dest = _on_host(root, _image_path(step.path, cwd))
            if step.path.endswith("/") and step.source:  # Docker: a trailing slash names a directory
                dest = dest / posixpath.basename(step.source.replace("\\", "/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(step.content)
            os.chmod(dest, (step.mode & 0o7777) or 0o644)
        elif step.kind == "copy_dir":
            dest = _on_host(root, _image_path(step.path, cwd))
            dest.mkdir(parents=True, exist_ok=True)
            if step.content:
                _extract(step.content, dest)


def _runtime_paths() -> list[str]:
    """Where the daemon imports chalkcompute and its dependencies from."""
    import chalkcompute

    # The package's parent first: editable installs use import hooks that a .pth path line won't run.
    paths = [str(Path(chalkcompute.__file__).resolve().parent.parent)]
    paths += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    return [p for p in dict.fromkeys(paths) if os.path.isdir(p)]


def _runtime_requirements() -> list[str]:
    reqs = importlib.metadata.requires("chalkd") or []
    return [r for r in reqs if not re.search(r"\bextra\b", r.partition(";")[2])]


def _relocate(venv: Path, old: Path, new: Path) -> None:
    """Rewrite the temp build path in the venv's scripts (shebangs, activate) to the final one."""
    before, after = str(old).encode(), str(new).encode()
    for f in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if f.is_symlink() or not f.is_file() or f.stat().st_size > 1 << 20:
            continue
        data = f.read_bytes()
        if before in data and b"\0" not in data:  # text only: never patch binaries
            f.write_bytes(data.replace(before, after))


def _build_env() -> dict[str, str]:
    env = dict(os.environ)  # PIP_* (indexes, certs, proxies) pass through unchanged
    for var in ("PYTHONPATH", "PYTHONHOME"):  # would leak the daemon's paths into the venv's pip
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"  # so lines stream as they are written
    env.setdefault("PIP_NO_INPUT", "1")  # nobody can answer a prompt
    return env


async def _flock(path: Path) -> int:
    """Hold an exclusive lock on ``path``; polled so that cancellation can't strand a thread holding it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.1)
    except BaseException:
        os.close(fd)
        raise
    return fd


class ProcessEnvBuilder:
    """Builds and caches the environments of images under ``<home>/envs``."""

    def __init__(self, home: str | os.PathLike[str], *, pip_extra_args: list[str] | None = None) -> None:
        self._envs = Path(home) / "envs"
        self._pip_extra_args = list(pip_extra_args or [])
        self._inflight: dict[str, tuple[asyncio.Task[None], list[LogFn]]] = {}

    async def ensure(self, spec: ImageSpec, *, log: LogFn | None = None) -> ProcessEnvironment:
        """The environment for ``spec``, building it first unless it already exists."""
        plan = _plan(spec)
        key = _env_key(spec)
        env, workdir = _image_env(spec)
        if not plan.needs_dir:  # fast path: the daemon's own interpreter, nothing on disk
            return ProcessEnvironment(plan.python, env, None, None, key)
        final = self._envs / key
        if not final.is_dir():  # rename-into-place makes existence mean "complete"
            await self._build_once(key, plan, spec, log)
        root = final / "root"
        extra: dict[str, str] = {}
        python = plan.python
        if plan.needs_venv:
            venv = final / "venv"
            python = str(venv / "bin" / "python")
            extra["VIRTUAL_ENV"] = str(venv)
            extra["PATH"] = os.pathsep.join(filter(None, [str(venv / "bin"), os.environ.get("PATH")]))
        cwd = str(_on_host(root, workdir)) if workdir else None
        return ProcessEnvironment(python, {**extra, **env, "CHALK_IMAGE_ROOT": str(root)}, cwd, str(root), key)

    async def _build_once(self, key: str, plan: _Plan, spec: ImageSpec, log: LogFn | None) -> None:
        # One build task per hash; later callers join it (and its log) instead of starting another.
        loop = asyncio.get_running_loop()
        entry = self._inflight.get(key)
        if entry is None or entry[0].done() or entry[0].get_loop() is not loop:
            sinks: list[LogFn] = []

            def emit(line: str) -> None:
                logger.debug("[%s] %s", key[:12], line)
                for sink in list(sinks):
                    try:
                        sink(line)
                    except Exception:  # a broken log consumer must not fail the build for the others
                        logger.exception("build log callback failed")

            task = loop.create_task(self._locked_build(key, plan, spec, emit))

            def done(t: asyncio.Task[None]) -> None:
                if self._inflight.get(key, (None,))[0] is t:
                    del self._inflight[key]
                if not t.cancelled():
                    t.exception()  # mark retrieved: the waiters re-raise it

            task.add_done_callback(done)
            entry = self._inflight[key] = (task, sinks)
        if log is not None:
            entry[1].append(log)
        try:
            await asyncio.shield(entry[0])  # a cancelled caller must not cancel others' build
        finally:
            if log is not None:
                with contextlib.suppress(ValueError):
                    entry[1].remove(log)

    async def _locked_build(self, key: str, plan: _Plan, spec: ImageSpec, log: LogFn) -> None:
        self._envs.mkdir(parents=True, exist_ok=True)
        fd = await _flock(self._envs / f".{key}.lock")
        try:
            if not (self._envs / key).is_dir():  # another process may have built it meanwhile
                await metrics.timed_build("process", self._build(key, plan, spec, log))
        finally:
            os.close(fd)  # releases the lock

    async def _build(self, key: str, plan: _Plan, spec: ImageSpec, log: LogFn) -> None:
        final = self._envs / key
        for stale in self._envs.glob(f".build-{key}-*"):  # left by a crashed daemon; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=self._envs))
        started = time.monotonic()
        logger.info("building image %s for the process runtime (Python %s)", key, plan.version)
        log(f"building image {key} for the process runtime (Python {plan.version})")
        ok = False
        try:
            (tmp / "root").mkdir()
            _apply_files(spec, tmp / "root")
            if plan.needs_venv:
                await self._make_venv(tmp, final, plan, spec, log)
            info = {"content_hash": key, "python": plan.python, "python_version": plan.version,
                    "daemon_python": sys.executable, "built_at": time.time()}
            (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            os.rename(tmp, final)
            ok = True
        except ImageBuildError:
            raise
        except Exception as e:
            raise ImageBuildError(f"building image {key} failed: {e}") from e
        finally:
            if not ok:
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("built image %s in %.1fs", key, time.monotonic() - started)
        log(f"built image {key} in {time.monotonic() - started:.1f}s")

    async def _make_venv(self, tmp: Path, final: Path, plan: _Plan, spec: ImageSpec, log: LogFn) -> None:
        venv = tmp / "venv"
        await self._run([plan.python, "-m", "venv", str(venv)], log, "creating the virtualenv")
        py = str(venv / "bin" / "python")
        out = await self._run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], None, "")
        purelib = Path(out[-1])
        if not plan.own:
            # Another Python version can't use the daemon's compiled dependencies: install them by
            # name, and our pure-Python package from the local distribution (never PyPI).
            await self._pip(py, _runtime_requirements(), log)
            import chalkcompute

            shutil.copytree(Path(chalkcompute.__file__).parent, purelib / "chalkcompute",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for i, step in enumerate(spec.steps):
            if step.kind == "pip_install":
                await self._pip(py, list(step.args), log)
            elif step.kind == "uv_pip_install":
                await self._uv(py, list(step.args), log)
            elif step.kind == "pip_install_from_requirements" and step.args:
                req = tmp / f"requirements-{i}.txt"
                req.write_text("\n".join(step.args) + "\n")
                await self._pip(py, ["-r", str(req)], log)
        if plan.own:
            # Written after the pip steps, or pip would find the daemon's packages, call them
            # "already satisfied" and not install them into the image. .pth paths are appended
            # after the venv's site-packages ("zz" sorts it last), so the image's packages win.
            (purelib / "zz_chalk_runtime.pth").write_text("\n".join(_runtime_paths()) + "\n")
        _relocate(venv, tmp, final)

    async def _pip(self, python: str, args: list[str], log: LogFn) -> None:
        if args:
            argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
            await self._run([*argv, *self._pip_extra_args, *args], log, f"pip install {shlex.join(args)}")

    async def _uv(self, python: str, args: list[str], log: LogFn) -> None:
        uv = shutil.which("uv")
        if uv is None or self._pip_extra_args:
            # pip_extra_args are pip options that uv may not accept
            why = "uv is not on PATH" if uv is None else "pip_extra_args are set"
            logger.info("uv_pip_install: %s; installing with pip instead", why)
            log(f"note: {why}; uv_pip_install falls back to pip")
            return await self._pip(python, args, log)
        if args:
            argv = [uv, "pip", "install", "--python", python, *args]
            await self._run(argv, log, f"uv pip install {shlex.join(args)}")

    async def _run(self, argv: list[str], log: LogFn | None, what: str) -> list[str]:
        """Run ``argv``, streaming its merged output to ``log``; returns the output's tail."""
        rc, tail = await run_streamed(argv, log=log, env=_build_env(), tail_lines=_TAIL_LINES)
        if rc != 0:
            raise ImageBuildError(f"{what or shlex.join(argv)} failed (exit status {rc}):\n" + "\n".join(tail))
        return tail
