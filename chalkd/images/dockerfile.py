"""Dockerfile generation for image specs: pure spec -> Dockerfile and build context, no engine.

:func:`dockerfile_for` turns an ``ImageSpec`` into a Dockerfile (one instruction per
step) and the build-context files it copies from; :func:`plan_for` also says which
user step each instruction came from, so an engine's "Step N/M" maps back to it
(:mod:`chalkd.images.docker_build` builds the result)::

    spec = ImageSpec(base="python:3.11-slim-bookworm", python_version="3.11",   # chalkd.specs
                     steps=(ImageStep("pip_install", args=("six",)), ImageStep("workdir", path="/app")))
    text, files = dockerfile_for(spec, base="python:3.11-slim", runtime=layer, ca_pem=pem)
    with open("context.tar", "wb") as f:
        write_context(f, text, files)          # the tar an engine builds from

``text`` is then::

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

chalkd's runtime layer (:mod:`chalkd.images.runtime_dist`) comes last so the user's
steps stay cached when chalkd changes. The CA bundle reaches every ``RUN`` through
build ARGs, which are environment during the build but not part of the image's
config. ``lazy_file`` steps are not baked in: the runtime mounts them at start.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import shlex
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from chalkd.images import process_env
from chalkd.images.runtime_dist import DEPS_DIR, WHEEL_DIR, ContextFile, RuntimeLayer
from chalkd.specs import ImageSpec

__all__ = [
    "ImageBuildError", "Instr", "Plan", "dockerfile_for", "plan_for", "from_refs", "write_context",
    "NO_PYTHON", "NO_PIP", "NEEDS_PYTHON",
]

_IMAGE_DIR = "/usr/local/share/chalkd"
_CA_IN_IMAGE = f"{_IMAGE_DIR}/build-ca.pem"
_CA_CONTEXT = "chalkd-build/ca.pem"
_STAGE = "/tmp/chalkd-runtime"
_CA_ARGS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_PIP_ARGS = ("PIP_ROOT_USER_ACTION=ignore", "PIP_DISABLE_PIP_VERSION_CHECK=1")
NO_PYTHON, NO_PIP = 90, 91  # exit codes of the python3 check
NEEDS_PYTHON = "chalkd needs python3 with pip in every image (its worker runs as `python3 -m chalkcompute.worker`)"
_CHECK = (
    "command -v python3 >/dev/null 2>&1 || { echo 'chalkd: this image has no python3 on PATH; "
    f"{NEEDS_PYTHON}' >&2; exit {NO_PYTHON}; }}; python3 -m pip --version >/dev/null 2>&1 || "
    "python3 -m ensurepip >/dev/null 2>&1 || { echo 'chalkd: this image has python3 but no pip; "
    f"{NEEDS_PYTHON}' >&2; exit {NO_PIP}; }}"
)


class ImageBuildError(process_env.ImageBuildError):
    """An image build failed. ``step`` names the user's step (``"step 3/6: RUN exit 3"``),
    ``tail`` is the end of that step's log; ``str()`` gives both."""

    def __init__(self, message: str, *, step: str = "", tail: str = "", exit_code: int | None = None) -> None:
        full = message + (f"\n--- build log (last lines) ---\n{tail}" if tail else "")
        super().__init__(full)
        self.step, self.tail, self.exit_code = step, tail, exit_code


@dataclass(frozen=True)
class Instr:
    """One Dockerfile instruction, as a build error names it."""

    desc: str  # what the user knows it as, e.g. "step 3/6: RUN exit 3"
    role: str  # user | base | trust | check | runtime


@dataclass
class Plan:
    """A generated Dockerfile, its build-context files and what each instruction is."""

    dockerfile: str
    files: list[ContextFile]
    instrs: list[Instr]  # one per Dockerfile instruction: the engine's "Step N/M" is instrs[N-1]


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
        self.instrs: list[Instr] = []
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
        self.instrs.append(Instr(desc, role))
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


def plan_for(spec: ImageSpec, *, base: str, runtime: RuntimeLayer | None, ca_pem: bytes | None = None,
             base_user: str = "", bare: bool = False) -> Plan:
    """:func:`dockerfile_for`, with what each instruction is to the user (for build errors).

    ``bare`` (sandboxes, whose agent the daemon injects): the user's steps only, no
    python3 check and no runtime layer; ``runtime`` must then be None."""
    if bare != (runtime is None):
        raise ValueError("a bare plan has no runtime layer (runtime=None); a full plan needs one")
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
    if runtime is not None:
        _runtime_section(w, runtime)
    return Plan("\n".join(w.lines) + "\n", w.files, w.instrs)


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


def dockerfile_for(spec: ImageSpec, *, base: str, runtime: RuntimeLayer | None, ca_pem: bytes | None = None,
                   base_user: str = "", bare: bool = False) -> tuple[str, list[ContextFile]]:
    """The Dockerfile and build-context files (the Dockerfile itself not included) for
    ``spec`` on the resolved ``base`` ("" for a spec whose Dockerfile lines carry
    their own FROM). ``ca_pem`` adds a CA bundle for the build's RUN steps;
    ``base_user`` is the base image's USER (our layer runs as root, then restores it);
    ``bare``: no runtime layer (see :func:`plan_for`)."""
    plan = plan_for(spec, base=base, runtime=runtime, ca_pem=ca_pem, base_user=base_user, bare=bare)
    return plan.dockerfile, plan.files


def from_refs(spec: ImageSpec) -> list[str]:
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


def write_context(f: IO[bytes], dockerfile: str, files: list[ContextFile]) -> None:
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

