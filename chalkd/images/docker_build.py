"""Build image specs into Docker images on an engine, cached by content.

An ``ImageSpec`` becomes a Dockerfile (one instruction per step) and a build
context, built with the engine's classic builder through aiodocker; chalkd's
runtime layer (:mod:`chalkd.images.runtime_dist`) comes last so the user's
steps stay cached when chalkd changes::

    docker = aiodocker.Docker()
    builder = DockerImageBuilder(docker, Path("~/.chalkd").expanduser())
    spec = Image.debian_slim("3.11").pip_install(["six"]).workdir("/app").to_proto()
    built = await builder.build(spec, log=print)   # streams the build log
    built.tag                                      # 'chalkd-img:5c0f...' (24 hex)
    await builder.cached(spec)                     # the same image, cached=True, no build

The tag is derived from the spec's content hash, the runtime layer's
fingerprint and :data:`BUILDER_VERSION`, so the engine itself is the cache:
a spec already built (by this daemon or an earlier run) is found by one
``inspect``. Concurrent builds of one spec share a single build; each
caller's ``log`` gets the lines so far, then the rest. Build logs are also
appended to ``<home>/logs/builds/<content hash>.log``.

The generated Dockerfile, for the spec above::

    FROM python:3.11-slim
    COPY ["chalkd-build/ca.pem", "/usr/local/share/chalkd/build-ca.pem"]
    ARG PIP_CERT=/usr/local/share/chalkd/build-ca.pem SSL_CERT_FILE=... PIP_ROOT_USER_ACTION=ignore ...
    RUN python3 -m pip install --no-cache-dir six
    WORKDIR /app
    RUN command -v python3 ... || { echo 'chalkd: this image has no python3 ...'; exit 90; } ...
    COPY ["chalkd-runtime/deps/", "/tmp/chalkd-runtime/"]
    RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 /tmp/chalkd-runtime/install.py deps
    COPY ["chalkd-runtime/wheel/", "/tmp/chalkd-runtime/wheel/"]
    RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 /tmp/chalkd-runtime/install.py wheel && rm -rf /tmp/chalkd-runtime

The CA bundle reaches every ``RUN`` through build ARGs, which are environment
during the build but not part of the image's config. ``lazy_file`` steps are
not baked in: the runtime mounts them at start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shlex
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError, DockerStreamError

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.image import Image
from chalkd.images import process_env
from chalkd.images.runtime_dist import (DEPS_DIR, RUNTIME_INFO, WHEEL_DIR, ContextFile, RuntimeDistError,
                                        RuntimeLayer, runtime_fingerprint, runtime_layer)

__all__ = [
    "ImageBuildError", "BuiltImage", "DockerImageBuilder", "ContextFile", "RuntimeLayer",
    "dockerfile_for", "BUILDER_VERSION", "TAG_REPO", "LABEL_IMAGE",
]

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]

BUILDER_VERSION = "1"  # part of every tag: bump when the generated Dockerfile changes meaning
TAG_REPO = "chalkd-img"
LABEL_IMAGE = "dev.chalkd.image"  # the spec's content hash
LABEL_RUNTIME = "dev.chalkd.runtime"
LABEL_BUILDER = "dev.chalkd.builder"
LABEL_PYTHON = "dev.chalkd.python"
_IMAGE_DIR = "/usr/local/share/chalkd"
_CA_IN_IMAGE = f"{_IMAGE_DIR}/build-ca.pem"
_CA_CONTEXT = "chalkd-build/ca.pem"
_STAGE = "/tmp/chalkd-runtime"
_CA_ARGS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_PIP_ARGS = ("PIP_ROOT_USER_ACTION=ignore", "PIP_DISABLE_PIP_VERSION_CHECK=1")
_NO_PYTHON, _NO_PIP = 90, 91  # exit codes of the python3 check
_NEEDS = "chalkd needs python3 with pip in every image (its worker runs as `python3 -m chalkcompute.worker`)"
_CHECK = (
    "command -v python3 >/dev/null 2>&1 || { echo 'chalkd: this image has no python3 on PATH; "
    f"{_NEEDS}' >&2; exit {_NO_PYTHON}; }}; python3 -m pip --version >/dev/null 2>&1 || "
    "python3 -m ensurepip >/dev/null 2>&1 || { echo 'chalkd: this image has python3 but no pip; "
    f"{_NEEDS}' >&2; exit {_NO_PIP}; }}"
)
_SLIM = re.compile(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)(?:\.\d+)?-slim(?:-[a-z]+)?")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_TAIL = 40
_PULL_IDLE_S = 30.0  # a pull that says nothing for this long is given up


class ImageBuildError(process_env.ImageBuildError):
    """An image build failed. ``step`` names the user's step (``"step 3/6: RUN exit 3"``),
    ``tail`` is the end of that step's log; ``str()`` gives both."""

    def __init__(self, message: str, *, step: str = "", tail: str = "", exit_code: int | None = None) -> None:
        full = message + (f"\n--- build log (last lines) ---\n{tail}" if tail else "")
        super().__init__(full)
        self.step, self.tail, self.exit_code = step, tail, exit_code


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    cached: bool
    entrypoint: list[str]  # the user's image config; the runtime runs our worker instead
    cmd: list[str]
    workdir: str
    env: dict[str, str]
    python_version: str  # "3.11": the image's python3


