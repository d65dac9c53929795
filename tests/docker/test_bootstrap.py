"""The bootstrapped base image behaves like the official ``python:<v>-slim``.

The image is made once by ``chalkd image bootstrap`` (``.ci/run``); these tests
never rebuild it (a minute or more), they check what it does, and the quick
"already present" path of the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chalkd.images.bootstrap import LABEL, PATH, image_tags, release_for
from tests.docker.conftest import BASE_IMAGE, BASE_PYTHON

CODENAME = release_for(BASE_PYTHON)
TAGS = image_tags(BASE_PYTHON)


def docker(*args: str, input: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], input=input, capture_output=True, text=True, timeout=timeout)


def run_in_image(*args: str, image: str = BASE_IMAGE, input: str | None = None, opts: tuple = ()) -> str:
    out = docker("run", "--rm", "--network", "none", *(["-i"] if input is not None else []), *opts, image, *args,
                 input=input)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_both_tags_name_the_bootstrapped_image(docker_engine):
    out = docker("image", "inspect", *TAGS)
    assert out.returncode == 0, out.stderr
    infos = json.loads(out.stdout)
    assert len({i["Id"] for i in infos}) == 1
    config = infos[0]["Config"]
    assert config["Cmd"] == ["python3"]
    assert "LANG=C.UTF-8" in config["Env"]
    assert f"PATH={PATH}" in config["Env"]
    assert (config.get("Labels") or {}).get(LABEL) == CODENAME


def test_runs_python3_by_default(docker_engine):
    # No command: CMD ["python3"] reads the program from stdin.
    out = run_in_image(input="import sys; print('hello from', sys.version_info[:2])\n")
    assert out.strip() == f"hello from {tuple(int(x) for x in BASE_PYTHON.split('.'))}"


def test_python_pip_and_environment(docker_engine):
    out = run_in_image("sh", "-c", 'python --version; pip --version; python3 -c "import venv, ssl, ensurepip"; '
                                   'echo "LANG=$LANG"; echo "PATH=$PATH"')
    lines = out.splitlines()
    assert lines[0].startswith(f"Python {BASE_PYTHON}.")
    assert lines[1].startswith("pip ") and f"(python {BASE_PYTHON})" in lines[1]
    assert "LANG=C.UTF-8" in lines
    assert f"PATH={PATH}" in lines


def _tiny_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, written by hand (no build backend, no network)."""
    name, version = "chalktiny", "0.1"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist_info}/RECORD", record)
    return wheel


def test_pip_install_into_the_system_python(docker_engine, tmp_path):
    # The official image lets pip install as root into its Python: no PEP 668 refusal here either.
    wheel = _tiny_wheel(tmp_path)
    out = run_in_image(
        "sh", "-c",
        f"pip install --no-index /wheels/{wheel.name} && python -c 'import chalktiny; print(chalktiny.VALUE)'",
        opts=("-v", f"{tmp_path}:/wheels:ro", "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1",
              "-e", "PIP_ROOT_USER_ACTION=ignore"))
    assert "Successfully installed chalktiny-0.1" in out
    assert out.splitlines()[-1] == "42"


def test_a_venv_with_pip_works_offline(docker_engine):
    out = run_in_image("sh", "-c", "python -m venv /tmp/v && /tmp/v/bin/python -m pip --version")
    assert "/tmp/v/" in out


def test_bootstrap_says_present_and_returns_quickly(docker_engine):
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "image", "bootstrap", "--python", BASE_PYTHON],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "already present" in out.stdout
    assert all(tag in out.stdout for tag in TAGS)


@pytest.mark.skipif(os.geteuid() != 0, reason="building needs root")
def test_a_failing_debootstrap_leaves_the_image_and_no_working_folder(docker_engine, tmp_path):
    before = docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout
    work = tmp_path / "tmp"
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "chalkd.cli", "image", "bootstrap", "--python", BASE_PYTHON, "--force",
         "--mirror", f"file://{tmp_path}/no-such-mirror"],
        capture_output=True, text=True, timeout=90, env={**os.environ, "TMPDIR": str(work)})
    assert out.returncode == 1
    err = out.stderr.strip()
    assert "\n" not in err
    assert err.startswith(f"chalkd: debootstrap {CODENAME} from file://") and "Release" in err
    assert "I: Retrieving Release" in out.stdout  # progress came as it happened
    assert list(work.iterdir()) == []
    assert docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout == before
