"""The agent's own Python, injected read-only into sandbox containers: any image works, with or without Python.

Every other chalkd container runs the in-container agent (:mod:`chalkcompute.agent`)
under the image's own ``python3``. A sandbox may use any image (``ubuntu:latest``,
a static busybox), so its agent runs from a runtime the daemon provides instead:
the interpreter, its dynamic loader, the shared libraries it and its extension
modules load, and the standard library, copied once out of the bootstrapped
Debian base image into ``<home>/runtime/agent-root/<short image id>-<layout>/``
and bind-mounted read-only at ``/.chalkd``::

    rt = await prepare_agent_runtime(docker, home, "python:3.11-slim")   # ~1-2 s once, then reused
    config["Entrypoint"] = agent_entrypoint(rt, "/run/chalk-agent/agent.sock")   # ends with "--"
    config["Cmd"] = [*image_entrypoint, *image_cmd]
    config["HostConfig"]["Binds"] += [runtime_bind(rt), f"{agent_dir}:/run/chalk-agent"]

Why inject a runtime rather than exec through the engine or a static agent: the
agent (reaper, exec sessions, file operations) is already written, tested and
fast in standard-library Python; the Engine API's exec costs tens of
milliseconds a call and cannot reap or supervise; and a runtime copied from the
base image is whatever that image's Debian ships, with no new build toolchain.

How it runs without touching the image's own files:

* the entrypoint calls the runtime's dynamic loader directly
  (``/.chalkd/lib/ld-linux-x86-64.so.2 --inhibit-cache --library-path /.chalkd/lib
  /.chalkd/usr/bin/python3.11 -I -S ...``): the image's loader, ``/etc/ld.so.cache``
  and libraries are never used by the agent, and ``--library-path`` is not an
  environment variable, so no ``LD_LIBRARY_PATH`` reaches the commands it starts;
* Python finds its standard library from its own path (``/.chalkd/usr`` is its
  prefix): no ``PYTHONHOME``. ``-I`` ignores the image's ``PYTHON*`` variables (an
  image's ``PYTHONPATH`` or ``PYTHONHOME`` would point our interpreter at another
  Python's files) and ``-S`` skips ``site``;
* a small boot script (``_boot.py``, next to the agent's files) first undoes the
  one change the interpreter makes to its own environment, PEP 538's C-locale
  coercion (``LC_CTYPE=C.UTF-8`` when the image's locale is ``C``), from
  ``/proc/self/environ``, which still holds the environment the container gave it;
  then it runs the agent's ``__main__.py`` by path;
* so every command the agent starts is the image's binary with the image's loader,
  libraries and environment: ``python3`` in an image without it is exit 127.

Files are world-readable (the agent runs as the image's ``USER``); each runtime
directory is complete or absent (built in a temporary directory, then renamed);
concurrent prepares, in this process or another daemon's, take a lock file. The
agent's files sit in ``agent-<fingerprint>/``, so an edited agent gets a fresh copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import logging
import os
import posixpath
import py_compile
import shutil
import sys
import tarfile
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import aiodocker
from aiodocker.exceptions import DockerError

import chalkcompute.agent
from chalkd.sandboxes.agent_elf import ElfError, ElfInfo, elf_info

log = logging.getLogger(__name__)

__all__ = ["AgentRuntime", "AgentRuntimeError", "prepare_agent_runtime", "agent_entrypoint", "runtime_bind",
           "check_image_arch", "DEFAULT_MOUNT", "LAYOUT", "BOOT"]

DEFAULT_MOUNT = "/.chalkd"
# Part of each runtime directory's name: bump when what is extracted, or where it goes, changes.
LAYOUT = "1"
# Standard-library directories the agent never imports (GUI, tests, packaging, third-party packages).
_SKIP_STDLIB = frozenset({"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
                          "dist-packages", "pydoc_data", "venv", "distutils", "sqlite3"})
# Extension modules left out, with the libraries only they need: tests and samples, terminals,
# databases, TLS (the agent speaks over a unix socket; hashlib falls back to its built-in hashes).
_SKIP_DYNLOAD = ("_test", "_xx", "xxlimited", "_ctypes_test", "_tkinter", "_curses", "readline", "nis",
                 "ossaudiodev", "_dbm", "_gdbm", "_sqlite3", "_ssl", "_hashlib", "_crypt", "audioop")
_PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3")  # the official images', then Debian's
_MAX_LINKS = 8
_LOCK_POLL_S = 0.1
_LOCK_WAIT_S = 300.0

# The boot script the entrypoint runs first (see the module docstring); its text
# is part of the agent directory's fingerprint.
BOOT = '''"""chalkd: undo the interpreter's changes to its environment, then run the agent (argv[1]) by path.

