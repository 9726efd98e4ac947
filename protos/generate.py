"""Regenerate the committed Python stubs of every ``protos/*.proto``: ``python protos/generate.py``.

Runs ``grpc_tools.protoc`` (dev extra ``grpcio-tools``) with the repository root
as the include path, so each ``protos/x.proto`` becomes ``protos/x_pb2.py``,
``x_pb2_grpc.py`` and ``x_pb2.pyi``, importable as ``protos.x_pb2``. A
``.proto`` that imports another writes ``import "protos/other.proto";``. Any bare
``import other_pb2`` protoc might still emit is rewritten to
``from protos import other_pb2``, so the stubs work from any working directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
ROOT = PROTOS_DIR.parent
_BARE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def fix_imports(source: str) -> str:
    """``import x_pb2 [as y]`` lines turned into ``from protos import x_pb2 [as y]``."""
    return _BARE_IMPORT.sub(lambda m: f"from protos import {m.group(1)}{m.group(2) or ''}", source)


def generate(proto_files: list[Path] | None = None, out_root: Path = ROOT) -> list[Path]:
    """Compile ``proto_files`` (default: all of ``protos/*.proto``) into ``out_root/protos``; returns the files written."""
    from grpc_tools import protoc  # dev dependency, needed only here

    files = sorted(proto_files or PROTOS_DIR.glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files in {PROTOS_DIR}")
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    relative = [str(f.resolve().relative_to(ROOT)) for f in files]
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *relative,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(relative)}")
    written: list[Path] = []
    for f in files:
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            out = out_root / "protos" / (f.stem + suffix)
            if out.exists():
                out.write_text(fix_imports(out.read_text(encoding="utf-8")), encoding="utf-8")
                written.append(out)
    return written


def main() -> int:
    """Command-line entry: regenerate everything and list what was written."""
    for path in generate([Path(a) for a in sys.argv[1:]] or None):
        print(path.relative_to(ROOT))  # e.g. `python protos/generate.py protos/ledger.proto` for one file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
