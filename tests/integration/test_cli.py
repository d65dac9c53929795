"""The chalkd command line against a real daemon."""

from __future__ import annotations

import os
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


@chalkcompute.function(options={"team": "search", "tier": "gold"})
def cli_with_options(x: int) -> int:
    return x


def test_options_are_stored_and_shown_by_info_and_functions(daemon):
    """options= is not interpreted, but kept with the version and shown back."""
    assert cli_with_options(1) == 1
    assert cli_with_options.info.options == {"team": "search", "tier": "gold"}
    wide = dict(os.environ, COLUMNS="250")
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "functions", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=wide)
    assert out.returncode == 0, out.stderr
    assert "OPTIONS" in out.stdout
    row = next(line for line in out.stdout.splitlines() if "cli_with_options" in line)
    assert "team=search tier=gold" in row


def test_status_without_a_daemon():
    out = chalkd("status", "--target", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "no daemon answers" in out.stderr


@pytest.mark.parametrize("args, message", [
    (("--build-ca-bundle", "/no/such/ca.pem"), "--build-ca-bundle '/no/such/ca.pem' is not a file"),
    (("--pids-limit", "3"), "--pids-limit must be at least 16"),
    (("--host", "0.0.0.0"), "needs TLS (--tls-cert and --tls-key)"),
])
def test_serve_refuses_what_it_cannot_do(tmp_path, args, message):
    out = chalkd("serve", "--home", str(tmp_path), "--port", str(free_port()), *args)
    assert out.returncode == 2
    assert message in out.stderr


def test_serve_docker_without_an_engine_says_so(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "chalkd.cli", "serve", "--home", str(tmp_path), "--port", str(free_port()),
         "--runtime", "docker"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert out.returncode == 1
    assert f"--runtime docker: no Docker engine answers at unix://{tmp_path}/no-engine.sock" in out.stderr
    assert "Traceback" not in out.stderr
