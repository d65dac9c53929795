"""Least privilege for user code on the Docker runtime: no capabilities, no new
privileges, images with a non-root USER work (lazy files, volumes, the
Container API's exec), and the daemon never follows what a container planted
in its agent directory."""

from __future__ import annotations

import pytest

from chalkcompute import Container, Image, RemoteFunction, Volume, VolumeClient

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]

NO_CAPS = "0000000000000000"
USER_1000 = Image.debian_slim().run_commands("useradd -u 1000 -m app").dockerfile_commands(["USER app"])


def privileges() -> dict:
    import os

    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
    return {"uid": os.getuid(), "CapEff": status["CapEff"].strip(), "CapPrm": status["CapPrm"].strip(),
            "CapBnd": status["CapBnd"].strip(), "NoNewPrivs": status["NoNewPrivs"].strip()}


def test_a_function_has_no_capabilities_and_no_new_privileges():
    got = RemoteFunction(privileges, name="lp_caps", image=Image.debian_slim())()
    assert got == {"uid": 0, "CapEff": NO_CAPS, "CapPrm": NO_CAPS, "CapBnd": NO_CAPS, "NoNewPrivs": "1"}


def test_a_container_has_no_capabilities():
    c = Container(image=Image.debian_slim(), name="lp-caps").run()
    try:
        out = c.exec("grep", "-E", "^(CapEff|CapBnd|NoNewPrivs):", "/proc/self/status").stdout_text
    finally:
        c.stop()
    assert out.split() == ["CapEff:", NO_CAPS, "CapBnd:", NO_CAPS, "NoNewPrivs:", "1"]


def read_and_write(tag: str) -> dict:
    import os

    with open("/app/conf/settings.txt") as f:
        conf = f.read()
    os.makedirs("/data/out", exist_ok=True)
    with open(f"/data/out/{tag}.txt", "w") as f:
        f.write(f"written by uid {os.getuid()}")
    return {"uid": os.getuid(), "gid": os.getgid(), "conf": conf}


def test_a_user_1000_image_reads_a_lazy_file_and_writes_a_volume(tmp_path):
    (tmp_path / "settings.txt").write_text("lazy settings")
    image = USER_1000.add_local_file(tmp_path / "settings.txt", "/app/conf/settings.txt", strategy="volume")
    vol = VolumeClient().create("lp-user-vol")
    vol.put("from-api.txt", b"the API wrote this first")  # owned by the daemon until the mount
    fn = RemoteFunction(read_and_write, name="lp_user_1000", image=image, volumes=[(Volume("lp-user-vol"), "/data")])
    assert fn("one") == {"uid": 1000, "gid": 1000, "conf": "lazy settings"}
    assert vol.get("out/one.txt") == b"written by uid 1000"
    # The replica, not only the API, sees the file the API wrote (and may replace it).
    assert fn("two")["uid"] == 1000
    assert vol.get("out/two.txt") == b"written by uid 1000"


def test_the_container_api_works_with_a_user_1000_image():
    vol = VolumeClient().create("lp-user-ct")
    c = Container(image=USER_1000, name="lp-user-ct", volumes=[(vol, "/data")]).run()
    try:
        assert c.exec("id", "-u").stdout_text == "1000\n"
        assert c.exec("sh", "-c", "echo hi > /data/hi.txt").exit_code == 0
        assert c.exec("grep", "^CapEff:", "/proc/self/status").stdout_text.split() == ["CapEff:", NO_CAPS]
    finally:
        c.stop()
    assert vol.get("hi.txt") == b"hi\n"


def test_a_symlink_planted_as_the_agent_socket_is_refused(on_docker):
    from chalkcompute.exceptions import ContainerError
    from chalkd.services.fastpath import run_dir

    # A daemon-side socket, by its path on the host: what a container might try to make the daemon dial.
    target = run_dir(on_docker.home) / "grpc.sock"
    c = Container(image=Image.debian_slim(), name="lp-symlink").run()
    try:
        plant = c.exec("sh", "-c", f"rm /run/chalk-agent/agent.sock && ln -s {target} /run/chalk-agent/agent.sock")
        assert plant.exit_code == 0, plant.stderr_text
        with pytest.raises(ContainerError, match=r"agent\.sock: it is a symbolic link .*never follows"):
            c.exec("echo", "hi")
    finally:
        c.stop()