# ---------------------------------------------------------------- Dockerfile generation

@dataclass(frozen=True)
class _Instr:
    desc: str  # what the user knows it as, e.g. "step 3/6: RUN exit 3"
    role: str  # user | base | trust | check | runtime


@dataclass
class _Plan:
    dockerfile: str
    files: list[ContextFile]
    instrs: list[_Instr]  # one per Dockerfile instruction: the engine's "Step N/M" is instrs[N-1]


def _json_paths(paths: Iterable[str]) -> str:
    """JSON (exec) form for COPY/ADD; ``$`` and ``\\`` escaped against variable expansion."""
    return json.dumps([p.replace("\\", "\\\\").replace("$", "\\$") for p in paths])


def _word(value: str) -> str:
    """One unquoted Dockerfile word (WORKDIR, USER): escape what the builder would expand."""
    return value.replace("\\", "\\\\").replace("$", "\\$")


def _env_value(key: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ImageBuildError(f"env value of {key!r} contains a line break, which a Dockerfile ENV "
                              "cannot hold; set it at run time instead", step=f"ENV {key}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _run(command: str) -> str:
    """A RUN instruction; exec form (still ``/bin/sh -c``) where the shell form can't carry it."""
    if any(c in command for c in "\r\n") or command.rstrip().endswith("\\") or command.lstrip().startswith("["):
        return "RUN " + json.dumps(["/bin/sh", "-c", command])
    return "RUN " + command


def _pip(args: Iterable[str]) -> str:
    return "python3 -m pip install --no-cache-dir " + " ".join(shlex.quote(a) for a in args)


def _split_instructions(lines: Iterable[str]) -> list[tuple[str | None, list[str]]]:
    """Dockerfile lines grouped as the builder reads them: ``(KEYWORD, physical lines)``
    per instruction, ``(None, [line])`` for blanks and comments (continuations joined)."""
    out: list[tuple[str | None, list[str]]] = []
    cur: list[str] | None = None
    for line in (part for raw in lines for part in raw.split("\n")):
        bare = line.strip()
        if cur is None:
            if not bare or bare.startswith("#"):
                out.append((None, [line]))
                continue
            cur = [line]
        else:
            cur.append(line)
            if not bare or bare.startswith("#"):
                continue  # skipped inside a continuation, as the builder does
        if not line.rstrip().endswith("\\"):
            out.append((cur[0].split(None, 1)[0].upper(), cur))
            cur = None
    if cur is not None:
        raise ImageBuildError("dockerfile_commands end with a line continuation (a trailing '\\')",
                              step=cur[0].strip())
    return out


def _from_parts(text: str) -> tuple[str, str]:
    """(image ref, stage name) of a FROM instruction's text."""
    words = [w for w in text.split()[1:] if not w.startswith("--")]
    ref = words[0] if words else ""
    name = words[2] if len(words) >= 3 and words[1].lower() == "as" else ""
    return ref, name.lower()


def _no_base(why: str, step: str) -> ImageBuildError:
    return ImageBuildError(
        "this image has no base: start it with Image.debian_slim(), Image.base(ref), or a Dockerfile "
        f"whose first instruction is FROM ({why})", step=step)


def _is_root(user: str) -> bool:
    return user.split(":")[0] in ("", "root", "0")


class _Writer:
    def __init__(self, ca: bool, base_user: str) -> None:
        self.lines: list[str] = []
        self.instrs: list[_Instr] = []
        self.files: list[ContextFile] = []
        self.ca, self.base_user = ca, base_user
        self.have_from = False
        self.user: str | None = None  # USER set in this stage; None: inherited from its FROM
        self.inherited = ""
        self.stage_users: dict[str, str] = {}
        self.stage = ""

    def emit(self, text: str, desc: str, role: str = "user", physical: list[str] | None = None) -> None:
        keyword = text.split(None, 1)[0].upper()
        if not self.have_from and keyword != "ARG":
            raise _no_base(f"the first instruction here is {keyword}", desc)
        self.lines += physical or [text]
        self.instrs.append(_Instr(desc, role))
        if keyword == "USER":
            self.user = text.split(None, 1)[1].strip() if len(text.split(None, 1)) > 1 else ""

    def from_(self, text: str, desc: str, user: str, physical: list[str] | None = None) -> None:
        if self.stage:
            self.stage_users[self.stage] = self.effective_user
        ref, self.stage = _from_parts(text)
        self.have_from, self.user = True, None
        self.inherited = self.stage_users.get(ref.lower(), user)
        self.emit(text, desc, "base", physical)
        if self.ca:
            self.emit(f"COPY {_json_paths([_CA_CONTEXT, _CA_IN_IMAGE])}", "chalkd: add the build CA bundle", "trust")
        args = [f"{name}={_CA_IN_IMAGE}" for name in _CA_ARGS] if self.ca else []
        self.emit("ARG " + " ".join([*args, *_PIP_ARGS]), "chalkd: build settings", "trust")

    @property
    def effective_user(self) -> str:
        return self.user if self.user is not None else self.inherited

    def verbatim(self, lines: Iterable[str], label: str) -> None:
        for keyword, physical in _split_instructions(lines):
            if keyword is None:
                self.lines += physical
                continue
            text = " ".join(p.strip().rstrip("\\").strip() for p in physical if p.strip() and
                            not p.strip().startswith("#"))
            desc = f"{label}: {text if len(text) <= 200 else text[:200] + '...'}"
            if keyword == "FROM":
                self.from_(text, desc, self.base_user, physical)
            else:
                self.emit(text, desc, "user", physical)


def _tar_members(content: bytes) -> int:
    if not content:
        return 0
    with tarfile.open(fileobj=io.BytesIO(content)) as tar:
        return len(tar.getmembers())


def _safe_name(path: str, fallback: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    return name if re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name or "") and name not in (".", "..") else fallback


def _render(spec: pb.ImageSpec, *, base: str, runtime: RuntimeLayer, ca_pem: bytes | None = None,
            base_user: str = "") -> _Plan:
    w = _Writer(ca=ca_pem is not None, base_user=base_user)
    if ca_pem is not None:
        w.files.append(ContextFile(_CA_CONTEXT, ca_pem))
    base = base or spec.base
    if base:
        w.from_(f"FROM {base}", f"FROM {spec.base or base}", base_user)
    steps = [s for s in spec.steps if s.kind != "lazy_file"]  # lazy files are mounted at start, not baked in
    for i, step in enumerate(steps, 1):
        label = f"step {i}/{len(steps)}"
        kind, args = step.kind, list(step.args)
        if kind == "run_commands":
            for command in args:
                w.emit(_run(command), f"{label}: RUN {command}")
        elif kind == "pip_install":
            w.emit(_run(_pip(args)), f"{label}: RUN pip install {shlex.join(args)}")
        elif kind == "uv_pip_install":
            w.emit(_run("uv pip install --system " + " ".join(shlex.quote(a) for a in args)),
                   f"{label}: RUN uv pip install {shlex.join(args)}")
        elif kind == "pip_install_from_requirements":
            name = posixpath.basename(step.source.replace("\\", "/")) or "requirements.txt"
            desc = f"{label}: RUN pip install -r {name}"
            if any(a.lstrip().startswith("-") or " -" in a for a in args):
                # Option lines (--index-url, --hash, -e) only mean the same inside a requirements file.
                req = "/tmp/chalkd-requirements.txt"
                lines = " ".join(shlex.quote(a) for a in args)
                w.emit(_run(f"printf '%s\\n' {lines} > {req} && python3 -m pip install --no-cache-dir -r {req}; "
                            f"rc=$?; rm -f {req}; exit $rc"), desc)
            else:
                w.emit(_run(_pip(args)), desc)
        elif kind == "env":
            for key in step.env:
                if not key or any(c.isspace() or c in "=\"'$\\" for c in key):
                    raise ImageBuildError(f"invalid env name {key!r}", step=f"{label}: ENV {key}")
            if step.env:
                pairs = " ".join(f"{k}={_env_value(k, v)}" for k, v in sorted(step.env.items()))
                w.emit(f"ENV {pairs}", f"{label}: ENV {', '.join(sorted(step.env))}")
        elif kind == "workdir":
            if "\n" in step.path:
                raise ImageBuildError("workdir path contains a line break", step=f"{label}: WORKDIR")
            w.emit(f"WORKDIR {_word(step.path)}", f"{label}: WORKDIR {step.path}")
        elif kind == "copy_file":
            dest = step.path
            if dest.endswith("/"):  # Docker's meaning too: a directory, keep the file's name
                dest += _safe_name(step.source.replace("\\", "/"), "file")
            ctx = f"chalkd-ctx/{i}/{_safe_name(dest, 'file')}"
            w.files.append(ContextFile(ctx, step.content, mode=(step.mode & 0o7777) or 0o644))
            w.emit(f"COPY {_json_paths([ctx, dest])}", f"{label}: COPY {step.source or ctx} {dest}")
        elif kind == "copy_dir":
            dest = step.path.rstrip("/") + "/"
            if _tar_members(step.content):
                ctx = f"chalkd-ctx/{i}.tar"
                w.files.append(ContextFile(ctx, step.content))
                w.emit(f"ADD {_json_paths([ctx, dest])}", f"{label}: COPY {step.source or 'directory'}/ {dest}")
            else:  # ADD would copy an empty archive as a file: make the directory instead
                ctx = f"chalkd-ctx/{i}"
                w.files.append(ContextFile(ctx, is_dir=True, mode=0o755))
                w.emit(f"COPY {_json_paths([ctx + '/', dest])}", f"{label}: COPY {step.source or 'directory'}/ {dest}")
        elif kind == "dockerfile_commands":
            w.verbatim(args, label)
        elif kind in ("entrypoint", "cmd"):
            w.emit(f"{kind.upper()} {json.dumps(args)}", f"{label}: {kind.upper()} {json.dumps(args)}")
        else:
            raise ImageBuildError(f"unknown image step kind {kind!r} (is the SDK newer than chalkd?)",
                                  step=f"{label}: {kind}")
    if not w.have_from:
        raise _no_base("it has no steps", "FROM")
    _runtime_section(w, runtime)
    return _Plan("\n".join(w.lines) + "\n", w.files, w.instrs)


def _runtime_section(w: _Writer, runtime: RuntimeLayer) -> None:
    # Last, and after the python3 check (a user step may be what installs python3).
    user = w.effective_user
    switch = not _is_root(user)
    w.lines += ["", "# ---- chalkd runtime layer (keep last: the steps above stay cached when chalkd changes)"]
    if switch:  # our layer writes to the system site-packages
        w.emit("USER root", "chalkd runtime: switch to root", "runtime")
    w.emit(_run(_CHECK), "chalkd runtime: check for python3 with pip", "check")
    w.emit(f"COPY {_json_paths([DEPS_DIR + '/', _STAGE + '/'])}", "chalkd runtime: copy the wheelhouse", "runtime")
    w.emit(f"RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 {_STAGE}/install.py deps",
           "chalkd runtime: install the worker's dependencies", "runtime")
    w.emit(f"COPY {_json_paths([WHEEL_DIR + '/', _STAGE + '/wheel/'])}", "chalkd runtime: copy chalkd's wheel",
           "runtime")
    w.emit(f"RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 {_STAGE}/install.py wheel && rm -rf {_STAGE}",
           "chalkd runtime: install chalkd's worker", "runtime")
    if switch:
        w.emit(f"USER {user}", "chalkd runtime: restore the image's user", "runtime")
    w.files += runtime.files


def dockerfile_for(spec: pb.ImageSpec, *, base: str, runtime: RuntimeLayer, ca_pem: bytes | None = None,
                   base_user: str = "") -> tuple[str, list[ContextFile]]:
    """The Dockerfile and build-context files (the Dockerfile itself not included) for
    ``spec`` on the resolved ``base`` ("" for a spec whose Dockerfile lines carry
    their own FROM). ``ca_pem`` adds a CA bundle for the build's RUN steps;
    ``base_user`` is the base image's USER (our layer runs as root, then restores it)."""
    plan = _render(spec, base=base, runtime=runtime, ca_pem=ca_pem, base_user=base_user)
    return plan.dockerfile, plan.files


def _from_refs(spec: pb.ImageSpec) -> list[str]:
    """Image references in the spec's own FROM lines (not earlier stages, not scratch)."""
    refs, stages = [], set()
    for step in spec.steps:
        if step.kind != "dockerfile_commands":
            continue
        for keyword, physical in _split_instructions(step.args):
            if keyword == "FROM":
                ref, name = _from_parts(" ".join(p.strip().rstrip("\\") for p in physical))
                if ref and ref.lower() not in stages and ref != "scratch" and "$" not in ref:
                    refs.append(ref)
                stages.add(name)
    return refs


def _write_context(f: IO[bytes], dockerfile: str, files: list[ContextFile]) -> None:
    """The build context as an uncompressed tar (the engine is usually local)."""
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for cf in [ContextFile("Dockerfile", dockerfile.encode()), *files]:
            info = tarfile.TarInfo(cf.path)
            info.mode, info.mtime, info.uid, info.gid = cf.mode, 0, 0, 0  # stable: the engine's COPY cache
            if cf.is_dir:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif cf.source is not None:
                info.size = os.path.getsize(cf.source)
                with open(cf.source, "rb") as src:
                    tar.addfile(info, src)
            else:
                info.size = len(cf.data)
                tar.addfile(info, io.BytesIO(cf.data))


# ---------------------------------------------------------------- the builder

def _python_version(spec: pb.ImageSpec) -> str:
    """The image's Python "X.Y" when the spec says it ("" when only the build can tell)."""
    if spec.python_version:
        return ".".join(spec.python_version.strip().split(".")[:2])
    m = _SLIM.fullmatch(spec.base.strip())
    return m[1] if m else ""


def _identity(spec: pb.ImageSpec) -> str:
    """The spec's content hash, recomputed (a client's claim is not trusted)."""
    try:
        return Image.from_proto(spec).content_hash
    except ValueError as exc:
        raise ImageBuildError(f"invalid image spec: {exc}") from None


def _tag(content_hash: str, runtime_fp: str) -> str:
    digest = hashlib.sha256(f"{content_hash}\0{runtime_fp}\0{BUILDER_VERSION}".encode()).hexdigest()
    return f"{TAG_REPO}:{digest[:24]}"


def _built(info: dict[str, Any], tag: str, cached: bool) -> BuiltImage:
    config = info.get("Config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return BuiltImage(tag=tag, image_id=info["Id"], cached=cached, entrypoint=list(config.get("Entrypoint") or []),
                      cmd=list(config.get("Cmd") or []), workdir=config.get("WorkingDir") or "", env=env,
                      python_version=(config.get("Labels") or {}).get(LABEL_PYTHON, ""))


@dataclass
class _Flight:
    """One build in progress, shared by every caller that asks for the same spec."""

    task: asyncio.Task[BuiltImage] | None = None
    lines: list[str] = field(default_factory=list)
    sinks: list[LogFn] = field(default_factory=list)


class _Stream:
    """Reads the engine's build stream: whole lines out, the current step, the image id."""

    def __init__(self, plan: _Plan, emit: LogFn) -> None:
        self.plan, self.emit = plan, emit
        self.partial = ""
        self.step: tuple[int, int, str] | None = None  # (n, total, text) of "Step n/total : text"
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self.image_id = ""
        self.last_status = ""

    def line(self, line: str) -> None:
        if m := _STEP.match(line):
            self.step = (int(m[1]), int(m[2]), m[3])
            self.tail.clear()
        elif m := re.match(r"^Successfully built ([0-9a-f]+)$", line):
            self.image_id = self.image_id or m[1]
        self.tail.append(line)
        self.emit(line)

    def feed(self, chunk: dict[str, Any]) -> None:
        if "stream" in chunk:
            text = self.partial + str(chunk["stream"])
            *whole, self.partial = text.split("\n")
            for line in whole:
                self.line(line.rstrip("\r"))
        if "status" in chunk:  # pulls during the build: one line per state, no progress bars
            status = f"{chunk['id']}: {chunk['status']}" if chunk.get("id") else str(chunk["status"])
            if status != self.last_status:
                self.last_status = status
                self.line(status)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            self.image_id = aux["ID"]

    def flush(self) -> None:
        if self.partial:
            self.line(self.partial.rstrip("\r"))
            self.partial = ""

    def error(self, message: str, detail: dict[str, Any]) -> ImageBuildError:
        self.flush()
        self.line(f"ERROR: {message}")
        code = detail.get("code")
        if not isinstance(code, int) or code == 0:
            m = re.search(r"non-zero code: (\d+)", message)
            code = int(m[1]) if m else None
        instr: _Instr | None = None
        if self.step is not None:
            n, total, text = self.step
            if total == len(self.plan.instrs):
                instr = self.plan.instrs[n - 1]
            else:  # our count of instructions disagrees with the engine's: report its own words
                instr = _Instr(f"Dockerfile step {n}/{total}: {text}", "user")
        tail = "\n".join(self.tail)
        exit_txt = f" (exit code {code})" if code is not None else ""
        if instr is None:
            return ImageBuildError(f"image build failed: {message}", step="", tail=tail, exit_code=code)
        if instr.role == "check":
            why = {_NO_PYTHON: "this image has no python3", _NO_PIP: "this image's python3 has no pip"}.get(
                code or 0, f"this image has no usable python3 ({message})")
            return ImageBuildError(f"{why}: {_NEEDS}; install it in an earlier step or start from "
                                   "Image.debian_slim()", step=instr.desc, tail=tail, exit_code=code)
        what = exit_txt if code is not None else f": {message}"  # the engine's words add nothing to a code
        if instr.role == "runtime":
            return ImageBuildError(f"image build failed while adding chalkd's runtime layer ({instr.desc}){what}",
                                   step=instr.desc, tail=tail, exit_code=code)
        return ImageBuildError(f"image build failed at {instr.desc}{what}", step=instr.desc, tail=tail,
                               exit_code=code)


class DockerImageBuilder:
    """Builds :class:`~chalkcompute.image.Image` specs on a Docker engine, cached by content."""

    def __init__(self, docker: aiodocker.Docker, home: Path, *,
                 ca_bundle: str | None = "/etc/ssl/certs/ca-certificates.crt", max_parallel: int = 1) -> None:
        self.docker = docker
        self.home = Path(home)
        self.ca_bundle = ca_bundle  # None: builds trust what the images trust
        self._slots = asyncio.Semaphore(max(1, max_parallel))
        self._flights: dict[str, _Flight] = {}

    async def cached(self, spec: pb.ImageSpec) -> BuiltImage | None:
        """The image for ``spec`` if the engine has it; never builds (one inspect, ~10 ms)."""
        return await self._cached(_identity(spec), spec)

    async def _cached(self, key: str, spec: pb.ImageSpec) -> BuiltImage | None:
        try:
            fp = runtime_fingerprint(_python_version(spec))
        except RuntimeDistError as exc:
            raise ImageBuildError(str(exc), step="chalkd runtime layer") from None
        return await self._inspect(_tag(key, fp), cached=True)

    async def build(self, spec: pb.ImageSpec, log: LogFn | None = None) -> BuiltImage:
        """The image for ``spec``, built unless the engine has it; ``log`` gets each build line."""
        key = _identity(spec)
        if (hit := await self._cached(key, spec)) is not None:
            return hit
        flight = self._flights.get(key)
        if flight is None or flight.task is None or flight.task.done():
            flight = self._flights[key] = _Flight()
            flight.task = asyncio.get_running_loop().create_task(self._build_once(key, spec, flight))
            flight.task.add_done_callback(lambda t: self._landed(key, flight, t))
        if log is not None:
            for line in list(flight.lines):  # a late caller first sees what it missed
                log(line)
            flight.sinks.append(log)
        try:
            assert flight.task is not None
            return await asyncio.shield(flight.task)  # a cancelled caller must not cancel the others' build
        finally:
            if log is not None:
                with contextlib.suppress(ValueError):
                    flight.sinks.remove(log)

    def _landed(self, key: str, flight: _Flight, task: asyncio.Task[BuiltImage]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter re-raises it

    async def _build_once(self, key: str, spec: pb.ImageSpec, flight: _Flight) -> BuiltImage:
        logs = self.home / "logs" / "builds"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{key}.log", "a", encoding="utf-8") as logfile:
            def emit(line: str) -> None:
                flight.lines.append(line)
                logfile.write(line + "\n")
                logfile.flush()
                for sink in list(flight.sinks):
                    try:
                        sink(line)
                    except Exception:  # one broken consumer must not fail the build for the others
                        logger.exception("build log callback failed")

            emit(f"=== chalkd image build {key[:12]} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
            try:
                async with self._slots:
                    return await self._build(key, spec, emit)
            except ImageBuildError as exc:
                emit(f"build failed: {str(exc).splitlines()[0]}")
                raise
            except (DockerError, aiohttp.ClientError) as exc:  # the engine went away or refused
                emit(f"build failed: the Docker engine: {exc}")
                raise ImageBuildError(f"image build failed: the Docker engine: {exc}") from exc

    async def _build(self, key: str, spec: pb.ImageSpec, emit: LogFn) -> BuiltImage:
        started = time.monotonic()
        base, base_user = await self._resolve_bases(spec, emit)
        try:
            layer = await runtime_layer(self.home, _python_version(spec), emit)
        except RuntimeDistError as exc:
            raise ImageBuildError(f"making chalkd's runtime layer failed: {exc}",
                                  step="chalkd runtime layer") from None
        tag = _tag(key, layer.fingerprint)
        if (hit := await self._inspect(tag, cached=True)) is not None:  # built meanwhile by another process
            return hit
        plan = _render(spec, base=base, runtime=layer, ca_pem=self._ca_pem(emit), base_user=base_user)
        emit(f"building {tag} ({len(plan.instrs)} Dockerfile steps)")
        image_id = await self._engine_build(plan, emit)
        info = await self._probe(image_id)
        labels = {LABEL_IMAGE: key, LABEL_RUNTIME: layer.fingerprint, LABEL_BUILDER: BUILDER_VERSION,
                  LABEL_PYTHON: str(info.get("python_version", ""))}
        await self._finish(image_id, tag, labels)
        built = await self._inspect(tag, cached=False)
        if built is None:
            raise ImageBuildError(f"the engine lost {tag} right after building it")
        took = time.monotonic() - started
        logger.info("built image %s (%s) in %.1fs", tag, key[:12], took)
        emit(f"built {tag} (Python {built.python_version or '?'}) in {took:.1f}s")
        return built

    def _ca_pem(self, emit: LogFn) -> bytes | None:
        if not self.ca_bundle:
            return None
        try:
            return Path(self.ca_bundle).read_bytes()
        except OSError as exc:
            emit(f"warning: build CA bundle {self.ca_bundle} unreadable ({exc}); builds use the images' own trust")
            logger.warning("build CA bundle %s unreadable: %s", self.ca_bundle, exc)
            return None

    async def _inspect(self, ref: str, *, cached: bool) -> BuiltImage | None:
        info = await self._has(ref)
        return None if info is None else _built(info, ref, cached)

    async def _has(self, ref: str) -> dict[str, Any] | None:
        try:
            return await self.docker.images.inspect(ref)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise ImageBuildError(f"the Docker engine failed to inspect {ref}: {exc.message}") from None

    async def _resolve_bases(self, spec: pb.ImageSpec, emit: LogFn) -> tuple[str, str]:
        """(the base to build FROM, its USER); every base must be local or pullable."""
        version = spec.python_version.strip()
        refs = [spec.base.strip()] if spec.base.strip() else _from_refs(spec)
        resolved, user = "", ""
        for ref in refs:
            candidates = [ref]
            if version and ref == f"python:{version}-slim-bookworm":
                candidates.append(f"python:{version}-slim")  # what `chalkd image bootstrap` makes
            info = None
            for candidate in candidates:
                if (info := await self._has(candidate)) is not None:
                    resolved = candidate
                    break
            if info is None:
                problem = await self._pull(ref, emit)
                if problem is None and (info := await self._has(ref)) is not None:
                    resolved = ref
                else:
                    raise self._missing(ref, candidates, problem)
            user = (info.get("Config") or {}).get("User") or ""
        return (resolved if spec.base.strip() else ""), user

    @staticmethod
    def _missing(ref: str, candidates: list[str], problem: str | None) -> ImageBuildError:
        names = " nor ".join(candidates)
        m = _SLIM.fullmatch(ref)
        hint = (f"; make it with `chalkd image bootstrap --python {m[1]}`" if m else
                "; pull or load it into this Docker host")
        return ImageBuildError(f"the base image {names} is not on this Docker host and pulling {ref} failed "
                               f"({problem or 'not found'}){hint}", step=f"FROM {ref}")

    async def _pull(self, ref: str, emit: LogFn) -> str | None:
        """Pull ``ref``; None when it worked, else why not."""
        emit(f"pulling {ref}")
        stream = self.docker.images.pull(ref, stream=True)
        last = ""
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(stream), _PULL_IDLE_S)
                except StopAsyncIteration:
                    return None
                status = f"{chunk.get('id', '')}: {chunk.get('status', '')}".strip(": ")
                if status and status != last:
                    last = status
                    emit(status)
        except TimeoutError:
            return f"no progress for {_PULL_IDLE_S:.0f}s"
        except DockerError as exc:
            emit(f"pull failed: {exc.message}")
            return exc.message
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _engine_build(self, plan: _Plan, emit: LogFn) -> str:
        state = _Stream(plan, emit)
        # A temporary file, not memory: the wheelhouse alone is tens of MB. It is unlinked at once.
        with tempfile.TemporaryFile() as context:
            await asyncio.to_thread(_write_context, context, plan.dockerfile, plan.files)
            context.seek(0)
            stream = self.docker.images.build(fileobj=context, encoding="identity", rm=True, forcerm=True,
                                              stream=True)
            try:
                async with contextlib.aclosing(stream):
                    async for chunk in stream:
                        state.feed(chunk)
            except DockerStreamError as exc:
                raise state.error(exc.message, exc.error_detail or {}) from None
            except DockerError as exc:
                raise state.error(exc.message, {}) from None
        state.flush()
        if not state.image_id:
            raise ImageBuildError("the Docker engine finished the build without reporting an image",
                                  tail="\n".join(state.tail))
        return state.image_id

    async def _probe(self, image_id: str) -> dict[str, Any]:
        """What install.py recorded in the image (its Python); read without starting it."""
        container = await self.docker.containers.create(
            {"Image": image_id, "Entrypoint": ["/bin/true"], "Cmd": [], "NetworkDisabled": True,
             "Labels": {"dev.chalkd.probe": "1"}})
        try:
            tar = await container.get_archive(RUNTIME_INFO)
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            data = tar.extractfile(member).read() if member is not None else b"{}"  # type: ignore[union-attr]
            return json.loads(data)
        except (DockerError, ValueError) as exc:
            logger.warning("could not read %s from %s: %s", RUNTIME_INFO, image_id, exc)
            return {}
        finally:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)

    async def _finish(self, image_id: str, tag: str, labels: dict[str, str]) -> None:
        """Tag the build with labels known only after it ran (a metadata-only step)."""
        buf = io.BytesIO()
        _write_context(buf, f"FROM {image_id}\n", [])
        buf.seek(0)
        stream = self.docker.images.build(fileobj=buf, encoding="identity", tag=tag, labels=labels, rm=True,
                                          forcerm=True, stream=True)
        try:
            async with contextlib.aclosing(stream):
                async for _ in stream:
                    pass
        except DockerError as exc:
            raise ImageBuildError(f"tagging the built image as {tag} failed: {exc.message}") from None
