"""Shared by the benchmarks: a chalkd of their own, as the tests start one.

    daemon = start_daemon("--durability", "full")   # a temp home, a free port, the SDK pointed at it
    ...
    daemon.stop()
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon  # noqa: E402  (the same daemon harness the tests use)


def start_daemon(*extra_args: str, prefix: str = "chalkd-bench-") -> Daemon:
    """Start ``chalkd serve`` (process runtime, warnings only in its log) on a temporary home and
    point this process's SDK at it (no registration at exit: the daemon goes with the run)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    daemon = Daemon(home, extra_args=("--log-level", "WARNING", *extra_args)).start()
    os.environ["CHALK_COMPUTE_TARGET"] = daemon.target
    os.environ["CHALK_REGISTER_AT_EXIT"] = "0"
    return daemon
