"""The runtime wheel (what images get of chalkcompute) is accepted by pip and imports.

It is assembled from the installed package's files, so this works from any
install; pip checks the wheel's RECORD hashes and sizes as it installs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chalkd.images import runtime_dist


@pytest.mark.timeout(120)
def test_pip_installs_the_assembled_wheel_and_the_worker_imports(tmp_path: Path) -> None:
    snapshot = runtime_dist._snapshot()
    name, data = runtime_dist.wheel_bytes(snapshot, "0.1.0", ">=3.11")
    wheel = tmp_path / name
    wheel.write_bytes(data)
    target = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                          "--target", str(target), str(wheel)], capture_output=True, text=True, env=env,
                         timeout=100, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (target / "chalkcompute" / "worker" / "__main__.py").is_file()
    assert (target / "chalkd-0.1.0.dist-info" / "RECORD").is_file()
    # Run from tmp_path with the target first: the checkout's chalkcompute must not be the one found.
    probe = ("import chalkcompute, chalkcompute.worker, importlib.metadata as m; "
             "print(chalkcompute.__file__); print(m.version('chalkd'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    where, version = out.stdout.split()
    assert Path(where).is_relative_to(target)
    assert version == "0.1.0"
