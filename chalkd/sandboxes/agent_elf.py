"""What an ELF file needs to run: its program interpreter and ``DT_NEEDED`` libraries.

The injected agent runtime (:mod:`chalkd.sandboxes.agent_runtime`) copies a
Python interpreter out of an image with exactly the shared libraries it and
its extension modules load, without running anything in that image (no
``ldd``); this reads the same answer from the files themselves::

    info = elf_info(Path("/usr/bin/python3.11").read_bytes())
    info.interp    # '/lib64/ld-linux-x86-64.so.2'
    info.needed    # ('libm.so.6', 'libz.so.1', 'libexpat.so.1', 'libc.so.6')
    info.arch      # 'amd64' (Docker's name for the machine)

Only 64-bit little-endian ELF (x86-64, aarch64) is read; anything else raises
:class:`ElfError` naming what it is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ElfError", "ElfInfo", "elf_info", "ARCHES"]

# e_machine -> (Docker's architecture name, Debian's multiarch triplet)
ARCHES: dict[int, tuple[str, str]] = {62: ("amd64", "x86_64-linux-gnu"), 183: ("arm64", "aarch64-linux-gnu")}

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


class ElfError(ValueError):
    """Not an ELF file this reader understands (the message says what it is)."""


@dataclass(frozen=True)
class ElfInfo:
    machine: int
    arch: str                # Docker's name: amd64 | arm64
    triplet: str             # Debian's multiarch directory name: x86_64-linux-gnu
    interp: str              # PT_INTERP ("" for a shared library)
    needed: tuple[str, ...]  # DT_NEEDED sonames, in order


def _cstr(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset < 0 or end < 0:
        raise ElfError(f"string at offset {offset} runs past the end of the file")
    return data[offset:end].decode("utf-8", "replace")


def elf_info(data: bytes, name: str = "file") -> ElfInfo:
    """Interpreter, needed libraries and machine of an ELF executable or shared library.

        >>> elf_info(b"#!/bin/sh\\n", "sh-script")
        Traceback (most recent call last):
        chalkd.sandboxes.agent_elf.ElfError: sh-script is not an ELF file
    """
    if data[:4] != b"\x7fELF":
        raise ElfError(f"{name} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError(f"{name} is a {32 if data[4] == 1 else '?'}-bit or big-endian ELF file; "
                       "only 64-bit little-endian (x86-64, aarch64) is supported")
    try:
        machine, = struct.unpack_from("<H", data, 18)
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        headers = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    except struct.error:
        raise ElfError(f"{name} is a truncated ELF file") from None
    if machine not in ARCHES:
        raise ElfError(f"{name} is for ELF machine {machine}; supported: x86-64 (62), aarch64 (183)")
    arch, triplet = ARCHES[machine]
    interp, dynamic = "", None
    loads = []
    for p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align in headers:
        if p_type == _PT_INTERP:
            interp = data[offset:offset + filesz].rstrip(b"\0").decode("utf-8", "replace")
        elif p_type == _PT_DYNAMIC:
            dynamic = (offset, filesz)
        elif p_type == _PT_LOAD:
            loads.append((vaddr, filesz, offset))
    needed: list[int] = []
    strtab = None
    if dynamic is not None:
        offset, size = dynamic
        for pos in range(offset, offset + size - 15, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                needed.append(value)
            elif tag == _DT_STRTAB:
                strtab = value
    if needed and strtab is None:
        raise ElfError(f"{name} names needed libraries but has no string table")
    names: list[str] = []
    if needed:
        # DT_STRTAB is a virtual address: find the loaded segment that holds it.
        base = next((off + strtab - va for va, size, off in loads if va <= strtab < va + size), None)  # type: ignore[operator]
        if base is None:
            raise ElfError(f"{name}: its dynamic string table is outside every loaded segment")
        names = [_cstr(data, base + n) for n in needed]
    return ElfInfo(machine=machine, arch=arch, triplet=triplet, interp=interp, needed=tuple(names))
