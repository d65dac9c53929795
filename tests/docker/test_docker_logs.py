"""Call logs on the Docker runtime: the worker in a container captures per call; what it writes below
Python reaches the replica's output (issue 17)."""

from __future__ import annotations

import pytest

from chalkcompute import Image, RemoteFunction, _logs
from chalkcompute._client import Client
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from tests.conftest import wait_for

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]


def talk(x: int) -> int:
    import logging
    import subprocess

    print(f"in a container: {x}")
    logging.getLogger("dk").warning("logged %d", x)
    subprocess.run(["sh", "-c", f"echo below python {x}"], check=True)
    return x


def test_a_container_s_call_has_its_lines_and_the_replica_its_subprocess_s():
    fn = RemoteFunction(talk, name="dk_logs_talk", image=Image.debian_slim())
    call = fn.spawn(7)
    assert call.get(timeout=300) == 7
    assert call.logs() == ["in a container: 7", "WARNING dk: logged 7"]
    client = Client.get()
    (first, *_) = _logs.read_lines(client, pb.ReadLogsRequest(call_id=call.object_id))
    # The runtime copies the container's output into the replica's file as it comes: wait for the line.
    wait_for(lambda: "below python 7" in [x.text for x in _logs.read_lines(
        client, pb.ReadLogsRequest(replica_id=first.replica_id))], what="the subprocess's line in the replica log")


def test_a_function_s_image_build_log_from_chalkd_logs_build(on_docker):
    import os
    import subprocess
    import sys
    from secrets import token_hex

    marker = token_hex(6)  # a new image: this daemon builds it, so its log is this daemon's
    fn = RemoteFunction(talk, name="dk_logs_build", image=Image.debian_slim().run_commands(f"echo built-{marker}"))
    fn.deploy()
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "logs", "dk_logs_build", "--build"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CHALK_COMPUTE_TARGET": on_docker.target})
    assert out.returncode == 0, out.stderr
    assert f"built-{marker}" in out.stdout and "Step" in out.stdout
    refused = subprocess.run([sys.executable, "-m", "chalkd.cli", "logs", "dk_logs_build", "--build", "-f"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "CHALK_COMPUTE_TARGET": on_docker.target})
    assert refused.returncode == 2 and "--build takes a function's name" in refused.stderr
