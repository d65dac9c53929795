"""Build the default base image ``python:<version>-slim`` from Debian packages.

There may be no image registry to pull the official slim image from, so
``chalkd image bootstrap`` makes one that behaves like it: ``debootstrap``
(variant ``minbase``, plus ``python3``, ``python3-pip``, ``python3-venv`` and
``ca-certificates``) of the Debian release whose ``python3`` is the wanted
version, post-processed, then imported into the Docker engine through its API
(``POST /images/create?fromSrc=-``)::

    tags = await bootstrap_base_image("3.11", log=print)
    # I: Retrieving InRelease ...           (debootstrap's output, as it happens)
    # imported 1c9d2e0f7a3b as python:3.11-slim, python:3.11-slim-bookworm
    tags   # ['python:3.11-slim', 'python:3.11-slim-bookworm']

    release_for("3.13")   # 'trixie'
    release_for("3.12")   # ValueError: ... supported: 3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)

Like the official image, the result runs ``python3`` by default (``CMD``),
has ``python`` and ``pip`` on ``PATH``, sets ``LANG=C.UTF-8``, and lets
``pip install`` into the system Python (Debian's ``EXTERNALLY-MANAGED``
marker is removed). It is labelled ``dev.chalkd.bootstrap=<codename>`` and
tagged both ``python:<v>-slim`` and ``python:<v>-slim-<codename>`` (the
SDK's ``Image.debian_slim`` names the latter).

When both tags are already present the call returns at once unless
``force``. Building needs root (debootstrap chroots and makes device nodes)
and the ``debootstrap`` package; the working folder (under ``$TMPDIR``) is
removed afterwards, also on failure. Problems raise :class:`BootstrapError`
with a one-line message; an unsupported version or a bad mirror raises
``ValueError`` before anything else happens.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiodocker
from aiodocker.exceptions import DockerError
from yarl import URL

logger = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
LABEL = "dev.chalkd.bootstrap"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Python major.minor -> the Debian release whose python3 is that version
# (python3 3.9.2 in bullseye, 3.11.2 in bookworm, 3.13.5 in trixie).
DEBIAN_PYTHONS: dict[str, str] = {
    "3.9": "bullseye",
    "3.11": "bookworm",
    "3.13": "trixie",
}

_DEFAULT_SOCKET = "unix:///var/run/docker.sock"


class BootstrapError(Exception):
    """Building or importing the base image failed; the message is one line."""


def supported_versions() -> str:
    return ", ".join(f"{v} ({c})" for v, c in DEBIAN_PYTHONS.items())


def release_for(python_version: str) -> str:
    """The Debian codename whose python3 is ``python_version`` (``"3.11"`` -> ``"bookworm"``)."""
    v = str(python_version).strip()
    if not re.fullmatch(r"\d+\.\d+", v):
        raise ValueError(f"Python version must be MAJOR.MINOR, like 3.11 (got {python_version!r}); "
                         f"supported: {supported_versions()}")
    try:
        return DEBIAN_PYTHONS[v]
    except KeyError:
        raise ValueError(f"no Debian release ships Python {v} as python3; "
                         f"supported: {supported_versions()}") from None


def image_tags(python_version: str) -> list[str]:
    """``["python:3.11-slim", "python:3.11-slim-bookworm"]``."""
    return [f"python:{python_version}-slim", f"python:{python_version}-slim-{release_for(python_version)}"]


def check_mirror(mirror: str) -> str:
    if not re.match(r"(https?|file)://\S+$", mirror or ""):
        raise ValueError(f"--mirror must be an http://, https:// or file:// URL of a Debian archive "
                         f"(got {mirror!r})")
    return mirror


async def bootstrap_base_image(python_version: str, *, mirror: str = DEFAULT_MIRROR, force: bool = False,
                               log: Callable[[str], object] = print,
                               docker: aiodocker.Docker | None = None) -> list[str]:
    """Make ``python:<v>-slim`` and ``python:<v>-slim-<codename>``; returns the two tags.

    ``log`` gets progress lines as they happen. ``docker`` defaults to a client
    for ``$DOCKER_HOST`` or the default socket (closed afterwards)."""
    codename = release_for(python_version)
    check_mirror(mirror)
    tags = image_tags(python_version)
    own_client = docker is None
    if own_client:
        docker = _connect()
    try:
        await _check_engine(docker)
        present = {t: await _image_id(docker, t) for t in tags}
        if not force and all(present.values()):
            ids = sorted({i[7:19] for i in present.values()})
            log(f"{' and '.join(tags)} already present (image {', '.join(ids)}); nothing to do "
                f"(--force rebuilds)")
            return tags
        debootstrap = _check_host()
        work = Path(tempfile.mkdtemp(prefix="chalkd-bootstrap-"))
        try:
            rootfs = work / "rootfs"
            await _debootstrap(debootstrap, codename, rootfs, mirror, log)
            _post_process(rootfs, python_version)
            image_id = await _import(docker, rootfs, work, codename, log)
            for tag in tags:
                repo, _, name = tag.rpartition(":")
                await docker.images.tag(image_id, repo, tag=name)
        finally:
            _remove_workdir(work)
        log(f"imported {image_id[7:19]} as {', '.join(tags)}")
        await _drop_replaced(docker, {i for i in present.values() if i and i != image_id}, log)
        return tags
    finally:
        if own_client:
            await docker.close()


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET


def _connect() -> aiodocker.Docker:
    try:
        return aiodocker.Docker()
    except (AssertionError, ValueError) as exc:  # aiodocker asserts when DOCKER_HOST is unset and no socket exists
        raise BootstrapError(f"no Docker engine: DOCKER_HOST is unset and {_DEFAULT_SOCKET} does not exist "
                             f"({exc or 'no socket found'}); start dockerd or set DOCKER_HOST") from None


async def _check_engine(docker: aiodocker.Docker) -> None:
    try:
        await asyncio.wait_for(docker.version(), 15)
    except Exception as exc:
        where = getattr(docker, "_connection_info", None) or _engine_address()
        source = "from $DOCKER_HOST" if os.environ.get("DOCKER_HOST") else "DOCKER_HOST is unset"
        why = exc.message if isinstance(exc, DockerError) else (str(exc) or type(exc).__name__)
        raise BootstrapError(f"no Docker engine answers at {where} ({source}): {why}; "
                             f"start dockerd or point DOCKER_HOST at an engine") from None


async def _image_id(docker: aiodocker.Docker, ref: str) -> str | None:
    try:
        info = await docker.images.inspect(ref)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise BootstrapError(f"cannot inspect {ref}: {exc.message}") from None
    return info["Id"]


def _check_host() -> str:
    if os.geteuid() != 0:
        raise BootstrapError("building the base image needs root (debootstrap chroots and creates device "
                             "nodes): run `chalkd image bootstrap` as root, e.g. with sudo")
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which("debootstrap", path=path)
    if not found:
        raise BootstrapError("debootstrap is not installed: install the Debian package `debootstrap` "
                             "(apt-get install debootstrap)")
    return found


async def _debootstrap(exe: str, codename: str, rootfs: Path, mirror: str, log) -> None:
    cmd = [exe, "--variant=minbase", f"--include={','.join(PACKAGES)}", codename, str(rootfs), mirror]
    log(f"$ {' '.join(cmd)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C",
               PATH=os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        start_new_session=True, limit=1 << 20)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                log(line)
        rc = await proc.wait()
    except BaseException:
        await _stop_group(proc)
        raise
    if rc != 0:
        # debootstrap's own log (in the rootfs, removed with it) says more than its output.
        detail = rootfs / "debootstrap" / "debootstrap.log"
        with contextlib.suppress(OSError):
            lines = detail.read_text(errors="replace").splitlines()[-15:]
            if len(lines) > 1:
                log(f"--- the end of {detail}:")
                for line in lines:
                    log(line)
        useful = [ln for ln in tail if not ln.startswith("W: See ")] or ["(no output)"]
        errors = [ln for ln in useful if ln.startswith("E: ")]
        raise BootstrapError(f"debootstrap {codename} from {mirror} failed (exit {rc}): "
                             + " | ".join(errors[-2:] or useful[-3:]))


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """Stop a process and its children (its own session): TERM, then KILL after 10 s."""
    if proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.shield(asyncio.wait_for(proc.wait(), wait))
            return
        except (TimeoutError, asyncio.CancelledError):
            continue


def _post_process(rootfs: Path, python_version: str) -> None:
    """Make the rootfs behave like the official slim image."""
    # pip installs into the system Python, as in the official image (PEP 668 marker).
    (rootfs / f"usr/lib/python{python_version}/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    for name, target in (("python", "python3"), ("pip", "pip3")):
        link = rootfs / "usr/bin" / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin"):
        for p in rootfs.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    # debootstrap copies these from the host; the engine provides its own at run time.
    for name in ("etc/hostname", "etc/resolv.conf"):
        p = rootfs / name
        if p.is_file() and not p.is_symlink():
            p.unlink()


async def _import(docker: aiodocker.Docker, rootfs: Path, work: Path, codename: str, log) -> str:
    """``docker import`` of the rootfs (streamed through tar); returns the new image's id."""
    changes = ['CMD ["python3"]', "ENV LANG=C.UTF-8", f"ENV PATH={PATH}", f"LABEL {LABEL}={codename}"]
    query = [("fromSrc", "-"), ("message", f"chalkd image bootstrap ({codename})")]
    query += [("changes", c) for c in changes]
    log(f"importing {rootfs} into the engine")
    with open(work / "tar.err", "wb") as tar_err:
        tar = await asyncio.create_subprocess_exec(
            "tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs),
            "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "-cf", "-", ".",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=tar_err)

    async def body() -> AsyncIterator[bytes]:
        assert tar.stdout is not None
        while chunk := await tar.stdout.read(1 << 20):
            yield chunk

    image_id = error = None
    try:
        # aiodocker's import_image is `docker load`; `docker import` is /images/create with fromSrc,
        # whose `changes` repeat (so the query goes in the path: aiodocker's params can't repeat a key).
        async with docker._query(URL("images/create").with_query(query), "POST", data=body(),
                                 headers={"Content-Type": "application/x-tar"}, timeout=None,
                                 chunked=True) as resp:
            text = (await resp.read()).decode(errors="replace")
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if msg.get("error"):
                    error = msg["error"]
                elif str(msg.get("status", "")).startswith("sha256:"):
                    image_id = msg["status"]
    except DockerError as exc:
        error = exc.message
    finally:
        if tar.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                tar.kill()
        rc = await tar.wait()
    if error is None and rc != 0:
        why = (work / "tar.err").read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        error = f"tar of the rootfs failed (exit {rc}): {why[0]}"
    if error is None and image_id is None:
        error = f"the engine answered without an image id: {text.strip()[:200]!r}"
    if error is not None:
        if image_id:
            with contextlib.suppress(DockerError):
                await docker.images.delete(image_id)
        raise BootstrapError(f"docker import failed: {error}")
    return image_id


async def _drop_replaced(docker: aiodocker.Docker, old_ids: set[str], log) -> None:
    """Delete images the new tags replaced, when nothing else names or uses them."""
    for old in old_ids:
        with contextlib.suppress(DockerError):
            info = await docker.images.inspect(old)
            if info.get("RepoTags"):
                continue
            await docker.images.delete(old)  # refused (409) while containers or child images use it
            log(f"removed the replaced image {old[7:19]}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_workdir(work: Path) -> None:
    """Remove the working folder, first unmounting what a killed debootstrap left (proc, sys, dev)."""
    for point in _mounts_under(work):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    left = _mounts_under(work)
    if left:
        logger.warning("leaving %s: %s is still mounted", work, left[0])
        return
    try:
        shutil.rmtree(work)
    except OSError as exc:
        logger.warning("could not remove %s: %s", work, exc)
