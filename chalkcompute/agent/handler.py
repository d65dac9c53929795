"""The object a protocol v2 request leaves on its connection (:mod:`.v2`, :mod:`.sessions`, :mod:`.fsops`).

    conn.handler = FsRead.open(agent, conn, header)   # then: conn.handler.frame(h, payload), .lost(), ...
"""

from __future__ import annotations

from typing import Any

__all__ = ["Handler", "AgentRef", "ConnectionRef"]

# The agent (.server.Agent) and one client connection (.server._Connection), as the v2 modules see them.
# Not imported from .server: it imports the v2 modules, and the agent's modules form no cycle.
AgentRef = Any
ConnectionRef = Any


class Handler:
    """What a v2 request leaves on its connection: the later frames and the connection's events go here."""

    def frame(self, header: dict[str, Any], payload: bytes) -> None:
        """A frame after the first (ignored unless the request takes any)."""

    def lost(self) -> None:
        """The connection closed."""

    def pause_writing(self) -> None:
        """The transport's write buffer is over its high-water mark."""

    def resume_writing(self) -> None:
        """It drained below its low-water mark."""
