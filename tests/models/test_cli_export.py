"""`sentinel models export-onnx`: writes the model, reports size and fidelity, fails clearly on bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import typer
from sentinel.models.cli import app as models_app
from sentinel.models.loading import load_base_model
from sentinel.models.lora import attach_lora, save_adapter
from sentinel.models.onnx_export import META_PRUNED, read_metadata
from typer.testing import CliRunner

root = typer.Typer()
root.add_typer(models_app, name="models")


@pytest.mark.slow
def test_export_with_adapter_and_head_mask(tmp_path: Path) -> None:
    peft = attach_lora(load_base_model("tiny-bert"), rank=2)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    adapter = save_adapter(peft, tmp_path / "adapter")
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps({"pruned": {"0": [1, 3], "1": [2]}}))
    out = tmp_path / "export" / "tiny.onnx"

    result = CliRunner().invoke(
        root,
        ["models", "export-onnx", "tiny-bert", "--adapter", str(adapter), "--head-mask", str(mask), "--out", str(out)],
    )

    assert result.exit_code == 0, result.output
    assert f"path: {out}" in result.output
    params = re.search(r"parameters: (\d+) \(before pruning: (\d+)\)", result.output)
    assert params is not None and int(params.group(1)) < int(params.group(2))
    diff = re.search(r"max \|logit diff\| vs torch: (\S+)", result.output)
    assert diff is not None and float(diff.group(1)) < 1e-4
    assert out.is_file()
    assert json.loads(read_metadata(out)[META_PRUNED]) == {"0": [1, 3], "1": [2]}


def test_bad_head_mask_is_reported_without_a_traceback(tmp_path: Path) -> None:
    mask = tmp_path / "mask.json"
    mask.write_text(json.dumps({"pruned": {"0": [9]}}))
    out = tmp_path / "tiny.onnx"
    result = CliRunner().invoke(
        root, ["models", "export-onnx", "tiny-bert", "--head-mask", str(mask), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "head 9 out of range" in result.output
    assert not out.exists()


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(root, ["models", "export-onnx", "--help"])
    assert result.exit_code == 0
    for option in ("--adapter", "--head-mask", "--out"):
        assert option in result.output
