"""chalkd.images.process_env: image specs on the process runtime (virtualenvs, no containers)."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.images import process_env
from chalkd.images.process_env import (
    ImageBuildError,
    ImageNotSupportedError,
    ProcessEnvBuilder,
    available_pythons,
    check_image,
)
from chalkd.services.convert import decode_image
from chalkd.specs import ImageSpec, ImageStep

OWN = f"{sys.version_info[0]}.{sys.version_info[1]}"

# The tests that build a real venv and install from the package index (one small
# package, plus one name that does not exist). CHALK_TEST_OFFLINE=1 skips them.
uses_package_index = pytest.mark.skipif(
    os.environ.get("CHALK_TEST_OFFLINE") == "1", reason="installs from the package index"
)


def step(kind: str, *args: str, env: dict[str, str] | None = None, **fields) -> pb.ImageStep:
    return pb.ImageStep(kind=kind, args=list(args), env=env or {}, **fields)


def spec(*steps: pb.ImageStep, python: str = OWN, base: str | None = None, content_hash: str = "") -> ImageSpec:
    """An image spec as a client sends it, through the daemon's codec (as every spec comes in)."""
    base = f"python:{python}-slim-bookworm" if base is None else base
    return decode_image(pb.ImageSpec(base=base, python_version=python, steps=list(steps), content_hash=content_hash))


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def count_builds(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[str]:
    """Patch ProcessEnvBuilder._build to record each real build (optionally slowed down)."""
    builds: list[str] = []
    original = ProcessEnvBuilder._build

    async def counted(self, key, plan, spec, log):
        builds.append(key)
        await asyncio.sleep(delay)
        await original(self, key, plan, spec, log)

    monkeypatch.setattr(ProcessEnvBuilder, "_build", counted)
    return builds


def leftovers(home: Path) -> list[str]:
    envs = home / "envs"
    return sorted(p.name for p in envs.iterdir() if p.name.startswith(".build-")) if envs.is_dir() else []


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("kind", ["run_commands", "dockerfile_commands", "entrypoint", "cmd"])
def test_container_only_steps_are_refused(kind: str) -> None:
    with pytest.raises(ImageNotSupportedError) as e:
        check_image(spec(step(kind, "apt-get install -y ffmpeg", "true")))
    assert f"{kind}('apt-get install -y ffmpeg', ...)" in str(e.value)
    assert "--runtime docker" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_volume_strategy_files_are_refused() -> None:
    with pytest.raises(ImageNotSupportedError, match='strategy="copy"') as e:
        check_image(spec(step("lazy_file", path="/data/x.bin", source="/home/me/x.bin")))
    assert "/home/me/x.bin" in str(e.value)


@pytest.mark.parametrize("base", ["ubuntu:22.04", "nvidia/cuda:12.4.1-runtime-ubuntu22.04", "python:3.12"])
def test_other_bases_are_refused(base: str) -> None:
    with pytest.raises(ImageNotSupportedError) as e:
        check_image(ImageSpec(base=base))
    assert repr(base) in str(e.value) and "--runtime docker" in str(e.value)


def test_image_without_base_is_refused() -> None:  # what Image.from_dockerfile(...) sends
    with pytest.raises(ImageNotSupportedError, match="no base.*--runtime docker"):
        check_image(ImageSpec(steps=(ImageStep("dockerfile_commands", args=("FROM ubuntu",)),)))


def test_missing_python_version_names_what_the_host_has() -> None:
    with pytest.raises(ImageNotSupportedError) as e:
        check_image(spec(python="3.99"))
    msg = str(e.value)
    assert "Image.debian_slim('3.99') needs Python 3.99 on this host" in msg
    assert f"this host has {', '.join(available_pythons())};" in msg and OWN in msg
    assert "--runtime docker" in msg


def test_python_older_than_the_worker_supports_is_refused() -> None:
    with pytest.raises(ImageNotSupportedError, match=r"worker needs Python >=3\.\d+"):
        check_image(spec(python="3.6"))


def test_available_pythons_uses_the_daemons_own_interpreter() -> None:
    pythons = available_pythons()
    assert pythons[OWN] == sys.executable
    assert all(v.startswith("3.") and os.access(p, os.X_OK) for v, p in pythons.items())


def test_python_version_may_come_from_the_base_tag() -> None:
    check_image(ImageSpec(base=f"python:{OWN}.1-slim-bookworm"))
    check_image(ImageSpec(base=f"docker.io/library/python:{OWN}-slim"))
    check_image(ImageSpec())  # the default image: the daemon's Python


# ---------------------------------------------------------------- no venv


def test_fast_path_uses_the_daemons_interpreter(tmp_path: Path) -> None:
    image = spec(step("env", env={"A": "1"}), step("env", env={"A": "2", "B": "x"}))
    result = asyncio.run(ProcessEnvBuilder(tmp_path).ensure(image))
    assert result.python == sys.executable
    assert result.env == {"A": "2", "B": "x"}
    assert result.cwd is None and result.root is None
    assert not (tmp_path / "envs").exists()  # nothing built, nothing written


def test_files_land_under_the_image_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = spec(
        step("env", env={"MODE": "prod"}),
        step("workdir", path="/app"),
        step("copy_file", path="/app/config.json", content=b"{}", mode=0o600, source="config.json"),
        step("copy_file", path="notes.txt", content=b"hi"),  # relative: against WORKDIR, like Docker
        step("copy_dir", path="/srv/data", content=tar_of({"a.txt": b"A", "sub/b.txt": b"B"})),
        content_hash="layout1",
    )
    builds = count_builds(monkeypatch)
    result = asyncio.run(ProcessEnvBuilder(tmp_path).ensure(image))
    root = tmp_path / "envs" / "layout1" / "root"
    assert result.python == sys.executable  # same Python, no pip steps: no venv needed
    assert result.root == str(root) and result.content_hash == "layout1"
    assert result.cwd == str(root / "app") and (root / "app").is_dir()
    assert result.env == {"MODE": "prod", "CHALK_IMAGE_ROOT": str(root)}
    assert (root / "app/config.json").read_bytes() == b"{}"
    assert stat.S_IMODE((root / "app/config.json").stat().st_mode) == 0o600
    assert (root / "app/notes.txt").read_bytes() == b"hi"
    assert (root / "srv/data/a.txt").read_bytes() == b"A"
    assert (root / "srv/data/sub/b.txt").read_bytes() == b"B"
    assert not (tmp_path / "envs" / "layout1" / "venv").exists()
    assert len(builds) == 1 and leftovers(tmp_path) == []


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "ok/../../evil.txt"])
def test_copy_dir_rejects_members_that_escape(tmp_path: Path, member: str) -> None:
    image = spec(step("copy_dir", path="/data", content=tar_of({member: b"x"})), content_hash="escape")
    with pytest.raises(ImageBuildError, match="escape"):
        asyncio.run(ProcessEnvBuilder(tmp_path).ensure(image))
    assert not (tmp_path / "envs" / "escape").exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "evil.txt").exists()


