"""The socket directory is private: made 0700, never a shared path another user could make first,
and one that is a symlink, someone else's or open to others is refused with a clear message."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chalkd.private_dir import UnsafeDirectoryError, ensure_private_dir
from chalkd.services.fastpath import run_dir
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temp dir of the test's own as tempfile's: the fallback path must not touch the real /tmp."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return tmp


def _long_home(parent: Path) -> Path:
    home = parent / ("h" * 100)
    home.mkdir(exist_ok=True)
    return home


def _long_home_in(parent: Path) -> Path:
    parent.mkdir()
    return _long_home(parent)


def test_run_dir_in_the_home_is_made_0700(tmp_path):
    path = run_dir(tmp_path / "home")
    assert path == (tmp_path / "home").resolve() / "run"
    assert _mode(path) == 0o700 and os.stat(path).st_uid == os.geteuid()


def test_a_long_home_gets_a_per_user_private_directory(tmp_path, private_tmp):
    path = run_dir(_long_home(tmp_path))
    assert path.parent == private_tmp / f"chalkd-{os.geteuid()}"
    assert _mode(path) == 0o700 and _mode(path.parent) == 0o700
    assert run_dir(_long_home_in(tmp_path / "other")) != path  # one per home
    assert run_dir(_long_home(tmp_path.parent / tmp_path.name)) == path  # and stable for it


def test_xdg_runtime_dir_is_used_when_it_is_ours(tmp_path, private_tmp, monkeypatch):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    path = run_dir(_long_home(tmp_path))
    assert path.parent == runtime and path.name.startswith("chalkd-") and _mode(path) == 0o700
    # Someone else's XDG_RUNTIME_DIR is not trusted: the per-user temp directory instead.
    os.chown(runtime, NOBODY, -1)
    other = run_dir(_long_home_in(tmp_path / "b"))
    assert other.parent == private_tmp / f"chalkd-{os.geteuid()}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory owned by another user")
def test_a_fallback_directory_pre_created_by_another_user_is_refused(tmp_path, private_tmp):
    planted = private_tmp / f"chalkd-{os.geteuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=rf"{planted} is owned by uid {NOBODY}.*refusing"):
        run_dir(_long_home(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory owned by another user")
def test_a_run_dir_of_another_user_in_the_home_is_refused(tmp_path):
    planted = tmp_path / "home" / "run"
    planted.mkdir(parents=True)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError, match=f"owned by uid {NOBODY}"):
        run_dir(tmp_path / "home")


def test_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "run").symlink_to(target)
    with pytest.raises(UnsafeDirectoryError, match="is a symlink"):
        run_dir(tmp_path / "home")


def test_a_directory_others_can_write_into_is_refused(tmp_path):
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeDirectoryError, match="mode 777.*chmod 700"):
        ensure_private_dir(path)
    os.chmod(path, 0o710)  # group traverse only, as the Docker runtime leaves it: fine
    assert ensure_private_dir(path) == path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory owned by another user")
def test_serve_refuses_to_start_with_a_planted_socket_directory(tmp_path):
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    os.chown(home / "run", NOBODY, NOBODY)
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "serve", "--runtime", "process", "--port",
                          str(free_port()), "--home", str(home)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1
    assert f"chalkd: chalkd's socket directory {home / 'run'} is owned by uid {NOBODY}" in out.stderr
    assert "Traceback" not in out.stderr
