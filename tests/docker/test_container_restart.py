"""Container API containers outlive the daemon: SIGTERM and kill -9 leave them running, a restart re-adopts
them (exec works, local secrets are still theirs), and a labelled container with no record is removed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalkcompute import Container, ContainerError, Image, Secret
from chalkd.services.fastpath import run_dir
from tests.conftest import Daemon, wait_for
from tests.docker.conftest import remove_home_containers

pytestmark = [pytest.mark.usefixtures("docker_engine"), pytest.mark.timeout(600)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _running(container_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=dev.chalkd.container={container_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def _existing(container_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=dev.chalkd.container={container_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def _owned_secret_names(home, owner: str) -> list[str]:
    """The names of ``owner``'s local secrets in the database (read while the daemon is down: it locks it)."""
    db = sqlite3.connect(home / "chalkd.db")
    try:
        return sorted(r[0] for r in db.execute("SELECT name FROM secrets WHERE owner = ?", (owner,)))
    finally:
        db.close()


def test_kill9_and_sigterm_restarts_keep_containers(tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    monkeypatch.setenv("RESTART_TEST_TOKEN", "s3cret")
    try:
        c = Container(image=Image.debian_slim(PY), name="survivor", env={"MODE": "kept"},
                      secrets=[Secret.from_local_env("RESTART_TEST_TOKEN", env_var_name="TOKEN")]).run()
        assert c.info.status == "Running"
        # State on the container's writable layer: a re-adopted container is the same one, not a new one.
        c.exec("sh", "-c", "echo before > /tmp/state")

        d.kill9()
        assert _running(c.id), "kill -9 of the daemon must leave the container running"
        d.start()
        again = Container.from_name("survivor")
        assert again.id == c.id and again.info.status == "Running"
        assert again.exec("cat", "/tmp/state").stdout_text == "before\n"
        assert again.exec("sh", "-c", "echo $MODE $TOKEN").stdout_text == "kept s3cret\n"

        d.stop()  # SIGTERM: replicas stop, containers do not
        assert _running(c.id), "SIGTERM of the daemon must leave the container running"
        assert _owned_secret_names(home, c.id) == ["TOKEN"]  # stored, so stop() can still remove them
        d.start()
        same = Container.from_id(c.id)
        assert same.info.status == "Running"
        assert same.exec("cat", "/tmp/state").stdout_text == "before\n"
        same.stop()
        assert same.info.status == "Stopped"
        assert not _existing(c.id)
        with pytest.raises(ContainerError, match="not running"):
            same.exec("true")

        d.stop()
        assert _owned_secret_names(home, c.id) == []  # its local secrets went with it
        d.start()  # a stopped container is remembered as such across a restart
        assert Container.from_id(c.id).info.status == "Stopped"
    finally:
        d.stop()
        remove_home_containers(home)


def test_a_labelled_container_without_a_record_is_removed(tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    try:
        orphan = Container(image=Image.debian_slim(PY), name="orphan").run()
        kept = Container(image=Image.debian_slim(PY), name="kept").run()
        d.kill9()
        # Forget one record: its container is now an orphan of this home.
        db = sqlite3.connect(home / "chalkd.db")
        db.execute("DELETE FROM containers WHERE id = ?", (orphan.id,))
        db.commit()
        db.close()
        d.start()
        assert not _existing(orphan.id)
        with pytest.raises(ContainerError):
            Container.from_id(orphan.id)
        assert _running(kept.id)
        assert Container.from_name("kept").exec("echo", "hi").stdout_text == "hi\n"
    finally:
        d.stop()
        remove_home_containers(home)


def test_a_container_gone_or_with_a_swapped_agent_socket_is_failed_with_the_reason(tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    try:
        c = Container(image=Image.debian_slim(PY), name="gone").run()
        swapped = Container(image=Image.debian_slim(PY), name="swapped").run()
        exited = Container(image=Image.debian_slim(PY), name="exited").run()
        d.stop()
        subprocess.run(["docker", "rm", "-f", *_existing(c.id)], capture_output=True, check=True)
        subprocess.run(["docker", "kill", *_existing(exited.id)], capture_output=True, check=True)
        # What a container could do to its bind-mounted agent directory while the daemon is down: the
        # re-dial goes through the checked connect, which never follows a symbolic link.
        agent_dir = run_dir(home) / "agents" / swapped.id
        (agent_dir / "agent.sock").rename(agent_dir / "real.sock")
        (agent_dir / "agent.sock").symlink_to(agent_dir / "real.sock")
        d.start()
        info = Container.from_id(c.id).info
        assert info.status == "Failed"
        assert "was gone when chalkd restarted" in (info.error or "")
        info = Container.from_id(exited.id).info
        assert info.status == "Failed"
        assert "its engine container had stopped (Exited (137)" in (info.error or "")
        assert not _existing(exited.id)  # removed, like any labelled container without a Running record
        info = Container.from_id(swapped.id).info
        assert info.status == "Failed"
        assert "its agent did not answer after chalkd restarted" in (info.error or "")
        assert "symbolic link" in (info.error or "")
        assert not _existing(swapped.id) and not agent_dir.exists()
        # The name is free again.
        fresh = Container(image=Image.debian_slim(PY), name="gone").run()
        assert fresh.id != c.id and Container.from_name("gone").id == fresh.id
        fresh.stop()
    finally:
        d.stop()
        remove_home_containers(home)


def _stalling_image() -> Image:
    # A python3 ahead of the real one on the container's PATH that never answers: the agent never
    # comes up, so the container stays Pending (for start_timeout) while the daemon goes down.
    return Image.debian_slim(PY).run_commands(
        "mkdir /stall && printf '#!/bin/sh\\nexec sleep 3600\\n' > /stall/python3 && chmod +x /stall/python3")


def _wait_for_engine_container(name: str, home) -> str:
    deadline = time.monotonic() + 300  # the image builds first
    while time.monotonic() < deadline:
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=dev.chalkd.home={home.resolve()}",
                              "--filter", f"label=dev.chalkd.name={name}"], capture_output=True, text=True)
        if out.stdout.split():
            return out.stdout.split()[0]
        time.sleep(0.2)
    raise AssertionError(f"no engine container for {name!r} appeared")


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_a_container_pending_when_the_daemon_goes_down_ends_failed_and_is_removed(tmp_path, monkeypatch, how):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    pool = ThreadPoolExecutor(1)
    try:
        c = Container(image=_stalling_image(), name="stalled",
                      env={"PATH": "/stall:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"})
        running = pool.submit(c.run, start_timeout=300)
        engine_id = _wait_for_engine_container("stalled", home)
        # The engine's container exists a moment before the Create answer reaches run()'s thread.
        wait_for(lambda: c.id is not None and c.info is not None, what="run() to have its container's id")
        assert c.info is not None and c.info.status == "Pending"
        d.stop() if how == "sigterm" else d.kill9()
        gone = subprocess.run(["docker", "ps", "-aq", "--filter", f"id={engine_id}"], capture_output=True,
                              text=True).stdout.split()
        if how == "sigterm":
            assert not gone, "a Pending container cannot be re-adopted: SIGTERM removes it"
        d.start()
        assert not _existing(c.id)
        info = Container.from_id(c.id).info
        assert info.status == "Failed"
        verb = "stopped" if how == "sigterm" else "restarted"
        assert f"chalkd {verb} while it was starting" in (info.error or "")
        with pytest.raises(ContainerError):  # the run() in flight lost its daemon
            running.result(timeout=120)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        d.stop()
        remove_home_containers(home)
