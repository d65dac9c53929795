"""The chalkd runtime layer: what every Docker image gets on top of the user's steps.

A replica container runs ``python3 -m chalkcompute.worker``, so each image
needs our ``chalkcompute`` package and the worker's dependencies. They come
from this host, never from a registry (PyPI's "chalkcompute" is a different
project):

* a wheel of our own distribution (``chalkd``) holding only the ``chalkcompute``
  package, assembled here (a zip with its dist-info: METADATA, WHEEL, RECORD)
  straight from the package files this daemon imports, so it works for any
  install (a wheel, ``pip install -e``, a plain venv with no setuptools or
  wheel) and needs no source checkout; cached by a fingerprint of those files,
  so an edit to ``chalkcompute`` gives a new wheel (and a new image tag);
* a wheelhouse of the worker's dependencies pinned to the versions installed
  on this host (grpclib, protobuf, pyarrow, pathspec, uvloop and what they
  need), for the image's Python version, cached by the pins;
* ``install.py``, run in the image by the build: it keeps dependencies the
  image already has in a version chalkd accepts, installs the rest at the
  host's versions (wheelhouse first, the index as fallback), then our wheel
  with ``--no-deps``, and checks that ``chalkcompute.worker`` imports.

Example::

    layer = await runtime_layer(home, "3.11", log=print)
    layer.fingerprint          # part of every image tag
    [f.path for f in layer.files]
    # ['chalkd-runtime/deps/install.py', 'chalkd-runtime/deps/runtime.json',
    #  'chalkd-runtime/deps/wheels/pyarrow-...whl', ..., 'chalkd-runtime/wheel/chalkd-0.1.0-py3-none-any.whl']

Everything lives under ``<home>/runtime/``: ``wheels/<fingerprint>/`` and
``wheelhouse/<python>-<arch>-<pins>/``, each built in a temporary directory and
renamed into place (so an existing directory is complete) under a file lock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import weakref
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalkd.images.commands import run_streamed

__all__ = [
    "ContextFile", "RuntimeLayer", "RuntimeDistError", "runtime_layer", "runtime_fingerprint",
    "DEPS_DIR", "WHEEL_DIR", "RUNTIME_INFO", "WORKER_DEPS",
]

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]

DIST = "chalkd"
PACKAGE = "chalkcompute"  # the only package images need: the SDK and the worker
# What `chalkcompute` (SDK + worker) imports outside the stdlib; the daemon-only
# dependencies (rich, psutil, aiodocker, ...) stay out of images.
WORKER_DEPS = ("grpclib", "protobuf", "pyarrow", "pathspec", "uvloop")
RUNTIME_INFO = "/usr/local/share/chalkd/runtime.json"  # in the image: what install.py installed, for what Python
DEPS_DIR = "chalkd-runtime/deps"  # build-context folders the Dockerfile copies
WHEEL_DIR = "chalkd-runtime/wheel"
_LAYER_VERSION = "2"  # bump when the layer's layout or install.py's behaviour changes
_SKIP_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache"})
_TAIL = 40
_RETRY_S = 3600.0


class RuntimeDistError(RuntimeError):
    """The runtime layer could not be made (e.g. the chalkd distribution is not installed)."""


@dataclass(frozen=True)
class ContextFile:
    """One entry of a Docker build context: ``data`` or the host file ``source``;
    ``is_dir`` makes an empty directory."""

    path: str  # posix, relative to the context root
    data: bytes = b""
    source: str | None = None
    mode: int = 0o644
    is_dir: bool = False


@dataclass(frozen=True)
class RuntimeLayer:
    fingerprint: str  # sha256 hex of (layer version, package files, version, pins, python version)
    python_version: str  # "3.11": what the wheelhouse is for
    files: tuple[ContextFile, ...]  # under DEPS_DIR and WHEEL_DIR


# ---------------------------------------------------------------- what we ship

def _requirement_cls():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it, and the daemon needs pip anyway for the wheelhouse
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


_PINS: dict[str, dict] | None = None


def _pins() -> dict[str, dict]:
    """The worker's dependency closure as installed on this host:
    ``{name: {"version": "26.0.1", "requires": [...]}}`` (extras left out).
    Memoised: the daemon imports these packages, so they can't change under it."""
    global _PINS
    if _PINS is None:
        Requirement = _requirement_cls()
        pins: dict[str, dict] = {}
        queue = list(WORKER_DEPS)
        while queue:
            name = _canonical(queue.pop(0))
            if name in pins:
                continue
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue  # optional on this platform (e.g. a marker excluded it)
            requires = []
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker is not None and "extra" in str(req.marker):
                    continue
                requires.append(line)
                if req.marker is None or req.marker.evaluate():
                    queue.append(req.name)
            pins[name] = {"version": dist.version, "requires": requires}
        _PINS = dict(sorted(pins.items()))
    return _PINS


