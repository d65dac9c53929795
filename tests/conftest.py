"""Shared fixtures: a real chalkd on a free port with a temporary home."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Decorated test functions must not register themselves at interpreter exit.
os.environ.setdefault("CHALK_REGISTER_AT_EXIT", "0")
# A test's daemon dies with its test: reconnecting for a minute would only slow failures down.
os.environ.setdefault("CHALK_RECONNECT_TIMEOUT", "20")
# Many daemons run at once (other test sessions too): each takes a free HTTP port, not the default 50052.
os.environ.setdefault("CHALKD_HTTP_PORT", "0")

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll a condition that another process makes true (a file appearing, a count changing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A `chalkd serve` subprocess; restartable on the same port and home."""

    def __init__(self, home: Path, port: int | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, preexec_fn=None) -> None:
        self.home = home
        self.preexec_fn = preexec_fn  # e.g. lower the daemon's rlimits (run in the child before exec)
        self.env = env
        self.port = port or free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.log_path = home / "daemon.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chalkd.cli", "serve", "--port", str(self.port), "--home", str(self.home),
                 "--heartbeat-timeout", "5",
                 # Pinned: `auto` would pick Docker on a machine with an engine and the base image.
                 *(() if "--runtime" in self.extra_args else ("--runtime", "process")), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, **self.env} if self.env else None, preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chalkd exited with {self.proc.returncode}:\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"chalkd did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """One daemon for the whole session; the SDK's default target points at it."""
    d = Daemon(tmp_path_factory.mktemp("chalkd-home")).start()
    old = os.environ.get("CHALK_COMPUTE_TARGET")
    os.environ["CHALK_COMPUTE_TARGET"] = d.target
    yield d
    if old is None:
        os.environ.pop("CHALK_COMPUTE_TARGET", None)
    else:
        os.environ["CHALK_COMPUTE_TARGET"] = old
    d.stop()


@pytest.fixture
def fresh_daemon(tmp_path):
    """A daemon of the test's own (for tests that kill or restart it)."""
    d = Daemon(tmp_path / "home").start()
    yield d
    d.stop()
