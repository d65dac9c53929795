"""The Docker image builder against a real engine.

Each test builds with :class:`DockerImageBuilder` and checks the image with
the docker CLI, e.g.::

    built = builds.build(Image.debian_slim("3.11").run_commands("echo built > /marker"))
    assert docker_run(built.tag, "cat", "/marker") == "built"

Images the tests make are removed at the end of the module (tags with their
untagged parents, and the steps a failed build left); the runtime wheel and
wheelhouse stay cached in the module's home.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import aiodocker
import pytest

from chalkcompute.image import Image
from chalkd.images.docker_build import DockerImageBuilder, ImageBuildError
from chalkd.services.convert import decode_image

PY = f"{sys.version_info.major}.{sys.version_info.minor}"  # the bootstrapped base's version
TRUST_ARGS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_ROOT_USER_ACTION",
              "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_BREAK_SYSTEM_PACKAGES")


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


def docker_run(tag: str, *argv: str) -> str:
    out = docker("run", "--rm", "--network", "none", tag, *argv, check=False)
    assert out.returncode == 0, f"{argv} failed in {tag}:\n{out.stdout}\n{out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def home(docker_engine, tmp_path_factory):
    return tmp_path_factory.mktemp("builder-home")


@pytest.fixture(scope="module")
def made(docker_engine):
    """Tags and image ids the tests made; removed when the module is done."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        if not ref.startswith("chalkd-img:"):  # an id: never one that is tagged (a base image, say)
            tags = docker("image", "inspect", "--format", "{{json .RepoTags}}", ref, check=False).stdout
            if tags.strip() not in ("[]", "null"):
                continue
        docker("rmi", ref, check=False)  # also removes its untagged parents; never forced


def new_layers(lines: list[str]) -> list[str]:
    """Ids of the images a failed build made: its steps that ran (not FROM, not cache hits)."""
    ids, skip = [], False
    for line in lines:
        if line.startswith("Step "):
            skip = " : FROM " in line
        elif line.strip() == "---> Using cache":
            skip = True
        elif (m := re.match(r"^ ---> ([0-9a-f]{12})$", line)) and not skip:
            ids.append(m[1])
    return ids


class Builds:
    """Runs builds on a fresh aiodocker client per call (each closed: warnings are errors)."""

    def __init__(self, home, made: list[str]) -> None:
        self.home, self.made = home, made
        self.engine_builds = 0  # docker.images.build calls that built a spec (not the final tagging)

    def run(self, coro_fn, **kw):
        async def main():
            client = aiodocker.Docker()
            real = client.images.build

            def counting(**kwargs):
                if kwargs.get("tag") is None:
                    self.engine_builds += 1
                return real(**kwargs)

            client.images.build = counting
            try:
                return await coro_fn(DockerImageBuilder(client, self.home, **kw))
            finally:
                await client.close()

        return asyncio.run(main())

    def build(self, img: Image, lines: list[str] | None = None, **kw):
        spec = decode_image(img.to_proto())  # as the Images service hands it to the builder
        seen: list[str] = []

        def log(line: str) -> None:
            seen.append(line)
            if lines is not None:
                lines.append(line)

        try:
            built = self.run(lambda b: b.build(spec, log=log), **kw)
        except ImageBuildError:
            # A failed build leaves the steps before the failure as untagged cache images.
            self.made += new_layers(seen)
            raise
        self.made.append(built.tag)
        return built


@pytest.fixture
def builds(home, made) -> Builds:
    return Builds(home, made)


BASIC = (Image.debian_slim(PY).pip_install(["six"]).run_commands("echo built > /marker")
         .env({"A": "b c"}).workdir("/app"))


@pytest.mark.timeout(300)
def test_build_runs_the_steps_and_adds_the_worker(builds, home):
    lines: list[str] = []
    t0 = time.monotonic()
    built = builds.build(BASIC, lines)
    print(f"first build: {time.monotonic() - t0:.1f}s")
    assert not built.cached
    assert built.tag.startswith("chalkd-img:")
    assert built.workdir == "/app" and built.env["A"] == "b c" and built.python_version == PY
    assert any(line.startswith("Step ") for line in lines)
    assert (home / "logs" / "builds" / f"{BASIC.content_hash}.log").read_text().count("Step ") >= len(
        [x for x in lines if x.startswith("Step ")])

    probe = ("import os, six; print(open('/marker').read().strip()); print(os.environ['A']); print(os.getcwd())")
    assert docker_run(built.tag, "python3", "-c", probe).splitlines() == ["built", "b c", "/app"]
    docker_run(built.tag, "python3", "-c", "import chalkcompute.worker, pyarrow, grpclib")

    info = json.loads(docker("image", "inspect", built.tag).stdout)[0]
    assert info["Config"]["Labels"]["dev.chalkd.image"] == BASIC.content_hash
    # Build-time trust settings were ARGs: nothing of them in the image's config or a container's env.
    env_keys = {e.split("=", 1)[0] for e in info["Config"]["Env"]}
    assert not env_keys & set(TRUST_ARGS)
    run_env = docker_run(built.tag, "env")
    assert not any(line.split("=", 1)[0] in TRUST_ARGS for line in run_env.splitlines())


