"""Shared fixtures: a real chalkd on a free port with a temporary home."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chalkd.testing import Daemon as _Daemon
from chalkd.testing import free_port  # noqa: F401  (tests import it from here)

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


class Daemon(_Daemon):
    """:class:`chalkd.testing.Daemon` (the plugin's fixture object), run from the repository root."""

    def __init__(self, home: Path, port: int | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, preexec_fn=None) -> None:
        super().__init__(home, port, extra_args, env, preexec_fn, cwd=ROOT)


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
