"""Secrets on the Docker runtime: in the replica's environment, nowhere in its config, images or logs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chalkcompute import Container, Image, RemoteFunction, Secret
from tests.conftest import ROOT
from tests.docker.conftest import containers_of

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

VALUE = "dk-secret-8c1e-must-not-leak"


def token_and_replica() -> dict:
    import os

    return {"token": os.environ["API_TOKEN"], "replica": os.environ["CHALK_REPLICA_ID"]}


def test_a_secret_is_in_the_replica_env_and_not_in_inspect_images_or_logs(on_docker):
    subprocess.run([sys.executable, "-m", "chalkd.cli", "secret", "set", "API_TOKEN", "--target", on_docker.target],
                   input=VALUE, text=True, check=True, capture_output=True, cwd=ROOT)
    fn = RemoteFunction(token_and_replica, name="dk_secret", image=Image.debian_slim(),
                        secrets=[Secret.from_name("API_TOKEN")])
    out = fn()
    assert out["token"] == VALUE
    [c] = containers_of(on_docker.home, replica=out["replica"])
    assert VALUE not in json.dumps(c)                               # docker inspect of the replica
    image = subprocess.run(["docker", "image", "inspect", c["Config"]["Image"]], capture_output=True, text=True,
                           check=True).stdout
    history = subprocess.run(["docker", "history", "--no-trunc", c["Config"]["Image"]], capture_output=True,
                             text=True, check=True).stdout
    assert VALUE not in image and VALUE not in history                # every image layer and its config
    assert VALUE not in on_docker.log()                               # the daemon's log
    logs = subprocess.run(["docker", "logs", c["Id"]], capture_output=True, text=True).stdout
    assert VALUE not in logs


def test_a_container_gets_its_secrets_through_the_agent(monkeypatch):
    monkeypatch.setenv("LOCAL_DK_SECRET", "local-dk-value-77")
    c = Container(image=Image.debian_slim(), name="secret-container",
                  secrets=[Secret.from_local_env("LOCAL_DK_SECRET", env_var_name="INSIDE")]).run()
    try:
        assert c.exec("sh", "-c", "echo $INSIDE").stdout_text == "local-dk-value-77\n"
        inspect = subprocess.run(["docker", "inspect", c.info.pod_name], capture_output=True, text=True).stdout
        assert "local-dk-value-77" not in inspect
    finally:
        c.stop()
