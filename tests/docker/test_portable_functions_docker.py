"""The portable function tests (tests/portable/functions.py) on the Docker runtime: each replica a container."""

from __future__ import annotations

import pytest

from chalkd.testing import Daemon
from tests.portable.functions import FunctionSuite


@pytest.fixture(scope="module")
def runtime_daemon(docker_daemon: Daemon) -> Daemon:
    return docker_daemon


class TestFunctionsOnDocker(FunctionSuite):
    """Every test of the suite, on the session's Docker-runtime daemon."""
