"""Unit tests for chalkd.images.bootstrap and `chalkd image bootstrap` (no engine, no root needed)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from aiodocker.exceptions import DockerError

from chalkd import cli
from chalkd.images import bootstrap as bs
from chalkd.images.bootstrap import DEBIAN_PYTHONS, BootstrapError, bootstrap_base_image, image_tags, release_for

HERE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


# --- the version table -------------------------------------------------------------------------


def test_version_table_is_debian_python3():
    # python3 is 3.9.2 in bullseye, 3.11.2 in bookworm, 3.13.5 in trixie.
    assert DEBIAN_PYTHONS == {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
    assert [release_for(v) for v in ("3.9", "3.11", "3.13")] == ["bullseye", "bookworm", "trixie"]
    assert release_for(" 3.11 ") == "bookworm"


def test_tags():
    assert image_tags("3.11") == ["python:3.11-slim", "python:3.11-slim-bookworm"]
    assert image_tags("3.13") == ["python:3.13-slim", "python:3.13-slim-trixie"]


@pytest.mark.parametrize("version", ["3.12", "3.10", "3.14", "2.7"])
def test_a_version_no_debian_release_ships_names_the_supported_ones(version):
    with pytest.raises(ValueError) as err:
        release_for(version)
    msg = str(err.value)
    assert f"Python {version}" in msg
    assert "3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("version", ["3", "3.11.2", "py3.11", "", "3.x", "311"])
def test_a_malformed_version(version):
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR.*supported: 3\.9"):
        release_for(version)


@pytest.mark.parametrize("mirror", ["ftp://deb.debian.org/debian", "deb.debian.org/debian", "", "http://"])
def test_a_bad_mirror(mirror):
    with pytest.raises(ValueError, match="--mirror must be"):
        bs.check_mirror(mirror)


def test_good_mirrors():
    for m in ("http://deb.debian.org/debian", "https://mirror.example/debian/", "file:///srv/mirror"):
        assert bs.check_mirror(m) == m


# --- the command line ---------------------------------------------------------------------------


def test_cli_unsupported_version_is_a_one_line_usage_error(capsys):
    assert cli.main(["image", "bootstrap", "--python", "3.12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("chalkd: ") and "3.12" in err and "3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)" in err


def test_cli_bad_mirror(capsys):
    assert cli.main(["image", "bootstrap", "--mirror", "ftp://x/debian"]) == 2
    assert "--mirror must be" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["image"], ["image", "bootstrap", "--bogus"], ["image", "pull"],
                                  ["image", "bootstrap", "--python"]])
def test_cli_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_defaults_and_flags(monkeypatch, capsys):
    seen = []

    async def fake(python_version, *, mirror, force, log):
        seen.append((python_version, mirror, force))
        log("a progress line")
        return image_tags(python_version)

    monkeypatch.setattr(bs, "bootstrap_base_image", fake)
    assert cli.main(["image", "bootstrap"]) == 0
    assert cli.main(["image", "bootstrap", "--python", "3.13", "--mirror", "file:///m", "--force"]) == 0
    assert seen == [(HERE_PYTHON, "http://deb.debian.org/debian", False), ("3.13", "file:///m", True)]
    assert capsys.readouterr().out == "a progress line\na progress line\n"


def test_cli_bootstrap_error_exits_1(monkeypatch, capsys):
    async def fake(python_version, **kw):
        raise BootstrapError("debootstrap is not installed: install the Debian package `debootstrap`")

    monkeypatch.setattr(bs, "bootstrap_base_image", fake)
    assert cli.main(["image", "bootstrap"]) == 1
    assert capsys.readouterr().err == (
        "chalkd: debootstrap is not installed: install the Debian package `debootstrap`\n")


def test_cli_no_engine_names_docker_host(monkeypatch, tmp_path, capsys):
    sock = tmp_path / "no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    assert cli.main(["image", "bootstrap", "--python", "3.11"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no Docker engine answers" in err and str(sock) in err and "DOCKER_HOST" in err


# --- the steps, with a fake engine ------------------------------------------------------------------


class FakeImages:
    def __init__(self, present: dict[str, str]):
        self.present = present
        self.tagged: list[tuple] = []

    async def inspect(self, ref):
        if ref not in self.present:
            raise DockerError(404, f"No such image: {ref}")
        return {"Id": self.present[ref], "RepoTags": [ref]}

    async def tag(self, name, repo, *, tag=None):
        self.tagged.append((name, repo, tag))
        return True


class FakeDocker:
    def __init__(self, present: dict[str, str] | None = None):
        self.images = FakeImages(present or {})

    async def version(self):
        return {"ApiVersion": "1.41"}


def run(coro):
    return asyncio.run(coro)


def test_already_present_returns_at_once(monkeypatch):
    def no_build(*a, **kw):
        raise AssertionError("must not build")

    monkeypatch.setattr(bs, "_check_host", no_build)
    docker = FakeDocker({"python:3.11-slim": "sha256:" + "a" * 64, "python:3.11-slim-bookworm": "sha256:" + "a" * 64})
    lines: list[str] = []
    tags = run(bootstrap_base_image("3.11", log=lines.append, docker=docker))
    assert tags == ["python:3.11-slim", "python:3.11-slim-bookworm"]
    assert len(lines) == 1 and "already present" in lines[0] and "aaaaaaaaaaaa" in lines[0]
    assert docker.images.tagged == []


def test_only_one_tag_present_needs_a_build(monkeypatch):
    monkeypatch.setattr(bs.os, "geteuid", lambda: 1000)
    docker = FakeDocker({"python:3.11-slim": "sha256:" + "a" * 64})
    with pytest.raises(BootstrapError, match="needs root"):
        run(bootstrap_base_image("3.11", log=lambda s: None, docker=docker))


def test_force_rebuilds_even_when_present_and_needs_root(monkeypatch):
    monkeypatch.setattr(bs.os, "geteuid", lambda: 1000)
    docker = FakeDocker({"python:3.11-slim": "sha256:1", "python:3.11-slim-bookworm": "sha256:1"})
    with pytest.raises(BootstrapError) as err:
        run(bootstrap_base_image("3.11", force=True, log=lambda s: None, docker=docker))
    assert "root" in str(err.value) and "sudo" in str(err.value)


def test_debootstrap_missing_names_the_package(monkeypatch):
    monkeypatch.setattr(bs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bs.shutil, "which", lambda *a, **kw: None)
    with pytest.raises(BootstrapError, match=r"install the Debian package `debootstrap`"):
        run(bootstrap_base_image("3.11", log=lambda s: None, docker=FakeDocker()))


def test_version_is_checked_before_the_engine():
    class Unreachable:
        async def version(self):
            raise AssertionError("must not reach the engine")

    with pytest.raises(ValueError, match="3.12"):
        run(bootstrap_base_image("3.12", docker=Unreachable()))


def test_a_failing_debootstrap_reports_its_tail(tmp_path):
    fake = tmp_path / "debootstrap"
    fake.write_text("#!/bin/sh\n"
                    "echo 'I: Retrieving InRelease'\n"
                    "echo 'I: Retrieving Release'\n"
                    "echo 'E: Failed getting release file http://m/dists/bookworm/Release' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    lines: list[str] = []
    with pytest.raises(BootstrapError) as err:
        run(bs._debootstrap(str(fake), "bookworm", tmp_path / "rootfs", "http://m", lines.append))
    msg = str(err.value)
    assert msg.startswith("debootstrap bookworm from http://m failed (exit 1): ")
    assert "E: Failed getting release file http://m/dists/bookworm/Release" in msg
    assert "\n" not in msg
    # Progress went to the log as it happened: the command, then each line.
    assert lines[0].startswith("$ ") and "--variant=minbase" in lines[0]
    assert "--include=python3,python3-pip,python3-venv,ca-certificates" in lines[0]
    assert lines[1:] == ["I: Retrieving InRelease", "I: Retrieving Release",
                         "E: Failed getting release file http://m/dists/bookworm/Release"]


def test_post_process_makes_it_like_the_official_image(tmp_path):
    root = tmp_path / "rootfs"
    for rel in ("usr/lib/python3.11/EXTERNALLY-MANAGED", "usr/bin/python3", "usr/bin/pip3",
                "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "var/lib/apt/lists/lock",
                "var/cache/apt/archives/python3_3.11.2-1_amd64.deb", "var/cache/apt/pkgcache.bin",
                "etc/hostname", "etc/resolv.conf", "usr/lib/python3.11/os.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "var/lib/apt/lists/partial").mkdir()
    (root / "var/cache/apt/archives/partial").mkdir()
    bs._post_process(root, "3.11")
    assert not (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()
    assert (root / "usr/lib/python3.11/os.py").exists()
    assert Path(root / "usr/bin/python").readlink() == Path("python3")
    assert Path(root / "usr/bin/pip").readlink() == Path("pip3")
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert [p.name for p in (root / "var/cache/apt/archives").iterdir()] == ["partial"]
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert not (root / "etc/hostname").exists() and not (root / "etc/resolv.conf").exists()


def test_post_process_keeps_an_existing_pip(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/pip").write_text("#!/usr/bin/python3\n")
    bs._post_process(root, "3.9")  # bullseye: no EXTERNALLY-MANAGED marker at all
    assert not (root / "usr/bin/pip").is_symlink()
    assert (root / "usr/bin/python").is_symlink()


def test_the_working_folder_is_removed(tmp_path):
    work = tmp_path / "chalkd-bootstrap-x"
    (work / "rootfs/usr/bin").mkdir(parents=True)
    (work / "rootfs/usr/bin/python").symlink_to("/nonexistent")
    bs._remove_workdir(work)
    assert not work.exists()