def _worker_requirements() -> list[str]:
    """chalkd's own requirement lines for the worker's dependencies, e.g. ``pyarrow>=15``."""
    Requirement = _requirement_cls()
    wanted = {_canonical(n) for n in WORKER_DEPS}
    return [r for r in _dist().requires or []
            if _canonical(Requirement(r).name) in wanted and "extra" not in r.partition(";")[2]]


_DIST: importlib.metadata.Distribution | None = None


def _dist() -> importlib.metadata.Distribution:
    """chalkd's installed distribution, however it was installed (a wheel, an editable
    install, a plain ``pip install <checkout>``). Memoised: it does not change under a
    running daemon."""
    global _DIST
    if _DIST is None:
        try:
            _DIST = importlib.metadata.distribution(DIST)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeDistError(
                f"the {DIST} distribution is not installed in {sys.prefix}: the Docker runtime ships the "
                f"installed chalkcompute package into images, so install chalkd (`pip install chalkd-*.whl` "
                f"or `pip install -e <checkout>`)") from None
    return _DIST


def _package_dir() -> Path:
    """The directory of the ``chalkcompute`` package this daemon imports: in site-packages
    for a wheel install, in the checkout for an editable one."""
    import chalkcompute
    return Path(chalkcompute.__file__).resolve().parent


def _snapshot(pkg: Path | None = None) -> dict[str, bytes]:
    """The package's files as wheel paths (``chalkcompute/...``), read once so that the
    fingerprint and the wheel agree. Compiled files and caches are left out."""
    pkg = pkg or _package_dir()
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(pkg):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith((".egg-info", ".dist-info")))
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            with contextlib.suppress(FileNotFoundError):  # an editor may delete it meanwhile
                files[f"{PACKAGE}/{path.relative_to(pkg).as_posix()}"] = path.read_bytes()
    if f"{PACKAGE}/worker/__main__.py" not in files:
        raise RuntimeDistError(f"{pkg} has no worker/__main__.py: it is not a complete chalkcompute package")
    return files


def _fingerprint(snapshot: dict[str, bytes], python_version: str) -> str:
    h = hashlib.sha256()
    for rel in sorted(snapshot):
        h.update(rel.encode() + b"\0" + hashlib.sha256(snapshot[rel]).digest())
    meta = [_LAYER_VERSION, h.hexdigest(), _dist().version, _pins(), _worker_requirements(), python_version,
            hashlib.sha256(INSTALL_SCRIPT.encode()).hexdigest()]
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _python_version(python_version: str) -> str:
    return ".".join(python_version.split(".")[:2]) if python_version else \
        f"{sys.version_info.major}.{sys.version_info.minor}"


def runtime_fingerprint(python_version: str = "") -> str:
    """The fingerprint :func:`runtime_layer` would give now, without building anything
    (a few milliseconds: it hashes the package's files)."""
    return _fingerprint(_snapshot(), _python_version(python_version))


