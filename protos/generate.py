"""Regenerate the committed Python stubs of every ``protos/*.proto``: ``python protos/generate.py``.

The folder installs as ``sentinel.protos``, so the stubs must name their modules
``sentinel.protos.x_pb2``. protoc derives module names from the path of each
``.proto`` under its include root; the files are therefore staged in a temporary
``sentinel/protos/`` tree, compiled there (dev extra ``grpcio-tools``), and the
outputs copied back into ``out_root``. A ``.proto`` that imports another writes
``import "sentinel/protos/other.proto";``. Any bare ``import other_pb2`` protoc
might still emit is rewritten to ``from sentinel.protos import other_pb2``, so
the stubs work from any working directory.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
PACKAGE_PATH = Path("sentinel") / "protos"
_BARE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def fix_imports(source: str) -> str:
    """``import x_pb2 [as y]`` lines turned into ``from sentinel.protos import x_pb2 [as y]``."""
    return _BARE_IMPORT.sub(lambda m: f"from sentinel.protos import {m.group(1)}{m.group(2) or ''}", source)


def generate(proto_files: list[Path] | None = None, out_root: Path = PROTOS_DIR) -> list[Path]:
    """Compile ``proto_files`` (default: all of ``protos/*.proto``) into ``out_root``; returns the files written."""
    from grpc_tools import protoc  # dev dependency, needed only here

    files = sorted(proto_files or PROTOS_DIR.glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files in {PROTOS_DIR}")
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / PACKAGE_PATH
        stage.mkdir(parents=True)
        for f in PROTOS_DIR.glob("*.proto"):  # every proto, so imports between them resolve
            shutil.copyfile(f, stage / f.name)
        relative = [str(PACKAGE_PATH / f.name) for f in files]
        args = ["grpc_tools.protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *relative]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(relative)}")
        out_root.mkdir(parents=True, exist_ok=True)
        for f in files:
            for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
                produced = stage / (f.stem + suffix)
                if produced.exists():
                    out = out_root / produced.name
                    out.write_text(fix_imports(produced.read_text(encoding="utf-8")), encoding="utf-8")
                    written.append(out)
    return written


def main() -> int:
    """Command-line entry: regenerate everything and list what was written."""
    for path in generate([Path(a) for a in sys.argv[1:]] or None):
        print(path.relative_to(PROTOS_DIR.parent))  # e.g. `python protos/generate.py protos/ledger.proto` for one file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
