"""``--registry``: chalkd pushes what it builds to a registry, and a node that never had the image pulls it.

The registry is Debian's ``docker-registry`` (distribution 2.8), run here on the lab's host address, port 5000
(the lab's engines trust it as an insecure registry). ``.ci/run`` unpacks it into ``.ci/cache`` when the machine
has no ``docker-registry``; elsewhere the test is skipped without it, unless ``CHALK_REQUIRE_SWARM=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalkcompute import Image, RemoteFunction
from chalkd.testing import _SdkPointer

pytestmark = [pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = (os.environ.get("CHALK_REGISTRY_BIN", ""), shutil.which("docker-registry") or "",
              str(REPO / ".ci" / "cache" / "docker-registry" / "usr" / "bin" / "docker-registry"))


def registry_binary() -> str | None:
    return next((c for c in CANDIDATES if c and os.access(c, os.X_OK)), None)


@pytest.fixture
def registry(swarm_lab, tmp_path) -> Iterator[str]:
    """``HOST:5000`` of a registry on the lab's host address, stopped (and its storage removed) afterwards."""
    binary = registry_binary()
    if binary is None:
        why = "no docker-registry binary (apt-get install docker-registry, or set CHALK_REGISTRY_BIN)"
        if os.environ.get("CHALK_REQUIRE_SWARM") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    addr = f"{swarm_lab.host_addr}:5000"
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                      f"http:\n  addr: {addr}\n")
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115 - the child's output, closed below
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex((swarm_lab.host_addr, 5000)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the registry did not start: {(tmp_path / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def where(x: int) -> str:
    import os

    return f"{x} {os.environ.get('CHALK_NODE')}"


def test_with_a_registry_a_node_that_never_had_the_image_pulls_it(swarm_daemon_factory, registry):
    lab = None
    # No --node-engine: the registry is the only way images reach node 2.
    d = swarm_daemon_factory(("--registry", registry), no_node_engines=True)
    lab = d.lab
    name = f"swarm_reg_{uuid.uuid4().hex[:6]}"
    fn = RemoteFunction(where, name=name, image=Image.debian_slim().env({"NONCE": uuid.uuid4().hex}),
                        node=lab.node_name(2), min_replicas=0)
    with _SdkPointer(d):
        assert fn(7) == f"7 {lab.node_name(2)}"
        images = lab.docker(2, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").split()
        pushed = [i for i in images if i.startswith(f"{registry}/chalkd-img:")]
        assert pushed, images   # node 2 ran the image by its registry name: it pulled it
        fn.delete()