def test_second_ensure_reuses_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch)
    image = spec(step("copy_file", path="/a", content=b"1"), content_hash="again")
    builder = ProcessEnvBuilder(tmp_path)
    first = asyncio.run(builder.ensure(image))
    assert asyncio.run(builder.ensure(image)) == first
    assert asyncio.run(ProcessEnvBuilder(tmp_path).ensure(image)) == first  # e.g. after a daemon restart
    assert builds == ["again"]


def test_concurrent_ensures_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch, delay=0.3)
    image = spec(step("copy_file", path="/a", content=b"1"), content_hash="together")

    async def main():
        builder = ProcessEnvBuilder(tmp_path)
        other = ProcessEnvBuilder(tmp_path)  # a second builder only meets the first at the file lock
        return await asyncio.gather(*(b.ensure(image) for b in (builder, builder, builder, other)))

    results = asyncio.run(main())
    assert builds == ["together"]
    assert all(r == results[0] for r in results)


def test_missing_content_hash_is_derived_from_the_spec(tmp_path: Path) -> None:
    a = spec(step("copy_file", path="/a", content=b"1"))
    b = spec(step("copy_file", path="/a", content=b"2"), content_hash="../../not-a-dir-name")
    ra, rb = (asyncio.run(ProcessEnvBuilder(tmp_path).ensure(s)) for s in (a, b))
    assert len(ra.content_hash) == 64 and ra.content_hash != rb.content_hash
    assert sorted(p.name for p in (tmp_path / "envs").iterdir() if not p.name.startswith(".")) == sorted(
        [ra.content_hash, rb.content_hash]
    )



