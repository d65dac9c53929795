"""A received HTTP/2 frame's repr without hexlifying all its data.

h2 logs every frame it receives with ``logger.trace("Received frame: %s", repr(frame))``,
and builds the repr even when nothing logs it. hyperframe's repr of a DATA frame
hexlifies the frame's whole body (16 KiB) and keeps the first 20 hex digits:
measured on a 256 MiB volume put over gRPC, that was 15% of the daemon's CPU, and
as much of the SDK's on a get. The replacement hexlifies only the bytes it shows,
so the text is the same; it is installed only when it gives the same text as the
original on a few probes (a later hyperframe that words it otherwise keeps its own).

    import chalkcompute._h2_repr  # noqa: F401 - installs on import (the SDK and the daemon both do)
    from hyperframe.frame import DataFrame
    repr(DataFrame(1, data=b"x" * 16384))  # 'DataFrame(stream_id=1, flags=[]): <hex:78787878787878787878...>'
"""

from __future__ import annotations

import binascii
import logging

log = logging.getLogger(__name__)

__all__ = ["install"]

_SHOWN = 10  # bytes whose hex hyperframe shows (20 digits), then "..."


def _raw_data_repr(data: bytes | memoryview | None) -> str:
    if not data:
        return "None"
    r = binascii.hexlify(data[:_SHOWN + 1]).decode("ascii")
    if len(r) > 2 * _SHOWN:
        r = r[:2 * _SHOWN] + "..."
    return "<hex:" + r + ">"


def install() -> bool:
    """Replace hyperframe's data repr if it words the same; True when it was (idempotent)."""
    try:
        from hyperframe import frame
    except ImportError:  # no gRPC stack here
        return False
    original = getattr(frame, "_raw_data_repr", None)
    if original is None:
        return False
    if original is _raw_data_repr:
        return True
    probes: list[bytes | None] = [None, b"", b"\x00", bytes(range(10)), bytes(range(11)), bytes(range(256)) * 70]
    try:
        same = all(original(p) == _raw_data_repr(p) for p in probes)
    except Exception:  # noqa: BLE001 - a changed signature: keep the original
        same = False
    if not same:
        log.debug("hyperframe's _raw_data_repr differs from the expected one; not replaced")
        return False
    frame._raw_data_repr = _raw_data_repr  # type: ignore[attr-defined]
    return True


install()