Python's C-locale coercion (PEP 538) sets LC_CTYPE=C.UTF-8 when the locale is C; -I
cannot turn it off. /proc/self/environ still holds the environment the container
gave this process, so the agent, and every command it starts, sees exactly that.
"""
import os
import runpy
import sys


def _restore_env():
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return
    given = {}
    for item in raw.split(b"\\0"):
        key, sep, value = item.partition(b"=")
        if sep and key and key not in given:
            given[key] = value
    for key in [k for k in os.environb if k not in given]:
        del os.environb[key]
    for key, value in given.items():
        if os.environb.get(key) != value:
            os.environb[key] = value


_restore_env()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


class AgentRuntimeError(RuntimeError):
    """The agent runtime cannot be prepared or used (the message names the image, path or architecture)."""


@dataclass(frozen=True)
class AgentRuntime:
    """A prepared runtime directory; paths other than ``root`` are relative to it (and to its mount)."""

    root: Path            # host directory, bind-mounted read-only (see runtime_bind)
    image_id: str         # the base image it came from (sha256:...)
    arch: str             # Docker's architecture name: amd64 | arm64
    python_version: str   # "3.11"
    loader: str           # "lib/ld-linux-x86-64.so.2"
    libdir: str           # "lib"
    python: str           # "usr/bin/python3.11"
    agent_dir: str        # "agent-<fingerprint>": the agent's files and _boot.py
    reused: bool          # True when nothing had to be extracted or copied


def runtime_bind(rt: AgentRuntime, mount: str = DEFAULT_MOUNT) -> str:
    """The read-only bind spec for HostConfig.Binds.

        >>> runtime_bind(rt)  # doctest: +SKIP
        '/home/me/.chalkd/runtime/agent-root/4da22e8b2899-1:/.chalkd:ro'
    """
    return f"{rt.root}:{_check_mount(mount)}:ro"


def agent_entrypoint(rt: AgentRuntime, socket_path: str, *, mount: str = DEFAULT_MOUNT,
                     extra: tuple[str, ...] = ()) -> list[str]:
    """The agent's command line through the runtime's own loader, up to and including ``--``.

        >>> agent_entrypoint(rt, "/run/chalk-agent/agent.sock")  # doctest: +SKIP
        ['/.chalkd/lib/ld-linux-x86-64.so.2', '--inhibit-cache', '--library-path', '/.chalkd/lib',
         '/.chalkd/usr/bin/python3.11', '-I', '-S', '/.chalkd/agent-0c1d.../_boot.py',
         '/.chalkd/agent-0c1d.../__main__.py', '--socket', '/run/chalk-agent/agent.sock', '--']

    Append the image's own entrypoint and cmd (the agent starts them as a child).
    ``extra`` goes before ``--`` (``--socket-mode``, ``--await-env``, ``--ready-file F``).
    """
    m = _check_mount(mount)
    agent = f"{m}/{rt.agent_dir}"
    return [f"{m}/{rt.loader}", "--inhibit-cache", "--library-path", f"{m}/{rt.libdir}", f"{m}/{rt.python}",
            "-I", "-S", f"{agent}/_boot.py", f"{agent}/__main__.py", "--socket", socket_path, *extra, "--"]


def check_image_arch(rt: AgentRuntime, image_info: dict, name: str = "") -> None:
    """Refuse an image (``docker.images.inspect`` output) whose architecture the runtime cannot run on."""
    arch = image_info.get("Architecture") or ""
    if arch and arch != rt.arch:
        what = name or image_info.get("Id", "the image")
        raise AgentRuntimeError(f"image {what} is built for {arch}, but chalkd's agent runtime (from the base "
                                f"image, like this Docker engine) is {rt.arch}: use an {rt.arch} image")


def _check_mount(mount: str) -> str:
    if not mount.startswith("/") or mount.rstrip("/") == "" or any(c in mount for c in ":,\n\0"):
        raise ValueError(f"agent runtime mount {mount!r} must be an absolute path other than '/', "
                         "without ':' or ','")
    return mount.rstrip("/")


# ---------------------------------------------------------------- preparing

def _agent_files() -> dict[str, bytes]:
    """The installed agent package's modules (works from a wheel or a checkout), plus the boot script."""
    here = Path(chalkcompute.agent.__file__).parent
    files = {p.name: p.read_bytes() for p in sorted(here.glob("*.py"))}
    if "__main__.py" not in files:
        raise AgentRuntimeError(f"the agent package at {here} has no __main__.py")
    files["_boot.py"] = BOOT.encode()
    return files


