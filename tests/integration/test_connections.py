"""Connections against a real daemon (chalkd.connections): unauthenticated and idle ones are closed,
unauthenticated ones are capped per peer, and the daemon lifts its own fd limit."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from grpclib.client import Channel

from chalkcompute import _auth
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import FunctionCatalogStub
from tests.conftest import ROOT, Daemon

pytestmark = pytest.mark.timeout(180)


def _nofile(soft: int, hard: int):
    def preexec() -> None:  # in the daemon's process, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def _limits(pid: int) -> tuple[int, int]:
    """The soft and hard open-file limits of a process, as the kernel reports them."""
    text = Path(f"/proc/{pid}/limits").read_text()
    m = re.search(r"Max open files\s+(\d+)\s+(\d+)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def _raw(port: int) -> socket.socket:
    """A TCP connection that sends nothing."""
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _accepted(s: socket.socket) -> None:
    """Wait until the daemon has taken the connection (it speaks first: its HTTP/2 SETTINGS)."""
    assert s.recv(65536), "the daemon closed the connection at once"


def _wait_eof(s: socket.socket, timeout: float = 60) -> None:
    """Read until the daemon closes the connection (EOF or reset); fail if it stays open ``timeout``."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass


def _open_now(s: socket.socket) -> bool:
    """True when the daemon has not closed ``s`` (nothing or only data waiting, no EOF)."""
    s.setblocking(False)
    try:
        while True:
            if not s.recv(65536):
                return False
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        s.setblocking(True)


async def _status(channel: Channel) -> pb.StatusResponse:
    return await FunctionCatalogStub(channel).Status(pb.StatusRequest(), timeout=30)


def _authenticated_channel(d: Daemon) -> Channel:
    channel = Channel("127.0.0.1", d.port)
    _auth.SessionCredentials(d.target, (d.home / "token").read_text().strip()).attach(channel)
    return channel


CALLER = textwrap.dedent("""
    import chalkcompute

    @chalkcompute.function
    def add(x: int, y: int) -> int:
        return x + y

    add.wait_ready()
    print("RESULT", [add(i, 1) for i in range(3)], flush=True)
""")


def test_idle_tcp_flood_does_not_shut_callers_out_with_256_fds(tmp_path):
    # ulimit -n 256 for the daemon (soft and hard): it cannot raise it, and says so.
    d = Daemon(tmp_path / "home", extra_args=("--auth-timeout", "1"), preexec_fn=_nofile(256, 256)).start()
    flood: list[socket.socket] = []
    try:
        assert _limits(d.proc.pid) == (256, 256)
        assert "at most 256 files and connections open" in d.log() and "ulimit -Hn" in d.log()
        flood = [_raw(d.port) for _ in range(300)]  # as another user would: connect, say nothing
        caller = tmp_path / "caller.py"  # a file: the SDK ships functions' source
        caller.write_text(CALLER)
        run = subprocess.run([sys.executable, str(caller)], capture_output=True, text=True, timeout=150,
                             cwd=ROOT, env={**_env_without_token(), "CHALK_COMPUTE_TARGET": d.target})
        assert run.returncode == 0 and "RESULT [1, 2, 3]" in run.stdout, run.stderr[-3000:] + d.log()[-3000:]
        for s in flood:  # every silent connection is closed: by the cap at once, or after --auth-timeout
            _wait_eof(s)
        # ...and the daemon still answers.
        async def again() -> str:
            channel = _authenticated_channel(d)
            try:
                return (await _status(channel)).version
            finally:
                channel.close()
        assert asyncio.run(again())
    finally:
        for s in flood:
            s.close()
        d.stop()


def _env_without_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CHALK_COMPUTE_TOKEN", "CHALKD_HOME")}


def test_idle_connection_closed_and_the_client_reconnects(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--idle-timeout", "1")).start()

    async def run() -> None:
        channel = _authenticated_channel(d)
        try:
            await _status(channel)
            first = channel._protocol
            assert first is not None
            closed = asyncio.get_running_loop().create_future()
            lost = first.connection_lost

            def on_lost(exc: BaseException | None) -> None:
                lost(exc)
                if not closed.done():
                    closed.set_result(exc)

            first.connection_lost = on_lost  # type: ignore[method-assign]
            await asyncio.wait_for(closed, 60)  # the daemon closed the idle connection
            # The next RPC opens a new connection and handshakes again, by itself.
            assert (await _status(channel)).version
            assert channel._protocol is not first
        finally:
            channel.close()

    try:
        asyncio.run(run())
    finally:
        d.stop()


def test_unauthenticated_connections_capped_per_peer_newest_admitted(tmp_path):
    d = Daemon(tmp_path / "home", extra_args=("--max-unauthenticated-per-peer", "3", "--auth-timeout", "120")).start()
    socks: list[socket.socket] = []
    try:
        for _ in range(5):
            s = _raw(d.port)
            _accepted(s)
            socks.append(s)
        # The cap is 3 for 127.0.0.1: the two oldest made room for the newer ones.
        _wait_eof(socks[0])
        _wait_eof(socks[1])
        assert [_open_now(s) for s in socks[2:]] == [True, True, True]

        # A caller with the token is admitted (it closes the oldest silent one) and, once authenticated,
        # is not counted: three more silent connections do not close it.
        async def caller() -> None:
            channel = _authenticated_channel(d)
            try:
                await _status(channel)
                _wait_eof(socks[2])
                for _ in range(3):
                    s = _raw(d.port)
                    _accepted(s)
                    socks.append(s)
                _wait_eof(socks[3])  # the silent ones made room among themselves
                assert (await _status(channel)).version
                assert _open_now(socks[-1])
            finally:
                channel.close()

        asyncio.run(caller())
    finally:
        for s in socks:
            s.close()
        d.stop()


def test_fd_limit_raised_to_the_hard_limit_at_start(tmp_path):
    d = Daemon(tmp_path / "home", preexec_fn=_nofile(256, 8192)).start()
    try:
        assert _limits(d.proc.pid) == (8192, 8192)
        assert "files and connections open" not in d.log()  # 8192 is not low: no warning
    finally:
        d.stop()
