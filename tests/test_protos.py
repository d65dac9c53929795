"""The committed generated code matches protos/."""

import subprocess
import sys

from tests.conftest import ROOT


def test_generated_code_is_current():
    out = subprocess.run([sys.executable, "-m", "chalkd.dev.protogen", "--check"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