def _fingerprint(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _locked(path: Path):
    """One prepare at a time: an asyncio lock in this process, a lock file against other processes."""
    loop = asyncio.get_running_loop()
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + _LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise AgentRuntimeError(f"cannot lock {path} (another daemon preparing the agent "
                                                f"runtime for over {_LOCK_WAIT_S:.0f}s?): {exc}") from None
                # Another process holds it (rare: two daemons on one home); its prepare takes seconds.
                await asyncio.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)


async def prepare_agent_runtime(docker: aiodocker.Docker, home: Path, base_tag: str) -> AgentRuntime:
    """The agent runtime from the local image ``base_tag``, extracted once into ``<home>/runtime/agent-root/``.

        rt = await prepare_agent_runtime(docker, Path("~/.chalkd").expanduser(), "python:3.11-slim")
        rt.root       # PosixPath('/root/.chalkd/runtime/agent-root/4da22e8b2899-1')
        rt.reused     # False the first time, True after

    Raises :class:`AgentRuntimeError` when the image is missing (make it with
    ``chalkd image bootstrap``), has no usable ``python3``, or is for another
    architecture than the engine.
    """
    try:
        info = await docker.images.inspect(base_tag)
    except DockerError as exc:
        if exc.status == 404:
            raise AgentRuntimeError(f"the agent runtime's base image {base_tag} is not on this Docker host: "
                                    "make it with `chalkd image bootstrap`") from None
        raise AgentRuntimeError(f"the Docker engine failed to inspect {base_tag}: {exc.message}") from None
    image_id = info["Id"]
    engine_arch = _docker_arch((await docker.system.info()).get("Architecture", ""))
    image_arch = info.get("Architecture", "")
    if engine_arch and image_arch and image_arch != engine_arch:
        raise AgentRuntimeError(f"the agent runtime's base image {base_tag} is {image_arch} but this Docker "
                                f"engine runs {engine_arch}: bootstrap the base image on this host")
    files = _agent_files()
    agent_dir = f"agent-{_fingerprint(files)}"
    parent = Path(home) / "runtime" / "agent-root"
    root = parent / f"{image_id.split(':')[-1][:12]}-{LAYOUT}"
    if (root / "runtime.txt").is_file() and (root / agent_dir).is_dir():
        return _runtime(root, image_id, agent_dir, reused=True)
    parent.mkdir(parents=True, exist_ok=True)
    async with _locked(parent / ".lock"):
        # Only the lock's holder builds: a temporary directory seen now is a crashed prepare's.
        for left in [*parent.glob(".build-*"), *root.glob(".agent-*")]:
            shutil.rmtree(left, ignore_errors=True)
        reused = True
        if not (root / "runtime.txt").is_file():  # not made by whoever held the lock before us
            started = time.monotonic()
            await _extract(docker, base_tag, image_id, parent, root)
            reused = False
            log.info("agent runtime from %s ready in %s (%.1f MB, %.1fs)", base_tag, root,
                     _size(root) / 1e6, time.monotonic() - started)
        if not (root / agent_dir).is_dir():
            await asyncio.to_thread(_write_agent, root, agent_dir, files)
            reused = False
    return _runtime(root, image_id, agent_dir, reused=reused)