def _known(content_hash: str = "") -> pb.ImageSpec:
    return pb.ImageSpec(base="python:3.11-slim-bookworm", python_version="3.11", content_hash=content_hash, steps=[
        pb.ImageStep(kind="env", env={"B": "2", "A": "1"}),
        pb.ImageStep(kind="pip_install", args=["six==1.16.0", "attrs"]),
        pb.ImageStep(kind="workdir", path="/app"),
        pb.ImageStep(kind="copy_file", path="/app/c.txt", content=b"copied\n", mode=0o640, source="/home/me/c.txt"),
    ])


def test_venv_keys_are_the_ones_chalkd_used_before_the_spec_dataclasses() -> None:
    # Pinned with c2704aa's _env_key (which hashed the protobuf spec itself): <home>/envs/<key>
    # of an existing daemon must still be found, or every venv would be rebuilt after an upgrade.
    derived = "556f2d0c854bfeb801929a54748c59841bc195a6f47d1cc54eb174f2824957e5"
    assert process_env._env_key(decode_image(_known())) == derived
    assert process_env._env_key(decode_image(_known("../escape"))) == derived  # unsafe as a dir name
    assert process_env._env_key(decode_image(_known("claimed-by-client"))) == "claimed-by-client"
    assert process_env._env_key(decode_image(pb.ImageSpec())) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")  # sha256 of no bytes
    with pytest.raises(ValueError, match="must come from the codec"):
        process_env._env_key(ImageSpec(base="python:3.11-slim-bookworm"))  # made by hand: no wire digest

# ---------------------------------------------------------------- venvs


