"""The pytest plugin for users' CI (chalkd.testing): run as a user would, pytest in a subprocess on a
test file of theirs, with the plugin loaded through its ``pytest11`` entry point (no conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The parent run's settings must not leak into the user's run: the plugin is what sets them there.
_CLEARED = ("CHALK_REGISTER_AT_EXIT", "CHALK_COMPUTE_TARGET", "CHALK_COMPUTE_TOKEN", "CHALKD_HOME",
            "CHALK_REQUIRE_DOCKER", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")


def run_user_pytest(tmp_path: Path, files: dict[str, str], *args: str, env: dict[str, str] | None = None,
                    timeout: float = 150) -> subprocess.CompletedProcess:
    """Write ``files`` into ``tmp_path`` (its own rootdir: a pytest.ini) and run pytest there."""
    files = {"pytest.ini": "[pytest]\n", **files}
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    child_env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=timeout)


USER_TEST = """
    import os

    import chalkcompute
    from chalkcompute._client import Client

    EARLY = Client.get()  # a client made at import time, before any fixture: the default target's

    @chalkcompute.function          # decorated at import time too
    def double(x: int) -> int:
        return 2 * x

    def test_double(chalkd):
        assert os.environ["CHALK_COMPUTE_TARGET"] == chalkd.target != EARLY.target
        assert os.environ["CHALK_REGISTER_AT_EXIT"] == "0"
        assert Client.get().target == chalkd.target
        assert double(21) == 42
        assert (chalkd.home / "token").read_text().strip() == chalkd.token
        assert "listening" in chalkd.log()

    def test_another_daemon_is_still_reachable(chalkd, tmp_path):
        # The fixture points the SDK at its daemon without pinning the one token tried.
        from chalkcompute._client import run_sync
        from chalkd.testing import Daemon

        other = Daemon(tmp_path / "other").start()
        try:
            assert run_sync(Client.get(other.target).runtime_name()) == "process"
            assert double(3) == 6  # and the default target is still the fixture's
        finally:
            other.stop()

    def test_same_daemon_survives_a_crash(chalkd):
        assert double(4) == 8       # registered by the test before, on the same (session) daemon
        chalkd.kill9()
        chalkd.start()              # same port, home and token: the SDK reconnects by itself
        assert double(5) == 10
"""


@pytest.mark.timeout(200)
def test_users_test_file_calls_a_module_level_function(tmp_path):
    out = run_user_pytest(tmp_path, {"test_user.py": USER_TEST})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout


@pytest.mark.timeout(200)
def test_users_ci_token_does_not_hide_the_fixtures(tmp_path):
    # A CI job that talks to a real daemon has CHALK_COMPUTE_TOKEN set: the fixture's daemon still answers.
    out = run_user_pytest(tmp_path, {"test_user.py": USER_TEST}, "-k", "test_double",
                          env={"CHALK_COMPUTE_TOKEN": "a-token-of-another-daemon"})
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(200)
def test_function_scope_gives_each_test_its_own_daemon_and_registers_again(tmp_path):
    # The second daemon has never seen `double`: the handle, registered with the first, must register again.
    user = """
        import chalkcompute

        TARGETS = []

        @chalkcompute.function
        def double(x: int) -> int:
            return 2 * x

        def test_a(chalkd):
            TARGETS.append(chalkd.target)
            assert double(21) == 42

        def test_b(chalkd):
            TARGETS.append(chalkd.target)
            assert len(set(TARGETS)) == 2, TARGETS
            assert double(1) == 2
    """
    out = run_user_pytest(tmp_path, {"pytest.ini": "[pytest]\nchalkd_scope = function\n", "test_user.py": user})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout


def test_plain_run_loads_the_plugin_and_imports_nothing_heavy(tmp_path):
    # An entry-point plugin loads into every pytest run of anyone who installed chalkd.
    user = """
        import os
        import sys

        def test_light(request):
            assert request.config.pluginmanager.hasplugin("chalkd")
            heavy = sorted(m for m in sys.modules
                           if m.split(".")[0] in ("chalkcompute", "grpclib", "pyarrow", "aiodocker", "aiohttp")
                           or m.startswith("chalkd.") and m != "chalkd.testing")
            assert heavy == []
            assert os.environ["CHALK_REGISTER_AT_EXIT"] == "0"   # no deploy at exit from a test run
    """
    out = run_user_pytest(tmp_path, {"test_light.py": user})
    assert out.returncode == 0, out.stdout + out.stderr


def test_explicit_register_at_exit_setting_stands(tmp_path):
    user = """
        import os

        def test_kept():
            assert os.environ["CHALK_REGISTER_AT_EXIT"] == "1"
    """
    out = run_user_pytest(tmp_path, {"test_kept.py": user}, env={"CHALK_REGISTER_AT_EXIT": "1"})
    assert out.returncode == 0, out.stdout + out.stderr


def test_chalkd_docker_skips_cleanly_without_an_engine(tmp_path):
    user = """
        def test_needs_docker(chalkd_docker):
            raise AssertionError("must not run without an engine")
    """
    out = run_user_pytest(tmp_path, {"test_docker.py": user},
                          env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 skipped" in out.stdout
    assert "no Docker engine" in out.stdout


def test_chalkd_docker_fails_without_an_engine_when_required(tmp_path):
    user = """
        def test_needs_docker(chalkd_docker):
            pass
    """
    out = run_user_pytest(tmp_path, {"test_docker.py": user},
                          env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "CHALK_REQUIRE_DOCKER": "1"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "CHALK_REQUIRE_DOCKER=1 but no Docker engine" in out.stdout


@pytest.mark.parametrize("ini, message", [
    ("chalkd_scope = forever", "chalkd_scope must be one of session, package, module, class, function, got 'forever'"),
    ("chalkd_args = --runtime docker", "chalkd_args may not set --runtime, --port or --home"),
])
def test_bad_settings_are_named(tmp_path, ini, message):
    user = """
        def test_x(chalkd):
            pass
    """
    out = run_user_pytest(tmp_path, {"pytest.ini": f"[pytest]\n{ini}\n", "test_x.py": user})
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_extra_serve_arguments_reach_the_daemon(tmp_path):
    user = """
        def test_args(chalkd):
            assert chalkd.extra_args[-2:] == ("--cancel-grace", "1")
            assert chalkd.proc.args[-2:] == ["--cancel-grace", "1"]
    """
    out = run_user_pytest(tmp_path, {"pytest.ini": "[pytest]\nchalkd_args = --cancel-grace 1\n",
                                     "test_args.py": user})
    assert out.returncode == 0, out.stdout + out.stderr