@pytest.mark.timeout(300)
def test_second_build_is_a_cache_hit_even_after_a_restart(builds):
    first = builds.build(BASIC)  # built here only when this test runs alone
    engine_builds = builds.engine_builds
    lines: list[str] = []
    t0 = time.monotonic()
    again = builds.build(BASIC, lines)  # a new builder and client: only the engine remembers
    took = time.monotonic() - t0
    assert again.cached and again.tag == first.tag and again.image_id == first.image_id
    assert lines == []
    assert builds.engine_builds == engine_builds

    async def timed(b):
        t = time.monotonic()
        hit = await b.cached(decode_image(BASIC.to_proto()))
        return hit, time.monotonic() - t

    hit, cached_s = builds.run(timed)
    print(f"cache hit via build(): {took * 1000:.0f} ms, cached(): {cached_s * 1000:.0f} ms")
    assert hit is not None and hit.cached and hit.tag == first.tag
    assert cached_s < 0.5  # ~10 ms here; generous for a loaded machine


@pytest.mark.timeout(300)
def test_concurrent_builds_of_one_spec_share_one_build(builds, tmp_path):
    # A lazy file changes the spec (and tag) but not the Dockerfile: the engine's layer cache makes it quick.
    (tmp_path / "mounted.txt").write_text("x")
    img = BASIC.add_local_file(tmp_path / "mounted.txt", "/data/mounted.txt")
    first_lines: list[str] = []
    late_lines: list[str] = []

    async def both(b):
        started = asyncio.Event()

        def first_log(line: str) -> None:
            first_lines.append(line)
            started.set()

        a = asyncio.create_task(b.build(decode_image(img.to_proto()), log=first_log))
        # the second caller joins a build that has already logged (or fails with it)
        await asyncio.wait([a, asyncio.ensure_future(started.wait())], return_when=asyncio.FIRST_COMPLETED)
        late = asyncio.create_task(b.build(decode_image(img.to_proto()), log=late_lines.append))
        return await asyncio.gather(a, late)

    one, two = builds.run(both)
    builds.made.append(one.tag)
    assert one == two and not one.cached
    assert builds.engine_builds == 1
    assert late_lines == first_lines and len(first_lines) > 1


@pytest.mark.timeout(300)
def test_failing_step_is_named_with_its_log(builds):
    before = docker("ps", "-aq", "--no-trunc").stdout.split()
    with pytest.raises(ImageBuildError) as info:
        builds.build(Image.debian_slim(PY).run_commands("echo fine", "echo boom >&2; exit 3"))
    exc = info.value
    assert "exit 3" in exc.step and "step 1/1" in exc.step
    assert exc.exit_code == 3
    assert "boom" in exc.tail
    assert "exit code 3" in str(exc) and "boom" in str(exc) and "exit 3" in str(exc)
    # forcerm: the failed step's container is gone
    leftover = set(docker("ps", "-aq", "--no-trunc").stdout.split()) - set(before)
    commands = docker("inspect", "--format", "{{json .Config.Cmd}}", *leftover).stdout if leftover else ""
    assert "boom" not in commands


@pytest.mark.timeout(300)
def test_the_images_own_dependency_versions_are_kept(builds):
    # pathspec 0.12.1 satisfies chalkd's pathspec>=0.12 though the host has a newer one: the user's pin stays.
    lines: list[str] = []
    built = builds.build(Image.debian_slim(PY).pip_install(["pathspec==0.12.1"]), lines)
    assert any("using the image's pathspec 0.12.1" in line for line in lines)
    out = docker_run(built.tag, "python3", "-c",
                     "import importlib.metadata as m, chalkcompute.worker; print(m.version('pathspec'))")
    assert out == "0.12.1"


@pytest.mark.timeout(300)
def test_image_without_python3_is_refused(builds):
    with pytest.raises(ImageBuildError, match="has no python3") as info:
        builds.build(Image.debian_slim(PY).run_commands("rm -f /usr/bin/python3* /usr/local/bin/python3*"))
    assert "chalkd needs python3 with pip" in str(info.value)
    assert "python3" in info.value.step


def test_missing_base_names_the_bootstrap_command(builds):
    if docker("image", "inspect", "python:3.13-slim", check=False).returncode == 0:
        pytest.skip("python:3.13-slim is on this engine")
    with pytest.raises(ImageBuildError) as info:
        builds.build(Image.debian_slim("3.13").pip_install(["six"]))
    assert "python:3.13-slim" in str(info.value)
    assert "chalkd image bootstrap --python 3.13" in str(info.value)
    assert builds.engine_builds == 0
