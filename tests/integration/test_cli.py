"""The chalkd command line against a real daemon."""

from __future__ import annotations

import subprocess
import sys

import pytest

import chalkcompute
from tests.conftest import ROOT, free_port


def chalkd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@chalkcompute.function
def cli_echo(x: int) -> int:
    return x


def test_status_functions_calls(daemon):
    assert cli_echo(5) == 5
    out = chalkd("status", "--target", daemon.target)
    assert out.returncode == 0, out.stderr
    assert "runtime: process" in out.stdout and "durability: normal" in out.stdout
    out = chalkd("functions", "--target", daemon.target)
    assert out.returncode == 0 and "cli_echo" in out.stdout
    out = chalkd("calls", "--target", daemon.target, "--function", "cli_echo")
    assert out.returncode == 0 and "succeeded" in out.stdout


def test_status_without_a_daemon():
    out = chalkd("status", "--target", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "no daemon answers" in out.stderr


@pytest.mark.parametrize("args, message", [
    (("--runtime", "docker"), "--runtime docker is not available"),
    (("--host", "0.0.0.0"), "needs a token"),
])
def test_serve_refuses_what_it_cannot_do(tmp_path, args, message):
    out = chalkd("serve", "--home", str(tmp_path), "--port", str(free_port()), *args)
    assert out.returncode == 2
    assert message in out.stderr