def wheel_bytes(snapshot: dict[str, bytes], version: str, requires_python: str = "") -> tuple[str, bytes]:
    """A wheel of ``snapshot`` as ``(file name, bytes)``: the files plus a dist-info
    (METADATA, WHEEL, RECORD) for distribution ``chalkd``; no setuptools, no build step.
    Deterministic: the same files give the same bytes.

    Example::

        name, data = wheel_bytes({"chalkcompute/__init__.py": b""}, "0.1.0")
        name  # 'chalkd-0.1.0-py3-none-any.whl'
    """
    safe_version = version.replace("-", "_")
    info = f"{DIST}-{safe_version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n"
    if requires_python:
        metadata += f"Requires-Python: {requires_python}\n"
    # No Requires-Dist: install.py installs the dependencies itself and this wheel with --no-deps.
    entries = dict(sorted(snapshot.items()))
    entries[f"{info}/METADATA"] = metadata.encode()
    entries[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: chalkd.images.runtime_dist\n"
                                b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    entries[f"{info}/top_level.txt"] = f"{PACKAGE}\n".encode()
    record = []
    for rel, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data in entries.items():
            zi = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: same files, same bytes
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return f"{DIST}-{safe_version}-py3-none-any.whl", buf.getvalue()


# ---------------------------------------------------------------- building

async def runtime_layer(home: Path, python_version: str, log: LogFn | None = None) -> RuntimeLayer:
    """The runtime layer's build-context files for an image with ``python_version``
    (``""``: unknown, use this host's), building the wheel and wheelhouse if needed."""
    log = log or (lambda line: None)
    version = _python_version(python_version)
    snapshot = _snapshot()
    fp = _fingerprint(snapshot, version)
    root = Path(home) / "runtime"
    root.mkdir(parents=True, exist_ok=True)
    wheel = await _wheel(root, snapshot, log)
    wheels = await _wheelhouse(root, version, log)
    config = {
        "requires_python": _dist().metadata.get("Requires-Python") or "",
        "requires": _worker_requirements(),
        "pins": _pins(),
        "python_version": version,
    }
    files = [
        ContextFile(f"{DEPS_DIR}/install.py", INSTALL_SCRIPT.encode()),
        ContextFile(f"{DEPS_DIR}/runtime.json", (json.dumps(config, indent=1, sort_keys=True) + "\n").encode()),
        ContextFile(f"{DEPS_DIR}/wheels", is_dir=True, mode=0o755),
        *(ContextFile(f"{DEPS_DIR}/wheels/{w.name}", source=str(w)) for w in wheels),
        ContextFile(f"{WHEEL_DIR}/{wheel.name}", source=str(wheel)),
    ]
    return RuntimeLayer(fp, version, tuple(files))


_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _locked(path: Path):
    """In-process (asyncio, per event loop) and cross-process (flock) exclusion on ``path``."""
    lock = _LOCKS.setdefault(asyncio.get_running_loop(), {}).setdefault(str(path), asyncio.Lock())
    async with lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:  # polled, so that a cancelled build never strands a thread holding it
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.1)
            yield
        finally:
            os.close(fd)


async def _wheel(root: Path, snapshot: dict[str, bytes], log: LogFn) -> Path:
    h = hashlib.sha256(json.dumps([_dist().version, sorted((k, hashlib.sha256(v).hexdigest())
                                                           for k, v in snapshot.items())]).encode()).hexdigest()[:24]
    base = root / "wheels"
    final = base / h
    if not final.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        async with _locked(base / ".lock"):
            if not final.is_dir():
                _write_wheel(base, final, snapshot, log)
    found = sorted(final.glob("*.whl"))
    if len(found) != 1:
        raise RuntimeDistError(f"{final} should hold one wheel, it has {len(found)}; remove it to rebuild")
    with contextlib.suppress(OSError):
        os.utime(final)  # recently used: kept by _prune
    return found[0]


def _write_wheel(base: Path, final: Path, snapshot: dict[str, bytes], log: LogFn) -> None:
    """Assemble the wheel from the installed package's files (a few ms: no build backend)
    in a temporary directory renamed into place, so an existing ``final`` is complete."""
    dist = _dist()
    name, data = wheel_bytes(snapshot, dist.version, dist.metadata.get("Requires-Python") or "")
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        (tmp / name).write_bytes(data)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"chalkd runtime: assembled {name} from {_package_dir()} ({len(snapshot)} files)")
    _prune(base, keep=8)


