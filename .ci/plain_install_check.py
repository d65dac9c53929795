"""CI: one Docker function through a chalkd installed from its wheel alone.

`.ci/run` builds chalkd's wheel, installs it by itself in a fresh ``python3 -m venv``
(the bundled setuptools, no test extras, no source checkout on the path), starts
``chalkd serve --runtime docker`` from that venv and runs this script with the
venv's python. It uses only the SDK; the target and the token come from the
environment (``CHALK_COMPUTE_TARGET``, ``CHALKD_HOME``) as a user's would.

Example::

    CHALK_COMPUTE_TARGET=127.0.0.1:50999 CHALKD_HOME=/tmp/h /tmp/plain/bin/python .ci/plain_install_check.py
"""

from __future__ import annotations

import sys

import chalkcompute


@chalkcompute.function(timeout=300)
def where(x: int) -> dict:
    import os

    import chalkcompute as sdk

    # /.dockerenv: it ran in a container; the package path: the runtime layer installed it there.
    return {"double": 2 * x, "in_docker": os.path.exists("/.dockerenv"), "sdk": os.path.dirname(sdk.__file__)}


def main() -> int:
    if "site-packages" not in chalkcompute.__file__:
        print(f"plain install check: chalkcompute comes from {chalkcompute.__file__}, not the venv", file=sys.stderr)
        return 1
    got = where(21)
    print(f"plain install check: {got}")
    if got["double"] != 42 or not got["in_docker"]:
        print("plain install check: FAILED (expected double=42 run in a Docker container)", file=sys.stderr)
        return 1
    print("plain install check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