def _docker_arch(engine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(engine, engine)


def _runtime_fields(root: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (root / "runtime.txt").read_text().splitlines() if "=" in line)


def _runtime(root: Path, image_id: str, agent_dir: str, *, reused: bool) -> AgentRuntime:
    fields = _runtime_fields(root)
    return AgentRuntime(root=root, image_id=image_id, arch=fields["arch"], python_version=fields["python_version"],
                        loader=fields["loader"], libdir=fields["libdir"], python=fields["python"],
                        agent_dir=agent_dir, reused=reused)


def _write_agent(root: Path, agent_dir: str, files: dict[str, bytes]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".agent-", dir=root))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            os.chmod(tmp / name, 0o644)
        if _runtime_fields(root)["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}":
            # The mount is read-only, so the agent could never cache its own bytecode: compile it here
            # (the daemon's Python is the runtime's version), ~20 ms less at every agent start. Unchecked
            # hashes: this directory never changes (an edit makes a new one).
            for name in files:
                if name not in ("__main__.py", "_boot.py"):  # run by path: never from a .pyc
                    src = str(tmp / name)
                    py_compile.compile(src, cfile=importlib.util.cache_from_source(src), doraise=True,
                                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            for p in [tmp / "__pycache__", *(tmp / "__pycache__").glob("*")]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
        os.rename(tmp, root / agent_dir)
    except FileExistsError:
        pass  # a concurrent writer won: same content
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Source:
    """Files of one (created, never started) container, read through the Engine API's archive endpoint."""

    def __init__(self, container, image: str) -> None:
        self.container, self.image = container, image

    async def tar(self, path: str) -> tarfile.TarFile | None:
        try:
            return await self.container.get_archive(path)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise AgentRuntimeError(f"reading {path} from {self.image} failed: {exc.message}") from None

    async def file(self, path: str) -> tuple[str, bytes] | None:
        """(real path, content) of a regular file, following symlinks; None when absent."""
        for _ in range(_MAX_LINKS):
            tar = await self.tar(path)
            if tar is None:
                return None
            member = tar.next()
            if member is None:
                return None
            if member.issym():
                path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
                continue
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                raise AgentRuntimeError(f"{path} in {self.image} is not a regular file")
            return path, f.read()
        raise AgentRuntimeError(f"{path} in {self.image}: too many levels of symbolic links")


async def _extract(docker: aiodocker.Docker, base_tag: str, image_id: str, parent: Path, root: Path) -> None:
    container = await docker.containers.create(
        {"Image": image_id, "Entrypoint": ["/nonexistent"], "Cmd": [], "NetworkDisabled": True,
         "Labels": {"dev.chalkd.probe": "agent-runtime"}})
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
    try:
        await _fill(_Source(container, base_tag), tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, root)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(DockerError):
            await container.delete(force=True)


async def _fill(src: _Source, out: Path) -> None:
    found = None
    for candidate in _PYTHONS:
        if (found := await src.file(candidate)) is not None:
            break
    if found is None:
        raise AgentRuntimeError(f"the agent runtime's base image {src.image} has no python3 "
                                f"(looked for {', '.join(_PYTHONS)})")
    python_path, python_bin = found
    exe = _elf(python_bin, f"{python_path} in {src.image}")
    name = posixpath.basename(python_path)  # python3.11
    if not name.startswith("python3.") or not exe.interp:
        raise AgentRuntimeError(f"{python_path} in {src.image} is not a dynamically linked python3.X")
    prefix = posixpath.dirname(posixpath.dirname(python_path))  # /usr
    stdlib = f"{prefix}/lib/{name}"
    tar = await src.tar(stdlib)
    if tar is None:
        raise AgentRuntimeError(f"{src.image} has {python_path} but no standard library at {stdlib}")
    rel_prefix = prefix.lstrip("/")
    modules = await asyncio.to_thread(_unpack_stdlib, tar, out / rel_prefix / "lib", name)
    _write(out / rel_prefix / "bin" / name, python_bin, 0o755)

    # Shared libraries: the interpreter's and its extension modules', with theirs, by soname.
    libdir = out / "lib"
    libdir.mkdir(mode=0o755)
    loader_name = posixpath.basename(exe.interp)
    loader = await src.file(exe.interp)
    if loader is None:
        raise AgentRuntimeError(f"{src.image} has no dynamic loader {exe.interp}")
    _write(libdir / loader_name, loader[1], 0o755)
    search = [f"/usr/lib/{exe.triplet}", f"/lib/{exe.triplet}", "/usr/lib64", "/lib64", "/usr/lib", "/lib",
              f"{prefix}/lib"]
    have: dict[str, bool] = {loader_name: True}  # soname -> found

    async def need(sonames: tuple[str, ...]) -> list[str]:
        """Fetch each soname (and what it needs); the ones that cannot be found."""
        missing = []
        for so in sonames:
            if so not in have:
                have[so] = False
                for d in dict.fromkeys(search):
                    if (got := await src.file(f"{d}/{so}")) is not None:
                        lib = _elf(got[1], f"{got[0]} in {src.image}")
                        _check_same(lib, exe, got[0], src.image)
                        _write(libdir / so, got[1], 0o644)
                        have[so] = True
                        missing += await need(lib.needed)
                        break
            if not have[so]:
                missing.append(so)
        return missing

    if lost := await need(exe.needed):
        raise AgentRuntimeError(f"{python_path} in {src.image} needs {', '.join(lost)}, not found in {search}")
    for module in modules:
        ext = _elf(module.read_bytes(), str(module))
        if lost := await need(ext.needed):
            # This extension cannot load; the agent does without it (asyncio without ssl, say).
            log.info("agent runtime: leaving out %s (needs %s, not in %s)", module.name, ", ".join(lost), src.image)
            module.unlink()
    text = (f"arch={exe.arch}\npython_version={name[len('python'):]}\nloader=lib/{loader_name}\nlibdir=lib\n"
            f"python={rel_prefix}/bin/{name}\nimage={src.image}\n")
    _write(out / "runtime.txt", text.encode(), 0o644)


def _elf(data: bytes, what: str) -> ElfInfo:
    try:
        return elf_info(data, what)
    except ElfError as exc:
        raise AgentRuntimeError(str(exc)) from None


def _check_same(lib: ElfInfo, exe: ElfInfo, path: str, image: str) -> None:
    if lib.machine != exe.machine:
        raise AgentRuntimeError(f"{path} in {image} is {lib.arch}, its python3 is {exe.arch}")


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _unpack_stdlib(tar: tarfile.TarFile, dest: Path, name: str) -> list[Path]:
    """Extract ``python3.X/`` from the archive into ``dest`` without what the agent never needs.

    Modification times are kept: the ``__pycache__`` files are checked against
    them, and the mount is read-only, so a mismatch would mean compiling the
    standard library in memory at every agent start. Returns the kept
    extension modules of ``lib-dynload``.
    """
    dest.mkdir(parents=True, exist_ok=True, mode=0o755)
    modules: list[Path] = []
    dirs: list[tuple[Path, int]] = []
    for m in tar:
        parts = m.name.rstrip("/").split("/")
        if parts[0] != name or any(p in ("", ".", "..") for p in parts):
            raise AgentRuntimeError(f"unexpected path {m.name!r} in the archive of {name}")
        if len(parts) > 1 and (parts[1] in _SKIP_STDLIB or parts[1].startswith("config-")):
            continue
        if len(parts) == 3 and parts[1] == "lib-dynload" and parts[2].startswith(_SKIP_DYNLOAD):
            continue
        target = dest.joinpath(*parts)
        if m.isdir():
            target.mkdir(exist_ok=True, mode=0o755)
            os.chmod(target, 0o755)
            dirs.append((target, int(m.mtime)))
        elif m.isfile():
            f = tar.extractfile(m)
            assert f is not None
            _write(target, f.read(), 0o755 if m.mode & 0o111 else 0o644)
            os.utime(target, (m.mtime, m.mtime))
            if parts[1] == "lib-dynload" and target.suffix == ".so":
                modules.append(target)
        elif m.issym() and not m.linkname.startswith("/") and ".." not in m.linkname.split("/"):
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            os.symlink(m.linkname, target)
        elif m.islnk() and (source := dest.joinpath(*m.linkname.split("/"))).is_file() and \
                m.linkname.split("/")[0] == name and ".." not in m.linkname.split("/"):
            shutil.copy2(source, target)  # a hard link to a file extracted earlier
        # anything else (hard links, devices, links out of the tree) is not part of a standard library
    for d, mtime in reversed(dirs):
        os.utime(d, (mtime, mtime))
    return modules


def _size(root: Path) -> int:
    """Bytes under ``root`` (for logs and the report)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())

