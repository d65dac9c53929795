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
