"""The package installs under one namespace, ``sentinel.*``, and nothing else at the top level."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "client", "server", "ledger", "governance", "protos")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_installed_package_is_under_the_sentinel_namespace() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"] and all(p.startswith("sentinel.") for p in setuptools["packages"])
    assert setuptools["package-dir"] == {f"sentinel.{f}": f for f in FOLDERS}
    # Every folder with an __init__.py is listed, so none is left out of the wheel.
    on_disk = {
        "sentinel." + str(p.parent.relative_to(ROOT)).replace("/", ".")
        for f in FOLDERS
        for p in (ROOT / f).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk == set(setuptools["packages"])


def test_sentinel_names_import_and_the_bare_folder_names_do_not(tmp_path: Path) -> None:
    ok = _python("import sentinel.models, sentinel.server, sentinel.client, sentinel.ledger, sentinel.governance, sentinel.protos", tmp_path)
    assert ok.returncode == 0, ok.stderr
    for name in ("models", "server", "client", "protos"):
        bare = _python(f"import {name}", tmp_path)
        assert bare.returncode != 0 and "ModuleNotFoundError" in bare.stderr, f"`import {name}` should fail"


@pytest.mark.parametrize("spec", ["serverapp", "clientapp"])
def test_flower_app_components_use_the_installed_names(spec: str) -> None:
    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    module, _, attr = components[spec].partition(":")
    assert module.startswith("sentinel.")
    ok = _python(f"import importlib; assert hasattr(importlib.import_module({module!r}), {attr!r})", ROOT.parent)
    assert ok.returncode == 0, ok.stderr
