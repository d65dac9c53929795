"""Sandboxes outlive the daemon: SIGTERM and kill -9 leave them running, a restart re-adopts them, and an
exec in flight is reattached by its session id with nothing lost or repeated."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from chalkcompute import Image, Sandbox, SandboxClient, SandboxNotFoundError
from tests.conftest import Daemon
from tests.docker.conftest import remove_home_containers

pytestmark = [pytest.mark.usefixtures("docker_engine"), pytest.mark.timeout(600)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _running(name_filter: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=dev.chalkd.sandbox={name_filter}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_kill9_and_sigterm_restarts_keep_sandboxes_and_execs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    try:
        client = SandboxClient()
        sb = client.create(image=Image.debian_slim(PY), name="survivor", lifetime="1h")
        expires = sb.info.expires_at
        proc = sb.exec_start("sh", "-c", "echo before; read x; echo after-$x; read y; echo end-$y")
        events = iter(proc)
        assert next(events).pid == proc.pid
        assert next(events).stdout == "before\n"

        d.kill9()
        assert _running(sb.id), "kill -9 of the daemon must leave the sandbox running"
        d.start()
        # The SDK reattached by itself (the stream broke): the write waits for the new stream.
        proc.write_stdin("one\n")
        assert next(events).stdout == "after-one\n"

        d.stop()  # SIGTERM: replicas stop, sandboxes do not
        assert _running(sb.id)
        d.start()
        proc.write_stdin("two\n")
        proc.close_stdin()
        rest = list(events)
        assert [e.stdout for e in rest if e.stdout] == ["end-two\n"]
        result = proc.wait()
        assert result.exit_code == 0
        assert result.stdout_text == "before\nafter-one\nend-two\n"  # nothing lost, nothing twice

        again = Sandbox.from_id(sb.id)
        assert again.info.status == "ready" and again.info.expires_at == expires  # the lifetime keeps counting
        assert again.exec("echo", "new").stdout_text == "new\n"
        assert Sandbox.from_name("survivor").id == sb.id
        again.terminate(0)
        assert not _running(sb.id)
    finally:
        d.stop()
        remove_home_containers(home)


def test_a_labelled_container_without_a_record_is_removed_and_a_building_one_ends(tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    try:
        sb = SandboxClient().create(image=Image.debian_slim(PY))
        d.kill9()
        # Forget the record: the container is now an orphan of this home.
        import sqlite3

        db = sqlite3.connect(home / "chalkd.db")
        db.execute("DELETE FROM sandboxes WHERE id = ?", (sb.id,))
        db.commit()
        db.close()
        d.start()
        assert not _running(sb.id)
        with pytest.raises(SandboxNotFoundError):
            Sandbox.from_id(sb.id)
    finally:
        d.stop()
        remove_home_containers(home)


def test_a_sandbox_past_its_disk_limit_is_terminated(tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = Daemon(home, extra_args=("--runtime", "docker", "--sandbox-disk", "64MiB",
                                 "--sandbox-disk-check-interval", "0.5")).start()
    monkeypatch.setenv("CHALK_COMPUTE_TARGET", d.target)
    try:
        sb = SandboxClient().create(image=Image.debian_slim(PY))
        assert "bytes" in sb.info.isolation["disk"]
        sb.exec("sh", "-c", "head -c 100000000 /dev/zero > /big.bin")
        deadline = time.monotonic() + 60
        while sb.refresh().status == "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sb.info.status == "terminated"
        assert "disk limit" in sb.info.status_message
    finally:
        d.stop()
        remove_home_containers(home)