def _prune(base: Path, keep: int) -> None:
    """Drop all but the ``keep`` most recently used cache entries."""
    entries = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


async def _wheelhouse(root: Path, version: str, log: LogFn) -> list[Path]:
    """Wheels of the pinned dependencies for Python ``version``; best effort (pip in
    the image falls back to the index for anything missing)."""
    pins = _pins()
    arch = platform.machine()
    key = hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:16]
    base = root / "wheelhouse"
    final = base / f"{version}-{arch}-{key}"
    if not final.is_dir() or _stale(final):
        base.mkdir(parents=True, exist_ok=True)
        async with _locked(base / ".lock"):
            if final.is_dir() and _stale(final):
                shutil.rmtree(final, ignore_errors=True)
            if not final.is_dir():
                await _fill_wheelhouse(base, final, version, arch, pins, log)
    with contextlib.suppress(OSError):
        os.utime(final)
    return sorted(final.glob("*.whl"))


def _stale(wheelhouse: Path) -> bool:
    """An incomplete wheelhouse (say, the network was down) is tried again after an hour."""
    try:
        info = json.loads((wheelhouse / "wheelhouse.json").read_text())
    except (OSError, ValueError):
        return True
    return bool(info.get("missing")) and time.time() - info.get("made_at", 0) > _RETRY_S


