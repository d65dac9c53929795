"""The `chalkd_docker` fixture of the pytest plugin, used as a user would: a real function on Docker."""

from __future__ import annotations

import pytest

from tests.integration.test_testing_plugin import run_user_pytest


@pytest.mark.timeout(600)
def test_users_test_file_runs_a_function_on_the_docker_runtime(docker_engine, tmp_path):
    user = """
        import chalkcompute
        from chalkcompute._client import Client, run_sync

        @chalkcompute.function
        def where() -> str:
            import os
            return "container" if os.path.exists("/.dockerenv") else "host"

        def test_where(chalkd_docker):
            assert chalkd_docker.runtime == "docker"
            assert run_sync(Client.get().runtime_name()) == "docker"
            assert where() == "container"
    """
    out = run_user_pytest(tmp_path, {"test_user.py": user}, timeout=540)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
