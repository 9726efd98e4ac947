"""The edge bundle runs with ONNX Runtime alone: torch, transformers and Ray cannot even be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "deploy" / "edge" / "run_bundle.py"
BLOCKED = """
import runpy, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "ray", "peft", "flwr"):
            raise ImportError("not installed on this edge device: " + name)
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_the_edge_bundle_runs_without_the_training_stack(tmp_path: Path) -> None:
    from sentinel.models.onnx_export import OnnxClassifier
    from sentinel.server.cli import app
    from typer.testing import CliRunner

    model = tmp_path / "edge" / "model.onnx"
    res = CliRunner().invoke(app, ["models", "export-onnx", "tiny-bert", "--out", str(model)])
    assert res.exit_code == 0, res.output
    texts = ["the battery lasts all day", "it broke after a week"]
    run = subprocess.run([sys.executable, "-c", BLOCKED, str(RUNNER), str(model), "--json", "--bench", "20", *texts],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["torch_loaded"] is False and result["peak_rss_mb"] < 400
    logits = OnnxClassifier(model).logits(texts, max_length=128)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-3)


def test_the_edge_requirements_leave_out_the_training_stack() -> None:
    text = (ROOT / "deploy" / "edge" / "requirements.txt").read_text().lower()
    names = {line.split(">")[0].split("=")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert names == {"onnxruntime", "tokenizers", "numpy"}
