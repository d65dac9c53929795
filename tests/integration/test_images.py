"""Image features on the process runtime, end to end through a function call."""

from __future__ import annotations

import shutil

import pytest

from chalkcompute import FunctionError, Image, RemoteFunction
from chalkd.images.process_env import available_pythons

pytestmark = pytest.mark.usefixtures("daemon")


def env_and_cwd() -> dict[str, str]:
    import os

    return {"greeting": os.environ["GREETING"], "cwd": os.getcwd(), "root": os.environ["CHALK_IMAGE_ROOT"]}


@pytest.mark.timeout(120)
def test_env_and_workdir():
    image = Image.debian_slim().env({"GREETING": "hi"}).workdir("/app")
    fn = RemoteFunction(env_and_cwd, name="img_env_workdir", image=image)
    out = fn()
    assert out["greeting"] == "hi"
    # The image path /app is mapped under the image root, never made at /app on the host.
    assert out["cwd"].endswith("/app")
    assert out["cwd"] == out["root"].rstrip("/") + "/app"


def read_added_files() -> dict[str, str]:
    import os

    root = os.environ["CHALK_IMAGE_ROOT"]
    with open(root + "/app/data.txt") as f:
        data = f.read()
    pkg = root + "/app/pkg"
    files = {}
    for dirpath, _, names in os.walk(pkg):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path) as f:
                files[os.path.relpath(path, pkg)] = f.read()
    return {"data": data, **{f"pkg/{k}": v for k, v in files.items()}}


@pytest.mark.timeout(120)
def test_add_local_file_and_dir_with_copy(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("payload-1")
    src = tmp_path / "pkg"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    (src / "skip.log").write_text("ignored")
    (src / ".gitignore").write_text("*.log\n")
    image = (
        Image.debian_slim()
        .add_local_file(data, "/app/data.txt", strategy="copy")
        .add_local_dir(src, "/app/pkg", strategy="copy")
    )
    fn = RemoteFunction(read_added_files, name="img_local_files", image=image)
    assert fn() == {"data": "payload-1", "pkg/a.txt": "A", "pkg/sub/b.txt": "B", "pkg/.gitignore": "*.log\n"}


def six_version() -> str:
    import six

    return six.__version__


@pytest.mark.timeout(300)
def test_pip_install_from_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# the one dependency\nsix\n")
    image = Image.debian_slim().pip_install_from_requirements(req)
    fn = RemoteFunction(six_version, name="img_requirements", image=image)
    version = fn()
    assert version and version[0].isdigit()


@pytest.mark.timeout(300)
def test_uv_pip_install():
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH (uv_pip_install would fall back to pip)")
    image = Image.debian_slim().uv_pip_install(["six"])
    fn = RemoteFunction(six_version, name="img_uv", image=image)
    version = fn()
    assert version and version[0].isdigit()


def python_version() -> list[int]:
    import sys

    return list(sys.version_info[:2])


@pytest.mark.timeout(600)
def test_debian_slim_other_python_version():
    if "3.12" not in available_pythons():
        pytest.skip("no Python 3.12 on this host (pyenv or PATH)")
    fn = RemoteFunction(python_version, name="img_py312", image=Image.debian_slim("3.12"))
    # The first replica builds a venv with chalkd's dependencies for 3.12 from the package index.
    fn.deploy(build_timeout=540)
    assert fn() == [3, 12]


def never_runs() -> int:
    return 0


def test_volume_strategy_refused_at_deploy(tmp_path):
    local = tmp_path / "data.txt"
    local.write_text("x")
    image = Image.debian_slim().add_local_file(local, "/app/data.txt")  # strategy="volume" is the default
    fn = RemoteFunction(never_runs, name="img_volume", image=image)
    with pytest.raises(FunctionError) as info:
        fn.deploy()
    message = str(info.value)
    assert f"local file {str(local)!r} was added with strategy=\"volume\"" in message
    assert "process runtime does not support yet" in message
    assert 'strategy="copy" instead' in message
