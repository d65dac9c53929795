"""Volumes mounted into functions and containers on the Docker runtime."""

from __future__ import annotations

import pytest

from chalkcompute import Container, FunctionError, Image, RemoteFunction, Volume, VolumeClient

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]


def write_weights(tag: str) -> str:
    import os

    os.makedirs("/models/run", exist_ok=True)
    with open("/models/run/weights.txt", "w") as f:
        f.write(f"weights-{tag}")
    return "written"


def read_weights() -> str:
    with open("/cache/run/weights.txt") as f:
        return f.read()


def test_a_function_writes_a_volume_another_reads_it_and_the_api_sees_it():
    client = VolumeClient()
    writer = RemoteFunction(write_weights, name="vm_writer", image=Image.debian_slim(),
                            volumes=[(Volume("vm-model-cache"), "/models")])
    reader = RemoteFunction(read_weights, name="vm_reader", image=Image.debian_slim(),
                            volumes=[("vm-model-cache", "/cache")])
    assert writer("v1") == "written"      # the volume did not exist: created at deploy
    assert reader() == "weights-v1"
    vol = client.lookup("vm-model-cache")
    assert vol.get("run/weights.txt") == b"weights-v1"
    assert [e.path for e in vol.listdir()] == ["run/weights.txt"]
    vol.remove("run/weights.txt")         # a file a container created can be removed through the API
    assert vol.listdir() == []


def test_a_container_mounts_a_volume():
    vol = VolumeClient().create("vm-shared")
    vol.put("hello.txt", b"from the API")
    c = Container(image=Image.debian_slim(), name="vm-container", volumes=[(vol, "/data")]).run()
    try:
        assert c.exec("cat", "/data/hello.txt").stdout_text == "from the API"
        assert c.exec("sh", "-c", "echo from-the-container > /data/back.txt").exit_code == 0
    finally:
        c.stop()
    assert vol.get("back.txt") == b"from-the-container\n"


def test_bad_mounts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="absolute"):
        RemoteFunction(read_weights, name="vm_bad", volumes=[("x", "relative/path")])
    with pytest.raises(ValueError, match="two volumes are mounted at '/data'"):
        RemoteFunction(read_weights, name="vm_bad", volumes=[("x", "/data"), ("y", "/data/")])
    with pytest.raises(ValueError, match="invalid volume name"):
        RemoteFunction(read_weights, name="vm_bad", volumes=[("../etc", "/data")])
    with pytest.raises(TypeError, match=r"\(volume, path\) pair"):
        RemoteFunction(read_weights, name="vm_bad", volumes=("x", "/data"))
    with pytest.raises(ValueError, match="cannot be mounted at '/'"):
        RemoteFunction(read_weights, name="vm_bad", volumes=[("x", "/")])
    local = tmp_path / "conf.txt"
    local.write_text("c")
    image = Image.debian_slim().add_local_file(local, "/data/conf.txt")
    fn = RemoteFunction(read_weights, name="vm_overlap", image=image, volumes=[("x", "/data")])
    with pytest.raises(FunctionError, match="where the image's local files are mounted too"):
        fn.deploy()
