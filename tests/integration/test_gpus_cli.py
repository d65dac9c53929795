"""``chalkd gpus``: this host's GPU inventory, with and without CHALKD_FAKE_GPUS (no daemon needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chalkd.gpus import probe_gpus
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def chalkd_gpus(fake: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CHALKD_FAKE_GPUS", None)
    if fake is not None:
        env["CHALKD_FAKE_GPUS"] = fake
    env["COLUMNS"] = "200"   # keep table rows on one line each, so they can be matched
    return subprocess.run([sys.executable, "-m", "chalkd.cli", "gpus"], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=env)


def test_gpus_lists_a_fake_inventory():
    fake = [
        {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-0b1e4e3c-5a0d-6c1f-9a7e-1234567890ab",
         "memory_bytes": 80 * 2**30},
        {"name": "NVIDIA L4", "uuid": "GPU-fake-1", "memory_bytes": 24000000000},
    ]
    out = chalkd_gpus(json.dumps(fake))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    a100 = next(line for line in lines if "GPU-0b1e4e3c-5a0d-6c1f-9a7e-1234567890ab" in line)
    assert "NVIDIA A100-SXM4-80GB" in a100 and "80.0 GiB" in a100 and " 0 " in a100
    l4 = next(line for line in lines if "GPU-fake-1" in line)
    assert "NVIDIA L4" in l4 and "22.4 GiB" in l4 and " 1 " in l4
    assert "2 GPU(s): fake inventory from CHALKD_FAKE_GPUS" in out.stdout


def test_gpus_fake_from_a_file(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps([{"name": "Tesla T4"}]))
    out = chalkd_gpus(str(path))
    assert out.returncode == 0, out.stderr
    assert "Tesla T4" in out.stdout and "GPU-fake-0" in out.stdout and str(path) in out.stdout


def test_gpus_fake_empty():
    out = chalkd_gpus("[]")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("no GPUs found (")


def test_gpus_bad_fake_value_is_a_clear_error():
    out = chalkd_gpus('[{"name": "NVIDIA L4", "memory": 1}]')
    assert out.returncode == 2
    assert "CHALKD_FAKE_GPUS" in out.stderr and "unknown keys ['memory']" in out.stderr
    assert "Traceback" not in out.stderr


def test_gpus_on_this_host(monkeypatch):
    monkeypatch.delenv("CHALKD_FAKE_GPUS", raising=False)
    out = chalkd_gpus(None)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    inventory = probe_gpus()
    if inventory.devices:   # a machine with GPUs lists them by UUID
        assert all(d.uuid in out.stdout for d in inventory.devices)
        assert "via NVML" in out.stdout
    else:                   # the usual CI case: no driver, no GPUs, and the reason why
        assert out.stdout.strip() == f"no GPUs found (NVML: {inventory.note})"
