"""CI: a Docker function, a sandbox, a scaling group and a DataFrame query through a chalkd installed
from its wheel alone.

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


@chalkcompute.function(timeout=300)
def triple(x: int) -> int:
    return 3 * x


def main() -> int:
    if "site-packages" not in chalkcompute.__file__:
        print(f"plain install check: chalkcompute comes from {chalkcompute.__file__}, not the venv", file=sys.stderr)
        return 1
    got = where(21)
    print(f"plain install check: {got}")
    if got["double"] != 42 or not got["in_docker"]:
        print("plain install check: FAILED (expected double=42 run in a Docker container)", file=sys.stderr)
        return 1
    # A sandbox: its agent runs from the runtime the daemon extracts and the agent files of the
    # installed wheel (not a checkout), on an image built bare.
    sandbox = chalkcompute.SandboxClient().create(image=chalkcompute.Image.debian_slim())
    try:
        proc = sandbox.exec_start("sh", "-c", "cat; echo sandbox-ok >&2")
        proc.write_stdin("from stdin\n")
        proc.close_stdin()
        result = proc.wait()
        sandbox.fs.write_bytes("/tmp/plain.txt", b"plain")
        files = sandbox.fs.read_bytes("/tmp/plain.txt")
    finally:
        sandbox.terminate(0)
    print(f"plain install check: sandbox {result.exit_code} {result.stdout_text!r} {result.stderr_text!r} {files!r}")
    if (result.exit_code, result.stdout_text, result.stderr_text, files) != (
            0, "from stdin\n", "sandbox-ok\n", b"plain"):
        print("plain install check: FAILED (the sandbox's exec or files)", file=sys.stderr)
        return 1
    # A scaling group (the proxy, httpx and aiohttp from the wheel's dependencies): the stdlib's server.
    group = chalkcompute.ScalingGroup(
        image=chalkcompute.Image.debian_slim().entrypoint(["python3", "-m", "http.server", "8080"]),
        name="plain-check", port=8080).deploy()
    try:
        status = group.call("/", method="GET").status_code
    finally:
        group.delete()
    print(f"plain install check: group answered {status}")
    if status != 200:
        print("plain install check: FAILED (the scaling group's answer)", file=sys.stderr)
        return 1
    # A DataFrame query through batch calls.
    from chalkcompute import DataFrame, F, _

    table = DataFrame.from_dict({"x": [1, 2, 3]}).project({"y": F.catalog_call("triple", _.x)}).to_arrow()
    print(f"plain install check: dataframe {table.column('y').to_pylist()}")
    if table.column("y").to_pylist() != [3, 6, 9]:
        print("plain install check: FAILED (the DataFrame query)", file=sys.stderr)
        return 1
    print("plain install check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
