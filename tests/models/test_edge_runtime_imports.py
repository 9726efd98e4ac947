"""The edge runtime installs without torch: importing it must not import torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

RUNTIME_MODULES = ["sentinel.models.edge_bundle", "sentinel.client.edge", "sentinel.models.cli_edge"]


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {RUNTIME_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
