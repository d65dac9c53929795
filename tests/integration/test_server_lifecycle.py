"""The daemon's lifecycle: a start that fails half-way exits non-zero and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chalkd.config import Config
from chalkd.server import Server, StartupError, bind_socket
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

DEAD_ENGINE = "unix:///nonexistent/chalkd-test-docker.sock"


def serve(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", "serve", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=45, cwd=ROOT, env={**os.environ, **(env or {})})


def assert_port_free(port: int) -> None:
    sock = bind_socket("127.0.0.1", port)  # raises EADDRINUSE while anything still listens there
    sock.close()


def assert_store_closed(home: Path) -> None:
    """The database can be opened and written by someone else: no writer, no lock held."""
    db = home / "chalkd.db"
    assert db.exists(), "the start should have got as far as opening the store"
    conn = sqlite3.connect(db, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")  # fails at once with 'database is locked' if a writer is left
        conn.execute("CREATE TABLE lifecycle_probe (x)")
        conn.rollback()
    finally:
        conn.close()


def test_taken_port_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = serve(tmp_path / "home", "--port", str(port), "--runtime", "process")
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "home" / "chalkd.db").exists()  # the port is bound before the store is opened


def test_unreachable_docker_engine_exits_non_zero_and_unwinds(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    out = serve(home, "--port", str(port), "--runtime", "docker", env={"DOCKER_HOST": DEAD_ENGINE})
    assert out.returncode == 1, out.stderr
    assert "--runtime docker: no Docker engine answers at " + DEAD_ENGINE in out.stderr
    assert "Traceback" not in out.stderr
    assert_port_free(port)
    assert_store_closed(home)


def test_failed_start_in_process_leaves_no_task_socket_store_or_signal_handler(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    os.environ["DOCKER_HOST"], saved = DEAD_ENGINE, os.environ.get("DOCKER_HOST")

    async def main() -> set[asyncio.Task]:
        server = Server(Config(host="127.0.0.1", port=port, home=home, runtime="docker"))
        with pytest.raises(StartupError, match="no Docker engine answers"):
            await server.startup()
        await server.shutdown()  # nothing left to close: a no-op
        return asyncio.all_tasks() - {asyncio.current_task()}

    try:
        left = asyncio.run(main())
    finally:
        if saved is None:
            del os.environ["DOCKER_HOST"]
        else:
            os.environ["DOCKER_HOST"] = saved
    assert left == set()
    assert_port_free(port)
    assert_store_closed(home)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_serve_stops_on_request_and_restores_signal_handlers(tmp_path: Path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    home = tmp_path / "home"

    async def main() -> tuple[int, set[asyncio.Task]]:
        server = Server(Config(host="127.0.0.1", port=0, home=home, runtime="process"))
        await server.startup()
        assert set(server.services) >= {"catalog", "queue", "worker", "volumes", "secrets", "auth"}
        port = server.port
        assert port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening on the socket we bound
        loop = asyncio.get_running_loop()
        loop.call_soon(server.request_stop)
        await server.main_loop()
        await server.shutdown()
        return port, asyncio.all_tasks() - {asyncio.current_task()}

    port, left = asyncio.run(main())
    assert left == set()
    assert_port_free(port)
    assert_store_closed(home)
    assert {sig: signal.getsignal(sig) for sig in before} == before
