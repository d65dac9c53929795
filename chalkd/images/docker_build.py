"""Build image specs into Docker images on an engine, cached by content.

An ``ImageSpec`` becomes a Dockerfile and a build context
(:mod:`chalkd.images.dockerfile`, which shows what is generated), built with the
engine's classic builder through aiodocker::

    docker = aiodocker.Docker()
    builder = DockerImageBuilder(docker, Path("~/.chalkd").expanduser())
    spec = ImageSpec(base="python:3.11-slim-bookworm", python_version="3.11",   # chalkd.specs
                     steps=(ImageStep("pip_install", args=("six",)), ImageStep("workdir", path="/app")))
    built = await builder.build(spec, log=print)   # spec: a chalkd.specs.ImageSpec; streams the build log
    built.tag                                      # 'chalkd-img:5c0f...' (24 hex)
    await builder.cached(spec)                     # the same image, cached=True, no build

The tag is derived from the spec's content hash, the runtime layer's
fingerprint and :data:`BUILDER_VERSION`, so the engine itself is the cache:
a spec already built (by this daemon or an earlier run) is found by one
``inspect``. Concurrent builds of one spec share a single build; each
caller's ``log`` gets the lines so far, then the rest. Build logs are also
appended to ``<home>/logs/builds/<content hash>.log``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError, DockerStreamError

from chalkd import metrics
from chalkd.images.dockerfile import (
    NEEDS_PYTHON,
    NO_PIP,
    NO_PYTHON,
    ImageBuildError,
    Instr,
    Plan,
    dockerfile_for,
    from_refs,
    plan_for,
    write_context,
)
from chalkd.images.runtime_dist import (
    RUNTIME_INFO,
    ContextFile,
    RuntimeDistError,
    RuntimeLayer,
    runtime_fingerprint,
    runtime_layer,
)
from chalkd.specs import ImageSpec, image_identity

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
_SLIM = re.compile(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)(?:\.\d+)?-slim(?:-[a-z]+)?")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_TAIL = 40
_PULL_IDLE_S = 30.0  # a pull that says nothing for this long is given up
BARE = "bare"  # the runtime fingerprint in a bare build's tag: the user's steps only (sandboxes)


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


# ---------------------------------------------------------------- the builder

def _python_version(spec: ImageSpec) -> str:
    """The image's Python "X.Y" when the spec says it ("" when only the build can tell)."""
    if spec.python_version:
        return ".".join(spec.python_version.strip().split(".")[:2])
    m = _SLIM.fullmatch(spec.base.strip())
    return m[1] if m else ""


