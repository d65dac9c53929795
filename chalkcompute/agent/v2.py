"""Protocol v2's first frames, dispatched, and the agent's exec sessions by id (``agent.sessions``).

    handler = open_v2(agent, conn, {"t": "session", "v": 2, "session": "s1", "argv": ["cat"]}, b"")

The wire format of sessions is in :mod:`.sessions`, of file operations in :mod:`.fsops`.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from .handler import AgentRef as Agent
from .handler import ConnectionRef as _Connection
from .handler import Handler
from .procs import _exec_args
from .protocol import V2, ProtocolError, encode
from .sessions import Session

log = logging.getLogger(__name__)

__all__ = ["MAX_SESSIONS", "RETAIN", "DEFAULT_WINDOW", "DEFAULT_DETACH_TIMEOUT", "SessionTable", "open_v2"]

MAX_SESSIONS = 256
RETAIN = 600.0
DEFAULT_WINDOW = 8 << 20
MAX_WINDOW = 1 << 30
DEFAULT_DETACH_TIMEOUT = 300.0
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def open_v2(agent: Agent, conn: _Connection, header: dict[str, Any], payload: bytes) -> Handler | None:
    """Run a v2 first frame; returns the handler for the rest of the connection (None: answered and closed)."""
    from . import fsops

    kind = header["t"]
    if header.get("v") != V2:
        raise ProtocolError(f"request {kind!r} needs protocol version {V2}, got {header.get('v')!r}")
    if kind == "session":
        return agent.sessions.start(conn, header)
    if kind == "attach":
        return agent.sessions.attach(conn, header)
    if kind == "sessions":
        conn.send(encode({"t": "sessions", "sessions": agent.sessions.info()}))
        conn.close()
        return None
    if kind == "fs_read":
        return fsops.FsRead.open(agent, conn, header)
    if kind == "fs_write":
        return fsops.FsWrite.open(agent, conn, header)
    if kind == "fs_list":
        return fsops.FsList.open(agent, conn, header)
    raise ProtocolError(f"unknown request {kind!r}")


def _number(h: dict[str, Any], name: str, default: float, *, integer: bool = False, most: float = math.inf) -> Any:
    value = h.get(name)
    if value is None:
        return default
    ok = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or not 0 < value <= most:
        what = "a positive integer" if integer else "a positive number"
        raise ProtocolError(f"{name!r} must be {what}" + (f" <= {most:g}" if most != math.inf else "")
                            + f", got {value!r}")
    return value


def _session_id(h: dict[str, Any]) -> str:
    sid = h.get("session")
    if not isinstance(sid, str) or not _ID.match(sid):
        raise ProtocolError(f"'session' must be 1 to 64 of [A-Za-z0-9_-], got {sid!r}")
    return sid


class SessionTable:
    """The agent's sessions by id (``agent.sessions``)."""

    def __init__(self, agent: Agent, max_sessions: int = MAX_SESSIONS, retain: float = RETAIN) -> None:
        self.agent = agent
        self.max_sessions = max_sessions
        self.retain = retain
        self.sessions: dict[str, Session] = {}
        self.big_pipes = 0

    def start(self, conn: _Connection, h: dict[str, Any]) -> Handler | None:
        sid = _session_id(h)
        argv, env, cwd, timeout = _exec_args(h)
        window = _number(h, "window", DEFAULT_WINDOW, integer=True, most=MAX_WINDOW)
        detach_timeout = _number(h, "detach_timeout", DEFAULT_DETACH_TIMEOUT)
        if self.agent._stopping:
            conn.fail("the agent is stopping", code="stopping")
            return None
        if sid in self.sessions:
            conn.fail(f"session {sid!r} already exists", code="exists")
            return None
        if len(self.sessions) >= self.max_sessions:
            conn.fail(f"too many sessions: {len(self.sessions)} held, at most {self.max_sessions}; "
                      "end or ack some first", code="too_many")
            return None
        session = Session(self, sid, argv, env, cwd, timeout, window, detach_timeout)
        self.sessions[sid] = session
        return session.start(conn)

    def attach(self, conn: _Connection, h: dict[str, Any]) -> Handler | None:
        sid = _session_id(h)
        after = h.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ProtocolError(f"'after' must be a non-negative integer, got {after!r}")
        session = self.sessions.get(sid)
        if session is None:
            conn.fail(f"no session {sid!r} (never started, or ended and forgotten)", code="not_found")
            return None
        return session.attach(conn, after)

    def running(self) -> bool:
        return any(s.running for s in self.sessions.values())

    def signal_all(self, sig: int) -> None:
        for s in list(self.sessions.values()):
            s.signal_group(sig)

    def info(self) -> list[dict[str, Any]]:
        return [s.info() for s in self.sessions.values()]
