"""Process helpers shared by the agent's v1 execs (:mod:`.server`) and v2 sessions (:mod:`.sessions`).

Standard library only, like the whole agent. Kept apart from :mod:`.server` so the v2 modules need
not import it (it imports them).
"""

from __future__ import annotations

import math
import os
from typing import Any

from .protocol import ProtocolError

__all__ = ["spawn_error"]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _decode_status(status: int) -> tuple[int | None, int | None]:
    """(exit_code, signal) from a waitpid status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def spawn_error(exc: Exception, argv: list[str], cwd: str | None) -> tuple[str, int]:
    """(message, shell-style exit code) for a command that could not be started.

        >>> spawn_error(FileNotFoundError(2, "No such file or directory", "nosuch"), ["nosuch"], None)
        ("executable file not found: 'nosuch'", 127)
    """
    if not isinstance(exc, OSError):  # e.g. ValueError: embedded null byte
        return f"cannot execute {argv[0]!r}: {exc}", 126
    reason = (exc.strerror or str(exc)).lower()
    if cwd is not None and exc.filename == cwd:
        return f"chdir to cwd {cwd!r} failed: {reason}", 126
    if isinstance(exc, FileNotFoundError):
        if "/" in argv[0]:
            return f"no such file or directory: {argv[0]!r}", 127
        return f"executable file not found: {argv[0]!r}", 127
    if isinstance(exc, PermissionError):
        return f"permission denied: {argv[0]!r}", 126
    return f"cannot execute {argv[0]!r}: {reason}", 126


def _exec_args(h: dict[str, Any]) -> tuple[list[str], dict[str, str], str | None, float | None]:
    argv = h.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("exec needs 'argv': a non-empty list of strings")
    env = h.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError("'env' must map strings to strings")
    cwd = h.get("cwd") or None
    if cwd is not None and not isinstance(cwd, str):
        raise ProtocolError("'cwd' must be a string")
    timeout = h.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise ProtocolError("'timeout' must be a positive number of seconds")
    return argv, env, cwd, timeout