async def _fill_wheelhouse(base: Path, final: Path, version: str, arch: str, pins: dict[str, dict],
                           log: LogFn) -> None:
    started = time.monotonic()
    reqs = [f"{name}=={p['version']}" for name, p in pins.items()]
    own = version == f"{sys.version_info.major}.{sys.version_info.minor}"
    log(f"chalkd runtime: collecting wheels for Python {version} ({', '.join(reqs)})")
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    pip = [sys.executable, "-m", "pip"]
    if own:
        download = [*pip, "download", "--no-deps", "--only-binary=:all:", "--progress-bar=off", "-d", str(tmp)]
    else:  # another interpreter: ask for its wheels by tags; short timeouts, this is best effort
        platforms = [f"--platform={p}_{arch}" for p in ("manylinux_2_28", "manylinux2014", "linux")]
        download = [*pip, "download", "--no-deps", "--only-binary=:all:", "--progress-bar=off",
                    f"--python-version={version}",
                    "--implementation=cp", *platforms, "--timeout=15", "--retries=1", "-d", str(tmp)]
    missing: list[str] = []
    try:
        try:
            await _run([*download, *reqs], log, "downloading the worker's dependencies")
        except RuntimeDistError:
            for req in reqs:  # one at a time: keep what can be had
                try:
                    await _run([*download, req], None, "")
                except RuntimeDistError:
                    if not own:
                        missing.append(req)
                        continue
                    try:  # no binary wheel for this host: build one
                        await _run([*pip, "wheel", "--no-deps", "-w", str(tmp), req], None, "")
                    except RuntimeDistError:
                        missing.append(req)
        (tmp / "wheelhouse.json").write_text(json.dumps({"python": version, "arch": arch, "pins": reqs,
                                                         "missing": missing, "made_at": time.time()}))
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = f"; missing {', '.join(missing)} (pip in the image will use the index)" if missing else ""
    log(f"chalkd runtime: wheelhouse for Python {version} ready in {time.monotonic() - started:.1f}s{note}")
    _prune(base, keep=6)


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)  # PIP_* (indexes, certs, proxies) pass through unchanged
    for var in ("PYTHONPATH", "PYTHONHOME"):
        env.pop(var, None)
    env.update(PYTHONUNBUFFERED="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


async def _run(argv: list[str], log: LogFn | None, what: str) -> None:
    """Run ``argv``, its merged output streamed to ``log``; RuntimeDistError with the tail on failure."""
    rc, tail = await run_streamed(argv, log=log, env=_pip_env(), tail_lines=_TAIL)
    if rc != 0:
        raise RuntimeDistError(f"{what or ' '.join(argv)} failed (exit status {rc}):\n" + "\n".join(tail))


# ---------------------------------------------------------------- in the image

# Runs with the image's python3 (any version: it reports an unsupported one itself),
# stdlib plus pip's vendored `packaging`. `deps` and `wheel` are separate RUNs so
# that an edit to our sources only re-runs the (fast) wheel step.
INSTALL_SCRIPT = r'''"""chalkd runtime installer; chalkd runs it inside image builds: install.py deps|wheel"""
import glob, json, os, platform, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
INFO = "__RUNTIME_INFO__"


def say(msg):
    print("chalkd runtime: " + msg, flush=True)


def fail(msg):
    sys.stderr.write("chalkd runtime: ERROR: " + msg + "\n")
    sys.exit(1)


def pip(args):
    env = dict(os.environ, PIP_REQUIRE_VIRTUALENV="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmd = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-warn-script-location"] + args
    say("$ " + " ".join(cmd))
    sys.stdout.flush()
    return subprocess.call(cmd, env=env) == 0


def packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement
            from pip._vendor.packaging.specifiers import SpecifierSet
        except ImportError:
            return None, None
    return Requirement, SpecifierSet


def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


def deps(cfg):
    Requirement, SpecifierSet = packaging()
    if Requirement is None:
        fail("this image's python3 (%s) has no pip; chalkd needs python3 with pip" % sys.executable)
    if cfg["requires_python"] and not SpecifierSet(cfg["requires_python"]).contains(platform.python_version()):
        fail("this image's python3 is Python %s; chalkd's worker needs Python %s"
             % (platform.python_version(), cfg["requires_python"]))
    import importlib.metadata as md
    todo, seen, queue = [], set(), list(cfg["requires"])
    while queue:
        req = Requirement(queue.pop(0))
        name = canonical(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            have = None
        if have is not None and req.specifier.contains(have, prereleases=True):
            say("using the image's %s %s" % (req.name, have))
            continue
        pin = cfg["pins"].get(name)
        if pin is not None and req.specifier.contains(pin["version"], prereleases=True):
            todo.append("%s==%s" % (name, pin["version"]))  # name is canonical
            queue.extend(pin["requires"])
        else:
            todo.append(str(req))
    if not todo:
        say("the image has every dependency of the worker")
        return
    wheels = os.path.join(HERE, "wheels")
    have = set((canonical(f.split("-")[0]), f.split("-")[1]) for f in os.listdir(wheels) if f.endswith(".whl"))
    args = ["--prefer-binary", "--find-links", wheels] + todo
    if all(tuple(t.split("==")) in have for t in todo):  # every pin has its wheel: no network needed
        if pip(["--no-index"] + args):
            return
        say("the wheelhouse did not suffice; trying the package index")
    if not pip(args):
        fail("could not install the worker's dependencies: " + " ".join(todo))


def wheel(cfg):
    import importlib.metadata as md
    try:
        md.version("chalkcompute")  # PyPI's chalkcompute is another project: its files would mix with ours
        say("removing the image's chalkcompute distribution (a different project from chalkd's)")
        subprocess.call([sys.executable, "-m", "pip", "uninstall", "-y", "chalkcompute"])
    except md.PackageNotFoundError:
        pass
    found = glob.glob(os.path.join(HERE, "wheel", "*.whl"))
    if not pip(["--no-deps", "--force-reinstall"] + found):
        fail("could not install chalkd's wheel")
    check = subprocess.run([sys.executable, "-c", "import chalkcompute.worker"])
    if check.returncode != 0:
        fail("chalkcompute.worker does not import in this image (see the error above)")
    info = {"python": platform.python_version(), "python_executable": sys.executable,
            "python_version": "%d.%d" % sys.version_info[:2], "chalkd": md.version("chalkd")}
    os.makedirs(os.path.dirname(INFO), exist_ok=True)
    with open(INFO, "w") as f:
        json.dump(info, f)
    say("installed chalkd %s for Python %s (%s)" % (info["chalkd"], info["python"], sys.executable))


if __name__ == "__main__":
    with open(os.path.join(HERE, "runtime.json")) as f:
        config = json.load(f)
    {"deps": deps, "wheel": wheel}[sys.argv[1]](config)
'''.replace("__RUNTIME_INFO__", RUNTIME_INFO)
