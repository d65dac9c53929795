"""One-row Arrow batches of int64 / float64 columns, without pyarrow on the warm path.

A warm call's arguments and result are usually one row of a few numbers. pyarrow
spends ~25-35 us building and serializing such a batch, and as much reading one
(profiled with benchmarks/profile_call_path.py; four of them per call, caller and
worker). Their IPC bytes never change but for the values: :class:`FixedLayout`
keeps the bytes pyarrow made once, with the values' places zeroed, and writes or
reads just the values. Anything else (a None, a big int, another length) is left
to pyarrow, and what it writes is the same bytes pyarrow writes.

    layout = FixedLayout.of(pa.schema([("x", pa.int64()), ("y", pa.float64())]))
    data = layout.encode([[3], [0.5]])      # == RecordBatch.serialize() of the same row
    layout.decode(data)                     # [[3], [0.5]]
"""

from __future__ import annotations

import struct

import pyarrow as pa

__all__ = ["FixedLayout"]

_INT64 = pa.int64()
_FLOAT64 = pa.float64()
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class FixedLayout:
    """The IPC bytes of a one-row batch of ``schema``, values at known offsets (see the module)."""

    __slots__ = ("template", "slots", "kinds", "size", "_zeroed")

    def __init__(self, template: bytes, slots: list[tuple[int, str]], kinds: list[type]) -> None:
        self.template = template
        self.slots = slots
        self.kinds = kinds
        self.size = len(template)

    @classmethod
    def of(cls, schema: pa.Schema | None) -> FixedLayout | None:
        """The layout for ``schema``, or None when it has a column this does not cover."""
        if schema is None or len(schema) == 0 or len(schema) > 64:
            return None
        fmts: list[str] = []
        kinds: list[type] = []
        for f in schema:
            if f.type == _INT64:
                fmts.append("<q")
                kinds.append(int)
            elif f.type == _FLOAT64:
                fmts.append("<d")
                kinds.append(float)
            else:
                return None
        # A marker per column (a normal double when read as one): found once each, then zeroed.
        markers = [struct.pack("<Q", 0x3FF5A5A5A5A50000 + i) for i in range(len(fmts))]
        values = [struct.unpack(fmt, m)[0] for fmt, m in zip(fmts, markers, strict=True)]
        data = bytearray(pa.RecordBatch.from_arrays(
            [pa.array([v], type=f.type) for v, f in zip(values, schema, strict=True)], schema=schema,
        ).serialize().to_pybytes())
        slots = []
        for fmt, m in zip(fmts, markers, strict=True):
            at = data.find(m)
            if at < 0 or data.find(m, at + 1) >= 0:
                return None
            slots.append((at, fmt))
            data[at:at + 8] = bytes(8)
        layout = cls(bytes(data), slots, kinds)
        # Proof on a second row: what this writes is what pyarrow writes, and reads back.
        probe = [[-7] if k is int else [2.5] for k in kinds]
        made = pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(probe, schema, strict=True)],
                                          schema=schema).serialize().to_pybytes()
        if layout.encode(probe) != made or layout.decode(made) != probe:
            return None
        return layout

    def encode(self, columns: list[list]) -> bytes | None:
        """The batch's bytes, or None when a value is not a plain int64 / float (pyarrow's turn)."""
        buf = bytearray(self.template)
        for (at, fmt), kind, col in zip(self.slots, self.kinds, columns, strict=True):
            if len(col) != 1:
                return None
            v = col[0]
            if kind is int:
                if type(v) is not int or not _I64_MIN <= v <= _I64_MAX:
                    return None
            elif type(v) is not float:
                return None
            struct.pack_into(fmt, buf, at, v)
        return bytes(buf)

    def decode(self, data: bytes) -> list[list] | None:
        """The columns of ``data``, or None when it is not this layout (another row count, nulls...)."""
        if len(data) != self.size:
            return None
        buf = bytearray(data)
        values = []
        for at, fmt in self.slots:
            values.append([struct.unpack_from(fmt, buf, at)[0]])
            buf[at:at + 8] = bytes(8)
        if buf != self.template:
            return None
        return values
