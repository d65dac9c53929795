"""The daemon checks an agent socket before connecting: the agent directory is
writable from inside the container, so whatever sits there may be a trap (a
symlink to one of the daemon's own sockets, a FIFO, someone else's socket)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from chalkd.containers.agent_client import AgentSocketRefused, AgentUnavailableError, agent_status

pytestmark = pytest.mark.timeout(30)


def _status(path):
    return asyncio.run(agent_status(path))


@pytest.fixture
def daemon_side_socket(tmp_path):
    """A listening socket the daemon can reach that is not an agent (e.g. chalkd.sock)."""
    path = tmp_path / "daemon-side.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    yield path
    srv.close()


def test_a_symlink_to_a_daemon_side_socket_is_refused(tmp_path, daemon_side_socket):
    agent_dir = tmp_path / "agents" / "ct-1"
    agent_dir.mkdir(parents=True)
    (agent_dir / "agent.sock").symlink_to(daemon_side_socket)
    with pytest.raises(AgentSocketRefused, match=r"agent\.sock: it is a symbolic link .*never follows"):
        _status(agent_dir / "agent.sock")


def test_a_symlinked_agent_directory_is_refused(tmp_path, daemon_side_socket):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "ct-1").symlink_to(tmp_path)
    with pytest.raises(AgentSocketRefused, match="is not a plain directory"):
        _status(tmp_path / "agents" / "ct-1" / "daemon-side.sock")


def test_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "agent.sock")
    with pytest.raises(AgentSocketRefused, match="it is not a socket"):
        _status(tmp_path / "agent.sock")


@pytest.mark.skipif(os.getuid() != 0, reason="making a socket owned by another uid needs root")
def test_a_socket_of_another_owner_is_refused(tmp_path, daemon_side_socket):
    os.chown(daemon_side_socket, 4242, 4242)
    with pytest.raises(AgentSocketRefused, match="owned by uid 4242"):
        _status(daemon_side_socket)


def test_a_missing_socket_is_only_unavailable(tmp_path):
    with pytest.raises(AgentUnavailableError, match="no such file") as info:
        _status(tmp_path / "agent.sock")
    assert not isinstance(info.value, AgentSocketRefused)
