"""Values on the command line are visible to `ps`: the CLI says so, and the safe ways stay quiet."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def chalkd(daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, input=input)


def test_secret_value_on_the_command_line_warns(daemon):
    out = chalkd(daemon, "secret", "set", "WARNED_SECRET", "--value", "cmdline-value")
    assert out.returncode == 0, out.stderr
    assert "warning: values in --value are on the command line" in out.stderr and "`ps`" in out.stderr
    assert "cmdline-value" not in out.stderr + out.stdout
    quiet = chalkd(daemon, "secret", "set", "QUIET_SECRET", input="stdin-value\n")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


def test_integration_pairs_warn_and_env_file_does_not(daemon, tmp_path):
    out = chalkd(daemon, "integration", "set", "warned_integ", "HOST=db")
    assert out.returncode == 0, out.stderr
    assert "warning: values in KEY=VALUE arguments are on the command line" in out.stderr
    assert "--from-env-file" in out.stderr
    env_file = tmp_path / "pg.env"
    env_file.write_text("export HOST=db\nPASSWORD='pw'\n")
    quiet = chalkd(daemon, "integration", "set", "quiet_integ", "--from-env-file", str(env_file))
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    assert "HOST, PASSWORD" in quiet.stdout