def _identity(spec: ImageSpec) -> str:
    """The spec's content hash, recomputed (a client's claim is not trusted)."""
    try:
        return image_identity(spec)  # the SDK's Image.content_hash formula: built images stay cached
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

    def __init__(self, plan: Plan, emit: LogFn) -> None:
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
        instr: Instr | None = None
        if self.step is not None:
            n, total, text = self.step
            if total == len(self.plan.instrs):
                instr = self.plan.instrs[n - 1]
            else:  # our count of instructions disagrees with the engine's: report its own words
                instr = Instr(f"Dockerfile step {n}/{total}: {text}", "user")
        tail = "\n".join(self.tail)
        exit_txt = f" (exit code {code})" if code is not None else ""
        if instr is None:
            return ImageBuildError(f"image build failed: {message}", step="", tail=tail, exit_code=code)
        if instr.role == "check":
            why = {NO_PYTHON: "this image has no python3", NO_PIP: "this image's python3 has no pip"}.get(
                code or 0, f"this image has no usable python3 ({message})")
            return ImageBuildError(f"{why}: {NEEDS_PYTHON}; install it in an earlier step or start from "
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

    async def cached(self, spec: ImageSpec, *, bare: bool = False) -> BuiltImage | None:
        """The image for ``spec`` if the engine has it; never builds (one inspect, ~10 ms)."""
        return await self._cached(_identity(spec), spec, bare)

    async def _cached(self, key: str, spec: ImageSpec, bare: bool = False) -> BuiltImage | None:
        try:
            fp = BARE if bare else runtime_fingerprint(_python_version(spec))
        except RuntimeDistError as exc:
            raise ImageBuildError(str(exc), step="chalkd runtime layer") from None
        return await self._inspect(_tag(key, fp), cached=True)

    async def build(self, spec: ImageSpec, log: LogFn | None = None, *, bare: bool = False) -> BuiltImage:
        """The image for ``spec``, built unless the engine has it; ``log`` gets each build line.

        ``bare`` (sandboxes): the user's steps only, no python3 check and no chalkd
        runtime layer, tagged apart from the full build (any image works: the
        sandbox's agent comes from :mod:`chalkd.sandboxes.agent_runtime`)."""
        key = _identity(spec)
        if (hit := await self._cached(key, spec, bare)) is not None:
            return hit
        fkey = f"{key}:{BARE}" if bare else key
        flight = self._flights.get(fkey)
        if flight is None or flight.task is None or flight.task.done():
            flight = self._flights[fkey] = _Flight()
            flight.task = asyncio.get_running_loop().create_task(self._build_once(key, spec, flight, bare))
            flight.task.add_done_callback(lambda t: self._landed(fkey, flight, t))
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

    async def _build_once(self, key: str, spec: ImageSpec, flight: _Flight, bare: bool) -> BuiltImage:
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

            emit(f"=== chalkd image build {key[:12]}{' (bare)' if bare else ''} at "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
            try:
                async with self._slots:
                    return await metrics.timed_build("docker", self._build(key, spec, emit, bare))
            except ImageBuildError as exc:
                emit(f"build failed: {str(exc).splitlines()[0]}")
                raise
            except (DockerError, aiohttp.ClientError) as exc:  # the engine went away or refused
                emit(f"build failed: the Docker engine: {exc}")
                raise ImageBuildError(f"image build failed: the Docker engine: {exc}") from exc

    async def _build(self, key: str, spec: ImageSpec, emit: LogFn, bare: bool = False) -> BuiltImage:
        started = time.monotonic()
        base, base_user = await self._resolve_bases(spec, emit)
        layer: RuntimeLayer | None = None
        if not bare:
            try:
                layer = await runtime_layer(self.home, _python_version(spec), emit)
            except RuntimeDistError as exc:
                raise ImageBuildError(f"making chalkd's runtime layer failed: {exc}",
                                      step="chalkd runtime layer") from None
        fp = BARE if layer is None else layer.fingerprint
        tag = _tag(key, fp)
        if (hit := await self._inspect(tag, cached=True)) is not None:  # built meanwhile by another process
            return hit
        plan = plan_for(spec, base=base, runtime=layer, ca_pem=self._ca_pem(emit), base_user=base_user, bare=bare)
        emit(f"building {tag} ({len(plan.instrs)} Dockerfile steps{', bare' if bare else ''})")
        image_id = await self._engine_build(plan, emit)
        info = {} if bare else await self._probe(image_id)  # a bare image has no runtime layer to record it
        labels = {LABEL_IMAGE: key, LABEL_RUNTIME: fp, LABEL_BUILDER: BUILDER_VERSION,
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

    async def _resolve_bases(self, spec: ImageSpec, emit: LogFn) -> tuple[str, str]:
        """(the base to build FROM, its USER); every base must be local or pullable."""
        version = spec.python_version.strip()
        refs = [spec.base.strip()] if spec.base.strip() else from_refs(spec)
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
        from chalkd.images.bootstrap import DEBIAN_PYTHONS, supported_versions

        if m and m[1] in DEBIAN_PYTHONS:
            hint = f"; make it with `chalkd image bootstrap --python {m[1]}`"
        elif m:  # bootstrap builds from Debian's python3, which exists in these versions only
            hint = (f"; `chalkd image bootstrap` can make Python {supported_versions()}, not {m[1]}: use one "
                    f"of those, or load a python:{m[1]}-slim image into this Docker host (`docker load`)")
        else:
            hint = "; pull or load it into this Docker host"
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

    async def _engine_build(self, plan: Plan, emit: LogFn) -> str:
        state = _Stream(plan, emit)
        # A temporary file, not memory: the wheelhouse alone is tens of MB. It is unlinked at once.
        with tempfile.TemporaryFile() as context:
            await asyncio.to_thread(write_context, context, plan.dockerfile, plan.files)
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
        write_context(buf, f"FROM {image_id}\n", [])
        buf.seek(0)
        stream = self.docker.images.build(fileobj=buf, encoding="identity", tag=tag, labels=labels, rm=True,
                                          forcerm=True, stream=True)
        try:
            async with contextlib.aclosing(stream):
                async for _ in stream:
                    pass
        except DockerError as exc:
            raise ImageBuildError(f"tagging the built image as {tag} failed: {exc.message}") from None