def test_pip_steps_and_log_streaming_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real venv; pip and uv invocations are recorded instead of run."""
    calls: list[list[str]] = []
    original = ProcessEnvBuilder._run

    async def fake_run(self, argv, log, what):
        if argv[1:3] == ["-m", "pip"] or argv[1:2] == ["pip"]:
            calls.append(argv)
            if "-r" in argv:
                calls.append(Path(argv[argv.index("-r") + 1]).read_text().splitlines())
            return []
        return await original(self, argv, log, what)

    monkeypatch.setattr(ProcessEnvBuilder, "_run", fake_run)
    monkeypatch.setattr(process_env.shutil, "which", lambda name: None)  # no uv on PATH
    lines: list[str] = []
    image = spec(
        step("pip_install", "six", "attrs>=20"),
        step("uv_pip_install", "idna"),
        step("pip_install_from_requirements", "six==1.16.0", "# comment", source="requirements.txt"),
        content_hash="recorded",
    )
    builder = ProcessEnvBuilder(tmp_path, pip_extra_args=["--index-url", "https://mirror.example/simple"])
    result = asyncio.run(builder.ensure(image, log=lines.append))
    env_dir = tmp_path / "envs" / "recorded"
    venv = env_dir / "venv"
    assert result.python == str(venv / "bin" / "python") and Path(result.python).exists()
    assert result.env["VIRTUAL_ENV"] == str(venv)
    assert result.env["PATH"].startswith(str(venv / "bin") + os.pathsep)
    # (pip runs the venv's python while it is still in its temp build dir)
    assert all(Path(call[0]).parts[-3:] == ("venv", "bin", "python") for call in (calls[0], calls[1], calls[2]))
    pip = ["-m", "pip", "install", "--disable-pip-version-check", "-q", "--index-url", "https://mirror.example/simple"]
    assert calls[0][1:] == [*pip, "six", "attrs>=20"]
    assert calls[1][1:] == [*pip, "idna"]  # uv not on PATH: pip instead, with a note
    assert any("falls back to pip" in line for line in lines)
    assert calls[3] == ["six==1.16.0", "# comment"]
    assert not any("chalkcompute" in arg for call in calls for arg in call)
    assert any(line.startswith("$ ") and "-m venv" in line for line in lines)  # streamed
    pth = next(venv.glob("lib/python*/site-packages/zz_chalk_runtime.pth")).read_text().split()
    assert str(Path(process_env.__file__).parents[2]) in pth  # where chalkcompute is importable
    # The venv was built in a temp dir: no script may still point there.
    for f in (venv / "bin").iterdir():
        if f.is_file() and not f.is_symlink():
            assert b".build-" not in f.read_bytes(), f
    assert leftovers(tmp_path) == []


def _other_python() -> str | None:
    versions = [v for v in available_pythons() if v != OWN]
    supported = [v for v in versions if tuple(map(int, v.split("."))) >= (3, 11)]
    return supported[-1] if supported else None


@pytest.mark.skipif(_other_python() is None, reason="needs a second supported Python on this host")
def test_other_python_version_installs_runtime_from_local_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = _other_python()
    assert version is not None
    pips: list[list[str]] = []
    original = ProcessEnvBuilder._run

    async def fake_run(self, argv, log, what):
        if argv[1:3] == ["-m", "pip"]:
            pips.append(argv[argv.index("-q") + 1:])
            return []
        return await original(self, argv, log, what)

    monkeypatch.setattr(ProcessEnvBuilder, "_run", fake_run)
    result = asyncio.run(ProcessEnvBuilder(tmp_path).ensure(spec(python=version, content_hash="other")))
    site = next((tmp_path / "envs/other/venv").glob(f"lib/python{version}/site-packages"))
    out = subprocess.run([result.python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    assert out.stdout.startswith(version + ".")
    assert pips and "grpclib>=0.4.7" in pips[0] and not any("pytest" in r for r in pips[0])
    assert not any("chalkcompute" in r for call in pips for r in call)  # never PyPI's chalkcompute
    assert (site / "chalkcompute" / "__init__.py").is_file()
    assert not (site / "chalkcompute" / "__pycache__").exists()
    assert not (site / "zz_chalk_runtime.pth").exists()


@uses_package_index
def test_real_pip_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = count_builds(monkeypatch)
    lines: list[str] = []
    image = spec(step("pip_install", "six"), step("workdir", path="/app"), content_hash="withsix")
    builder = ProcessEnvBuilder(tmp_path)
    result = asyncio.run(builder.ensure(image, log=lines.append))
    code = "import six, chalkcompute, os; print(six.__file__); print(chalkcompute.__file__); print(os.getcwd())"
    env = {**os.environ, **result.env}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([result.python, "-c", code], capture_output=True, text=True, env=env, cwd=result.cwd)
    assert out.returncode == 0, out.stderr
    six_file, chalk_file, cwd = out.stdout.splitlines()
    assert six_file.startswith(str(tmp_path / "envs" / "withsix" / "venv"))  # installed into the image
    assert Path(chalk_file) == Path(process_env.__file__).parents[2] / "chalkcompute" / "__init__.py"
    assert cwd == str(tmp_path / "envs" / "withsix" / "root" / "app")
    assert any("pip install" in line for line in lines)

    started = time.monotonic()
    assert asyncio.run(builder.ensure(image)) == result
    assert time.monotonic() - started < 0.5 and builds == ["withsix"]


@uses_package_index
def test_failed_pip_install_leaves_nothing(tmp_path: Path) -> None:
    image = spec(step("pip_install", "chalkd-no-such-package-xyz"), content_hash="broken")
    lines: list[str] = []
    with pytest.raises(ImageBuildError) as e:
        asyncio.run(ProcessEnvBuilder(tmp_path).ensure(image, log=lines.append))
    assert "pip install chalkd-no-such-package-xyz failed" in str(e.value)
    assert "chalkd-no-such-package-xyz" in str(e.value).split("\n", 1)[1]  # pip's own output
    assert not (tmp_path / "envs" / "broken").exists() and leftovers(tmp_path) == []
