"""The Container API on the Docker runtime, as the reference shows it."""

from __future__ import annotations

import pytest

from chalkcompute import Container, ContainerError, Image, ImageBuildError

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]


def test_run_exec_stop(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("print('hello')\n")
    img = Image.debian_slim().add_local_file(script, "/app/script.py")
    c = Container(image=img, name="hello-container", cpu="1", memory="512Mi", env={"LOG_LEVEL": "INFO"}).run()
    try:
        assert c.info.status == "Running"
        assert c.info.name == "hello-container"
        assert c.info.pod_name.startswith("chalkd-hello-container")
        assert c.info.web_url is None  # nothing is published: None, as the reference says, not ""
        assert c.image_uri and c.image_uri.startswith("chalkd-img:")
        result = c.exec("python", "/app/script.py")
        assert (result.exit_code, result.stdout_text) == (0, "hello\n")
        assert list(result.stdout) == ["hello\n"]
        err = c.exec("ls", "/does-not-exist")
        assert err.exit_code == 2
        assert err.stderr_text == "ls: cannot access '/does-not-exist': No such file or directory\n"
        env = c.exec("sh", "-c", "echo $LOG_LEVEL")
        assert env.stdout_text == "INFO\n"
        same = Container.from_name("hello-container")
        assert same.id == c.id and same.info.status == "Running"
        assert Container.from_id(c.id).exec("echo", "again").stdout_text == "again\n"
    finally:
        c.stop()
    assert c.info.status == "Stopped"
    assert c.refresh_info().status == "Stopped"
    with pytest.raises(ContainerError, match="not running"):
        c.exec("true")


def test_exec_timeout_and_missing_program():
    c = Container(image=Image.debian_slim(), name="exec-edge").run()
    try:
        slow = c.exec("sleep", "30", timeout=0.5)
        assert slow.exit_code is None and "timed out" in (slow.error or "")
        missing = c.exec("no-such-program")
        assert missing.exit_code != 0 and "no-such-program" in (missing.error or missing.stderr_text)
    finally:
        c.stop(grace_period=1)


def test_string_image_reference_and_async_twins():
    import asyncio

    async def main():
        c = Container(image="python:3.11-slim")
        await c.run.aio()
        try:
            assert c.image_uri == "python:3.11-slim"
            out = await c.exec.aio("python3", "-c", "print(6 * 7)")
            assert out.stdout_text == "42\n"
        finally:
            await c.stop.aio()

    asyncio.run(main())


def test_lookup_of_unknown_container_raises():
    with pytest.raises(ContainerError):
        Container.from_name("never-made")
    with pytest.raises(ContainerError):
        Container.from_id("ct-000000000000")


def test_failed_build_raises_image_build_error():
    with pytest.raises(ImageBuildError) as info:
        Container(image=Image.debian_slim().run_commands("exit 7")).run()
    assert isinstance(info.value, ContainerError)
    assert "exit 7" in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cpu"):
        Container(image=Image.debian_slim(), cpu="lots")
    with pytest.raises(TypeError, match="image"):
        Container(image=42)
    with pytest.raises(ValueError, match="DNS-safe"):
        Container(image=Image.debian_slim(), name="Not DNS Safe")
