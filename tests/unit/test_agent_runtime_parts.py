"""The injected agent runtime's pure parts (no engine): ELF reading, the command line, the boot script.

The Docker tests (tests/docker/test_agent_runtime.py) run it in an image without Python; here::

    elf_info(Path(os.path.realpath(sys.executable)).read_bytes()).interp   # '/lib64/ld-linux-x86-64.so.2'
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from chalkd.sandboxes.agent_elf import ElfError, elf_info
from chalkd.sandboxes.agent_runtime import (
    BOOT,
    AgentRuntime,
    _agent_files,
    _fingerprint,
    agent_entrypoint,
    runtime_bind,
)

pytestmark = pytest.mark.timeout(60)

RT = AgentRuntime(root=Path("/h/runtime/agent-root/4da22e8b2899-1"), image_id="sha256:" + "4da22e8b2899" * 5,
                  arch="amd64", python_version="3.11", loader="lib/ld-linux-x86-64.so.2", libdir="lib",
                  python="usr/bin/python3.11", agent_dir="agent-0123456789abcdef", reused=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF binaries")
def test_the_hosts_python_needs_libc_through_its_loader():
    exe = elf_info(Path(os.path.realpath(sys.executable)).read_bytes(), "python")
    assert exe.interp.startswith("/") and "ld-linux" in exe.interp
    libc = next((p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6",
                             "/lib64/libc.so.6") if os.path.exists(p)), None)
    if libc is None:
        pytest.skip("no glibc libc.so.6 at the usual paths")
    lib = elf_info(Path(libc).read_bytes(), "libc")
    assert lib.interp == "" or lib.interp == exe.interp  # glibc's libc.so.6 is runnable, so it names one too
    assert os.path.basename(exe.interp) in lib.needed and lib.arch == exe.arch in ("amd64", "arm64")


def test_non_elf_and_32_bit_files_are_refused_by_name():
    with pytest.raises(ElfError, match="script is not an ELF file"):
        elf_info(b"#!/bin/sh\n", "script")
    with pytest.raises(ElfError, match="old.so is a 32-bit or big-endian ELF"):
        elf_info(b"\x7fELF\x01\x01" + b"\0" * 58, "old.so")
    header = bytearray(b"\x7fELF\x02\x01" + b"\0" * 58)
    struct.pack_into("<H", header, 18, 40)  # ARM (32-bit machine number in a 64-bit header)
    with pytest.raises(ElfError, match="x.so is for ELF machine 40"):
        elf_info(bytes(header), "x.so")
    with pytest.raises(ElfError, match="y.so is a truncated ELF file"):
        elf_info(b"\x7fELF\x02\x01" + b"\0" * 10, "y.so")


def test_the_entrypoint_runs_the_agent_through_the_runtimes_loader():
    argv = agent_entrypoint(RT, "/run/chalk-agent/agent.sock", extra=("--socket-mode", "600"))
    assert argv == ["/.chalkd/lib/ld-linux-x86-64.so.2", "--inhibit-cache", "--library-path", "/.chalkd/lib",
                    "/.chalkd/usr/bin/python3.11", "-I", "-S", "/.chalkd/agent-0123456789abcdef/_boot.py",
                    "/.chalkd/agent-0123456789abcdef/__main__.py", "--socket", "/run/chalk-agent/agent.sock",
                    "--socket-mode", "600", "--"]
    assert agent_entrypoint(RT, "/s", mount="/opt/chalk/")[0] == "/opt/chalk/lib/ld-linux-x86-64.so.2"
    assert runtime_bind(RT) == "/h/runtime/agent-root/4da22e8b2899-1:/.chalkd:ro"
    for bad in ("relative", "/", "/a:b"):
        with pytest.raises(ValueError, match="agent runtime mount"):
            runtime_bind(RT, bad)


def test_the_agent_copy_is_keyed_by_its_files():
    files = _agent_files()
    assert {"__main__.py", "server.py", "protocol.py", "_boot.py"} <= set(files)
    fp = _fingerprint(files)
    assert fp == _fingerprint(dict(files)) != _fingerprint({**files, "server.py": files["server.py"] + b"\n"})


def test_the_boot_script_undoes_locale_coercion(tmp_path):
    """With the C locale, Python sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538); the boot script
    gives the agent, and so every command it starts, the environment the container was given."""
    (tmp_path / "_boot.py").write_text(BOOT)
    (tmp_path / "show.py").write_text("import os, sys\nprint(os.environ.get('LC_CTYPE'), sys.argv[1:])\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "KEEP": "x"}
    plain = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "show.py"), "a"], env=env,
                           capture_output=True, text=True, timeout=30)
    booted = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "_boot.py"), str(tmp_path / "show.py"),
                             "a", "--b"], env=env, capture_output=True, text=True, timeout=30)
    if plain.stdout.startswith("None"):
        pytest.skip("this host's Python does not coerce the C locale (no C.UTF-8 locale)")
    assert plain.stdout == "C.UTF-8 ['a']\n", plain  # the coercion this undoes
    assert (booted.stdout, booted.stderr) == ("None ['a', '--b']\n", "")
