"""Docker tests: a real Docker engine and the bootstrapped base image.

Without an engine these tests are skipped, unless ``CHALK_REQUIRE_DOCKER=1``
(set by ``.ci/run``), where a missing engine or base image fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BASE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
BASE_IMAGE = f"python:{BASE_PYTHON}-slim"
REQUIRED = os.environ.get("CHALK_REQUIRE_DOCKER") == "1"


def _engine_problem() -> str | None:
    try:
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no docker CLI or engine ({exc})"
    if out.returncode != 0:
        return f"no Docker engine answers: {out.stderr.strip()}"
    img = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, text=True, timeout=20)
    if img.returncode != 0:
        return f"the base image {BASE_IMAGE} is missing: run `chalkd image bootstrap --python {BASE_PYTHON}`"
    return None


_PROBLEM = _engine_problem()


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Use in every test that needs the engine and the base image."""
    if _PROBLEM is None:
        return
    if REQUIRED:
        pytest.fail(f"CHALK_REQUIRE_DOCKER=1 but {_PROBLEM}", pytrace=False)
    pytest.skip(_PROBLEM)


FAKE_GPUS = '[{"name": "NVIDIA L4", "uuid": "GPU-fake-l4-0", "memory_bytes": 24000000000}]'


@pytest.fixture(scope="session")
def docker_daemon(docker_engine, tmp_path_factory):
    """One chalkd on the Docker runtime for the docker tests (builds are shared through the engine's cache).

    Its GPU inventory is a fake NVIDIA L4 (there is no GPU here)."""
    from tests.conftest import Daemon

    d = Daemon(tmp_path_factory.mktemp("chalkd-docker"), extra_args=("--runtime", "docker"),
               env={"CHALKD_FAKE_GPUS": FAKE_GPUS}).start()
    yield d
    d.stop()
    # Sandboxes outlive their daemon by design: a test that failed before terminating one leaves it.
    remove_home_containers(d.home)


def remove_home_containers(home) -> None:
    """Force-remove every container and network of this daemon home (sandboxes outlive their daemon)."""
    from pathlib import Path

    label = f"label=dev.chalkd.home={Path(home).resolve()}"
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", label], capture_output=True,
                          text=True).stdout.split()
    if nets:
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True)


@pytest.fixture
def on_docker(docker_daemon, monkeypatch):
    """Point the SDK at the Docker daemon for one test."""
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", docker_daemon.target)
    return docker_daemon


def containers_of(home, **labels) -> list[dict]:
    """`docker inspect` of this home's containers with the given extra labels."""
    import json
    from pathlib import Path

    args = ["docker", "ps", "-aq", "--filter", f"label=dev.chalkd.home={Path(home).resolve()}"]
    for k, v in labels.items():
        args += ["--filter", f"label=dev.chalkd.{k}={v}"]
    ids = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    if not ids:
        return []
    return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
