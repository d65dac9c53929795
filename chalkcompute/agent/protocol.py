"""Wire format between chalkd and the in-container agent (standard library only).

One request per unix-socket connection. Every message, either way, is a frame::

    +----------------+-----------------+------------------+-----------------+
    | header length  | payload length  | header           | payload         |
    | 4 bytes, BE    | 4 bytes, BE     | UTF-8 JSON object| raw bytes       |
    +----------------+-----------------+------------------+-----------------+

The header's ``"t"`` says what the frame is. Binary data (stdin, output) rides
in the payload as raw bytes, so nothing is base64-encoded and a chunk costs one
``json.dumps`` of a tiny object plus one write.

A connection::

    agent -> client   {"t": "hello", "v": 1, "pid": 1}              # on accept
    client -> agent   {"t": "exec", "v": 1, "argv": ["cat"], "env": {"A": "1"},
                       "cwd": null, "timeout": 2.5}   payload: stdin bytes
    agent -> client   {"t": "stdout"}                 payload: b"chunk"
    agent -> client   {"t": "stderr"}                 payload: b"chunk"
    ...               (chunks in the order the agent read them)
    agent -> client   {"t": "exit", "exit_code": 0, "signal": null, "pid": 42,
                       "error": null}                 # last frame; agent closes

or ``{"t": "status", "v": 1}`` answered by ``{"t": "status", "main": {...},
"agent_pid": 1, "execs": 0, "stopping": false}``, or ``{"t": "ping", "v": 1}``
answered by ``{"t": "pong"}``. A request the agent will not run gets ``{"t":
"error", "code": "bad_request" | "stopping", "error": "..."}`` and the
connection is closed. Frames of unknown type are ignored by both sides.

Protocol v2 (sandboxes) adds first frames with ``"v": 2``: exec sessions that
outlive their connection, with streamed stdin, signals, acks and reattach
(``session``, ``attach``, ``sessions``: see :mod:`.sessions`), and file
operations in the container's filesystem (``fs_read``, ``fs_write``, ``fs_list``:
see :mod:`.fsops`). A v2 connection keeps exchanging frames after the first.
The hello stays ``"v": 1``; an agent without v2 rejects those requests with a
``bad_request`` error naming the version.

The client does not wait for the hello before sending its request (no extra
round trip); it checks ``v`` when it reads it. The client never half-closes:
EOF or a closed connection during an exec kills that exec's process group.
Stdin is sent whole with the request (empty: the command gets /dev/null).

    >>> frame = encode({"t": "stdout"}, b"hi\\n")
    >>> frame[:8].hex(), frame[8:]
    ('0000000e00000003', b'{"t":"stdout"}hi\\n')
    >>> hlen, plen = split_prefix(frame[:8])
    >>> decode_header(frame[8:8 + hlen]), frame[8 + hlen:]
    ({'t': 'stdout'}, b'hi\\n')
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = [
    "PROTOCOL_VERSION", "V2", "V2_REQUESTS", "PREFIX", "MAX_HEADER", "MAX_PAYLOAD", "ProtocolError", "encode",
    "decode_header", "split_prefix", "FrameParser",
]

PROTOCOL_VERSION = 1
# Sessions and file operations (.sessions, .fsops); v1 requests keep "v": 1.
V2 = 2
V2_REQUESTS = frozenset({"session", "attach", "sessions", "fs_read", "fs_write", "fs_list"})
PREFIX = struct.Struct(">II")
# Headers are small JSON objects; a huge length means a desynchronised or hostile peer.
MAX_HEADER = 1 << 20
# One frame's payload: stdin for an exec, or one output chunk (the agent sends <= 64 KiB).
MAX_PAYLOAD = 256 << 20

# Compact separators: headers go over the wire once per output chunk.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ProtocolError(ValueError):
    """A peer sent something that is not a valid frame."""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame as bytes: the prefix, the JSON header, then the payload."""
    h = _dumps(header).encode()
    return PREFIX.pack(len(h), len(payload)) + h + payload


def split_prefix(prefix: bytes) -> tuple[int, int]:
    """(header length, payload length) from the 8-byte prefix, checked against the limits."""
    hlen, plen = PREFIX.unpack(prefix)
    if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large (header {hlen} bytes, payload {plen} bytes)")
    return hlen, plen


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header must be a JSON object with a string 't'")
    return header


class FrameParser:
    """Incremental parser for a byte stream (for ``asyncio.Protocol.data_received``).

        >>> p = FrameParser()
        >>> p.feed(encode({"t": "exec"}, b"in")[:5])
        []
        >>> p.feed(encode({"t": "exec"}, b"in")[5:])
        [({'t': 'exec'}, b'in')]
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self._buf += data
        frames = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= PREFIX.size:
            hlen, plen = split_prefix(bytes(buf[pos:pos + PREFIX.size]))
            end = pos + PREFIX.size + hlen + plen
            if len(buf) < end:
                break
            start = pos + PREFIX.size
            header = decode_header(bytes(buf[start:start + hlen]))
            frames.append((header, bytes(buf[start + hlen:end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames
