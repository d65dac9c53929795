"""Regenerate chalkcompute/_proto from protos/ (needs grpcio-tools, a dev extra).

Usage::

    python -m chalkd.dev.protogen           # rewrite the generated files
    python -m chalkd.dev.protogen --check   # exit 1 when they are stale

Messages come from protoc's upb-backed Python generator, stubs from grpclib's
own plugin. The generated imports are rewritten to live under
``chalkcompute._proto`` so the package needs no top-level ``chalk`` module.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = ROOT / "chalkcompute" / "_proto"


def generate(dest: Path) -> None:
    """Run protoc over every .proto under protos/ into ``dest``."""
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    plugin = shutil.which("protoc-gen-grpclib_python", path=os.path.dirname(sys.executable))
    plugin = plugin or shutil.which("protoc-gen-grpclib_python")
    if plugin is None:
        raise SystemExit("protoc-gen-grpclib_python not found: pip install grpclib")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--plugin=protoc-gen-grpclib_python={plugin}",
            f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpclib_python_out={tmp}",
            *files,
        ]
        subprocess.run(cmd, check=True)
        for path in sorted(Path(tmp).rglob("*.py*")):
            rel = path.relative_to(tmp)
            flat = "_".join(rel.with_suffix("").parts) + rel.suffix  # chalk/v1/chalk_pb2.py -> chalk_v1_chalk_pb2.py
            text = path.read_text()
            # `import chalk.v1.chalk_pb2` ->
            # `from chalkcompute._proto import chalk_v1_chalk_pb2 as chalk_dot_v1_dot_chalk__pb2`
            text = re.sub(
                r"^import (\w+(?:\.\w+)*)\.(\w+_pb2)$",
                lambda m: f"from chalkcompute._proto import {m.group(1).replace('.', '_')}_{m.group(2)}"
                f" as {m.group(1).replace('.', '_')}_{m.group(2)}",
                text, flags=re.M,
            )
            text = re.sub(
                r"\b(\w+)\.v1\.(\w+_pb2)\b(?!\s+as)",
                lambda m: f"{m.group(1)}_v1_{m.group(2)}",
                text,
            ) if flat.endswith("_grpc.py") else text
            (dest / flat).write_text(text)
    (dest / "__init__.py").write_text(
        '"""Generated protobuf and grpclib code. Do not edit: run python -m chalkd.dev.protogen."""\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = [
                p.name for p in sorted(Path(tmp).iterdir())
                if not (OUT / p.name).exists() or (OUT / p.name).read_text() != p.read_text()
            ]
            extra = [p.name for p in OUT.glob("*.py*") if not (Path(tmp) / p.name).exists()]
        if stale or extra:
            print(f"generated code is stale: {', '.join(stale + extra)}; run python -m chalkd.dev.protogen")
            return 1
        print("generated code is up to date")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.py*"):
        old.unlink()
    generate(OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
